/**
 * The two chain stages: `capture` runs the full-precision block on the teacher inputs (the
 * targets of learned reconstruction), `propagate` runs the quantized block on the student inputs
 * (the next block's inputs, with run-time activation quantization).
 * @module
 */
import { runBlock } from "../models/forward.ts";
import { inMemory, type Stage, stage } from "./job.ts";

/** Teacher outputs: the original block on the full-precision chain. */
export function capture(): Stage {
  return stage("capture", async (job) => {
    if (!job.fpIn) throw new Error("capture(): this run keeps no teacher chain (teacher: true)");
    job.fpOut = await runBlock(
      job.ctx.rt,
      job.ctx.config,
      job.fpWeights,
      inMemory(job.fpIn, "capture()"),
    );
  });
}

/**
 * Student outputs: the block as quantized so far, on the quantized chain. The outputs are
 * written over the student inputs (and over the teacher inputs where block 0 shares them), so
 * `propagate()` must be the last stage of a block.
 */
export function propagate(): Stage {
  return stage("propagate", async (job) => {
    job.qOut = await runBlock(job.ctx.rt, job.ctx.config, job.weights, job.qIn, {
      inPlace: true,
      transient: true,
      abits: job.ctx.abits,
      kvBits: job.ctx.kvBits,
    });
    const fpOut = job.fpOut, qOut = job.qOut;
    if (fpOut && "data" in fpOut && "data" in qOut && fpOut.data.length === qOut.data.length) {
      let num = 0, den = 0;
      const a = qOut.data, b = fpOut.data;
      for (let i = 0; i < a.length; i++) {
        const d = a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
      }
      return { output_rel_mse: num / den };
    }
  });
}
