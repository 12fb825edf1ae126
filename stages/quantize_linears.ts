/**
 * The stage shared by the layer-wise methods (RTN, GPTQ, CLAQ): it owns the data flow —
 * Hessians of each linear's inputs on the quantized chain, true-sequential groups, reports —
 * while a {@linkcode LinearQuantizer} owns the algorithm for one weight matrix.
 * @module
 */
import { firstNonFinite, type Tensor } from "../kernels/tensor.ts";
import type { CapturePoint } from "../models/block_graph.ts";
import { LINEAR_NAMES, type LinearName } from "../models/config.ts";
import type { LearnedState, RunContext, Stage } from "./job.ts";
import { stage } from "./job.ts";
import { captureHessians, INPUT_OF, relativeOutputError } from "./hessian.ts";

/** What an algorithm returns for one linear layer. */
export interface QuantizedLinear {
  /** The fake-quantized weight (same shape). */
  weight: Tensor;
  /** State saved under `{layer}.{key}` (scales, zeros, g_idx, codebooks, …). */
  learned?: LearnedState;
  /** Per-layer figures for the report (errors, bits, damping, …). */
  report?: Record<string, number | string | boolean>;
  /** Bits a packed export stores for this weight, metadata included. */
  storedBits: number;
}

/** One layer-wise quantization algorithm. */
export interface LinearQuantizer {
  /** Stage name in reports and progress lines. */
  name: string;
  /** Re-capture inputs after each group of layers is quantized (GPTQ's `--true-sequential`). */
  trueSequential: boolean;
  /** Quantizes one weight, given the Hessian of its inputs. */
  quantize(
    ctx: RunContext,
    layer: LinearName,
    W: Tensor,
    H: Float32Array,
    blockIndex: number,
  ): Promise<QuantizedLinear>;
}

/** True-sequential order of the reference: [k, v, q] → [o] → [up, gate] → [down]. */
export const SEQUENTIAL_GROUPS: LinearName[][] = [
  ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
  ["self_attn.o_proj"],
  ["mlp.up_proj", "mlp.gate_proj"],
  ["mlp.down_proj"],
];

/** A stage quantizing every linear of each block with `q`, inputs from the quantized chain. */
export function quantizeLinears(q: LinearQuantizer): Stage {
  return stage(q.name, async (job) => {
    const groups = q.trueSequential ? SEQUENTIAL_GROUPS : [[...LINEAR_NAMES]];
    const layers: Record<string, Record<string, number | string | boolean>> = {};
    let hessianSeconds = 0, quantSeconds = 0;
    for (const group of groups) {
      const t0 = performance.now();
      const points = new Set<CapturePoint>(group.map((l) => INPUT_OF[l]));
      const H = await captureHessians(job.ctx, job.weights, job.qIn, points);
      const t = (performance.now() - t0) / 1000;
      hessianSeconds += t;
      job.ctx.log(
        `block ${job.index + 1}/${job.ctx.config.layers}: ${q.name} Hessians of ` +
          `${[...points].join(", ")} (${t.toFixed(1)} s)`,
      );
      for (const [i, layer] of group.entries()) {
        const t1 = performance.now();
        const key = `${layer}.weight`;
        const W = job.weights[key];
        const h = H.get(INPUT_OF[layer])!;
        // Release each Hessian after its last layer: down_proj's is the largest and comes last.
        if (!group.slice(i + 1).some((l) => INPUT_OF[l] === INPUT_OF[layer])) {
          H.delete(INPUT_OF[layer]);
        }
        const r = await q.quantize(job.ctx, layer, W, h, job.index);
        const bad = firstNonFinite(r.weight.data);
        if (bad >= 0) {
          throw new Error(
            `block ${job.index + 1}: ${q.name} produced a non-finite weight in ${layer} ` +
              `(${r.weight.data[bad]} at index ${bad}); nothing is written`,
          );
        }
        const rel = await relativeOutputError(job.ctx.rt, W, r.weight, h);
        job.weights[key] = r.weight;
        for (const [k, v] of Object.entries(r.learned ?? {})) job.learned[`${layer}.${k}`] = v;
        job.storage[key] = { weights: W.data.length, bits: r.storedBits };
        layers[layer] = { ...r.report, rel_output_error: rel };
        quantSeconds += (performance.now() - t1) / 1000;
        job.ctx.log(
          `block ${job.index + 1}/${job.ctx.config.layers}: ${q.name} ${layer} ` +
            `rel. output error ${rel.toExponential(3)}`,
        );
      }
    }
    return { layers, hessian_seconds: hessianSeconds, quantize_seconds: quantSeconds };
  });
}
