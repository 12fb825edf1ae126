/**
 * Learnable weight clipping (OmniQuant's LWC) as graph ops, so its straight-through gradients
 * come from the autodiff of the block graph: per output channel (or per group of input
 * columns), the range [σ(β)·min w, σ(γ)·max w] is quantized asymmetrically
 * (scale = range/maxq clamped to [1e-5, 1e4], zero = round(−min/scale)), and the weight becomes
 * scale·(clip(round(w/scale) + zero, 0, maxq) − zero). With ABQ-LLM's bit balance a b-bit
 * weight (b ≤ 2) gets maxq = 2^b, i.e. 2^b + 1 levels.
 * @module
 */
import type { Graph, Value } from "../kernels/graph.ts";
import type { Param } from "../kernels/optim.ts";

/** How a weight is quantized inside a training graph. */
export interface LwcSpec {
  /** Bits per weight. */
  bits: number;
  /** Input columns per group; 0 = per output channel. Must divide the input width. */
  groupSize: number;
  /** ABQ-LLM's bit balance: 2^bits + 1 levels (only for bits ≤ 2). */
  bitBalance?: boolean;
}

/** Levels above zero: 2^bits − 1, or 2^bits with bit balance at ≤ 2 bits. */
export function maxLevel(spec: LwcSpec): number {
  return spec.bitBalance && spec.bits <= 2 ? 2 ** spec.bits : 2 ** spec.bits - 1;
}

/** Information per weight of a spec: log2(levels) (≈ 2.32 for bit-balanced 2-bit weights). */
export function levelBits(spec: LwcSpec): number {
  return Math.log2(maxLevel(spec) + 1);
}

/** Number of clipping factors of a [rows, cols] weight: one per row and group. */
export function lwcParamCount(rows: number, cols: number, spec: LwcSpec): number {
  return rows * (spec.groupSize ? cols / spec.groupSize : 1);
}

/**
 * The clipping logits γ and β of linear `layer` ([rows·groups, 1] each), at OmniQuant's initial
 * value 4 (σ(4) ≈ 0.982), named `{layer}.lwc_gamma` and `{layer}.lwc_beta`.
 */
export function lwcParams(
  layer: string,
  rows: number,
  cols: number,
  spec: LwcSpec,
  lr: number,
): Param[] {
  const n = lwcParamCount(rows, cols, spec);
  return ["lwc_gamma", "lwc_beta"].map((k) => ({
    name: `${layer}.${k}`,
    data: new Float32Array(n).fill(4),
    shape: [n, 1],
    lr,
  }));
}

/** Bits a packed weight of `spec` stores: level bits per weight, an fp16 scale and a zero per group. */
export function lwcStoredBits(spec: LwcSpec, rows: number, cols: number): number {
  const groups = spec.groupSize ? cols / spec.groupSize : 1;
  return rows * cols * levelBits(spec) + rows * groups * (16 + Math.ceil(levelBits(spec)));
}

/** A weight fake-quantized by LWC, with the grid it lies on. */
export interface LwcGrid {
  /** Ŵ [rows, cols] = scale · (q − zero). */
  weight: Value;
  /** The scale of each row and group, [rows, groups]. */
  scale: Value;
  /** The (integer-valued) zero point of each row and group, [rows, groups]. */
  zero: Value;
}

/**
 * Fake-quantizes `w` [rows, cols] with clipping logits `gamma`, `beta` [rows·groups, 1]
 * (OmniQuant initialises both to 4: σ(4) ≈ 0.982), returning Ŵ and its scales and zero points.
 */
export function lwcGrid(
  g: Graph,
  w: Value,
  gamma: Value | null,
  beta: Value | null,
  rows: number,
  cols: number,
  spec: LwcSpec,
): LwcGrid {
  const gs = spec.groupSize || cols;
  if (cols % gs !== 0) {
    throw new Error(`--group-size ${spec.groupSize} does not divide the input width ${cols}`);
  }
  const maxq = maxLevel(spec);
  const grouped = g.reshape(w, [(rows * cols) / gs, gs]);
  let xmax = g.reduceMax(grouped, [1]);
  let xmin = g.reduceMin(grouped, [1]);
  if (gamma) xmax = g.mul(g.op("Sigmoid", [gamma]), xmax);
  if (beta) xmin = g.mul(g.op("Sigmoid", [beta]), xmin);
  const scale = g.op("Clip", [
    g.div(g.sub(xmax, xmin), g.scalar(maxq)),
    g.scalar(1e-5),
    g.scalar(1e4),
  ]);
  const zero = g.op("Round", [
    g.op("Clip", [g.div(g.op("Neg", [xmin]), scale), g.scalar(-1e4), g.scalar(1e4)]),
  ]);
  const q = g.op("Clip", [
    g.add(g.op("Round", [g.div(grouped, scale)]), zero),
    g.scalar(0),
    g.scalar(maxq),
  ]);
  const groups = cols / gs;
  return {
    weight: g.reshape(g.mul(g.sub(q, zero), scale), [rows, cols]),
    scale: g.reshape(scale, [rows, groups]),
    zero: g.reshape(zero, [rows, groups]),
  };
}

/** {@linkcode lwcGrid}'s fake-quantized weight alone. */
export function lwcQuant(
  g: Graph,
  w: Value,
  gamma: Value | null,
  beta: Value | null,
  rows: number,
  cols: number,
  spec: LwcSpec,
): Value {
  return lwcGrid(g, w, gamma, beta, rows, cols, spec).weight;
}
