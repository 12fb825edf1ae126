/**
 * What flows through a quantization pipeline: one {@linkcode BlockJob} per decoder block, in
 * order. Stages read and replace fields of the job; everything a later stage needs travels on it.
 * @module
 */
import type { ModelRotations } from "../algorithms/rotation.ts";
import type { RssMeter } from "../kernels/rss.ts";
import type { Runtime } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { ActivationFile } from "../models/activation_file.ts";
import type { Activations } from "../models/forward.ts";
import type { ModelConfig } from "../models/config.ts";
import type { BlockWeights } from "../models/source.ts";

export type { Activations };

/** The activations as an in-memory tensor; `who` names the stage that needs random access. */
export function inMemory(x: Activations, who: string): Tensor {
  if (x instanceof ActivationFile) {
    throw new Error(
      `${who} needs the calibration activations in memory; run without --offload-activations`,
    );
  }
  return x;
}

/** Learned state of one block: tensors saved to `learned.safetensors` under `model.layers.{i}.`. */
export type LearnedState = Record<string, Tensor | { int32: Int32Array; shape: number[] }>;

/** One stage's figures for the run report. */
export interface StageReport {
  /** Stage name. */
  stage: string;
  /** Decoder layer index. */
  block: number;
  /** Wall-clock time the stage spent on this block. */
  seconds: number;
  /** Per linear layer (HF name relative to the block) figures, e.g. errors and bits. */
  layers?: Record<string, Record<string, number | string | boolean>>;
  /** Anything else (losses, thresholds, timings of sub-steps). */
  [key: string]: unknown;
}

/** Settings shared by every stage of one run (read-only). */
export interface RunContext {
  /** Where the run's graphs execute. */
  rt: Runtime;
  /** The model being quantized. */
  config: ModelConfig;
  /** Calibration window length. */
  seqlen: number;
  /** Per-token activation quantization bits at run time (≥ 16: off). */
  abits: number;
  /** Per-token q/k/v quantization bits at run time (absent or ≥ 16: off). */
  kvBits?: number;
  /** Progress sink (stderr). */
  log: (msg: string) => void;
  /**
   * The model's rotations, when the run rotates it: the `rotate()` stage applies them to each
   * block, the run to the embedding and the head.
   */
  rotations?: ModelRotations;
  /** Measures each stage's peak RSS for its report (`peak_rss_bytes`), when given. */
  rss?: RssMeter;
}

/** A decoder block on its way through the pipeline. */
export interface BlockJob {
  /** Decoder layer index. */
  index: number;
  /** The run's shared settings. */
  ctx: RunContext;
  /**
   * This block's tensors. Stages replace entries with new tensors (fake-quantized, folded, …)
   * and never write into a tensor's data, so `fpWeights` stays the original block at no cost.
   */
  weights: BlockWeights;
  /**
   * The block's original tensors (the teacher), when the run keeps a teacher chain; empty
   * otherwise, so that a layer-wise run holds each original weight only until it is replaced.
   */
  fpWeights: BlockWeights;
  /** Block inputs under the full-precision model (the teacher chain), when the run keeps it. */
  fpIn?: Activations;
  /** Block inputs under the model quantized so far (the student chain). */
  qIn: Activations;
  /** Teacher outputs (filled by the capture stage). */
  fpOut?: Activations;
  /** Student outputs through the quantized block (filled by the propagate stage). */
  qOut?: Activations;
  /** What stages decided (scales, zeros, g_idx, codebooks, …), saved per block. */
  learned: LearnedState;
  /** Bits actually stored per linear weight, for the run's bits-per-weight figure. */
  storage: Record<string, { weights: number; bits: number }>;
  /** Reports of the stages this block has passed through, in order. */
  report: StageReport[];
  /**
   * Delivers the next block's inputs to the source before this job reaches the sink (stages
   * that hold several jobs, such as joint training of a group of blocks, hand on provisional
   * inputs with it and set the real ones later). The sink delivers the job's outputs otherwise.
   */
  handOff?: (inputs: { fp?: Activations; q: Activations }) => void;
}

/** A pipeline stage: a Web Streams transform of block jobs. */
export type Stage = TransformStream<BlockJob, BlockJob>;

/**
 * Makes a stage from an async function of one job. The stage times itself (and measures its
 * peak RSS when the run has a meter), appends its report (the function may return extra fields
 * or per-layer figures) and logs progress.
 */
export function stage(
  name: string,
  fn: (job: BlockJob) => Promise<Partial<StageReport> | void>,
): Stage {
  return new TransformStream<BlockJob, BlockJob>({
    async transform(job, controller) {
      const t0 = performance.now();
      const rss = job.ctx.rss?.start();
      job.ctx.log(`block ${job.index + 1}/${job.ctx.config.layers}: ${name}`);
      const extra = (await fn(job)) ?? {};
      const seconds = (performance.now() - t0) / 1000;
      const peak = rss?.stop();
      job.report.push({
        ...extra,
        stage: name,
        block: job.index,
        seconds,
        ...(peak === undefined ? {} : { peak_rss_bytes: peak }),
      });
      controller.enqueue(job);
    },
  });
}
