/**
 * The mathematics of QLLM's adaptive channel reassembly (Liu et al., 2024; ANCHORS.md §1.6) at the three linear
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
 * The stage that runs it over the block stream is `stages/reassemble.ts`.
 * @module
 */
import { rtnWeight } from "./quantizer.ts";
import { Graph, type Value } from "../kernels/graph.ts";
import { matmul } from "../kernels/matmul.ts";
import type { Feed, Runtime } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import {
  attention,
  fakeQuantPerToken,
  QK_NORM_NAMES,
  reassemblyNames,
} from "../models/block_graph.ts";
import { linearHasBias, type LinearName, linearShape, type ModelConfig } from "../models/config.ts";
import { causalMask, ropeTables } from "../models/forward.ts";
import type { BlockWeights } from "../models/source.ts";

/** The linear inputs QLLM reassembles, in block order. */
export const REASSEMBLY_POINTS = ["x_qkv", "x_gateup", "x_down"] as const;
/** A reassembled linear input. */
export type ReassemblyPoint = (typeof REASSEMBLY_POINTS)[number];

/** What a reassembled point is: who reads it, where its coefficients fold, what the search scores. */
export interface PointRule {
  /** The linears reading the point (their columns are rewritten), in concatenation order. */
  readers: readonly LinearName[];
  /** The tensor whose rows (or entries) carry each source channel's coefficient after the fold. */
  foldInto: string;
  /**
   * F, the computation the threshold search protects, on the readers' outputs (each [T, rows],
   * their biases included): the attention output before o_proj (with the q/k norm when the
   * model has one), silu(gate)·up, or the plain linear; `r` holds the RoPE tables and causal
   * mask of one sequence.
   */
  f(g: Graph, c: ModelConfig, T: number, outs: Value[], r: RopeInputs): Value;
  /** Width of F's output. */
  width(c: ModelConfig): number;
}

/** The RoPE tables [T, 1, hd/2] and causal mask [T, T] of one sequence. */
export interface RopeInputs {
  /** cos of the rotation angles [T, 1, hd/2]. */
  cos: Value;
  /** sin of the rotation angles [T, 1, hd/2]. */
  sin: Value;
  /** Additive causal mask [T, T]. */
  mask: Value;
  /** Qwen3's q/k norm weights, by block tensor name, when the model has them. */
  norms?: Record<string, Value>;
}

/** One rule per point, in block order. */
export const POINT_RULES: Record<ReassemblyPoint, PointRule> = {
  x_qkv: {
    readers: ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    foldInto: "input_layernorm.weight",
    f: (g, c, T, [q, k, v], r) => attention(g, c, { batch: 1, seqlen: T }, q, k, v, r, r.norms).out,
    width: (c) => c.heads * c.headDim,
  },
  x_gateup: {
    readers: ["mlp.gate_proj", "mlp.up_proj"],
    foldInto: "post_attention_layernorm.weight",
    f: (g, _c, _T, [gate, up]) => g.mul(g.mul(gate, g.op("Sigmoid", [gate])), up),
    width: (c) => c.intermediate,
  },
  x_down: {
    readers: ["mlp.down_proj"],
    foldInto: "mlp.up_proj.weight",
    f: (_g, _c, _T, [y]) => y,
    width: (c) => c.hidden,
  },
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
  /** First source channel of each output channel. */
  srcA: Int32Array;
  /** Second source channel (any, when its coefficient is 0). */
  srcB: Int32Array;
  /** Coefficient of the first source. */
  coefA: Float32Array;
  /** Coefficient of the second source (0: unused). */
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
  /** Channels split into two or more sub-channels. */
  channels_split: number;
  /** Pairs of channels merged back into one. */
  merged_pairs: number;
  /** Sub-channels added by the split (= merged pairs when merging). */
  extra_channels: number;
  /** Quantized-output MSE with plain RTN weights and per-token activations. */
  error_before: number;
  /** The same after reassembly (equal to `error_before` when not reassembled). */
  error_after: number;
  /** Thresholds scored (r = 0 included). */
  evaluated: number;
  /** Distinct r the grid offered. */
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
  for (const l of POINT_RULES[point].readers) out[`${l}.weight`] = mapColumns(w[`${l}.weight`], m);
  return out;
}

/**
 * Folds a point's coefficients into the layer before it: each source channel's coefficient
 * (1/T_c, ½ or 1) multiplies its RMSNorm weight (`x_qkv`, `x_gateup`) or its up_proj row and
 * bias (`x_down`), and the map's coefficients become 1 (0 for unused second taps). Returns the
 * replaced tensors; exact up to float rounding.
 */
export function foldPoint(w: BlockWeights, point: ReassemblyPoint): BlockWeights {
  const m = readMap(w, point);
  const target = POINT_RULES[point].foldInto;
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
  // up_proj's output channel c is κ_c·(W_c·x + b_c): its bias scales with its row.
  const bias = target === "mlp.up_proj.weight" ? w["mlp.up_proj.bias"] : undefined;
  if (data && bias) {
    const b = bias.data.slice();
    for (let c = 0; c < kappa.length; c++) if (!Number.isNaN(kappa[c])) b[c] *= kappa[c];
    out["mlp.up_proj.bias"] = { data: b, shape: [...bias.shape] };
  }
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

/**
 * The graph of a point's function F on x [T, k] (k symbolic, so any channel count): inputs
 * `x`, the reading weights by name (and their biases), `cos`/`sin`/`mask` (and the q/k norm
 * weights) for `x_qkv`. With
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
  const rule = POINT_RULES[point];
  const g = new Graph();
  let x = g.input("x", [T, "k"]);
  if (abits < 16) x = fakeQuantPerToken(g, x, abits);
  const outs = rule.readers.map((l) => {
    const rows = linearShape(c, l)[0];
    const w = g.input(`${l}.weight`, [rows, "k"]);
    const b = linearHasBias(c, l) ? g.input(`${l}.bias`, [rows]) : null;
    return g.op("Gemm", b ? [x, w, b] : [x, w], { transB: 1 });
  });
  const norms = c.qkNorm
    ? Object.fromEntries(QK_NORM_NAMES.map((n) => [n, g.input(n, [c.headDim])]))
    : undefined;
  const r = point === "x_qkv"
    ? {
      cos: g.input("cos", [T, 1, c.headDim / 2]),
      sin: g.input("sin", [T, 1, c.headDim / 2]),
      mask: g.input("mask", [T, T]),
      norms,
    }
    : null;
  const y = rule.f(g, c, T, outs, r!);
  if (ref) {
    const d = g.sub(y, g.input("ref", [T, rule.width(c)]));
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
  const readers = POINT_RULES[point].readers;
  if (point === "x_qkv") {
    const { cos, sin } = ropeTables(c, T);
    Object.assign(fixed, { cos, sin, mask: causalMask(T, c.slidingWindow) });
    if (c.qkNorm) { for (const n of QK_NORM_NAMES) fixed[n] = w[n]; }
  }
  for (const l of readers) if (linearHasBias(c, l)) fixed[`${l}.bias`] = w[`${l}.bias`];
  const weights = readers.map((l) => `${l}.weight`);
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

/** The plan chosen for one point, with its figures. */
export interface PointChoice {
  /** The chosen plan (the identity when nothing beat plain quantization). */
  plan: ReassemblyPlan;
  /** Its threshold, or null. */
  theta: number | null;
  /** Its figures. */
  report: PointReport;
}

/**
 * Searches (or applies the fixed) θ of one point of a block with tensors `w`: every threshold of
 * the grid (at most `o.maxEvals`) and no reassembly at all, scored by F's quantized-output error
 * on the point's statistics; `graph` gives the (cached) point graphs.
 */
export async function choosePoint(
  rt: Runtime,
  c: ModelConfig,
  w: BlockWeights,
  point: ReassemblyPoint,
  st: PointStats,
  o: ReassembleOptions,
  graph: (abits: number, ref: boolean) => Uint8Array,
): Promise<PointChoice> {
  const C = st.xmax.length;
  const merge = o.merge ?? true;
  const readers = POINT_RULES[point].readers.map((l) => w[`${l}.weight`]);
  const scores = merge ? await mergeScores(rt, st.feat, readers, o.mergeScore) : null;
  const planFor = (counts: Int32Array, r: number): ReassemblyPlan | null => {
    if (!scores) return { counts, pairs: [] };
    const pairs = matchPairs(scores, counts, r);
    return pairs && { counts, pairs };
  };
  const ev = await pointEvaluator(rt, c, point, st.feat, w, o, graph);
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
