/**
 * QLLM's adaptive channel reassembly (Liu et al., 2024; ANCHORS.md §1.6) at the three linear
 * inputs it treats: `x_qkv` (after the attention RMSNorm), `x_gateup` (after the MLP RMSNorm)
 * and `x_down` (silu(gate)·up).
 *
 * - **Statistics** come from the full-precision block on the teacher chain (`job.fpWeights` on
 *   `job.fpIn`, no activation quantization), as the reference's teacher forward: the per-channel
 *   max |x| over all calibration samples, and the raw activations of the first sample
 *   (`x_feat`, [T, C]).
 * - **Disassembly** at threshold θ: channel c becomes T_c = max(1, ⌈max|x_c|/θ⌉) sub-channels
 *   carrying x_c/T_c; the next linears' column c is duplicated T_c times (exact). This adds
 *   r = Σ T_c − C channels.
 * - **Assembly** brings the count back to C by merging r pairs of unsplit channels: A = the even
 *   channel indices, B = the odd ones (the reference's split, split channels masked out), the
 *   reference's score S[i,j] = ((Σ_o W[o,A_i] + Σ_o W[o,B_j])·‖x_A_i − x_B_j‖₂)² with W the
 *   concatenated next linears and Σ_o a signed column sum. The merged channel is the mean of
 *   the two activations and its weight column the sum of the two columns. Unlike the
 *   reference, whose many-to-one merges (several A into one B, size-weighted means) need a
 *   scatter at run time, ours is a *matching*: each B receives at most one A, because the
 *   run-time format has two taps per channel. Collisions are resolved greedily by score (the
 *   A with the smallest best score takes its B; an A whose best B is taken moves on to its best
 *   free B) until r pairs are merged. The pairing is computed on the original channel indices
 *   both in the search and in the final application, so the applied reassembly is exactly the
 *   one that was scored (the reference re-matches on the disassembled order at the end).
 * - **Adaptive θ** per point and block: the reference's descending grid from the largest
 *   channel max (step (max − min)/max(100, ⌊max/0.5⌋)), stopping when r > channelRatio·C, when
 *   θ < min or when no r merges are possible; a θ is scored only where r changes, by the MSE
 *   between F(x, W) and F_q(x', W') on `x_feat`: F is the attention output before o_proj
 *   (RoPE, GQA, causal softmax) for `x_qkv`, silu(x·W_gateᵀ)⊙(x·W_upᵀ) for `x_gateup`, the
 *   plain linear for `x_down`; F_q quantizes x' per token at `abits` and W' with min-max RTN
 *   at `wbits` per output channel (or group). No reassembly (r = 0) is a candidate as well, so
 *   a point keeps its channels when nothing beats plain quantization. At most `maxEvals`
 *   (64) thresholds are scored per point: when the grid holds more distinct r, evenly spaced
 *   ones (the first and last included) are kept.
 *
 * The result is data: block tensors `reassembly.{point}.src_a|src_b|coef_a|coef_b` [C] that the
 * block graph applies before the activation quantizer (x'_k = a_k·x[i_k] + b_k·x[j_k]; every
 * block carries all three points, identity maps where nothing changed), plus the rewritten
 * next-layer weights. Then what folds exactly is folded: every source channel enters with one
 * coefficient (1/T_c split, ½ merged, 1 kept), which moves into the RMSNorm weight at `x_qkv`
 * and `x_gateup` and into the rows of up_proj at `x_down` (silu(gate)·up is linear in up).
 * After the fold all coefficients are 1 (or 0 for an unused second tap): **the run-time
 * reassembly is only gathers and adds** (the block graph still multiplies by those 1s and 0s).
 *
 * `job.learned` receives per point `reassembly.{point}.split_counts` (T_c, int32 [C]),
 * `merge_src` / `merge_dst` (int32 [m]: A and B channel of each merged pair) and `theta`
 * ([1], 0 when the point is not reassembled).
 * @module
 */
import { rtnWeight } from "../algorithms/quantizer.ts";
import { Graph, type Value } from "../kernels/graph.ts";
import { matmul } from "../kernels/matmul.ts";
import type { Feed, Runtime } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { fakeQuantPerToken, reassemblyNames, rope } from "../models/block_graph.ts";
import type { ModelConfig } from "../models/config.ts";
import { captureBlock, causalMask, ropeTables } from "../models/forward.ts";
import type { BlockWeights } from "../models/model.ts";
import { type BlockJob, type Stage, stage } from "./job.ts";

/** The linear inputs QLLM reassembles, in block order. */
export const REASSEMBLY_POINTS = ["x_qkv", "x_gateup", "x_down"] as const;
/** A reassembled linear input. */
export type ReassemblyPoint = (typeof REASSEMBLY_POINTS)[number];

/** The linears reading each point (their weights are rewritten), in concatenation order. */
export const POINT_READERS: Record<ReassemblyPoint, string[]> = {
  x_qkv: ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
  x_gateup: ["mlp.gate_proj", "mlp.up_proj"],
  x_down: ["mlp.down_proj"],
};

/** Settings of the reassembly stage. */
export interface ReassembleOptions {
  /** Largest number of extra channels, as a fraction of the width (0.2 in QLLM's scripts). */
  channelRatio: number;
  /** Weight bits of the error F_q (16 = not quantized). */
  wbits: number;
  /** Per-token activation bits of the error F_q (16 = not quantized). */
  abits: number;
  /** Weight group size of the error F_q (0 = per output channel). */
  groupSize: number;
  /**
   * Merge channels back to C (true). `false` keeps the C + r disassembled channels: exact, but
   * the block is then wider than its config and cannot be written; for tests and ablations.
   */
  merge?: boolean;
  /** Fold the coefficients into the RMSNorm weights and up_proj rows (true). */
  fold?: boolean;
  /** Fixed thresholds instead of the search (`null`: no reassembly at that point). */
  theta?: Partial<Record<ReassemblyPoint, number | null>>;
  /** Most thresholds scored per point (64). */
  maxEvals?: number;
  /**
   * How merge pairs are scored: `reference` (QLLM's ((Σ_o W_a + Σ_o W_b)·‖x_a − x_b‖)², the
   * default) or `error` (‖W_a − W_b‖²·‖x_a − x_b‖², which bounds the output error a merge adds:
   * W_a x_a + W_b x_b − (W_a + W_b)(x_a + x_b)/2 = (W_a − W_b)(x_a − x_b)/2).
   */
  mergeScore?: "reference" | "error";
}

/** What reassembly does to one point's channels. */
export interface ReassemblyPlan {
  /** Sub-channels per original channel (T_c ≥ 1). */
  counts: Int32Array;
  /** Merged pairs [A channel, B channel] of unsplit channels. */
  pairs: [number, number][];
}

/** The run-time map of one point: x'_k = coefA[k]·x[srcA[k]] + coefB[k]·x[srcB[k]]. */
export interface ChannelMap {
  srcA: Int32Array;
  srcB: Int32Array;
  coefA: Float32Array;
  coefB: Float32Array;
}

/** Statistics of one point on the teacher chain. */
export interface PointStats {
  /** Per-channel max |x| over all calibration samples. */
  xmax: Float32Array;
  /** The first sample's activations [T, C]. */
  feat: Tensor;
}

/** One point's outcome, as reported. */
export interface PointReport {
  /** The chosen threshold, or null when the point keeps its channels. */
  theta: number | null;
  channels_split: number;
  merged_pairs: number;
  extra_channels: number;
  /** Quantized-output MSE with plain RTN weights and per-token activations. */
  error_before: number;
  /** The same after reassembly (equal to `error_before` when not reassembled). */
  error_after: number;
  /** Thresholds scored (r = 0 included), and distinct r the grid offered. */
  evaluated: number;
  candidates: number;
  /** Time of this point's search and rewrite. */
  seconds: number;
}

// ---------------------------------------------------------------------------------------------
// Plans and maps

/** T_c = max(1, ⌈max|x_c|/θ⌉) for every channel. */
export function disassemblyCounts(xmax: Float32Array, theta: number): Int32Array {
  const t = new Int32Array(xmax.length);
  for (let c = 0; c < xmax.length; c++) t[c] = Math.max(1, Math.ceil(xmax[c] / theta));
  return t;
}

/** r = Σ T_c − C. */
export function extraChannels(counts: Int32Array): number {
  let r = 0;
  for (const t of counts) r += t - 1;
  return r;
}

/** The plan that changes nothing. */
export function identityPlan(channels: number): ReassemblyPlan {
  return { counts: new Int32Array(channels).fill(1), pairs: [] };
}

/**
 * The run-time map of a plan, in original channel order: the T_c copies of a split channel
 * (x_c/T_c each), a merged pair at its B channel (½·x_a + ½·x_b; the A channel disappears), a
 * kept channel as itself.
 */
export function channelMap(plan: ReassemblyPlan): ChannelMap {
  const C = plan.counts.length;
  const partner = new Int32Array(C).fill(-1);
  const dropped = new Uint8Array(C);
  for (const [a, b] of plan.pairs) {
    if (plan.counts[a] > 1 || plan.counts[b] > 1) {
      throw new Error(`reassembly: split channel in merged pair (${a}, ${b})`);
    }
    if (dropped[a] || partner[b] >= 0 || partner[a] >= 0 || dropped[b]) {
      throw new Error(`reassembly: channel reused in merged pair (${a}, ${b})`);
    }
    partner[b] = a;
    dropped[a] = 1;
  }
  const sa: number[] = [], sb: number[] = [], ca: number[] = [], cb: number[] = [];
  const push = (i: number, j: number, a: number, b: number) => {
    sa.push(i);
    sb.push(j);
    ca.push(a);
    cb.push(b);
  };
  for (let c = 0; c < C; c++) {
    const t = plan.counts[c];
    if (t > 1) { for (let k = 0; k < t; k++) push(c, c, Math.fround(1 / t), 0); }
    else if (dropped[c]) continue;
    else if (partner[c] >= 0) push(partner[c], c, 0.5, 0.5);
    else push(c, c, 1, 0);
  }
  return {
    srcA: Int32Array.from(sa),
    srcB: Int32Array.from(sb),
    coefA: Float32Array.from(ca),
    coefB: Float32Array.from(cb),
  };
}

/** x' [T, K] from x [T, C] through a map. */
export function mapActivations(x: Tensor, m: ChannelMap): Tensor {
  const [T, C] = x.shape, K = m.srcA.length;
  const out = new Float32Array(T * K);
  for (let t = 0; t < T; t++) {
    const row = t * C;
    for (let k = 0; k < K; k++) {
      let v = m.coefA[k] * x.data[row + m.srcA[k]];
      if (m.coefB[k] !== 0) v += m.coefB[k] * x.data[row + m.srcB[k]];
      out[t * K + k] = v;
    }
  }
  return { data: out, shape: [T, K] };
}

/** W' [out, K] from W [out, C]: the source column (split or kept) or the sum of a pair's. */
export function mapColumns(w: Tensor, m: ChannelMap): Tensor {
  const [rows, C] = w.shape, K = m.srcA.length;
  const out = new Float32Array(rows * K);
  for (let r = 0; r < rows; r++) {
    const row = r * C;
    for (let k = 0; k < K; k++) {
      let v = w.data[row + m.srcA[k]];
      if (m.coefB[k] !== 0) v += w.data[row + m.srcB[k]];
      out[r * K + k] = v;
    }
  }
  return { data: out, shape: [rows, K] };
}

/** The map as the four block tensors of a point (indices as float32). */
export function mapTensors(point: ReassemblyPoint, m: ChannelMap): BlockWeights {
  const [ia, ib, ca, cb] = reassemblyNames(point);
  const K = m.srcA.length;
  return {
    [ia]: { data: Float32Array.from(m.srcA), shape: [K] },
    [ib]: { data: Float32Array.from(m.srcB), shape: [K] },
    [ca]: { data: m.coefA.slice(), shape: [K] },
    [cb]: { data: m.coefB.slice(), shape: [K] },
  };
}

/** The map stored in a block's tensors. */
export function readMap(w: BlockWeights, point: ReassemblyPoint): ChannelMap {
  const [ia, ib, ca, cb] = reassemblyNames(point).map((n) => {
    if (!w[n]) throw new Error(`reassembly: the block has no tensor "${n}"`);
    return w[n].data;
  });
  return {
    srcA: Int32Array.from(ia),
    srcB: Int32Array.from(ib),
    coefA: ca.slice(),
    coefB: cb.slice(),
  };
}

/**
 * The block tensors that change when a plan is applied at a point: its four map tensors and
 * the rewritten weights of the linears reading it (new tensors; `w` is not touched).
 */
export function applyPlan(
  w: BlockWeights,
  point: ReassemblyPoint,
  plan: ReassemblyPlan,
): BlockWeights {
  const m = channelMap(plan);
  const out = mapTensors(point, m);
  for (const l of POINT_READERS[point]) out[`${l}.weight`] = mapColumns(w[`${l}.weight`], m);
  return out;
}

/**
 * Folds a point's coefficients into the layer before it: each source channel's coefficient
 * (1/T_c, ½ or 1) multiplies its RMSNorm weight (`x_qkv`, `x_gateup`) or its up_proj row
 * (`x_down`), and the map's coefficients become 1 (0 for unused second taps). Returns the
 * replaced tensors; exact up to float rounding.
 */
export function foldPoint(w: BlockWeights, point: ReassemblyPoint): BlockWeights {
  const m = readMap(w, point);
  const target = point === "x_qkv"
    ? "input_layernorm.weight"
    : point === "x_gateup"
    ? "post_attention_layernorm.weight"
    : "mlp.up_proj.weight";
  const t = w[target];
  const kappa = new Float32Array(t.shape[0]).fill(NaN);
  const set = (c: number, v: number) => {
    if (!Number.isNaN(kappa[c]) && kappa[c] !== v) {
      throw new Error(`reassembly ${point}: channel ${c} enters with two coefficients`);
    }
    kappa[c] = v;
  };
  for (let k = 0; k < m.srcA.length; k++) {
    set(m.srcA[k], m.coefA[k]);
    if (m.coefB[k] !== 0) set(m.srcB[k], m.coefB[k]);
  }
  const cols = t.shape.length === 2 ? t.shape[1] : 1;
  let data: Float32Array | null = null;
  for (let c = 0; c < kappa.length; c++) {
    const s = kappa[c];
    if (Number.isNaN(s) || s === 1) continue;
    data ??= t.data.slice();
    for (let j = 0; j < cols; j++) data[c * cols + j] *= s;
  }
  const folded: ChannelMap = {
    srcA: m.srcA,
    srcB: m.srcB,
    coefA: m.coefA.map((v) => v === 0 ? 0 : 1),
    coefB: m.coefB.map((v) => v === 0 ? 0 : 1),
  };
  const out = mapTensors(point, folded);
  if (data) out[target] = { data, shape: [...t.shape] };
  return out;
}

// ---------------------------------------------------------------------------------------------
// Matching

/**
 * Merge scores of the reference for A = even, B = odd channels: [nA·nB] row-major,
 * S[i,j] = ((cs[A_i] + cs[B_j])·‖x_A_i − x_B_j‖₂)² with cs the signed column sums of the
 * concatenated next-layer weights and distances over the tokens of `feat` [T, C].
 */
export async function mergeScores(
  rt: Runtime,
  feat: Tensor,
  weights: Tensor[],
  kind: "reference" | "error" = "reference",
): Promise<{
  scores: Float32Array;
  nA: number;
  nB: number;
}> {
  const [T, C] = feat.shape;
  const cs = new Float64Array(C);
  for (const w of weights) {
    const [rows, cols] = w.shape;
    if (cols !== C) throw new Error(`mergeScores: weight [${w.shape}] does not read ${C} channels`);
    for (let r = 0; r < rows; r++) for (let c = 0; c < C; c++) cs[c] += w.data[r * C + c];
  }
  const nA = Math.ceil(C / 2), nB = Math.floor(C / 2);
  const at = new Float32Array(nA * T), b = new Float32Array(T * nB);
  const norm = new Float64Array(C);
  for (let t = 0; t < T; t++) {
    for (let c = 0; c < C; c++) {
      const v = feat.data[t * C + c];
      norm[c] += v * v;
      if (c % 2 === 0) at[(c >> 1) * T + t] = v;
      else b[t * nB + (c >> 1)] = v;
    }
  }
  const dot = nB > 0
    ? (await matmul(rt, { data: at, shape: [nA, T] }, { data: b, shape: [T, nB] })).data
    : new Float32Array(0);
  const wdiff = kind === "error" ? await columnDistances(rt, weights, C, nA, nB) : null;
  const scores = new Float32Array(nA * nB);
  for (let i = 0; i < nA; i++) {
    for (let j = 0; j < nB; j++) {
      const a = 2 * i, bb = 2 * j + 1;
      const d2 = Math.max(0, norm[a] + norm[bb] - 2 * dot[i * nB + j]);
      const s = cs[a] + cs[bb];
      scores[i * nB + j] = wdiff ? wdiff[i * nB + j] * d2 : s * s * d2;
    }
  }
  return { scores, nA, nB };
}

/** ‖W_a − W_b‖² for even columns a and odd columns b of the stacked next-layer weights. */
async function columnDistances(
  rt: Runtime,
  weights: Tensor[],
  C: number,
  nA: number,
  nB: number,
): Promise<Float64Array> {
  const R = weights.reduce((n, w) => n + w.shape[0], 0);
  const wa = new Float32Array(nA * R), wb = new Float32Array(R * nB);
  const sq = new Float64Array(C);
  let r0 = 0;
  for (const w of weights) {
    for (let r = 0; r < w.shape[0]; r++) {
      for (let c = 0; c < C; c++) {
        const v = w.data[r * C + c];
        sq[c] += v * v;
        if (c % 2 === 0) wa[(c >> 1) * R + r0 + r] = v;
        else wb[(r0 + r) * nB + (c >> 1)] = v;
      }
    }
    r0 += w.shape[0];
  }
  const dot = nB > 0
    ? (await matmul(rt, { data: wa, shape: [nA, R] }, { data: wb, shape: [R, nB] })).data
    : new Float32Array(0);
  const out = new Float64Array(nA * nB);
  for (let i = 0; i < nA; i++) {
    for (let j = 0; j < nB; j++) {
      out[i * nB + j] = Math.max(0, sq[2 * i] + sq[2 * j + 1] - 2 * dot[i * nB + j]);
    }
  }
  return out;
}

/** How many pairs of unsplit channels (one even, one odd) can be merged at most. */
export function mergeable(counts: Int32Array): number {
  let even = 0, odd = 0;
  for (let c = 0; c < counts.length; c++) {
    if (counts[c] !== 1) continue;
    if (c % 2 === 0) even++;
    else odd++;
  }
  return Math.min(even, odd);
}

/**
 * r merged pairs [A channel, B channel] among the unsplit channels, greedily by score with each
 * channel used once; null when fewer than r pairs are possible.
 */
export function matchPairs(
  s: { scores: Float32Array; nA: number; nB: number },
  counts: Int32Array,
  r: number,
): [number, number][] | null {
  const { scores, nA, nB } = s;
  const freeB = new Uint8Array(nB);
  let nFreeB = 0;
  for (let j = 0; j < nB; j++) {
    if (counts[2 * j + 1] === 1) {
      freeB[j] = 1;
      nFreeB++;
    }
  }
  const liveA: number[] = [];
  for (let i = 0; i < nA; i++) if (counts[2 * i] === 1) liveA.push(i);
  if (r > Math.min(liveA.length, nFreeB)) return null; // = mergeable(counts) < r
  const bestJ = new Int32Array(nA), bestS = new Float64Array(nA);
  const refresh = (i: number) => {
    let bj = -1, bs = Infinity;
    for (let j = 0; j < nB; j++) {
      if (freeB[j] && (bj < 0 || scores[i * nB + j] < bs)) {
        bs = scores[i * nB + j];
        bj = j;
      }
    }
    bestJ[i] = bj;
    bestS[i] = bs;
  };
  for (const i of liveA) refresh(i);
  const pairs: [number, number][] = [];
  while (pairs.length < r) {
    let pick = -1;
    for (let k = 0; k < liveA.length; k++) {
      if (pick < 0 || bestS[liveA[k]] < bestS[liveA[pick]]) pick = k;
    }
    const i = liveA[pick];
    if (!freeB[bestJ[i]]) {
      refresh(i);
      continue;
    }
    pairs.push([2 * i, 2 * bestJ[i] + 1]);
    freeB[bestJ[i]] = 0;
    liveA.splice(pick, 1);
  }
  return pairs;
}

// ---------------------------------------------------------------------------------------------
// Thresholds

/** A threshold of the grid and its extra channels. */
export interface Candidate {
  theta: number;
  r: number;
}

/**
 * The reference's descending grid: from max_c max|x_c| down by (max − min)/max(100, ⌊max/0.5⌋),
 * one candidate wherever r changes, stopping when r > ratio·C, when θ < min or when
 * `feasible(r)` says no.
 */
export function thresholdGrid(
  xmax: Float32Array,
  ratio: number,
  feasible: (counts: Int32Array, r: number) => boolean = () => true,
): Candidate[] {
  let max = 0, min = Infinity;
  for (const v of xmax) {
    max = Math.max(max, v);
    min = Math.min(min, v);
  }
  if (!(max > 0)) return [];
  const stepNum = Math.max(100, Math.floor(max / 0.5));
  const step = (max - min) / stepNum;
  if (!(step > 0)) return [];
  const out: Candidate[] = [];
  let last = 0;
  for (let k = 1; k <= stepNum; k++) {
    const theta = max - k * step;
    if (theta < min || theta <= 0) break;
    const counts = disassemblyCounts(xmax, theta);
    const r = extraChannels(counts);
    if (r > ratio * xmax.length || !feasible(counts, r)) break;
    if (r !== last) out.push({ theta, r });
    last = r;
  }
  return out;
}

/** At most `cap` candidates, evenly spaced, the first and last kept. */
export function capCandidates<T>(all: T[], cap: number): T[] {
  if (all.length <= cap) return all;
  if (cap <= 1) return all.slice(-Math.max(cap, 0));
  const out: T[] = [];
  for (let i = 0; i < cap; i++) out.push(all[Math.round((i * (all.length - 1)) / (cap - 1))]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The error F vs F_q

/** Rows of each reading linear. */
function readerRows(c: ModelConfig, point: ReassemblyPoint): number[] {
  const q = c.heads * c.headDim, kv = c.kvHeads * c.headDim;
  if (point === "x_qkv") return [q, kv, kv];
  if (point === "x_gateup") return [c.intermediate, c.intermediate];
  return [c.hidden];
}

/** Causal GQA attention with RoPE on q/k of one sequence, before o_proj: [T, H·hd]. */
function attention(g: Graph, c: ModelConfig, T: number, q: Value, k: Value, v: Value): Value {
  const H = c.heads, KV = c.kvHeads, hd = c.headDim, G = H / KV;
  const cos = g.input("cos", [T, 1, hd / 2]);
  const sin = g.input("sin", [T, 1, hd / 2]);
  const mask = g.input("mask", [T, T]);
  const split = (x: Value, n: number) => g.reshape(x, [1, T, n, hd]);
  const qr = g.reshape(g.transpose(rope(g, split(q, H), cos, sin, hd), [0, 2, 1, 3]), [
    1,
    KV,
    G,
    T,
    hd,
  ]);
  const kr = g.reshape(g.transpose(rope(g, split(k, KV), cos, sin, hd), [0, 2, 3, 1]), [
    1,
    KV,
    1,
    hd,
    T,
  ]);
  const vr = g.reshape(g.transpose(split(v, KV), [0, 2, 1, 3]), [1, KV, 1, T, hd]);
  const scores = g.add(g.div(g.matmul(qr, kr), g.scalar(Math.sqrt(hd))), mask);
  const probs = g.op("Softmax", [scores], { axis: -1 });
  return g.reshape(
    g.transpose(g.reshape(g.matmul(probs, vr), [1, H, T, hd]), [0, 2, 1, 3]),
    [T, H * hd],
  );
}

/**
 * The graph of a point's function F on x [T, k] (k symbolic, so any channel count): inputs
 * `x`, the reading weights by name (and q/k/v biases), `cos`/`sin`/`mask` for `x_qkv`. With
 * `abits` < 16, x is fake-quantized per token first. With `ref`, outputs `mse` against the
 * input `ref`; else `y`.
 */
export function pointGraph(
  c: ModelConfig,
  point: ReassemblyPoint,
  T: number,
  abits: number,
  ref: boolean,
): Uint8Array {
  const g = new Graph();
  let x = g.input("x", [T, "k"]);
  if (abits < 16) x = fakeQuantPerToken(g, x, abits);
  const rows = readerRows(c, point);
  const lin = POINT_READERS[point].map((l, i) => {
    const w = g.input(`${l}.weight`, [rows[i], "k"]);
    const b = point === "x_qkv" && c.qkvBias ? g.input(`${l}.bias`, [rows[i]]) : null;
    return g.op("Gemm", b ? [x, w, b] : [x, w], { transB: 1 });
  });
  let y: Value;
  if (point === "x_qkv") y = attention(g, c, T, lin[0], lin[1], lin[2]);
  else if (point === "x_gateup") y = g.mul(g.mul(lin[0], g.op("Sigmoid", [lin[0]])), lin[1]);
  else y = lin[0];
  if (ref) {
    const out = point === "x_qkv"
      ? c.heads * c.headDim
      : point === "x_gateup"
      ? c.intermediate
      : c.hidden;
    const d = g.sub(y, g.input("ref", [T, out]));
    g.output(g.reduceMean(g.mul(d, d), [0, 1], 0), "mse");
  } else {
    g.output(y, "y");
  }
  return g.toBytes();
}

/** Scores maps of one point: MSE(F(x, W), F_q(x', W')) on the point's `feat`. */
interface PointEvaluator {
  error(m: ChannelMap): Promise<number>;
}

async function pointEvaluator(
  rt: Runtime,
  c: ModelConfig,
  point: ReassemblyPoint,
  feat: Tensor,
  w: BlockWeights,
  o: ReassembleOptions,
  graph: (abits: number, ref: boolean) => Uint8Array,
): Promise<PointEvaluator> {
  const T = feat.shape[0];
  const fixed: Record<string, Feed> = {};
  if (point === "x_qkv") {
    const { cos, sin } = ropeTables(c, T);
    Object.assign(fixed, { cos, sin, mask: causalMask(T) });
    if (c.qkvBias) { for (const l of POINT_READERS[point]) fixed[`${l}.bias`] = w[`${l}.bias`]; }
  }
  const weights = POINT_READERS[point].map((l) => `${l}.weight`);
  const fpFeeds: Record<string, Feed> = { ...fixed, x: feat };
  for (const n of weights) fpFeeds[n] = w[n];
  const ref = (await rt.run(graph(16, false), fpFeeds)).y;
  const spec = { bits: o.wbits, sym: false, groupSize: o.groupSize };
  return {
    async error(m: ChannelMap): Promise<number> {
      const feeds: Record<string, Feed> = { ...fixed, ref, x: mapActivations(feat, m) };
      for (const n of weights) feeds[n] = rtnWeight(mapColumns(w[n], m), spec).weight;
      return (await rt.run(graph(o.abits, true), feeds)).mse.data[0];
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Statistics and the stage

/** Per-point statistics of the full-precision block on the teacher inputs. */
export async function reassemblyStats(
  job: BlockJob,
): Promise<Record<ReassemblyPoint, PointStats>> {
  if (!job.fpIn) {
    throw new Error("reassemble(): needs the teacher chain (run with teacher: true)");
  }
  const T = job.fpIn.shape[1];
  const stats = {} as Record<ReassemblyPoint, PointStats>;
  await captureBlock(job.ctx.rt, job.ctx.config, job.fpWeights, job.fpIn, {
    onCapture: (cap, first) => {
      for (const p of REASSEMBLY_POINTS) {
        const t = cap[p], k = t.shape[1];
        const s = stats[p] ??= {
          xmax: new Float32Array(k),
          feat: { data: new Float32Array(0), shape: [0, k] },
        };
        if (first === 0) s.feat = { data: t.data.slice(0, T * k), shape: [T, k] };
        const m = s.xmax;
        for (let i = 0; i < t.data.length; i++) {
          const v = Math.abs(t.data[i]);
          if (v > m[i % k]) m[i % k] = v;
        }
      }
    },
  });
  return stats;
}

/** The plan chosen for one point, with its figures. */
interface PointChoice {
  plan: ReassemblyPlan;
  theta: number | null;
  report: PointReport;
}

/** Searches (or applies the fixed) θ of one point. */
async function choosePoint(
  job: BlockJob,
  point: ReassemblyPoint,
  st: PointStats,
  o: ReassembleOptions,
  graph: (abits: number, ref: boolean) => Uint8Array,
): Promise<PointChoice> {
  const { rt, config: c } = job.ctx;
  const C = st.xmax.length;
  const merge = o.merge ?? true;
  const readers = POINT_READERS[point].map((l) => job.weights[`${l}.weight`]);
  const scores = merge ? await mergeScores(rt, st.feat, readers, o.mergeScore) : null;
  const planFor = (counts: Int32Array, r: number): ReassemblyPlan | null => {
    if (!scores) return { counts, pairs: [] };
    const pairs = matchPairs(scores, counts, r);
    return pairs && { counts, pairs };
  };
  const ev = await pointEvaluator(rt, c, point, st.feat, job.weights, o, graph);
  const none = identityPlan(C);
  const before = await ev.error(channelMap(none));
  let grid: Candidate[];
  const fixed = o.theta?.[point];
  if (fixed !== undefined) {
    grid = fixed === null
      ? []
      : [{ theta: fixed, r: extraChannels(disassemblyCounts(st.xmax, fixed)) }];
  } else {
    grid = thresholdGrid(st.xmax, o.channelRatio, (counts, r) => !merge || mergeable(counts) >= r);
  }
  const chosen = capCandidates(grid, Math.max(1, (o.maxEvals ?? 64) - 1));
  let best: PointChoice = {
    plan: none,
    theta: null,
    report: {
      theta: null,
      channels_split: 0,
      merged_pairs: 0,
      extra_channels: 0,
      error_before: before,
      error_after: before,
      evaluated: 1 + chosen.length,
      candidates: grid.length,
      seconds: 0,
    },
  };
  for (const cand of chosen) {
    const counts = disassemblyCounts(st.xmax, cand.theta);
    const plan = planFor(counts, cand.r);
    if (!plan) throw new Error(`reassemble ${point}: θ ${cand.theta} needs more merges than exist`);
    const err = await ev.error(channelMap(plan));
    if (err < best.report.error_after || fixed !== undefined) {
      best = {
        plan,
        theta: cand.theta,
        report: {
          ...best.report,
          theta: cand.theta,
          channels_split: counts.reduce((n, t) => n + (t > 1 ? 1 : 0), 0),
          merged_pairs: plan.pairs.length,
          extra_channels: cand.r,
          error_after: err,
        },
      };
    }
  }
  return best;
}

/** The learned state of one point. */
function learnedOf(point: ReassemblyPoint, ch: PointChoice): BlockJob["learned"] {
  const k = `reassembly.${point}`;
  return {
    [`${k}.split_counts`]: { int32: ch.plan.counts.slice(), shape: [ch.plan.counts.length] },
    [`${k}.merge_src`]: {
      int32: Int32Array.from(ch.plan.pairs, (p) => p[0]),
      shape: [ch.plan.pairs.length],
    },
    [`${k}.merge_dst`]: {
      int32: Int32Array.from(ch.plan.pairs, (p) => p[1]),
      shape: [ch.plan.pairs.length],
    },
    [`${k}.theta`]: { data: Float32Array.of(ch.theta ?? 0), shape: [1] },
  };
}

/**
 * QLLM's adaptive channel reassembly as a stage (see the module doc): per block and point, the
 * threshold with the lowest quantized-output error (or none), applied as gather maps and
 * rewritten next-layer weights, the coefficients folded into the RMSNorm weights and up_proj
 * rows so that the run-time reassembly is only gathers and adds. Needs the teacher chain.
 * Every block gets all 12 `reassembly.*` tensors (identity maps where nothing changed).
 */
export function reassemble(o: ReassembleOptions): Stage {
  if (!(o.channelRatio >= 0)) throw new Error(`reassemble: channelRatio ${o.channelRatio} < 0`);
  const graphs = new Map<string, Uint8Array>();
  return stage("reassemble", async (job) => {
    const c = job.ctx.config;
    const T = job.fpIn?.shape[1] ?? job.ctx.seqlen;
    const t0 = performance.now();
    const stats = await reassemblyStats(job);
    const statsSeconds = (performance.now() - t0) / 1000;
    const points = {} as Record<ReassemblyPoint, PointReport>;
    const out: BlockWeights = { ...job.weights };
    for (const p of REASSEMBLY_POINTS) {
      const graph = (abits: number, ref: boolean) => {
        const key = `${p}/${T}/${abits}/${ref}`;
        let g = graphs.get(key);
        if (!g) graphs.set(key, g = pointGraph(c, p, T, abits, ref));
        return g;
      };
      const tp = performance.now();
      const ch = await choosePoint({ ...job, weights: out }, p, stats[p], o, graph);
      Object.assign(out, applyPlan(out, p, ch.plan));
      if (o.fold ?? true) Object.assign(out, foldPoint(out, p));
      Object.assign(job.learned, learnedOf(p, ch));
      points[p] = { ...ch.report, seconds: (performance.now() - tp) / 1000 };
      job.ctx.log(
        `block ${job.index + 1}: reassemble ${p} θ ${ch.theta?.toPrecision(4) ?? "none"}, ` +
          `${ch.report.channels_split} split, +${ch.report.extra_channels} channels, ` +
          `error ${ch.report.error_before.toExponential(3)} → ` +
          ch.report.error_after.toExponential(3),
      );
    }
    for (const [k, t] of Object.entries(out)) if (job.weights[k] !== t) job.weights[k] = t;
    return { points, stats_seconds: statsSeconds };
  });
}
