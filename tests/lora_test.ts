/**
 * QLLM's low-rank compensation (`stages/lora.ts`, `pipelines/qllm.ts`) on tinystories-656k:
 * the exported model is exactly the trained function, LoRA beats RTN at W4A4 with falling loss
 * curves, the untrained student is plain RTN, and a bad `--num-layer` is refused by name.
 */
import assert from "node:assert/strict";
import { rtnWeight } from "../algorithms/quantizer.ts";
import { Graph, type Value } from "../kernels/graph.ts";
import { Runtime } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import { addBlock } from "../models/block_graph.ts";
import { LINEAR_NAMES, type ModelConfig } from "../models/config.ts";
import { causalMask, embed, ropeTables, windowNll } from "../models/forward.ts";
import type { BlockWeights } from "../models/source.ts";
import { openModel } from "../formats/open.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import { readDataset } from "../text/dataset.ts";
import { loadTokenizer } from "../text/tokenizer.ts";
import { qllmMain } from "../pipelines/qllm.ts";
import type { QuantizeReport } from "../run/report.ts";
import type { BlockJob } from "../stages/job.ts";
import { LORA_NORMS, loraMethod, type LoraOptions, normParamName } from "../methods/qllm.ts";
import type { ReconstructionMethod } from "../stages/reconstruct.ts";

const MODEL = fixtureModel("tinystories-656k");
const VAL = "tinystories_val.txt";
const EVAL_WINDOWS = 32;
const SEQLEN = 256;

/** The flags both runs share: W4A4 per channel, 32 calibration windows, no reassembly. */
function flags(out: string): string[] {
  return [
    "--model",
    MODEL,
    "--wbits",
    "4",
    "--abits",
    "4",
    "--nsamples",
    "32",
    "--seqlen",
    String(SEQLEN),
    "--eval",
    "val",
    "--eval-windows",
    String(EVAL_WINDOWS),
    "--no-reassembly",
    "--out",
    out,
    "--quiet",
  ];
}

/** Student tensors from the learned parameters, then the block: the function training saw. */
function trainedBlockGraph(
  c: ModelConfig,
  m: ReconstructionMethod,
  weights: BlockWeights,
  params: Record<string, Tensor>,
  batch: number,
  abits: number,
  block: number,
): Uint8Array {
  const g = new Graph();
  const w: Record<string, Value> = {};
  for (const [n, t] of Object.entries(weights)) w[n] = g.input(`w:${n}`, t.shape);
  const p: Record<string, Value> = {};
  for (const [n, t] of Object.entries(params)) p[n] = g.input(`p:${n}`, t.shape);
  const x = g.input("x", [batch, SEQLEN, c.hidden]);
  const cos = g.input("cos", [SEQLEN, 1, c.headDim / 2]);
  const sin = g.input("sin", [SEQLEN, 1, c.headDim / 2]);
  const mask = g.input("mask", [SEQLEN, SEQLEN]);
  const sw = m.student(g, c, w, p, block);
  const { y } = addBlock(g, c, { batch, seqlen: SEQLEN, abits }, { x, cos, sin, mask, w: sw });
  g.output(y, "y");
  return g.toBytes();
}

/** Reads block `i`'s learned tensors (`model.layers.{i}.…`) from a run's learned.safetensors. */
async function learnedParams(path: string, block: number): Promise<Record<string, Tensor>> {
  const r = await SafetensorsReader.open(path);
  try {
    const prefix = `model.layers.${block}.`;
    const out: Record<string, Tensor> = {};
    for (const n of r.names().filter((n) => n.startsWith(prefix))) {
      out[n.slice(prefix.length)] = await r.readF32(n);
    }
    return out;
  } finally {
    r.close();
  }
}

/**
 * Perplexity on the first EVAL_WINDOWS validation windows of the chain of trained functions:
 * the ORIGINAL block weights and the learned parameters through the student graph, with
 * per-token activation quantization — no fold, no export.
 */
async function trainedPerplexity(
  rt: Runtime,
  o: LoraOptions,
  learnedPath: string,
  abits: number,
): Promise<number> {
  const model = await openModel(MODEL);
  try {
    const c = model.config;
    const ids = await readDataset(fixtureText(VAL), await loadTokenizer(MODEL));
    const windowIds = ids.subarray(0, EVAL_WINDOWS * SEQLEN);
    let x = embed(await model.embedding(), windowIds, SEQLEN);
    const { cos, sin } = ropeTables(c, SEQLEN);
    const mask = causalMask(SEQLEN);
    const batch = 8, d = c.hidden, per = SEQLEN * d;
    const m = loraMethod(o);
    for (let i = 0; i < c.layers; i++) {
      const weights = await model.block(i);
      const params = await learnedParams(learnedPath, i);
      assert.ok(params["self_attn.q_proj.lora_A"], `block ${i}: no LoRA factors in ${learnedPath}`);
      const graph = trainedBlockGraph(c, m, weights, params, batch, abits, i);
      const y = new Float32Array(x.data.length);
      for (let w0 = 0; w0 < EVAL_WINDOWS; w0 += batch) {
        const feeds: Record<string, Tensor> = {
          x: { data: x.data.subarray(w0 * per, (w0 + batch) * per), shape: [batch, SEQLEN, d] },
          cos,
          sin,
          mask,
        };
        for (const [n, t] of Object.entries(weights)) feeds[`w:${n}`] = t;
        for (const [n, t] of Object.entries(params)) feeds[`p:${n}`] = t;
        y.set((await rt.run(graph, feeds)).y.data, w0 * per);
      }
      x = { data: y, shape: x.shape };
    }
    const nll = await windowNll(rt, c, await model.finalNorm(), await model.head(), x, windowIds);
    let s = 0;
    for (const v of nll) s += v;
    return Math.exp(s / nll.length);
  } finally {
    model.close();
  }
}

Deno.test("QLLM LoRA at W4A4: deployed = trained, beats RTN, curves fall", async (t) => {
  const tmp = await Deno.makeTempDir();
  const rt = new Runtime("cpu");
  try {
    const lora = (await qllmMain([...flags(`${tmp}/lora`), "--epochs", "3"]))!;
    const plain = (await qllmMain([...flags(`${tmp}/rtn`), "--no-lora"]))!;

    await t.step("the exported model's perplexity is the trained function's", async () => {
      const got = lora.eval[VAL].quant;
      const want = await trainedPerplexity(
        rt,
        { wbits: 4, groupSize: 0 },
        `${tmp}/lora/learned.safetensors`,
        4,
      );
      const rel = Math.abs(got - want) / want;
      assert.ok(rel < 1e-3, `exported ${got} vs trained ${want} (relative ${rel})`);
      console.log(`exported ${got.toFixed(4)}, trained function ${want.toFixed(4)} (rel ${rel})`);
      for (const b of loraBlocks(lora)) {
        assert.ok((b.fold_rel_error as number) < 1e-5, `fold_rel_error ${b.fold_rel_error}`);
      }
    });

    await t.step("LoRA compensation beats RTN; the loss curves fall", () => {
      const l = lora.eval[VAL], r = plain.eval[VAL];
      assert.equal(l.fp, r.fp);
      assert.ok(l.quant < r.quant, `LoRA ${l.quant} vs RTN ${r.quant} (fp ${l.fp})`);
      const blocks = loraBlocks(lora);
      assert.equal(blocks.length, 2);
      for (const b of blocks) {
        const curve = b.loss_curve as number[];
        assert.equal(curve.length, 3);
        assert.ok(curve[2] < curve[0], `block ${b.block}: loss ${curve.join(" → ")}`);
      }
      assert.ok(lora.bits_per_weight > 4 && lora.bits_per_weight < 4.2);
      console.log(
        `W4A4 per channel, ppl on ${EVAL_WINDOWS} windows: fp ${l.fp.toFixed(3)}, ` +
          `RTN ${r.quant.toFixed(3)}, LoRA ${l.quant.toFixed(3)}; curves ` +
          blocks.map((b) => (b.loss_curve as number[]).map((v) => v.toFixed(3)).join("→"))
            .join(", "),
      );
    });
  } finally {
    await rt.release();
    await Deno.remove(tmp, { recursive: true }); // the checkpoints (<out>.ckpt) are inside
  }
});

function loraBlocks(r: QuantizeReport) {
  return r.blocks.filter((b) => b.stage === "lora");
}

Deno.test("at initialisation (B = 0) the student is plain RTN of the base weights", async () => {
  // OmniQuant-style min-max does not force 0 into the range and the GPTQ-style RTN does; every
  // row (and group of 32) of these weights has both signs, so the two coincide exactly here.
  const model = await openModel(MODEL);
  const rt = new Runtime("cpu");
  try {
    const c = model.config;
    const weights = await model.block(1);
    for (const groupSize of [0, 32]) {
      const m = loraMethod({ wbits: 4, groupSize });
      const job = { index: 1, weights, ctx: { config: c } } as unknown as BlockJob;
      const params = m.init(job, {} as never);
      const byName = Object.fromEntries(params.map((p) => [p.name, p]));
      for (const l of LINEAR_NAMES) {
        const a = byName[`${l}.lora_A`], b = byName[`${l}.lora_B`];
        const bound = 1 / Math.sqrt(weights[`${l}.weight`].shape[1]);
        assert.ok(a.data.every((v) => Math.abs(v) <= bound) && a.data.some((v) => v !== 0));
        assert.ok(b.data.every((v) => v === 0));
      }
      // Reproducible: the same block draws the same A.
      const again = m.init(job, {} as never);
      assert.deepEqual(again[0].data, params[0].data);

      const g = new Graph();
      const w: Record<string, Value> = {};
      for (const [n, t] of Object.entries(weights)) w[n] = g.input(`w:${n}`, t.shape);
      const p: Record<string, Value> = {};
      for (const q of params) p[q.name] = g.input(`p:${q.name}`, q.shape);
      const sw = m.student(g, c, w, p, 1);
      for (const n of Object.keys(weights)) g.output(sw[n], `out:${n}`);
      const feeds: Record<string, Tensor> = {};
      for (const [n, t] of Object.entries(weights)) feeds[`w:${n}`] = t;
      for (const q of params) feeds[`p:${q.name}`] = { data: q.data, shape: q.shape };
      const out = await rt.run(g.toBytes(), feeds);
      for (const l of LINEAR_NAMES) {
        const W = weights[`${l}.weight`];
        const want = rtnWeight(W, { bits: 4, groupSize, sym: false }).weight.data;
        const got = out[`out:${l}.weight`].data;
        let worst = 0;
        for (let i = 0; i < want.length; i++) {
          worst = Math.max(worst, Math.abs(got[i] - want[i]));
        }
        assert.equal(worst, 0, `g${groupSize} ${l}: max |student − RTN| = ${worst}`);
      }
      for (const norm of LORA_NORMS) {
        assert.deepEqual(out[`out:${norm}.weight`].data, weights[`${norm}.weight`].data);
        assert.ok(byName[normParamName(norm)]);
      }
    }
  } finally {
    model.close();
    await rt.release();
  }
});

Deno.test("a bad --num-layer is refused, naming the flag", async () => {
  await assert.rejects(
    () => qllmMain(["--num-layer", "0", "--no-reassembly", "--quiet"]),
    (e: Error) => /--num-layer 0/.test(e.message),
  );
  await assert.rejects(
    () => qllmMain(["--num-layer", "2", "--resume", "/nonexistent", "--quiet"]),
    (e: Error) => /--resume \/nonexistent: no such directory/.test(e.message),
  );
});
