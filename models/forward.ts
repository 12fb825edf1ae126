/**
 * Running a model piecewise: embedding lookup, one decoder block over many windows (batched
 * through the cached block graph), and the head (per-token NLL or logits).
 * @module
 */
import type { Runtime } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import {
  buildBlockGraph,
  buildHeadGraph,
  CAPTURE_POINTS,
  type CapturePoint,
} from "./block_graph.ts";
import { blockTensorShapes, type ModelConfig } from "./config.ts";
import type { BlockWeights } from "./model.ts";

/** RoPE tables [T, 1, hd/2] in float32 as the reference computes them (θ^(2i/hd), pos·inv_freq). */
export function ropeTables(c: ModelConfig, seqlen: number): { cos: Tensor; sin: Tensor } {
  const h = c.headDim / 2;
  const inv = new Float32Array(h);
  for (let i = 0; i < h; i++) {
    inv[i] = Math.fround(1 / Math.fround(c.ropeTheta ** Math.fround((2 * i) / c.headDim)));
  }
  const cos = new Float32Array(seqlen * h), sin = new Float32Array(seqlen * h);
  for (let t = 0; t < seqlen; t++) {
    for (let i = 0; i < h; i++) {
      const a = Math.fround(t * inv[i]);
      cos[t * h + i] = Math.cos(a);
      sin[t * h + i] = Math.sin(a);
    }
  }
  return { cos: { data: cos, shape: [seqlen, 1, h] }, sin: { data: sin, shape: [seqlen, 1, h] } };
}

/** Additive causal mask [T, T]: 0 on and below the diagonal, −1e30 above. */
export function causalMask(seqlen: number): Tensor {
  const m = new Float32Array(seqlen * seqlen);
  for (let i = 0; i < seqlen; i++) for (let j = i + 1; j < seqlen; j++) m[i * seqlen + j] = -1e30;
  return { data: m, shape: [seqlen, seqlen] };
}

/** Looks up token embeddings: ids of `windows × seqlen` tokens → [windows, seqlen, hidden]. */
export function embed(table: Tensor, ids: ArrayLike<number>, seqlen: number): Tensor {
  const d = table.shape[1], vocab = table.shape[0];
  const out = new Float32Array(ids.length * d);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!(id >= 0 && id < vocab)) {
      throw new Error(`token id ${id} is outside the vocabulary (${vocab})`);
    }
    out.set(table.data.subarray(id * d, (id + 1) * d), i * d);
  }
  return { data: out, shape: [ids.length / seqlen, seqlen, d] };
}

/** How a block is run over a set of windows. */
export interface BlockRunOptions {
  /** Per-token activation fake quantization of every linear input (bits; ≥ 16 or absent: off). */
  abits?: number;
  /**
   * Write the output over the input (x is consumed): each batch's output depends only on that
   * batch's input, so this halves the activation memory of a pass.
   */
  inPlace?: boolean;
  /** Per-token fake quantization of q/k/v (bits; absent: off). */
  kvBits?: number;
  /** Windows per graph run; default from a ~64 MB activation budget ({@linkcode defaultBatch}). */
  batch?: number;
  /**
   * Receives each batch's linear inputs ([rows, in] for `x_qkv`, `x_o`, `x_gateup`, `x_down`)
   * when given; the block graph then also computes them.
   */
  onCapture?: (inputs: Record<CapturePoint, Tensor>, firstWindow: number) => void | Promise<void>;
}

/**
 * Windows per block-graph run: each intermediate tensor is kept under ~16 MB, since every cached
 * session's memory arena keeps its own peak; larger batches were no faster on the CPU.
 */
export function defaultBatch(c: ModelConfig, seqlen: number): number {
  const largest = 4 * Math.max(
    c.heads * seqlen * seqlen,
    seqlen * Math.max(c.intermediate, c.hidden, c.heads * c.headDim),
  );
  return Math.max(1, Math.min(64, Math.floor(16e6 / largest)));
}

/** Runs one decoder block over x [W, T, d] and returns its output [W, T, d]. */
export async function runBlock(
  rt: Runtime,
  c: ModelConfig,
  weights: BlockWeights,
  x: Tensor,
  o: BlockRunOptions = {},
): Promise<Tensor> {
  const [W, T, d] = x.shape;
  const B = Math.min(W, o.batch ?? defaultBatch(c, T));
  const { cos, sin } = ropeTables(c, T);
  const mask = causalMask(T);
  const out = o.inPlace ? x.data : new Float32Array(x.data.length);
  // The graph takes every tensor the block carries (reassembly maps, static scales, …).
  const standard = blockTensorShapes({ ...c, extraTensors: undefined });
  const extraTensors: Record<string, number[]> = {};
  for (const [name, t] of Object.entries(weights)) {
    if (!(name in standard)) extraTensors[name] = t.shape;
  }
  // One graph for every batch: a short last batch is padded (one cached session, one arena).
  const graph = buildBlockGraph({ ...c, extraTensors }, {
    batch: B,
    seqlen: T,
    abits: o.abits,
    kvBits: o.kvBits,
    capture: !!o.onCapture,
  });
  for (let w0 = 0; w0 < W; w0 += B) {
    const b = Math.min(B, W - w0);
    let xb = x.data.subarray(w0 * T * d, (w0 + b) * T * d);
    if (o.inPlace) xb = xb.slice(); // the output is written over this batch's input
    if (b < B) {
      const padded = new Float32Array(B * T * d);
      padded.set(xb);
      xb = padded;
    }
    const feeds: Record<string, Tensor> = { x: { data: xb, shape: [B, T, d] }, cos, sin, mask };
    for (const [name, t] of Object.entries(weights)) feeds[name] = t;
    const r = await rt.run(graph, feeds);
    out.set(r.y.data.subarray(0, b * T * d), w0 * T * d);
    if (o.onCapture) {
      const cap = {} as Record<CapturePoint, Tensor>;
      for (const p of CAPTURE_POINTS) {
        const t = r[p];
        const k = t.shape[1];
        cap[p] = b < B ? { data: t.data.subarray(0, b * T * k), shape: [b * T, k] } : t;
      }
      await o.onCapture(cap, w0);
    }
  }
  return { data: out, shape: [W, T, d] };
}

/**
 * Mean next-token NLL of each window (positions 0..T−2 predict 1..T−1), the per-token values
 * computed in float32 by the head graph and averaged in float64 (PROTOCOL.md §3).
 */
export async function windowNll(
  rt: Runtime,
  c: ModelConfig,
  norm: Tensor,
  head: Tensor,
  x: Tensor,
  ids: ArrayLike<number>,
  batch?: number,
): Promise<Float64Array> {
  const [W, T, d] = x.shape;
  batch ??= Math.max(1, Math.min(64, Math.floor(16e6 / (4 * T * c.vocab))));
  const result = new Float64Array(W);
  for (let w0 = 0; w0 < W; w0 += batch) {
    const b = Math.min(batch, W - w0);
    const targets = new BigInt64Array(b * (T - 1));
    for (let i = 0; i < b; i++) {
      for (let t = 0; t < T - 1; t++) targets[i * (T - 1) + t] = BigInt(ids[(w0 + i) * T + t + 1]);
    }
    const graph = buildHeadGraph(c, { batch: b, seqlen: T, output: "nll" });
    const r = await rt.run(graph, {
      x: { data: x.data.subarray(w0 * T * d, (w0 + b) * T * d), shape: [b, T, d] },
      norm,
      head,
      targets: { int64: targets, shape: [b, T - 1] },
    });
    for (let i = 0; i < b; i++) {
      let s = 0;
      for (let t = 0; t < T - 1; t++) s += r.nll.data[i * (T - 1) + t];
      result[w0 + i] = s / (T - 1);
    }
  }
  return result;
}

/** Logits [B, T, V] of hidden states x [B, T, d]. */
export async function logits(
  rt: Runtime,
  c: ModelConfig,
  norm: Tensor,
  head: Tensor,
  x: Tensor,
): Promise<Tensor> {
  const [B, T] = x.shape;
  const graph = buildHeadGraph(c, { batch: B, seqlen: T, output: "logits" });
  return (await rt.run(graph, { x, norm, head })).logits;
}
