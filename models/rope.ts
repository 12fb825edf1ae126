/**
 * Rotary position embeddings: the inverse frequencies of a model (the one place a RoPE scaling
 * scheme changes), the float32 cos/sin tables of the calibration graphs, and the same angles
 * computed inside the deployed decoder from its `position_ids`.
 * @module
 */
import { DType, type Graph, type Value } from "../kernels/graph.ts";
import type { Tensor } from "../kernels/tensor.ts";
import type { ModelConfig } from "./config.ts";

/** The inverse frequencies [hd/2] in float32 as the reference computes them: 1 / θ^(2i/hd). */
export function ropeInvFreq(c: ModelConfig): Float32Array {
  const h = c.headDim / 2;
  const inv = new Float32Array(h);
  for (let i = 0; i < h; i++) {
    inv[i] = Math.fround(1 / Math.fround(c.ropeTheta ** Math.fround((2 * i) / c.headDim)));
  }
  return inv;
}

/** RoPE tables [T, 1, hd/2] in float32 for positions 0..T−1 (angle pos·inv_freq in float32). */
export function ropeTables(c: ModelConfig, seqlen: number): { cos: Tensor; sin: Tensor } {
  const inv = ropeInvFreq(c);
  const h = inv.length;
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

/**
 * The RoPE cos/sin of each token from `position_ids` (int64 [B, T]), as graph values
 * [B, T, 1, hd/2] that broadcast over heads like the tables do: the angle is position·inv_freq
 * in float32, the same product the tables round.
 */
export function ropeAt(g: Graph, c: ModelConfig, positionIds: Value): { cos: Value; sin: Value } {
  const inv = ropeInvFreq(c);
  const pos = g.op("Unsqueeze", [g.op("Cast", [positionIds], { to: DType.float32 }), g.int64([2])]);
  const angle = g.mul(pos, g.constant(inv, [inv.length]));
  const heads = (v: Value) => g.op("Unsqueeze", [v, g.int64([2])]);
  return { cos: heads(g.op("Cos", [angle])), sin: heads(g.op("Sin", [angle])) };
}
