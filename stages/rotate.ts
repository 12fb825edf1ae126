/**
 * The rotation stage (QuaRot): each block, as it passes, gets its RMSNorm weights fused into the
 * linears and the run's rotations applied (`algorithms/rotation.ts`) — R1 on the residual stream,
 * R2 per head on v/o, R4 folded into down_proj with its online rotation, R3 online on q/k — on
 * the student and on the teacher alike, so both chains run the rotated model. The run rotates
 * the embedding when it embeds the calibration windows and folds the final norm into the rotated
 * head when it writes it. Put it first: every later stage reads the block in the rotated basis.
 * And a stage that sets the clip ratio of the per-token activation quantizers.
 * @module
 */
import { rotateBlock } from "../algorithms/rotation.ts";
import { ACT_CLIP } from "../models/block_graph.ts";
import { type Stage, stage } from "./job.ts";

/** Rotates each block with the run's rotations (`ctx.rotations`). */
export function rotate(): Stage {
  return stage("rotate", (job) => {
    const r = job.ctx.rotations;
    if (!r) {
      throw new Error(
        "rotate(): the run has no rotations (runQuantization's `rotation`, --rotate)",
      );
    }
    const c = job.ctx.config;
    job.weights = rotateBlock(job.weights, c, r);
    if (Object.keys(job.fpWeights).length) job.fpWeights = rotateBlock(job.fpWeights, c, r);
    return Promise.resolve({
      residual: r.residual.name,
      head: r.head.name,
      down_proj_input: r.down?.name ?? null,
      qk: r.qk?.name ?? null,
    });
  });
}

/** Clips the range of every per-token activation quantizer of each block to `ratio`·[min, max]. */
export function clipActivations(ratio: number): Stage {
  if (!(ratio > 0 && ratio <= 1)) throw new Error(`clipActivations: ratio ${ratio} not in (0, 1]`);
  return stage("act-clip", (job) => {
    job.weights[ACT_CLIP] = { data: Float32Array.of(ratio), shape: [1] };
    return Promise.resolve({ ratio });
  });
}
