/**
 * kill -9 at a random point of each pipeline, `--resume`, and the output is byte for byte the
 * output of an uninterrupted run (every file but report.json and report.html, whose timings differ). The
 * layer-wise pipelines (RTN, GPTQ, CLAQ) continue after their last checkpointed block; the
 * learned ones (OmniQuant, ABQ-LLM, QLLM with --num-layer 2) fold the blocks they had trained.
 * The random points come from a seed printed with each case, so a failure reproduces.
 */
import assert from "node:assert/strict";
import type { CommandMain } from "../cli/flags.ts";
import { abqMain } from "../pipelines/abq.ts";
import { claqMain } from "../pipelines/claq.ts";
import { gptqMain } from "../pipelines/gptq.ts";
import { omniquantMain } from "../pipelines/omniquant.ts";
import { qllmMain } from "../pipelines/qllm.ts";
import { rtnMain } from "../pipelines/rtn.ts";
import {
  checkResume,
  fingerprint,
  removeCheckpointDir,
  saveFingerprint,
} from "../run/fingerprint.ts";
import { fixtureModel } from "../fixtures/paths.ts";
import { runProcess, runQuiet, snapshot, type Workspace, workspace } from "./hostile.ts";

const main = (f: (argv: string[]) => Promise<unknown>): CommandMain => async (argv) =>
  void await f(argv);

interface Pipeline {
  name: string;
  run: CommandMain;
  flags: string[];
  /** The progress line of a block's main stage. */
  stage: string;
  /**
   * Blocks a resumed run must not redo when killed once block `k` (1-based) started its main
   * stage: layer-wise runs continue after them, learned runs fold them without training.
   */
  kept: (k: number) => number;
  /** Layer-wise: checkpointed by the sink, in `progress.json`. */
  layerwise?: boolean;
}

/**
 * A layer-wise block hands its outputs on before the sink writes and checkpoints it, so block
 * `k` can start while block `k - 1` is still being saved: only the blocks before that are sure.
 */
const LAYERWISE_KEPT = (k: number) => Math.max(0, k - 2);

const PIPELINES: Pipeline[] = [
  {
    name: "rtn",
    run: main(rtnMain),
    flags: ["--group-size", "32", "--allow-partial-group"],
    stage: "rtn",
    kept: LAYERWISE_KEPT,
    layerwise: true,
  },
  {
    name: "gptq",
    run: main(gptqMain),
    flags: ["--group-size", "32", "--allow-partial-group", "--act-order", "--true-sequential"],
    stage: "gptq",
    kept: LAYERWISE_KEPT,
    layerwise: true,
  },
  {
    name: "claq",
    run: main(claqMain),
    flags: ["--target-bits", "2.5"],
    stage: "claq",
    kept: LAYERWISE_KEPT,
    layerwise: true,
  },
  {
    name: "omniquant",
    run: main(omniquantMain),
    flags: ["--lwc", "--let", "--epochs", "1"],
    stage: "omniquant",
    kept: (k) => k - 1,
  },
  { name: "abq", run: main(abqMain), flags: ["--epochs", "1"], stage: "abq", kept: (k) => k - 1 },
  {
    name: "qllm",
    run: main(qllmMain),
    flags: ["--epochs", "1", "--num-layer", "2", "--wbits", "4", "--abits", "8"],
    stage: "qllm|lora",
    kept: (k) => Math.floor((k - 1) / 2), // groups of 2: the last block of each reports it
  },
];

/** stories260k (5 blocks), 8 windows of 64, 2 evaluation windows. */
function args(w: Workspace, p: Pipeline, out: string): string[] {
  return [
    ...["--model", `${w.llama}/stories260K.bin`, "--calib", w.calib, "--eval", w.val],
    ...["--nsamples", "8", "--seqlen", "64", "--eval-windows", "2", "--out", out],
    ...p.flags,
  ];
}

/** A small deterministic generator for the kill points. */
function rng(seed: number): () => number {
  let x = Math.imul(seed, 0x9e3779b1) >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

const SEED = Number(Deno.env.get("QLLM_RESUME_SEED") ?? Date.now() % 100000);

for (const [i, p] of PIPELINES.entries()) {
  const rand = rng(SEED * 31 + i);
  const block = 1 + Math.floor(rand() * 5);
  const delayMs = Math.floor(rand() * 150);
  Deno.test(
    `${p.name}: kill -9 at block ${block} + ${delayMs} ms (seed ${SEED}), --resume: byte-identical`,
    async () => {
      const root = await Deno.makeTempDir({ prefix: `qllm-resume-${p.name}-` });
      try {
        const w = await workspace(root, "w");
        const whole = `${w.dir}/whole`, resumed = `${w.dir}/resumed`;
        const a = await runQuiet(p.run, [...args(w, p, whole), "--quiet"]);
        assert.equal(a.code, 0, a.error);

        // A kill that lands once the output is committed (a fast block, a loaded machine) misses:
        // then the run is repeated with the kill sooner.
        let stderr = "";
        for (const delay of [delayMs, Math.floor(delayMs / 4), 0]) {
          const killed = await runProcess(p.name, args(w, p, resumed), {
            trigger: new RegExp(`block ${block}/5: (${p.stage})`),
            delayMs: delay,
          });
          assert.ok(killed.triggered, killed.stderr);
          stderr = killed.stderr;
          const committed = await Deno.stat(resumed).catch(() => null);
          if (!committed && await Deno.stat(`${resumed}.ckpt`).catch(() => null)) break;
          assert.ok(delay > 0, `${p.name}: the kill at once still missed\n${stderr}`);
          await Deno.remove(resumed, { recursive: true }).catch(() => {});
          await Deno.remove(`${resumed}.ckpt`, { recursive: true }).catch(() => {});
        }
        // What the kill left checkpointed, all of which the resumed run must take.
        const progress = p.layerwise
          ? await Deno.readTextFile(`${resumed}.ckpt/progress.json`).then(JSON.parse, () => null)
          : null;
        const saved = progress === null
          ? 0
          : progress.stage === "complete"
          ? 5
          : progress.block + 1;
        const r = await runQuiet(p.run, [
          ...args(w, p, resumed),
          ...["--resume", `${resumed}.ckpt`, "--quiet"],
        ]);
        assert.equal(r.code, 0, r.error);

        const report = JSON.parse(await Deno.readTextFile(`${resumed}/report.json`));
        const redone = report.blocks.filter((b: { stage: string }) => b.stage !== "propagate");
        const skipped = report.resumed_after_block !== undefined
          ? report.resumed_after_block + 1
          : redone.filter((b: { resumed?: boolean }) => b.resumed).length;
        if (p.layerwise) {
          assert.equal(skipped, saved, `${p.name}: ${saved} blocks were checkpointed\n${stderr}`);
        }
        assert.ok(
          skipped >= p.kept(block),
          `${p.name}: ${skipped} blocks taken from the checkpoints, expected ≥ ${p.kept(block)}\n` +
            stderr,
        );
        const [x, y] = [await snapshot(whole), await snapshot(resumed)];
        x.delete("report.json");
        x.delete("report.html");
        y.delete("report.json");
        y.delete("report.html");
        assert.deepEqual([...y.keys()].sort(), [...x.keys()].sort());
        for (const [k, v] of x) assert.equal(y.get(k), v, `${p.name}: ${k} differs`);
        // Nothing of the interrupted run is left beside the output.
        const left = [];
        for await (const e of Deno.readDir(w.dir)) {
          if (/\.(partial|old)-/.test(e.name)) left.push(e.name);
        }
        assert.deepEqual(left, []);
      } finally {
        await Deno.remove(root, { recursive: true });
      }
    },
  );
}

Deno.test("gptq: kill -9 during the final evaluation, --resume evaluates and commits only", async () => {
  const root = await Deno.makeTempDir({ prefix: "qllm-resume-final-" });
  try {
    const w = await workspace(root, "w");
    const p = PIPELINES[1];
    const whole = `${w.dir}/whole`, resumed = `${w.dir}/resumed`;
    const a = await runQuiet(p.run, [...args(w, p, whole), "--quiet"]);
    assert.equal(a.code, 0, a.error);
    const killed = await runProcess(p.name, args(w, p, resumed), {
      trigger: /evaluating the quantized model/,
    });
    assert.equal(killed.signal, "SIGKILL", killed.stderr);
    const progress = JSON.parse(await Deno.readTextFile(`${resumed}.ckpt/progress.json`));
    assert.equal(progress.stage, "complete");
    const r = await runQuiet(p.run, [...args(w, p, resumed), "--resume", `${resumed}.ckpt`]);
    assert.equal(r.code, 0, r.error);
    const report = JSON.parse(await Deno.readTextFile(`${resumed}/report.json`));
    assert.equal(report.resumed_after_block, 4);
    assert.equal(
      report.blocks.length,
      JSON.parse(
        await Deno.readTextFile(`${whole}/report.json`),
      ).blocks.length,
    );
    const [x, y] = [await snapshot(whole), await snapshot(resumed)];
    x.delete("report.json");
    x.delete("report.html");
    y.delete("report.json");
    y.delete("report.html");
    assert.deepEqual([...y.entries()].sort(), [...x.entries()].sort());
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a checkpoint directory a kill left without its fingerprint", async () => {
  const dir = await Deno.makeTempDir({ prefix: "qllm-resume-fp-" });
  try {
    const fp = await fingerprint({
      model: `${fixtureModel("stories260k")}/stories260K.bin`,
      method: { method: "rtn", wbits: 4 },
      calibration: { ids: Int32Array.of(1, 2, 3), nsamples: 1, seqlen: 3, seed: 0 },
    });
    // Killed between mkdir and the fingerprint's rename: nothing to resume, the run starts over.
    await Deno.writeTextFile(`${dir}/fingerprint.json.tmp`, "{");
    assert.equal(await checkResume(dir, fp), false);
    // Checkpoints without the fingerprint that vouches for them are refused.
    await Deno.writeTextFile(`${dir}/block-0.safetensors`, "x");
    await assert.rejects(() => checkResume(dir, fp), /fingerprint\.json/);
    // With its fingerprint the directory resumes; removing it leaves nothing.
    await saveFingerprint(dir, fp);
    assert.equal(await checkResume(dir, fp), true);
    await removeCheckpointDir(dir);
    assert.equal(await Deno.stat(dir).catch(() => null), null);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
