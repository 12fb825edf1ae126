/**
 * Rotary position embeddings: the inverse frequencies of a model (the one place a RoPE scaling
 * scheme changes), the float32 cos/sin tables of the calibration graphs, and the same angles
 * computed inside the deployed decoder from its `position_ids`.
 * @module
 */
import { DType, type Graph, type Value } from "../kernels/graph.ts";
import type { Tensor } from "../kernels/tensor.ts";
import type { ModelConfig } from "./config.ts";

/**
 * The inverse frequencies [hd/2] in float32, step by step as transformers computes them in
 * float32 (`modeling_rope_utils.py`): 1 / θ^(2i/hd), then the config's `rope_scaling` —
 * `linear` divides them by its factor (≡ positions / factor); `llama3` keeps those whose
 * wavelength 2π/f is below original/high_freq_factor, divides those above
 * original/low_freq_factor by the factor and blends in between with
 * s = (original/wavelength − low)/(high − low): f·(1 − s)/factor + f·s. torch evaluates
 * `scalar / tensor` as reciprocal(tensor)·scalar, so the wavelength and s are too.
 */
export function ropeInvFreq(c: ModelConfig): Float32Array {
  const f = Math.fround;
  const h = c.headDim / 2;
  const inv = new Float32Array(h);
  for (let i = 0; i < h; i++) inv[i] = f(1 / f(c.ropeTheta ** f((2 * i) / c.headDim)));
  const s = c.ropeScaling;
  if (!s) return inv;
  const factor = f(s.factor);
  if (s.type === "linear") {
    for (let i = 0; i < h; i++) inv[i] = f(inv[i] / factor);
    return inv;
  }
  const old = f(s.originalMaxPositions), low = f(s.lowFreqFactor);
  const lowWavelen = f(s.originalMaxPositions / s.lowFreqFactor);
  const highWavelen = f(s.originalMaxPositions / s.highFreqFactor);
  const twoPi = f(2 * Math.PI), span = f(s.highFreqFactor - s.lowFreqFactor);
  for (let i = 0; i < h; i++) {
    const v = inv[i];
    const wavelen = f(f(1 / v) * twoPi);
    if (wavelen < highWavelen) continue;
    if (wavelen > lowWavelen) {
      inv[i] = f(v / factor);
      continue;
    }
    const smooth = f(f(f(f(1 / wavelen) * old) - low) / span);
    inv[i] = f(f(f(f(1 - smooth) * v) / factor) + f(smooth * v));
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
