/**
 * The learned methods end to end (stages/reconstruct.ts with stages/omniquant.ts), on a reduced
 * but honest budget: OmniQuant (LWC + LET on OMNIQUANT_POINTS, MSE loss) and ABQ-LLM (LWC + LET on
 * ABQ_POINTS, rank-1 compensation on the first and last blocks, ABQ's loss) both beat RTN on
 * perplexity over the first 64 validation windows, on tinystories-656k and on its
 * outlier-injected variant (s = 50 on 2 % of channels), at W4A4 and W3A16 (weights per output
 * channel, activations per token).
 *
 * Budget: 32 calibration windows of 256 tokens (seed 0, the same windows for RTN) and 2 epochs
 * per block. Measured before choosing it (seeds 0–3): at 32 × 2 every learned run beat RTN by at
 * least 4 % (plain W4A4: RTN 49.45, OmniQuant ≤ 47.33, ABQ ≤ 46.90; plain W3A16: RTN 58.17,
 * learned ≤ 52.44; outliers W3A16: RTN 75.70, learned ≤ 56.03; outliers W4A4: RTN ≈ 1.3e5,
 * OmniQuant ≈ 1.3e3, ABQ ≤ 47.3), while at 16 × 2 ABQ's margin on plain W4A4 fell to about 1 %
 * (48.81 against 49.45), too thin to call robust. The whole file takes about 1.5 minutes on the
 * 2-core development machine.
 *
 * Also: every block's loss falls from the first epoch to the last, the folded model computes what
 * was trained (`fold_rel_error` < 1e-5), training time is reported, and `report.json` has the
 * shape every pipeline shares; the NaN guard stops a diverging block, restores its last good
 * parameters and still writes a finite model; a resumed run reproduces the first run exactly.
 */
import assert from "node:assert/strict";
import { ABQ_POINTS, OMNIQUANT_POINTS } from "../algorithms/let.ts";
import { injectOutliers } from "../fixtures/outliers.ts";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import type { Graph, Value } from "../kernels/graph.ts";
import type { Param } from "../kernels/optim.ts";
import type { ModelConfig } from "../models/config.ts";
import { openModel } from "../formats/open.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import { RunCache, runQuantization } from "../run/quantize.ts";
import type { QuantizeReport } from "../run/report.ts";
import type { StageReport } from "../stages/job.ts";
import { FIRST_AND_LAST, omniquantMethod } from "../methods/omniquant.ts";
import { capture, propagate } from "../stages/propagate.ts";
import {
  reconstruct,
  type ReconstructionMethod,
  type TrainOptions,
} from "../stages/reconstruct.ts";
import { rtn } from "../methods/rtn.ts";
import { abqMethod } from "../methods/abq.ts";

const SRC = fixtureModel("tinystories-656k");
const VAL = "tinystories_val.txt";
const NSAMPLES = 32;
const EPOCHS = 2;
const calib = (nsamples = NSAMPLES) => ({
  file: fixtureText("tinystories_train_sample.txt"),
  nsamples,
  seed: 0,
});
const EVAL = { files: [fixtureText(VAL)], windows: 64 };

type Learned = "omniquant" | "abq";

/** The method as pipelines/omniquant.ts (`--lwc --let`) and pipelines/abq.ts build it. */
function learnedMethod(method: Learned, wbits: number): ReconstructionMethod {
  if (method === "omniquant") {
    return omniquantMethod({ wbits, groupSize: 0, lwc: true, letPoints: OMNIQUANT_POINTS });
  }
  return abqMethod({
    wbits,
    groupSize: 0,
    lwc: true,
    letPoints: ABQ_POINTS,
    compensationBlocks: FIRST_AND_LAST,
  });
}

/** Checks the JSON report written to `<out>/report.json` has the shape every pipeline shares. */
async function checkReportFile(
  out: string,
  want: { method: string; wbits: number; abits: number },
): Promise<QuantizeReport> {
  const r = JSON.parse(await Deno.readTextFile(`${out}/report.json`));
  for (
    const k of [
      "method",
      "wbits",
      "abits",
      "group_size",
      "bits_per_weight",
      "seconds",
      "peak_rss_bytes",
      "eval",
    ]
  ) assert.ok(k in r, `report.json has no "${k}"`);
  assert.equal(r.method, want.method);
  assert.equal(r.wbits, want.wbits);
  assert.equal(r.abits, want.abits);
  assert.equal(r.group_size, 0);
  for (const k of ["bits_per_weight", "seconds", "peak_rss_bytes"]) {
    assert.ok(typeof r[k] === "number" && Number.isFinite(r[k]) && r[k] > 0, `${k}: ${r[k]}`);
  }
  assert.deepEqual(Object.keys(r.eval), [VAL]);
  for (const k of ["fp", "quant"]) {
    const v = r.eval[VAL][k];
    assert.ok(typeof v === "number" && Number.isFinite(v) && v > 1, `eval.${k}: ${v}`);
  }
  assert.ok(Array.isArray(r.blocks));
  return r as QuantizeReport;
}

/** The reconstruction stage's report of each block, in block order. */
function trainReports(r: QuantizeReport, stage: string): StageReport[] {
  const b = r.blocks.filter((x) => x.stage === stage).sort((x, y) => x.block - y.block);
  assert.equal(b.length, 2, `${stage}: one report per block`);
  return b;
}

Deno.test("OmniQuant and ABQ-LLM beat RTN (W4A4, W3A16; with and without outliers)", async (t) => {
  const tmp = await Deno.makeTempDir();
  try {
    const outliers = `${tmp}/outliers`;
    await injectOutliers(SRC, outliers, { scale: 50, fraction: 0.02, seed: 0 });
    for (const [label, model] of [["tinystories-656k", SRC], ["+ outliers", outliers]]) {
      const cache = new RunCache();
      for (const [wbits, abits] of [[4, 4], [3, 16]]) {
        await t.step(`${label} W${wbits}A${abits}`, async () => {
          const common = {
            wbits,
            abits,
            groupSize: 0,
            model,
            calib: calib(),
            eval: EVAL,
            quiet: true,
            cache,
          };
          const out = `${tmp}/rtn`;
          const base = await runQuantization({
            ...common,
            method: "rtn",
            out,
            stages: () => [rtn({ bits: wbits, groupSize: 0 }), propagate()],
          });
          await checkReportFile(out, { method: "rtn", wbits, abits });
          const rtnPpl = base.eval[VAL].quant;
          for (const method of ["omniquant", "abq"] as const) {
            const out = `${tmp}/${method}`;
            const r = await runQuantization({
              ...common,
              method,
              out,
              teacher: true,
              stages: () => [
                capture(),
                reconstruct(learnedMethod(method, wbits), { epochs: EPOCHS }),
                propagate(),
              ],
            });
            const file = await checkReportFile(out, { method, wbits, abits });
            const what = `${label} W${wbits}A${abits} ${method}`;
            const ppl = file.eval[VAL].quant;
            assert.equal(ppl, r.eval[VAL].quant);
            assert.equal(file.eval[VAL].fp, base.eval[VAL].fp, `${what}: same fp perplexity`);
            assert.ok(ppl < rtnPpl, `${what}: perplexity ${ppl} does not beat RTN's ${rtnPpl}`);
            // Same storage as RTN: per-channel fp16 scale and a wbits zero point per row.
            assert.ok(Math.abs(file.bits_per_weight - base.bits_per_weight) < 1e-9);
            for (const b of trainReports(file, method)) {
              const where = `${what} block ${b.block}`;
              const curve = b.loss_curve as number[];
              assert.equal(curve.length, EPOCHS, `${where}: loss curve ${curve}`);
              assert.ok(curve.every(Number.isFinite), `${where}: loss curve ${curve}`);
              assert.ok(curve[EPOCHS - 1] < curve[0], `${where}: loss does not fall: ${curve}`);
              assert.equal(b.first_loss, curve[0]);
              assert.equal(b.last_loss, curve[EPOCHS - 1]);
              assert.ok(
                (b.fold_rel_error as number) < 1e-5,
                `${where}: fold_rel_error ${b.fold_rel_error}`,
              );
              assert.ok(typeof b.train_seconds === "number" && b.train_seconds > 0);
              assert.ok(b.train_seconds <= b.seconds, `${where}: train_seconds > stage seconds`);
              assert.equal(b.steps, EPOCHS * NSAMPLES);
              assert.equal(b.resumed, false);
              assert.equal(b.stopped_at, null);
            }
          }
        });
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

/**
 * OmniQuant with one extra parameter, a gate g (init 1) that AdamW's decoupled weight decay
 * halves every step (lr 0.5, decay 1; its gradient is exactly 0), and a student that adds
 * 0·√(g − 3e-4) to the input norm: harmless while g > 3e-4, NaN from step 12 (g = 2^-12) on.
 */
function nanAfter12Steps(): ReconstructionMethod {
  const inner = omniquantMethod({ wbits: 4, groupSize: 0, lwc: true, letPoints: OMNIQUANT_POINTS });
  return {
    ...inner,
    name: "omniquant",
    init(job, stats): Param[] {
      const gate: Param = {
        name: "nan_gate",
        data: Float32Array.of(1),
        shape: [1],
        lr: 0.5,
        weightDecay: 1,
      };
      return [...inner.init(job, stats), gate];
    },
    student(g: Graph, c: ModelConfig, w, p, block) {
      const out: Record<string, Value> = inner.student(g, c, w, p, block);
      const poison = g.mul(g.scalar(0), g.op("Sqrt", [g.sub(p.nan_gate, g.scalar(3e-4))]));
      out["input_layernorm.weight"] = g.add(out["input_layernorm.weight"], poison);
      return out;
    },
  };
}

/** Every tensor of every block of the written model is finite. */
async function assertFiniteModel(dir: string): Promise<void> {
  const m = await openModel(dir);
  try {
    for (let i = 0; i < m.config.layers; i++) {
      for (const [name, t] of Object.entries(await m.block(i))) {
        assert.ok(t.data.every(Number.isFinite), `block ${i} ${name}: non-finite values`);
      }
    }
  } finally {
    m.close();
  }
}

Deno.test("the NaN guard stops, restores the last good parameters, writes a finite model", async (t) => {
  const tmp = await Deno.makeTempDir();
  const cache = new RunCache();
  const run = (m: ReconstructionMethod, out: string, o: TrainOptions) =>
    runQuantization({
      method: "omniquant",
      wbits: 4,
      abits: 4,
      groupSize: 0,
      model: SRC,
      out,
      teacher: true,
      calib: calib(8),
      eval: { files: [fixtureText(VAL)], windows: 16 },
      stages: () => [capture(), reconstruct(m, o), propagate()],
      quiet: true,
      cache,
    });
  try {
    await t.step("a student that turns NaN at step 12 (epoch 2 of 3)", async () => {
      const out = `${tmp}/gate`;
      const r = await run(nanAfter12Steps(), out, { epochs: 3 });
      const file = await checkReportFile(out, { method: "omniquant", wbits: 4, abits: 4 });
      assert.ok(Number.isFinite(r.eval[VAL].quant) && r.eval[VAL].quant < 1e3);
      const learned = await SafetensorsReader.open(`${out}/learned.safetensors`);
      try {
        for (const b of trainReports(file, "omniquant")) {
          assert.equal(b.stopped_at, 12, `block ${b.block}`);
          assert.match(String(b.stop_reason), /loss NaN/);
          assert.equal(b.steps, 12);
          // the first epoch (8 steps) completed; the second stopped after 4 steps, whose mean
          // is recorded as a partial epoch
          assert.equal((b.loss_curve as number[]).length, 2);
          assert.ok((b.loss_curve as number[]).every(Number.isFinite));
          assert.ok((b.fold_rel_error as number) < 1e-5, `fold_rel_error ${b.fold_rel_error}`);
          // restored: the gate as it was at step 11, the last finite step (2^-11), not 2^-12
          const gate = await learned.readF32(`model.layers.${b.block}.nan_gate`);
          assert.equal(gate.data[0], 2 ** -11);
        }
      } finally {
        learned.close();
      }
      await assertFiniteModel(out);
    });
    await t.step(
      "a huge learning rate (letLr 1e30): NaN at step 1, initial scales restored",
      async () => {
        const out = `${tmp}/lr`;
        const m = omniquantMethod({
          wbits: 4,
          groupSize: 0,
          lwc: true,
          letPoints: OMNIQUANT_POINTS,
          letLr: 1e30,
        });
        const r = await run(m, out, { epochs: 2 });
        assert.ok(Number.isFinite(r.eval[VAL].quant) && r.eval[VAL].quant < 1e3);
        const file = await checkReportFile(out, { method: "omniquant", wbits: 4, abits: 4 });
        for (const b of trainReports(file, "omniquant")) {
          assert.equal(b.stopped_at, 1, `block ${b.block}`);
          assert.equal(typeof b.stop_reason, "string");
          assert.ok((b.stop_reason as string).length > 0);
          assert.ok((b.fold_rel_error as number) < 1e-5, `fold_rel_error ${b.fold_rel_error}`);
        }
        await assertFiniteModel(out);
        // The parameters restored are those of step 0, the initial ones: the same learned state
        // and perplexity as a run that does not train at all.
        const init = await run(m, `${tmp}/init`, { epochs: 0 });
        assert.equal(r.eval[VAL].quant, init.eval[VAL].quant);
        const [a, b] = await Promise.all(
          [out, `${tmp}/init`].map((d) => SafetensorsReader.open(`${d}/learned.safetensors`)),
        );
        try {
          assert.deepEqual(b.names(), a.names());
          assert.ok(a.names().some((n) => n.endsWith(".let.qkv")));
          for (const n of a.names()) {
            assert.deepEqual((await a.readF32(n)).data, (await b.readF32(n)).data, n);
          }
        } finally {
          a.close();
          b.close();
        }
      },
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("a run resumed from its checkpoints reproduces the first run exactly", async () => {
  const tmp = await Deno.makeTempDir();
  const cache = new RunCache();
  const run = (out: string, o: TrainOptions) =>
    runQuantization({
      method: "omniquant",
      wbits: 4,
      abits: 4,
      groupSize: 0,
      model: SRC,
      out,
      teacher: true,
      calib: calib(16),
      eval: { files: [fixtureText(VAL)], windows: 64 },
      stages: () => [capture(), reconstruct(learnedMethod("omniquant", 4), o), propagate()],
      quiet: true,
      cache,
    });
  try {
    const ckpt = `${tmp}/ckpt`;
    const first = await run(`${tmp}/first`, { epochs: 2, checkpointDir: ckpt });
    for (const b of trainReports(first, "omniquant")) {
      assert.equal(b.resumed, false);
      assert.equal(b.steps, 32);
      await Deno.stat(`${ckpt}/block-${b.block}.safetensors`);
    }
    const second = await run(`${tmp}/second`, { epochs: 2, resume: ckpt });
    for (const b of trainReports(second, "omniquant")) {
      assert.equal(b.resumed, true, `block ${b.block}`);
      assert.equal(b.steps, 0);
      assert.ok((b.fold_rel_error as number) < 1e-5);
    }
    assert.equal(second.eval[VAL].quant, first.eval[VAL].quant);
    const [a, b] = [await openModel(`${tmp}/first`), await openModel(`${tmp}/second`)];
    try {
      for (let i = 0; i < a.config.layers; i++) {
        const [wa, wb] = [await a.block(i), await b.block(i)];
        for (const name of Object.keys(wa)) {
          assert.deepEqual(wb[name].data, wa[name].data, `block ${i} ${name}`);
        }
      }
    } finally {
      a.close();
      b.close();
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

// Known bug (stages/reconstruct.ts, reported, not fixed here): the guard checks the parameters
// a step is about to use, so the update made by the very last AdamW step is never checked. When
// it makes the student non-finite, the block is folded from those parameters: NaN weights,
// `fold_rel_error` NaN, `stopped_at` null, and every later block and the perplexity NaN. Enable
// once the engine checks the final parameters (one more forward through the guard) before folding.
Deno.test({
  name: "the NaN guard also catches a divergence on the last training step",

  fn: async () => {
    const tmp = await Deno.makeTempDir();
    try {
      const out = `${tmp}/last`;
      // 4 windows × 3 epochs = 12 steps: the gate reaches 2^-12 (NaN) only after the last one
      const r = await runQuantization({
        method: "omniquant",
        wbits: 4,
        abits: 4,
        groupSize: 0,
        model: SRC,
        out,
        teacher: true,
        calib: calib(4),
        eval: { files: [fixtureText(VAL)], windows: 16 },
        stages: () => [capture(), reconstruct(nanAfter12Steps(), { epochs: 3 }), propagate()],
        quiet: true,
      });
      assert.ok(Number.isFinite(r.eval[VAL].quant), `perplexity ${r.eval[VAL].quant}`);
      for (const b of trainReports(r, "omniquant")) {
        assert.equal(b.stopped_at, 12, `block ${b.block}`);
        assert.ok((b.fold_rel_error as number) < 1e-5, `fold_rel_error ${b.fold_rel_error}`);
      }
      await assertFiniteModel(out);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
