/**
 * Static per-tensor activation quantization: calibrates one asymmetric range per linear-input
 * point of each block (min/max over every calibration token, range including 0) on the student
 * chain, after the block's weights are final, and stores it as the block tensors
 * `act_quant.{point}.scale|zero`, which the block graph then applies instead of dynamic
 * per-token ranges. Run it after the weight stages and before `propagate()`.
 * @module
 */
import { actQuantNames, CAPTURE_POINTS, type CapturePoint } from "../models/block_graph.ts";
import { captureBlock } from "../models/forward.ts";
import { type Stage, stage } from "./job.ts";

/** Scale and zero point of a range [min, max] (widened to include 0) at `bits`. */
export function staticRange(
  min: number,
  max: number,
  bits: number,
): { scale: number; zero: number } {
  const lo = Math.min(min, 0), hi = Math.max(max, 0);
  const maxq = 2 ** bits - 1;
  const scale = hi > lo ? (hi - lo) / maxq : 1;
  return { scale, zero: Math.round(-lo / scale) + 0 }; // + 0: no −0
}

/** The calibration stage of static per-tensor activation ranges. */
export function staticActivations(): Stage {
  return stage("static-activations", async (job) => {
    const bits = job.ctx.abits;
    if (bits >= 16) throw new Error("static activation ranges need --abits below 16");
    const min = {} as Record<CapturePoint, number>, max = {} as Record<CapturePoint, number>;
    for (const p of CAPTURE_POINTS) [min[p], max[p]] = [Infinity, -Infinity];
    // Unquantized activations (after any channel reassembly) of the block as it now is.
    await captureBlock(job.ctx.rt, job.ctx.config, job.weights, job.qIn, {
      onCapture: (cap) => {
        for (const p of CAPTURE_POINTS) {
          const d = cap[p].data;
          for (let i = 0; i < d.length; i++) {
            if (d[i] < min[p]) min[p] = d[i];
            if (d[i] > max[p]) max[p] = d[i];
          }
        }
      },
    });
    const ranges: Record<string, { min: number; max: number; scale: number; zero: number }> = {};
    for (const p of CAPTURE_POINTS) {
      const { scale, zero } = staticRange(min[p], max[p], bits);
      const [sn, zn] = actQuantNames(p);
      job.weights[sn] = { data: Float32Array.of(scale), shape: [1] };
      job.weights[zn] = { data: Float32Array.of(zero), shape: [1] };
      ranges[p] = { min: min[p], max: max[p], scale, zero };
    }
    return { ranges };
  });
}
