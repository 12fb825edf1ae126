/**
 * Calibration statistics of a block's linear layers: the Hessians H = 2/n Σ xxᵀ of their inputs
 * (n = calibration samples, as the GPTQ reference scales them), gathered by running the block
 * graph with its linear inputs as extra outputs and summing xᵀx per batch through ONNX Runtime.
 * @module
 */
import { gram, matmul } from "../kernels/matmul.ts";
import type { Runtime } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import type { CapturePoint } from "../models/block_graph.ts";
import type { LinearName } from "../models/config.ts";
import { runBlock } from "../models/forward.ts";
import type { BlockWeights } from "../models/model.ts";
import type { Activations, RunContext } from "./job.ts";

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

/** Rows stacked before each xᵀx product: fewer, larger ORT calls and fewer k×k temporaries. */
const STACK_ROWS = 4096;

/** Accumulates xᵀx of one capture point over row chunks, in float64. */
class GramSum {
  readonly k: number;
  readonly sum: Float64Array;
  #rows: Float32Array;
  #filled = 0;

  constructor(k: number, rowsPerBatch: number) {
    this.k = k;
    this.sum = new Float64Array(k * k);
    this.#rows = new Float32Array(Math.max(STACK_ROWS, rowsPerBatch) * k);
  }

  async add(rt: RunContext["rt"], x: Tensor): Promise<void> {
    if (this.#filled * this.k + x.data.length > this.#rows.length) await this.flush(rt);
    this.#rows.set(x.data, this.#filled * this.k);
    this.#filled += x.shape[0];
  }

  async flush(rt: RunContext["rt"]): Promise<void> {
    if (this.#filled === 0) return;
    const rows = {
      data: this.#rows.subarray(0, this.#filled * this.k),
      shape: [this.#filled, this.k],
    };
    const g = (await gram(rt, rows)).data;
    const s = this.sum;
    for (let i = 0; i < s.length; i++) s[i] += g[i];
    this.#filled = 0;
  }
}

/** Hessians of the requested capture points, each [in, in] float32 (summed in float64). */
export async function captureHessians(
  ctx: RunContext,
  weights: BlockWeights,
  x: Activations,
  points: ReadonlySet<CapturePoint>,
): Promise<Map<CapturePoint, Float32Array>> {
  const sums = new Map<CapturePoint, GramSum>();
  await runBlock(ctx.rt, ctx.config, weights, x, {
    abits: ctx.abits,
    onCapture: async (inputs) => {
      for (const p of points) {
        const xp = inputs[p];
        let s = sums.get(p);
        if (!s) {
          s = new GramSum(xp.shape[1], xp.shape[0]);
          sums.set(p, s);
        }
        await s.add(ctx.rt, xp);
      }
    },
  });
  const scale = 2 / x.shape[0];
  const out = new Map<CapturePoint, Float32Array>();
  for (const [p, s] of sums) {
    await s.flush(ctx.rt);
    const h = new Float32Array(s.sum.length);
    for (let i = 0; i < h.length; i++) h[i] = s.sum[i] * scale;
    out.set(p, h);
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
