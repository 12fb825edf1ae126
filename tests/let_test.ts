/**
 * LET (algorithms/let.ts) is function-preserving before quantization: for random LLaMA blocks
 * (MHA and GQA 8/2, head_dim 8 and 16, with and without q/k/v biases) and random scales of both
 * signs at every point (qkv, fc1, out, fc2, qk; a few below the 1e-2 truncation), the block
 * built from `applyLet`'s weights computes the original block's function to float rounding. The
 * two failure modes of the reference code are shown to break equivalence where our scales keep
 * it: a q/k scale that is not shared inside each rotary pair, and a v→o scale sized H·hd applied
 * naively under grouped-query attention. `smoothScale` against a float64 hand computation.
 */
import assert from "node:assert/strict";
import { applyLet, type LetPoint, letSize, smoothScale } from "../algorithms/let.ts";
import { Graph, type Value } from "../kernels/graph.ts";
import { Runtime } from "../kernels/session.ts";
import { Rng, type Tensor } from "../kernels/tensor.ts";
import { addBlock } from "../models/block_graph.ts";
import { blockTensorShapes, type ModelConfig } from "../models/config.ts";
import { causalMask, ropeTables, runBlock } from "../models/forward.ts";
import type { BlockWeights } from "../models/source.ts";

interface Shape {
  hidden: number;
  intermediate: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  qkvBias: boolean;
  /** LLaMA's attention_bias (o_proj too) and mlp_bias. */
  oProjBias?: boolean;
  mlpBias?: boolean;
}

const SHAPES: Record<string, Shape> = {
  "MHA 4/4 hd8": { hidden: 32, intermediate: 48, heads: 4, kvHeads: 4, headDim: 8, qkvBias: false },
  "MHA 4/4 hd16 bias": {
    hidden: 64,
    intermediate: 96,
    heads: 4,
    kvHeads: 4,
    headDim: 16,
    qkvBias: true,
  },
  "GQA 8/2 hd8 bias": {
    hidden: 48,
    intermediate: 80,
    heads: 8,
    kvHeads: 2,
    headDim: 8,
    qkvBias: true,
  },
  "GQA 8/2 hd16": {
    hidden: 64,
    intermediate: 112,
    heads: 8,
    kvHeads: 2,
    headDim: 16,
    qkvBias: false,
  },
  // Every linear biased: up_proj's bias divides with its rows under the up→down pair.
  "GQA 4/2 hd16 attention_bias + mlp_bias": {
    hidden: 48,
    intermediate: 64,
    heads: 4,
    kvHeads: 2,
    headDim: 16,
    qkvBias: true,
    oProjBias: true,
    mlpBias: true,
  },
};

function makeConfig(s: Shape): ModelConfig {
  return {
    modelType: "llama",
    ...s,
    layers: 1,
    vocab: 16,
    maxSeq: 64,
    rmsEps: 1e-6,
    ropeTheta: 10000,
    tiedEmbeddings: false,
    bos: 1,
    eos: 2,
  };
}

function randomBlock(c: ModelConfig, rng: Rng): BlockWeights {
  const w: BlockWeights = {};
  for (const [name, shape] of Object.entries(blockTensorShapes(c))) {
    if (name.endsWith("layernorm.weight")) {
      w[name] = rng.normalTensor(shape, 0.2);
      w[name].data.forEach((v, i, a) => a[i] = 1 + v);
    } else if (name.endsWith(".bias")) {
      w[name] = rng.normalTensor(shape, 0.3);
    } else {
      // Larger than 1/√in so that attention is far from uniform and RoPE matters.
      w[name] = rng.normalTensor(shape, 2 / Math.sqrt(shape[1]));
    }
  }
  return w;
}

/**
 * Random scales: |s| log-uniform in [e^-1.5, e^1.5], a quarter of them negative, and (when
 * `tiny`) two entries inside the truncation band (|s| < 1e-2, one of each sign).
 */
function randomScale(n: number, rng: Rng, tiny = true): Float32Array {
  const s = Float32Array.from({ length: n }, () => {
    const m = Math.exp(3 * (rng.uniform() - 0.5));
    return rng.uniform() < 0.25 ? -m : m;
  });
  if (tiny && n >= 4) {
    s[1] = 3e-3;
    s[n - 2] = -4e-4;
  }
  return s;
}

const WINDOWS = 2, T = 7;

/** Runs the block with its weights transformed by `applyLet(scales)`, no quantization. */
async function letBlock(
  rt: Runtime,
  c: ModelConfig,
  w: BlockWeights,
  scales: Partial<Record<LetPoint, Float32Array>>,
  x: Tensor,
): Promise<Float32Array> {
  const g = new Graph();
  const wv: Record<string, Value> = {};
  for (const [n, t] of Object.entries(w)) wv[n] = g.input(`w:${n}`, t.shape);
  const sv: Partial<Record<LetPoint, Value>> = {};
  for (const [p, s] of Object.entries(scales) as [LetPoint, Float32Array][]) {
    sv[p] = g.input(`s:${p}`, [s.length]);
  }
  const xv = g.input("x", x.shape);
  const cos = g.input("cos", [T, 1, c.headDim / 2]);
  const sin = g.input("sin", [T, 1, c.headDim / 2]);
  const mask = g.input("mask", [T, T]);
  const tw = applyLet(g, c, wv, sv);
  const { y } = addBlock(g, c, { batch: WINDOWS, seqlen: T }, { x: xv, cos, sin, mask, w: tw });
  g.output(y, "y");
  const rope = ropeTables(c, T);
  const feeds: Record<string, Tensor> = { x, cos: rope.cos, sin: rope.sin, mask: causalMask(T) };
  for (const [n, t] of Object.entries(w)) feeds[`w:${n}`] = t;
  for (const [p, s] of Object.entries(scales) as [LetPoint, Float32Array][]) {
    feeds[`s:${p}`] = { data: s, shape: [s.length] };
  }
  return (await rt.run(g.toBytes(), feeds)).y.data;
}

/**
 * ‖a − b‖ / ‖b − x‖: the difference relative to what the block adds to its residual input, so
 * the residual does not hide an error in attention or the MLP.
 */
function relToDelta(a: Float32Array, b: Float32Array, x: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += (b[i] - x[i]) ** 2;
  }
  return Math.sqrt(num / den);
}

const ALL_POINTS: LetPoint[] = ["qkv", "fc1", "out", "fc2", "qk"];

Deno.test("LET preserves the block function at every point, both signs", async (t) => {
  const rt = new Runtime();
  try {
    let seed = 100;
    for (const [name, shape] of Object.entries(SHAPES)) {
      const c = makeConfig(shape);
      await t.step(name, async () => {
        for (let trial = 0; trial < 2; trial++) {
          const rng = new Rng(seed++);
          const w = randomBlock(c, rng);
          const x = rng.normalTensor([WINDOWS, T, c.hidden], 1);
          const ref = (await runBlock(rt, c, w, x)).data;
          const scales = {} as Record<LetPoint, Float32Array>;
          for (const p of ALL_POINTS) scales[p] = randomScale(letSize(c, p), rng);
          assert.ok(ALL_POINTS.every((p) => scales[p].some((v) => v < 0)), "negative scales");
          // each point alone, then all of them at once
          for (const p of ALL_POINTS) {
            const y = await letBlock(rt, c, w, { [p]: scales[p] }, x);
            const e = relToDelta(y, ref, x.data);
            assert.ok(e < 1e-5, `${name} trial ${trial}: LET ${p} changes the block (${e})`);
          }
          const y = await letBlock(rt, c, w, scales, x);
          const e = relToDelta(y, ref, x.data);
          assert.ok(e < 1e-5, `${name} trial ${trial}: all LET points change the block (${e})`);
          // and the scales did transform the weights: the identity scale is not what we tested
          const ones = Object.fromEntries(
            ALL_POINTS.map((p) => [p, new Float32Array(letSize(c, p)).fill(1)]),
          );
          const y1 = await letBlock(rt, c, w, ones, x);
          assert.ok(relToDelta(y1, ref, x.data) < 1e-6);
        }
      });
    }
  } finally {
    await rt.release();
  }
});

/** A copy of `w` with rows of the named matrix (and its bias) multiplied by `f[row]`. */
function scaleRows(w: BlockWeights, name: string, f: ArrayLike<number>): BlockWeights {
  const out = { ...w };
  const t = w[`${name}.weight`];
  const cols = t.shape[1];
  const d = t.data.slice();
  for (let r = 0; r < t.shape[0]; r++) for (let j = 0; j < cols; j++) d[r * cols + j] *= f[r];
  out[`${name}.weight`] = { data: d, shape: t.shape };
  const b = w[`${name}.bias`];
  if (b) out[`${name}.bias`] = { data: b.data.map((v, r) => v * f[r]), shape: b.shape };
  return out;
}

/** A copy of `w` with columns of the named matrix multiplied by `f[col]`. */
function scaleCols(w: BlockWeights, name: string, f: ArrayLike<number>): BlockWeights {
  const out = { ...w };
  const t = w[`${name}.weight`];
  const cols = t.shape[1];
  out[`${name}.weight`] = { data: t.data.map((v, i) => v * f[i % cols]), shape: t.shape };
  return out;
}

/** Expands a per-KV-head-channel vector [KV·hd] to query heads [H·hd] (head h uses h / G). */
function expand(c: ModelConfig, s: ArrayLike<number>): Float64Array {
  const G = c.heads / c.kvHeads, hd = c.headDim;
  return Float64Array.from({ length: c.heads * hd }, (_, j) => {
    const h = Math.floor(j / hd), i = j % hd;
    return s[Math.floor(h / G) * hd + i];
  });
}

Deno.test("a q/k scale not shared inside rotary pairs breaks equivalence", async (t) => {
  const rt = new Runtime();
  try {
    let seed = 300;
    for (const [name, shape] of Object.entries(SHAPES)) {
      const c = makeConfig(shape);
      await t.step(name, async () => {
        const rng = new Rng(seed++);
        const w = randomBlock(c, rng);
        const x = rng.normalTensor([WINDOWS, T, c.hidden], 1);
        const ref = (await runBlock(rt, c, w, x)).data;
        const kv = c.kvHeads * c.headDim, hd = c.headDim;
        // The reference's q/k scale: one independent value per k_proj row.
        const perChannel = Float64Array.from({ length: kv }, () => Math.exp(rng.uniform() - 0.5));
        // The same values made shared inside each rotary pair (i, i + hd/2).
        const paired = perChannel.map((_, r) => {
          const i = r % hd;
          return perChannel[r - i + (i % (hd / 2))];
        });
        const apply = (s: Float64Array) =>
          scaleRows(
            scaleRows(w, "self_attn.k_proj", s),
            "self_attn.q_proj",
            expand(c, s).map((v) => 1 / v),
          );
        const yPaired = (await runBlock(rt, c, apply(paired), x)).data;
        const ePaired = relToDelta(yPaired, ref, x.data);
        assert.ok(ePaired < 1e-5, `${name}: the pair-shared scale changed the block (${ePaired})`);
        const yPer = (await runBlock(rt, c, apply(perChannel), x)).data;
        const ePer = relToDelta(yPer, ref, x.data);
        assert.ok(ePer > 1e-3, `${name}: the per-channel q/k scale kept the block (${ePer})`);
        // our applyLet's qk scale [KV·hd/2] is the pair-shared one: same output as by hand
        const half = Float32Array.from(
          { length: kv / 2 },
          (_, j) => perChannel[Math.floor(j / (hd / 2)) * hd + (j % (hd / 2))],
        );
        const yLet = await letBlock(rt, c, w, { qk: half }, x);
        assert.ok(relToDelta(yLet, yPaired, x.data) < 1e-5, `${name}: applyLet qk ≠ by hand`);
      });
    }
  } finally {
    await rt.release();
  }
});

Deno.test("a v→o scale sized H·hd applied naively under GQA breaks equivalence", async (t) => {
  const rt = new Runtime();
  try {
    let seed = 500;
    for (const [name, shape] of Object.entries(SHAPES)) {
      if (shape.heads === shape.kvHeads) continue;
      const c = makeConfig(shape);
      await t.step(name, async () => {
        const rng = new Rng(seed++);
        const w = randomBlock(c, rng);
        const x = rng.normalTensor([WINDOWS, T, c.hidden], 1);
        const ref = (await runBlock(rt, c, w, x)).data;
        const kv = c.kvHeads * c.headDim, q = c.heads * c.headDim;
        // The reference's out scale is sized by o_proj's input (H·hd); applied naively, v_proj's
        // KV·hd rows are divided by its first KV·hd values and o_proj's columns multiplied by
        // all of them, but query head h reads v head h / G, not head h.
        const s = Float64Array.from({ length: q }, () => Math.exp(rng.uniform() - 0.5));
        const naive = scaleCols(
          scaleRows(w, "self_attn.v_proj", s.subarray(0, kv).map((v) => 1 / v)),
          "self_attn.o_proj",
          s,
        );
        const yNaive = (await runBlock(rt, c, naive, x)).data;
        const eNaive = relToDelta(yNaive, ref, x.data);
        assert.ok(eNaive > 1e-3, `${name}: the naive H·hd v→o scale kept the block (${eNaive})`);
        // Sized by the KV heads and expanded over each query group, it is exact.
        const sKv = Float32Array.from(s.subarray(0, kv));
        const byHand = scaleCols(
          scaleRows(w, "self_attn.v_proj", Array.from(sKv, (v) => 1 / v)),
          "self_attn.o_proj",
          expand(c, sKv),
        );
        const yHand = (await runBlock(rt, c, byHand, x)).data;
        assert.ok(relToDelta(yHand, ref, x.data) < 1e-5, `${name}: grouped v→o scale by hand`);
        const yLet = await letBlock(rt, c, w, { out: sKv }, x);
        assert.ok(relToDelta(yLet, ref, x.data) < 1e-5, `${name}: applyLet out`);
      });
    }
  } finally {
    await rt.release();
  }
});

Deno.test("smoothScale is SmoothQuant's max|x|^α / max|w|^(1−α), clamped at 1e-5", () => {
  const rng = new Rng(7);
  const n = 64;
  const act = Array.from({ length: n }, () => Math.exp(6 * (rng.uniform() - 0.5)));
  const wmax = Array.from({ length: n }, () => Math.exp(4 * (rng.uniform() - 0.5)));
  // the clamps: a dead channel, a dead weight column, both, and values just at the floor
  act[3] = 0;
  wmax[5] = 0;
  act[7] = 0;
  wmax[7] = 0;
  act[9] = 1e-12;
  wmax[11] = 1e-9;
  for (const alpha of [0.5, 0.8, 0.25]) {
    const got = smoothScale(Float32Array.from(act), Float32Array.from(wmax), alpha);
    assert.ok(got instanceof Float32Array && got.length === n);
    for (let i = 0; i < n; i++) {
      // float64, written differently: exp(α ln a − (1−α) ln w) on the clamped float32 inputs
      const a = Math.max(Math.fround(act[i]), 1e-5), wm = Math.max(Math.fround(wmax[i]), 1e-5);
      const want = Math.max(Math.exp(alpha * Math.log(a) - (1 - alpha) * Math.log(wm)), 1e-5);
      assert.ok(
        Math.abs(got[i] - want) <= 2e-7 * want,
        `alpha ${alpha} channel ${i}: ${got[i]} vs ${want}`,
      );
    }
  }
  // the default α is 0.5
  const d = smoothScale([4], [1]);
  assert.ok(Math.abs(d[0] - 2) < 1e-7);
  // never below 1e-5 even when the weight dominates
  assert.ok(Math.abs(smoothScale([0], [1e6], 0.5)[0] - 1e-5) <= 1e-12);
});
