/**
 * The deployable ONNX decoder (formats/onnx.ts, formats/matmul_nbits.ts, serve/decoder.ts):
 *
 * - MatMulNBits packing: ORT's kernel on our packed tensors gives x·Wᵀ of the grid's weights
 *   fround(scale·(code − zero)), computed here in float64, for 2/3/4/8-bit codes, groups,
 *   per-channel scales, act-order, shifted and float zero points; inline and external data.
 * - The first step with an empty past equals our block graphs' full-sequence forward; steps
 *   with the KV cache equal the full sequence's rows; left-padded rows equal the rows alone.
 * - Perplexity through the export equals our evaluation of the fake-quantized checkpoint within
 *   0.1 % on the same windows: FP, GPTQ W4 g32, GPTQ W3 (4-bit container), act-order, QLLM
 *   W4A4 (reassembly gathers and activation quantizers), CLAQ and a group of 24 (float
 *   fallbacks, named in the report), 8-bit embeddings (against the checkpoint with its
 *   embedding fake-quantized the same way).
 */
import assert from "node:assert/strict";
import * as ort from "onnxruntime-node";
import onnxProto from "onnx-proto";
import { injectOutliers } from "../fixtures/outliers.ts";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import { Graph } from "../kernels/graph.ts";
import { Rng } from "../kernels/tensor.ts";
import { Runtime } from "../kernels/session.ts";
import { onnxPerplexity, perplexity } from "../eval/perplexity.ts";
import { packGrid } from "../formats/matmul_nbits.ts";
import { packedLinearOp } from "../formats/onnx.ts";
import { OnnxFileWriter } from "../formats/onnx_file.ts";
import { openModel } from "../formats/open.ts";
import { type GridWeight, openQuantized } from "../formats/quantized.ts";
import { ModelWriter } from "../formats/writer.ts";
import { embed, logits, runBlock } from "../models/forward.ts";
import { claqMain } from "../pipelines/claq.ts";
import { gptqMain } from "../pipelines/gptq.ts";
import { qllmMain } from "../pipelines/qllm.ts";
import { rtnMain } from "../pipelines/rtn.ts";
import { exportModel, tableGrid8 } from "../run/export.ts";
import { OnnxDecoder } from "../serve/decoder.ts";
import { leftPad } from "../serve/generate.ts";
import { readDataset } from "../text/dataset.ts";

const TINY = fixtureModel("tinystories-656k");
const WINDOWS = 4;

/** A grid of random codes with the given zero points per row and group. */
function randomGrid(
  rows: number,
  cols: number,
  maxq: number,
  groupSize: number,
  zero: (r: number, g: number) => number,
  gIdx?: Int32Array,
): GridWeight {
  const rng = new Rng(rows * 7 + cols + maxq);
  const groups = groupSize ? Math.ceil(cols / groupSize) : 1;
  const codes = Uint8Array.from({ length: rows * cols }, () => rng.uint32() % (maxq + 1));
  const scales = Float32Array.from({ length: rows * groups }, () => 0.01 + 0.05 * rng.uniform());
  const zeros = Float32Array.from(
    { length: rows * groups },
    (_, i) => zero(Math.floor(i / groups), i % groups),
  );
  const idx = gIdx ??
    Int32Array.from({ length: cols }, (_, c) => groupSize ? c / groupSize | 0 : 0);
  const contiguous = idx.every((g, c) => g === (groupSize ? c / groupSize | 0 : 0));
  return { rows, cols, maxq, groupSize, codes, scales, zeros, gIdx: idx, contiguous };
}

/** y = x·Wᵀ in float64 with W[r, c] = fround(scale · (code − zero)). */
function reference(grid: GridWeight, x: Float32Array, M: number): Float64Array {
  const { rows: N, cols: K } = grid, groups = grid.scales.length / N;
  const y = new Float64Array(M * N);
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < K; c++) {
      const k = n * groups + grid.gIdx[c];
      const w = Math.fround(grid.scales[k] * (grid.codes[n * K + c] - grid.zeros[k]));
      for (let m = 0; m < M; m++) y[m * N + n] += x[m * K + c] * w;
    }
  }
  return y;
}

/** Runs one packed layer through ORT from a model file; returns y [M, N]. */
async function runPacked(
  grid: GridWeight,
  x: Float32Array,
  M: number,
  dir: string,
  inlineLimit?: number,
): Promise<{ y: Float32Array; notes: string[]; bits: number; external: boolean }> {
  const r = packGrid(grid);
  if (!("packed" in r)) throw new Error(r.reason);
  const g = new Graph();
  const path = `${dir}/layer.onnx`;
  const w = await OnnxFileWriter.create(path);
  const a = g.input("a", ["m", grid.cols]);
  g.output((await packedLinearOp(g, w, r.packed, "layer"))(a), "y");
  const written = await w.finish(g, { inlineLimit });
  const s = await ort.InferenceSession.create(path);
  try {
    const out = await s.run({ a: new ort.Tensor("float32", x, [M, grid.cols]) });
    return {
      y: out.y.data as Float32Array,
      notes: r.packed.notes,
      bits: r.packed.bits,
      external: written.dataPath !== undefined,
    };
  } finally {
    await s.release();
  }
}

Deno.test("MatMulNBits on our packing computes x·Wᵀ of the grid's weights", async (t) => {
  const dir = await Deno.makeTempDir();
  const rng = new Rng(5);
  // Act-order groups: runs of 32 in a shuffled order of 128 columns.
  const shuffled = Int32Array.from({ length: 128 }, (_, i) => i);
  for (let i = 127; i > 0; i--) {
    const j = rng.uint32() % (i + 1);
    [shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
  }
  const actOrder = new Int32Array(128);
  shuffled.forEach((c, j) => actOrder[c] = j >> 5);
  const inRange = (maxq: number) => (r: number, g: number) => (r * 3 + g * 5) % (maxq + 1);
  const cases: [string, GridWeight, number, RegExp | null][] = [
    ["4-bit g32", randomGrid(24, 128, 15, 32, inRange(15)), 4, null],
    ["3-bit g32 (4-bit container)", randomGrid(24, 128, 7, 32, inRange(7)), 4, /3-bit codes/],
    ["2-bit g16, 172 columns", randomGrid(16, 172, 3, 16, inRange(3)), 2, null],
    ["8-bit per channel, 172 columns", randomGrid(16, 172, 255, 0, inRange(255)), 8, null],
    ["ABQ-LLM's 5 levels", randomGrid(16, 64, 4, 32, inRange(4)), 4, /3-bit codes/],
    ["4-bit act-order g32", randomGrid(24, 128, 15, 32, inRange(15), actOrder), 4, null],
    [
      "3-bit, zero points out of range (shifted)",
      randomGrid(24, 128, 7, 32, (r, g) => (r + g) % 16 - 4),
      4,
      /shifted/,
    ],
    [
      "2-bit, zero points out of range (4-bit container)",
      randomGrid(24, 64, 3, 32, (r, g) => (r + g) % 8 - 2),
      4,
      /moved to the 4-bit container/,
    ],
    [
      "4-bit, zero points out of range (float)",
      randomGrid(24, 64, 15, 32, (r, g) => (r + g) % 2 ? -1 : 16),
      4,
      /float zero points/,
    ],
  ];
  try {
    for (const [name, grid, bits, note] of cases) {
      await t.step(name, async () => {
        const M = 3;
        const x = Float32Array.from({ length: M * grid.cols }, () => rng.uniform() - 0.5);
        const ref = reference(grid, x, M);
        for (const inlineLimit of [undefined, 0]) {
          const r = await runPacked(grid, x, M, dir, inlineLimit);
          assert.equal(r.bits, bits);
          assert.equal(r.external, inlineLimit === 0);
          if (note) assert.ok(r.notes.some((n) => note.test(n)), r.notes.join("; "));
          else assert.deepEqual(r.notes, []);
          let err = 0, scale = 0;
          for (let i = 0; i < ref.length; i++) {
            err = Math.max(err, Math.abs(r.y[i] - ref[i]));
            scale = Math.max(scale, Math.abs(ref[i]));
          }
          assert.ok(err <= 1e-5 * scale, `${name}: max error ${err} of ${scale}`);
        }
      });
    }
    await t.step("a group of 24 is named as the reason to keep the layer float", () => {
      const r = packGrid(randomGrid(8, 96, 15, 24, inRange(15)));
      assert.ok("reason" in r && /group size 24 is not a power of two/.test(r.reason));
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Our block graphs' logits [T, V] for one sequence (the calibration code path). */
async function blockGraphLogits(rt: Runtime, path: string, ids: number[]): Promise<Float32Array> {
  const m = await openModel(path);
  try {
    const c = m.config;
    let x = embed(await m.embedding(), Int32Array.from(ids), ids.length);
    for (let i = 0; i < c.layers; i++) x = await runBlock(rt, c, await m.block(i), x);
    return (await logits(rt, c, await m.finalNorm(), await m.head(), x)).data;
  } finally {
    m.close();
  }
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

Deno.test("the exported decoder's steps equal the block graphs' forward", async () => {
  const tmp = await Deno.makeTempDir();
  const rt = new Runtime();
  try {
    await exportModel({ model: TINY, out: `${tmp}/fp`, quiet: true });
    const dec = await OnnxDecoder.open(`${tmp}/fp`);
    try {
      const V = dec.config.vocab;
      const ids = [1, 80, 147, 201, 282, 57, 313, 598, 303, 1049, 1468, 267];
      const T = ids.length;
      const full = await blockGraphLogits(rt, TINY, ids);
      const tol = 1e-4;

      // One step with an empty past = the whole sequence through the block graphs.
      const first = await dec.step({
        ids,
        batch: 1,
        mask: ids.map(() => 1),
        positions: ids.map((_, i) => i),
      }, dec.emptyCache(1));
      assert.ok(maxDiff(first.logits, full) < tol, `first step: ${maxDiff(first.logits, full)}`);

      // A prefill of 5 tokens, then one token per step with the cache.
      let { cache, logits: lg } = await dec.step({
        ids: ids.slice(0, 5),
        batch: 1,
        mask: [1, 1, 1, 1, 1],
        positions: [0, 1, 2, 3, 4],
      }, dec.emptyCache(1));
      assert.ok(maxDiff(lg, full.subarray(0, 5 * V)) < tol);
      for (let t = 5; t < T; t++) {
        ({ cache, logits: lg } = await dec.step({
          ids: [ids[t]],
          batch: 1,
          mask: new Array(t + 1).fill(1),
          positions: [t],
        }, cache));
        assert.equal(cache.length, t + 1);
        const d = maxDiff(lg, full.subarray(t * V, (t + 1) * V));
        assert.ok(d < tol, `step ${t}: ${d}`);
      }

      // Left-padded rows of different lengths = each row alone.
      const prompts = [ids.slice(0, 3), ids, ids.slice(2, 8)];
      const batch = leftPad(prompts);
      const L = batch.length;
      const together = await dec.step(
        { ids: batch.ids, batch: 3, mask: batch.mask, positions: batch.positions },
        dec.emptyCache(3),
      );
      for (let r = 0; r < prompts.length; r++) {
        const p = prompts[r];
        const alone = await dec.step({
          ids: p,
          batch: 1,
          mask: p.map(() => 1),
          positions: p.map((_, i) => i),
        }, dec.emptyCache(1));
        const rows = together.logits.subarray((r * L + L - p.length) * V, (r + 1) * L * V);
        assert.ok(maxDiff(rows, alone.logits) < 1e-5, `row ${r}: ${maxDiff(rows, alone.logits)}`);
      }
    } finally {
      await dec.release();
    }
  } finally {
    await rt.release();
    await Deno.remove(tmp, { recursive: true });
  }
});

function opCounts(path: string): Map<string, number> {
  // deno-lint-ignore no-explicit-any
  const m = (onnxProto as any).onnx.ModelProto.decode(Deno.readFileSync(path));
  const counts = new Map<string, number>();
  for (const n of m.graph.node) counts.set(n.opType, (counts.get(n.opType) ?? 0) + 1);
  return counts;
}

Deno.test("exported models give our perplexity within 0.1 %", async (t) => {
  const tmp = await Deno.makeTempDir();
  const rt = new Runtime();
  const q = (name: string) => `${tmp}/${name}`;
  const calib = ["--nsamples", "8", "--eval", "", "--quiet"];
  const tokenized = new Map<string, Int32Array>();
  /** Exports `model` and compares the two perplexities; returns the export's report. */
  const check = async (model: string, o: { embeddings?: 8; reference?: string } = {}) => {
    const out = `${model}-onnx${o.embeddings ?? ""}`;
    const report = await exportModel({ model, out, embeddings: o.embeddings, quiet: true });
    const dec = await OnnxDecoder.open(out);
    const src = await openModel(o.reference ?? model);
    try {
      const key = dec.config.vocab === 2048 ? "tiny" : "260k";
      if (!tokenized.has(key)) {
        tokenized.set(key, await readDataset(fixtureText("tinystories_val.txt"), dec.tokenizer));
      }
      const ids = tokenized.get(key)!;
      const ours = (await perplexity(rt, src, ids, { maxWindows: WINDOWS })).ppl;
      const theirs = (await onnxPerplexity(dec, ids, { maxWindows: WINDOWS })).ppl;
      assert.ok(Math.abs(theirs - ours) / ours < 1e-3, `${model}: ${theirs} vs ${ours}`);
    } finally {
      src.close();
      await dec.release();
    }
    return { report, ops: opCounts(`${out}/${report.file}`) };
  };
  try {
    await t.step("full precision", async () => {
      const { report, ops } = await check(TINY);
      assert.equal(report.file, "onnx/model.onnx");
      assert.deepEqual(report.fallbacks, []);
      assert.equal(ops.get("MatMulNBits"), undefined);
    });
    await t.step("GPTQ W4 g32", async () => {
      await gptqMain([...calib, "--wbits", "4", "--group-size", "32", "--out", q("g32")]);
      const { report, ops } = await check(q("g32"));
      assert.equal(report.file, "onnx/model_q4.onnx");
      assert.equal(ops.get("MatMulNBits"), 14);
      assert.deepEqual(report.layers, { "4-bit": 14 });
      // 4-bit codes, a float32 scale and a 4-bit zero point per 32 weights.
      assert.equal(report.bits_per_weight, 4 + 32 / 32 + 4 / 32);
      // The packed layers take 5.125 / 32 of the float file's linear weights.
      assert.ok(report.bytes < 1.4e6, `${report.bytes} bytes`);
    });
    await t.step("GPTQ W4 g32, accuracy_level 4: int8 activations, a bounded change", async () => {
      const out = q("g32-acc4");
      const report = await exportModel({ model: q("g32"), out, accuracyLevel: 4, quiet: true });
      assert.equal(report.accuracy_level, 4);
      // deno-lint-ignore no-explicit-any
      const m = (onnxProto as any).onnx.ModelProto.decode(
        Deno.readFileSync(`${out}/${report.file}`),
      );
      const levels = m.graph.node.filter((n: { opType: string }) => n.opType === "MatMulNBits")
        .map((n: { attribute: { name: string; i: unknown }[] }) =>
          Number(n.attribute.find((a) => a.name === "accuracy_level")!.i)
        );
      assert.deepEqual(levels, new Array(14).fill(4));
      const ids = tokenized.get("tiny")!;
      const exact = await OnnxDecoder.open(q("g32-onnx")), fast = await OnnxDecoder.open(out);
      try {
        const p1 = (await onnxPerplexity(exact, ids, { maxWindows: WINDOWS })).ppl;
        const p4 = (await onnxPerplexity(fast, ids, { maxWindows: WINDOWS })).ppl;
        // The int8 activations change the result, by little (QLLM-style W4A8 costs ~0.1–1 %).
        assert.notEqual(p4, p1);
        assert.ok(Math.abs(p4 - p1) / p1 < 0.02, `${p4} vs ${p1}`);
      } finally {
        await exact.release();
        await fast.release();
      }
    });
    await t.step("GPTQ W3 g32 in the 4-bit container", async () => {
      await gptqMain([...calib, "--wbits", "3", "--group-size", "32", "--out", q("w3")]);
      const { report } = await check(q("w3"));
      assert.equal(report.file, "onnx/model_q4.onnx");
      assert.deepEqual(report.layers, { "4-bit": 14 });
      assert.ok(report.notes.every((n) => /3-bit codes in the 4-bit container/.test(n.note)));
    });
    await t.step("GPTQ W4 g32 act-order: a Gather of the input columns", async () => {
      await gptqMain([
        ...calib,
        ...["--wbits", "4", "--group-size", "32", "--act-order", "--out", q("ao")],
      ]);
      const { report, ops } = await check(q("ao"));
      const quant = await openQuantized(q("ao")), model = await openModel(q("ao"));
      let reordered = 0, columns = 0;
      try {
        for (let i = 0; i < 2; i++) {
          for (const g of Object.values(await quant.grids(i, await model.block(i)))) {
            if (!g.contiguous) [reordered, columns] = [reordered + 1, columns + g.cols];
          }
        }
      } finally {
        quant.close();
        model.close();
      }
      assert.ok(reordered > 0);
      // The embedding lookup, two in the mask, and one per layer whose groups are reordered.
      assert.equal(ops.get("Gather"), 3 + reordered);
      assert.equal(report.parts.indices, 8 * columns);
    });
    await t.step("QLLM W4A4: reassembly gathers and activation quantizers", async () => {
      await injectOutliers(TINY, q("outliers"), { scale: 50, fraction: 0.02 });
      await qllmMain([
        ...calib,
        ...["--model", q("outliers"), "--wbits", "4", "--abits", "4", "--epochs", "1"],
        ...["--out", q("qllm")],
      ]);
      const { report, ops } = await check(q("qllm"));
      assert.equal(report.activation_bits, 4);
      assert.equal(ops.get("MatMulNBits"), 14);
      // The embedding lookup, two in the mask, two at each of the 3 reassembly points per block.
      assert.equal(ops.get("Gather"), 3 + 2 * 3 * 2);
      // Per-token quantizers at the 4 linear inputs of each block: 2 Round each.
      assert.equal(ops.get("Round"), 2 * 4 * 2);
    });
    await t.step("CLAQ and groups of 24 stay float, named in the report", async () => {
      const tiny260 = ["--model", fixtureModel("stories260k")];
      await claqMain([...calib, ...tiny260, "--target-bits", "2.1", "--out", q("claq")]);
      const claq = await check(q("claq"));
      assert.equal(claq.report.fallbacks.length, 7 * 5);
      assert.ok(claq.report.fallbacks.every((f) => /codebooks/.test(f.reason)));
      await rtnMain([
        ...calib,
        ...tiny260,
        ...["--wbits", "4", "--group-size", "24", "--allow-partial-group", "--out", q("g24")],
      ]);
      const g24 = await check(q("g24"));
      assert.equal(g24.report.fallbacks.length, 7 * 5);
      assert.ok(g24.report.fallbacks.every((f) => /group size 24/.test(f.reason)));
      assert.equal(g24.ops.get("MatMulNBits"), undefined);
    });
    await t.step("8-bit embeddings", async () => {
      // The reference: the same model with its (tied) table fake-quantized to that grid.
      const src = await openModel(TINY);
      const w = await ModelWriter.create(q("emb8-ref"), src.config);
      try {
        const grid = tableGrid8(await src.embedding(), "model.embed_tokens.weight");
        const fq = new Float32Array(grid.codes.length);
        const groups = grid.scales.length / grid.rows;
        for (let i = 0; i < fq.length; i++) {
          const r = Math.floor(i / grid.cols), k = r * groups + grid.gIdx[i % grid.cols];
          fq[i] = Math.fround(grid.scales[k] * (grid.codes[i] - grid.zeros[k]));
        }
        await w.add("model.embed_tokens.weight", { data: fq, shape: [grid.rows, grid.cols] });
        for (let i = 0; i < src.config.layers; i++) await w.addBlock(i, await src.block(i));
        await w.finish(await src.finalNorm(), null, TINY);
      } finally {
        src.close();
      }
      const { report, ops } = await check(TINY, { embeddings: 8, reference: q("emb8-ref") });
      assert.equal(report.embeddings_bits, 8);
      // Codes, float scales and 8-bit zero points per 32: (8 + 32/32 + 8/32) / 32 of float.
      assert.equal(report.parts.embeddings, 2048 * 128 * (1 + 4 / 32 + 1 / 32));
      assert.equal(ops.get("MatMulNBits"), 1);
    });
  } finally {
    await rt.release();
    await Deno.remove(tmp, { recursive: true });
  }
});
