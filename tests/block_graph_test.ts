/**
 * The LLaMA block graph (models/block_graph.ts, run through models/forward.ts `runBlock`) against
 * an independent float64 reference written from PROTOCOL.md §1 and §5: random blocks of several
 * shapes (MHA/GQA, q/k/v bias, head_dim 8/16, T = 1/7/33, 1 or 3 windows), per-token activation
 * fake quantization, every block of both fixture models, and the exactness of the llama2.c
 * interleaved → rotate-half row permutation.
 */

import assert from "node:assert/strict";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import { DType, Graph } from "../kernels/graph.ts";
import { Runtime } from "../kernels/session.ts";
import { Rng, type Tensor } from "../kernels/tensor.ts";
import { CAPTURE_POINTS, type CapturePoint, fakeQuantPerToken } from "../models/block_graph.ts";
import { blockTensorShapes, type ModelConfig } from "../models/config.ts";
import { runBlock } from "../models/forward.ts";
import { interleavedToHalf } from "../formats/llama2c.ts";
import type { BlockWeights } from "../models/source.ts";
import { openModel } from "../formats/open.ts";
import { loadTokenizer } from "../text/tokenizer.ts";
import {
  fakeQuantRows,
  referenceBlock,
  type RefResult,
  type RopeLayout,
  type SnapStats,
} from "./llama_reference.ts";

// ---------------------------------------------------------------------------------------------
// helpers

/** ‖a − b‖ / ‖b‖. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, "lengths differ");
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** y − x: the block's update, which the residual would otherwise dominate. */
function update(y: ArrayLike<number>, x: Tensor): Float64Array {
  return Float64Array.from(x.data, (v, i) => y[i] - v);
}

interface GraphResult {
  y: Tensor;
  captures: Record<CapturePoint, Float32Array>;
}

/** The block graph through `runBlock`, with its captured linear inputs gathered over batches. */
async function graphBlock(
  rt: Runtime,
  c: ModelConfig,
  w: BlockWeights,
  x: Tensor,
  o: { abits?: number; batch?: number } = {},
): Promise<GraphResult> {
  const [W, T, d] = x.shape;
  const cols: Record<CapturePoint, number> = {
    x_qkv: d,
    x_o: c.heads * c.headDim,
    x_gateup: d,
    x_down: c.intermediate,
  };
  const captures = {} as Record<CapturePoint, Float32Array>;
  for (const p of CAPTURE_POINTS) captures[p] = new Float32Array(W * T * cols[p]);
  const y = await runBlock(rt, c, w, x, {
    ...o,
    onCapture: (cap, firstWindow) => {
      for (const p of CAPTURE_POINTS) {
        assert.equal(cap[p].shape[1], cols[p], `${p} width`);
        captures[p].set(cap[p].data, firstWindow * T * cols[p]);
      }
    },
  });
  assert.deepEqual(y.shape, [W, T, d]);
  return { y, captures };
}

interface Shape {
  hidden: number;
  intermediate: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  qkvBias: boolean;
}

function makeConfig(s: Shape): ModelConfig {
  return {
    modelType: "llama",
    ...s,
    layers: 1,
    vocab: 32,
    maxSeq: 64,
    rmsEps: 1e-5,
    ropeTheta: 10000,
    tiedEmbeddings: false,
    bos: 1,
    eos: 2,
  };
}

/** Random block weights of a config: norms near 1, linears with std 1/√in, biases std 0.2. */
function randomBlock(c: ModelConfig, rng: Rng): BlockWeights {
  const w: BlockWeights = {};
  for (const [name, shape] of Object.entries(blockTensorShapes(c))) {
    if (name.endsWith("layernorm.weight")) {
      w[name] = rng.normalTensor(shape, 0.2);
      w[name].data.forEach((v, i, a) => a[i] = 1 + v);
    } else if (name.endsWith(".bias")) {
      w[name] = rng.normalTensor(shape, 0.2);
    } else {
      w[name] = rng.normalTensor(shape, 1 / Math.sqrt(shape[1]));
    }
  }
  return w;
}

const SHAPES: Record<string, Shape> = {
  "MHA hd8": { hidden: 32, intermediate: 48, heads: 4, kvHeads: 4, headDim: 8, qkvBias: false },
  "MHA hd16 bias": {
    hidden: 64,
    intermediate: 96,
    heads: 4,
    kvHeads: 4,
    headDim: 16,
    qkvBias: true,
  },
  "GQA 8/2 hd8 bias": {
    hidden: 64,
    intermediate: 80,
    heads: 8,
    kvHeads: 2,
    headDim: 8,
    qkvBias: true,
  },
  "GQA 8/4 hd16": {
    hidden: 128,
    intermediate: 160,
    heads: 8,
    kvHeads: 4,
    headDim: 16,
    qkvBias: false,
  },
  // head_dim · heads ≠ hidden (q_proj 64 × 48, o_proj 48 × 64), as a config's head_dim allows
  "GQA 4/2 hd16 wide-q": {
    hidden: 48,
    intermediate: 64,
    heads: 4,
    kvHeads: 2,
    headDim: 16,
    qkvBias: true,
  },
};

const EXACT_TOL = 1e-5;

function assertClose(name: string, ref: RefResult, g: GraphResult, x: Tensor, tol = EXACT_TOL) {
  const eY = relErr(g.y.data, ref.y);
  const eU = relErr(update(g.y.data, x), update(ref.y, x));
  assert.ok(eY < tol, `${name}: output rel err ${eY}`);
  assert.ok(eU < tol, `${name}: block update (y − x) rel err ${eU}`);
  for (const p of CAPTURE_POINTS) {
    const e = relErr(g.captures[p], ref.captures[p].values);
    assert.ok(e < tol, `${name}: captured ${p} rel err ${e}`);
  }
  return { eY, eU };
}

/**
 * Compares a fake-quantized block: first free-running (report max |Δ| and the fraction of
 * quantized values a step apart), then with the reference following the graph at exact ties,
 * which must leave no other mismatch and agree to float precision.
 */
function checkQuantized(
  name: string,
  c: ModelConfig,
  w: BlockWeights,
  x: Tensor,
  g: GraphResult,
  abits: number,
  rope: RopeLayout,
  /** Bound on the free-running fraction (one tie flip can move later values a step too). */
  maxFlipFraction: number,
): { free: string; forced: string } {
  const free = referenceBlock(c, w, x, { rope, abits });
  let differing = 0, total = 0;
  for (const p of CAPTURE_POINTS) {
    const { values, scale, cols } = free.captures[p];
    for (let i = 0; i < values.length; i++) {
      total++;
      if (Math.abs(g.captures[p][i] - values[i]) > 0.5 * scale[Math.floor(i / cols)]) differing++;
    }
  }
  const freeMax = maxAbsDiff(g.y.data, free.y);
  const freeRel = relErr(update(g.y.data, x), update(free.y, x));
  assert.ok(
    differing / total <= maxFlipFraction,
    `${name} a${abits}: ${differing}/${total} quantized values differ by a step`,
  );
  // Without any flip the free-running comparison must already be exact.
  if (differing === 0) assert.ok(freeRel < EXACT_TOL, `${name} a${abits}: rel err ${freeRel}`);
  else assert.ok(freeRel < 0.05, `${name} a${abits}: free-running rel err ${freeRel}`);

  const stats: SnapStats = { tieFlips: 0, mismatches: 0, total: 0 };
  const forced = referenceBlock(c, w, x, {
    rope,
    abits,
    snapTo: g.captures,
    tieTol: 2e-3,
    stats,
  });
  assert.equal(stats.mismatches, 0, `${name} a${abits}: quantized values off a rounding tie`);
  assert.ok(stats.tieFlips / stats.total <= 1e-3, `${name}: ${stats.tieFlips} tie flips`);
  const { eY, eU } = assertClose(`${name} a${abits} (ties followed)`, forced, g, x);
  // Every graph value lies on its row's grid: x̂ / scale is an integer.
  for (const p of CAPTURE_POINTS) {
    const { scale, cols } = forced.captures[p];
    for (let i = 0; i < g.captures[p].length; i++) {
      const k = g.captures[p][i] / scale[Math.floor(i / cols)];
      assert.ok(Math.abs(k - Math.round(k)) < 1e-3, `${name}: ${p}[${i}] off the grid (${k})`);
    }
  }
  return {
    free: `max|Δy| ${freeMax.toExponential(2)}, ${differing}/${total} values a step apart, ` +
      `update rel err ${freeRel.toExponential(2)}`,
    forced: `${stats.tieFlips} tie flips, rel err y ${eY.toExponential(2)} update ${
      eU.toExponential(2)
    }`,
  };
}

function randomInput(W: number, T: number, d: number, rng: Rng): Tensor {
  return rng.normalTensor([W, T, d]);
}

// ---------------------------------------------------------------------------------------------
// random blocks

Deno.test("block graph equals the float64 reference on random blocks (fp32)", async () => {
  const rt = new Runtime();
  try {
    let seed = 1;
    for (const [name, shape] of Object.entries(SHAPES)) {
      const c = makeConfig(shape);
      for (const T of [1, 7, 33]) {
        for (const W of [1, 3]) {
          const rng = new Rng(seed++);
          const w = randomBlock(c, rng);
          const x = randomInput(W, T, c.hidden, rng);
          const ref = referenceBlock(c, w, x, { rope: "half" });
          const g = await graphBlock(rt, c, w, x);
          assertClose(`${name} T=${T} W=${W}`, ref, g, x);
          if (W === 3) {
            // windows split over graph runs (2 + 1) give the same result
            const g2 = await graphBlock(rt, c, w, x, { batch: 2 });
            assert.ok(relErr(g2.y.data, g.y.data) < 1e-6, `${name} T=${T}: batch 2 differs`);
          }
        }
      }
    }
  } finally {
    await rt.release();
  }
});

Deno.test("block graph windows are independent and attention is causal", async () => {
  const rt = new Runtime();
  try {
    const c = makeConfig(SHAPES["GQA 8/2 hd8 bias"]);
    const rng = new Rng(77);
    const w = randomBlock(c, rng);
    const T = 9, d = c.hidden;
    const x = randomInput(3, T, d, rng);
    const base = (await graphBlock(rt, c, w, x)).y.data;
    // change the last token of window 1: windows 0 and 2 and positions < T−1 of window 1 keep
    const x2 = { data: x.data.slice(), shape: x.shape };
    for (let j = 0; j < d; j++) x2.data[(1 * T + T - 1) * d + j] += 1;
    const moved = (await graphBlock(rt, c, w, x2)).y.data;
    for (let i = 0; i < base.length; i++) {
      const win = Math.floor(i / (T * d)), t = Math.floor(i / d) % T;
      if (win === 1 && t === T - 1) continue;
      assert.ok(Math.abs(moved[i] - base[i]) < 1e-6, `value ${i} (window ${win}, t ${t}) moved`);
    }
  } finally {
    await rt.release();
  }
});

Deno.test("block graph with per-token activation fake quantization (a8, a4)", async () => {
  const rt = new Runtime();
  try {
    let seed = 100;
    const report: string[] = [];
    for (const [name, shape] of Object.entries(SHAPES)) {
      const c = makeConfig(shape);
      for (const [T, W] of [[1, 1], [7, 3], [33, 1], [33, 3]]) {
        for (const abits of [8, 4]) {
          const rng = new Rng(seed++);
          const w = randomBlock(c, rng);
          const x = randomInput(W, T, c.hidden, rng);
          const g = await graphBlock(rt, c, w, x, { abits });
          const r = checkQuantized(`${name} T=${T} W=${W}`, c, w, x, g, abits, "half", 1e-2);
          if (T === 33 && W === 3) report.push(`${name} a${abits}: ${r.free}; ${r.forced}`);
        }
      }
    }
    console.log(report.join("\n"));
  } finally {
    await rt.release();
  }
});

Deno.test("fakeQuantPerToken rounds half to even and handles all-zero rows", async () => {
  const rt = new Runtime();
  try {
    // row 0: xmin −2.5, xmax 252.5 → scale 1, zero = round(2.5) = 2 (not 3); ties at ±0.5, 1.5…
    // row 1: all zeros → range [−1, 1]; row 2: only positive values; row 3: only negative values
    const cols = 8;
    const rows = [
      [-2.5, 252.5, 0.5, 1.5, 2.5, -0.5, -1.5, 100.5],
      [0, 0, 0, 0, 0, 0, 0, 0],
      [0.25, 1, 2, 3, 4, 5, 6, 7],
      [-0.25, -1, -2, -3, -4, -5, -6, -7],
    ];
    const data = Float32Array.from(rows.flat());
    const g = new Graph();
    const x = g.input("x", [rows.length, cols], DType.float32);
    g.output(fakeQuantPerToken(g, x, 8), "y");
    const y = (await rt.run(g.toBytes(), { x: { data, shape: [rows.length, cols] } })).y.data;
    const ref = Float64Array.from(data);
    fakeQuantRows(ref, cols, 8, new Float64Array(rows.length), 0, undefined, { rope: "half" });
    assert.deepEqual(Array.from(y.subarray(0, cols)), [-2, 252, 0, 2, 2, 0, -2, 100]);
    assert.deepEqual(Array.from(y.subarray(cols, 2 * cols)), new Array(cols).fill(0));
    for (let i = 0; i < y.length; i++) {
      assert.ok(Math.abs(y[i] - ref[i]) < 1e-5 * (1 + Math.abs(ref[i])), `value ${i}: ${y[i]}`);
    }
  } finally {
    await rt.release();
  }
});

// ---------------------------------------------------------------------------------------------
// llama2.c: interleaved RoPE on raw weights == rotate-half on permuted rows

Deno.test("interleavedToHalf is a row permutation that makes interleaved RoPE exact", async () => {
  const rt = new Runtime();
  try {
    let seed = 500;
    for (const name of ["MHA hd8", "GQA 8/4 hd16", "GQA 8/2 hd8 bias"]) {
      const c = makeConfig({ ...SHAPES[name], qkvBias: false });
      const rng = new Rng(seed++);
      const raw = randomBlock(c, rng);
      const x = randomInput(2, 33, c.hidden, rng);
      const perm: BlockWeights = { ...raw };
      for (const p of ["self_attn.q_proj.weight", "self_attn.k_proj.weight"]) {
        perm[p] = interleavedToHalf(raw[p], c.headDim);
        // a permutation of whole rows, within each head
        const [rows, cols] = raw[p].shape;
        const seen = new Set<number>();
        for (let r = 0; r < rows; r++) {
          const row = perm[p].data.subarray(r * cols, (r + 1) * cols);
          let src = -1;
          for (let s = 0; s < rows && src < 0; s++) {
            if (raw[p].data.subarray(s * cols, (s + 1) * cols).every((v, j) => v === row[j])) {
              src = s;
            }
          }
          assert.ok(src >= 0, `${p} row ${r} is not a row of the input`);
          assert.equal(
            Math.floor(src / c.headDim),
            Math.floor(r / c.headDim),
            "rows left their head",
          );
          seen.add(src);
        }
        assert.equal(seen.size, rows);
      }
      const refInterleaved = referenceBlock(c, raw, x, { rope: "interleaved" });
      // the permutation is exact in real arithmetic: float64 agrees to rounding
      const refHalf = referenceBlock(c, perm, x, { rope: "half" });
      assert.ok(relErr(refHalf.y, refInterleaved.y) < 1e-12, `${name}: float64 half ≠ interleaved`);
      const g = await graphBlock(rt, c, perm, x);
      assertClose(`${name} llama2.c`, refInterleaved, g, x);
      // and the test can tell: the graph on unpermuted rows is far off
      const wrong = await graphBlock(rt, c, raw, x);
      const e = relErr(update(wrong.y.data, x), update(refInterleaved.y, x));
      assert.ok(e > 1e-2, `${name}: unpermuted weights agree too well (${e})`);
    }
  } finally {
    await rt.release();
  }
});

// ---------------------------------------------------------------------------------------------
// real blocks of the fixture models

/** Layer `i` of a llama2.c checkpoint read straight from the file (PROTOCOL §1), unpermuted. */
async function rawLlama2cBlock(path: string, i: number) {
  const buf = (await Deno.readFile(path)).slice().buffer; // own, 4-byte aligned buffer
  const h = new Int32Array(buf, 0, 7);
  const [dim, hidden, layers, heads, kvHeads, vocabSigned] = h;
  const vocab = Math.abs(vocabSigned), kv = (dim / heads) * kvHeads;
  const f = new Float32Array(buf, 28, (buf.byteLength - 28) / 4);
  let at = 0;
  const section = (per: number, shape: number[]): Tensor => {
    const t = { data: f.slice(at + i * per, at + (i + 1) * per), shape };
    at += layers * per;
    return t;
  };
  const embedding: Tensor = { data: f.slice(0, vocab * dim), shape: [vocab, dim] };
  at = vocab * dim;
  const w: BlockWeights = {};
  w["input_layernorm.weight"] = section(dim, [dim]);
  w["self_attn.q_proj.weight"] = section(dim * dim, [dim, dim]);
  w["self_attn.k_proj.weight"] = section(kv * dim, [kv, dim]);
  w["self_attn.v_proj.weight"] = section(kv * dim, [kv, dim]);
  w["self_attn.o_proj.weight"] = section(dim * dim, [dim, dim]);
  w["post_attention_layernorm.weight"] = section(dim, [dim]);
  w["mlp.gate_proj.weight"] = section(hidden * dim, [hidden, dim]); // w1
  w["mlp.down_proj.weight"] = section(dim * hidden, [dim, hidden]); // w2
  w["mlp.up_proj.weight"] = section(hidden * dim, [hidden, dim]); // w3
  return { w, embedding };
}

/** Two windows of real text: the first tokens of tinystories_val.txt through the model's tokenizer. */
async function realInput(dir: string, table: Tensor, T: number): Promise<Tensor> {
  const tok = await loadTokenizer(dir);
  const text = (await Deno.readTextFile(fixtureText("tinystories_val.txt"))).slice(0, 4000);
  const ids = tok.encode(text).slice(0, 2 * T);
  assert.equal(ids.length, 2 * T);
  const d = table.shape[1];
  const x = new Float32Array(ids.length * d);
  ids.forEach((id, i) => x.set(table.data.subarray(id * d, (id + 1) * d), i * d));
  return { data: x, shape: [2, T, d] };
}

for (const name of ["tinystories-656k", "stories260k"]) {
  Deno.test(`every block of ${name} equals the float64 reference (fp32 and a8)`, async () => {
    const rt = new Runtime();
    const model = await openModel(fixtureModel(name));
    try {
      const c = model.config;
      const T = 64;
      let x = await realInput(fixtureModel(name), await model.embedding(), T);
      const report: string[] = [];
      for (let i = 0; i < c.layers; i++) {
        const w = await model.block(i);
        const g = await graphBlock(rt, c, w, x);
        const { eY, eU } = assertClose(
          `${name} block ${i}`,
          referenceBlock(c, w, x, { rope: "half" }),
          g,
          x,
        );
        const gq = await graphBlock(rt, c, w, x, { abits: 8 });
        const r = checkQuantized(`${name} block ${i}`, c, w, x, gq, 8, "half", 1e-2);
        report.push(
          `${name} block ${i}: fp32 rel err y ${eY.toExponential(2)} update ${
            eU.toExponential(2)
          }; ` +
            `a8 ${r.free}; ${r.forced}`,
        );
        x = g.y; // the next block sees this block's real output
      }
      console.log(report.join("\n"));
    } finally {
      model.close();
      await rt.release();
    }
  });
}

Deno.test("stories260k: interleaved reference on the raw llama2.c weights equals the graph", async () => {
  const rt = new Runtime();
  const path = `${fixtureModel("stories260k")}/stories260K.bin`;
  const model = await openModel(path);
  try {
    const c = model.config;
    const T = 64;
    const { embedding } = await rawLlama2cBlock(path, 0);
    assert.deepEqual(embedding.data, (await model.embedding()).data);
    let x = await realInput(fixtureModel("stories260k"), embedding, T);
    for (let i = 0; i < c.layers; i++) {
      const raw = (await rawLlama2cBlock(path, i)).w;
      const loaded = await model.block(i);
      for (const [k, t] of Object.entries(raw)) {
        const expected = k === "self_attn.q_proj.weight" || k === "self_attn.k_proj.weight"
          ? interleavedToHalf(t, c.headDim)
          : t;
        assert.deepEqual(loaded[k].shape, expected.shape, `block ${i} ${k} shape`);
        assert.ok(
          loaded[k].data.every((v, j) => v === expected.data[j]),
          `block ${i} ${k} differs`,
        );
      }
      const ref = referenceBlock(c, raw, x, { rope: "interleaved" });
      const g = await graphBlock(rt, c, loaded, x);
      assertClose(`stories260k raw block ${i}`, ref, g, x);
      x = g.y;
    }
  } finally {
    model.close();
    await rt.release();
  }
});
