/**
 * Calibration statistics of a block's linear layers: the Hessians H = 2/n Σ xxᵀ of their inputs
 * (n = calibration samples, as the GPTQ reference scales them), gathered by running the block
 * graph with its linear inputs as extra outputs and summing xᵀx per batch through ONNX Runtime.
 * @module
 */
import { matmul } from "../kernels/matmul.ts";
import type { Runtime } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import type { CapturePoint } from "../models/block_graph.ts";
import type { LinearName } from "../models/config.ts";
import { type Activations, captureBlock, type GramBlocks } from "../models/forward.ts";
import type { BlockWeights } from "../models/source.ts";
import type { RunContext } from "./job.ts";

/** The captured input each linear layer reads. */
export const INPUT_OF: Record<LinearName, CapturePoint> = {
  "self_attn.q_proj": "x_qkv",
  "self_attn.k_proj": "x_qkv",
  "self_attn.v_proj": "x_qkv",
  "self_attn.o_proj": "x_o",
  "mlp.gate_proj": "x_gateup",
  "mlp.up_proj": "x_gateup",
  "mlp.down_proj": "x_down",
};

/** Sums per-batch Gram matrices in float64, upper triangle only (they are symmetric). */
class GramSum {
  readonly k: number;
  #upper: Float64Array;

  constructor(k: number) {
    this.k = k;
    this.#upper = new Float64Array((k * (k + 1)) / 2);
  }

  /** Adds the upper blocks of one batch's Gram matrix. */
  add({ bounds, blocks }: GramBlocks): void {
    const k = this.k, u = this.#upper;
    for (let a = 0; a < blocks.length; a++) {
      for (let b = a; b < blocks.length; b++) {
        const g = blocks[a][b - a].data;
        const r0 = bounds[a], c0 = bounds[b], w = bounds[b + 1] - c0;
        for (let i = r0; i < bounds[a + 1]; i++) {
          // Packed row i of the upper triangle starts at i·k − i(i−1)/2 with column i.
          const row = i * k - (i * (i - 1)) / 2 - i;
          const from = Math.max(c0, i);
          const src = (i - r0) * w - c0;
          for (let j = from; j < c0 + w; j++) u[row + j] += g[src + j];
        }
      }
    }
  }

  /** `scale · Σ`, as a full symmetric float32 matrix. */
  scaled(scale: number): Float32Array {
    const k = this.k, u = this.#upper;
    const h = new Float32Array(k * k);
    let t = 0;
    for (let i = 0; i < k; i++) {
      for (let j = i; j < k; j++) h[i * k + j] = h[j * k + i] = u[t++] * scale;
    }
    return h;
  }
}

/**
 * Hessians of the requested capture points, each [in, in] float32. The block graph computes
 * each batch's xᵀx (never the block's output), and the batches are summed in float64.
 */
export async function captureHessians(
  ctx: RunContext,
  weights: BlockWeights,
  x: Activations,
  points: ReadonlySet<CapturePoint>,
  o: { batch?: number } = {},
): Promise<Map<CapturePoint, Float32Array>> {
  const sums = new Map<CapturePoint, GramSum>();
  await captureBlock(ctx.rt, ctx.config, weights, x, {
    batch: o.batch,
    transient: true,
    abits: ctx.abits,
    kvBits: ctx.kvBits,
    grams: [...points],
    onGrams: (grams) => {
      for (const [p, g] of grams) {
        let s = sums.get(p);
        if (!s) sums.set(p, s = new GramSum(g.bounds.at(-1)!));
        s.add(g);
      }
    },
  });
  const scale = 2 / x.shape[0];
  const out = new Map<CapturePoint, Float32Array>();
  for (const [p, s] of sums) {
    out.set(p, s.scaled(scale));
    sums.delete(p);
  }
  return out;
}

/**
 * Relative output error of replacing W by Ŵ on the calibration inputs:
 * ‖(W − Ŵ)Xᵀ‖² / ‖WXᵀ‖² = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ).
 */
export async function relativeOutputError(
  rt: Runtime,
  W: Tensor,
  Wq: Tensor,
  H: Float32Array,
): Promise<number> {
  const k = W.shape[1];
  const d = new Float32Array(W.data.length);
  for (let i = 0; i < d.length; i++) d[i] = W.data[i] - Wq.data[i];
  const Ht: Tensor = { data: H, shape: [k, k] };
  const quad = async (A: Tensor) => {
    const AH = await matmul(rt, A, Ht);
    let s = 0;
    for (let i = 0; i < A.data.length; i++) s += A.data[i] * AH.data[i];
    return s;
  };
  const den = await quad(W);
  return den > 0 ? (await quad({ data: d, shape: W.shape })) / den : 0;
}
