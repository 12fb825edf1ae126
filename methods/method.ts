/**
 * What a quantization method is to the toolkit: its flags, the options it reads from them, and
 * the run it makes of those options — the stages it puts into the block stream and what the
 * report and the written `quantization_config` say about it. The data flow belongs to the
 * stages and to the run (`run/`); a method only chooses.
 * @module
 */
import type { Options } from "../cli/flags.ts";
import type { PackRequest, ScaleFormat } from "../formats/packed.ts";
import type { ModelConfig } from "../models/config.ts";
import type { RunContext, Stage } from "../stages/job.ts";
import type { ActivationOptions } from "./flags.ts";

/** The part of a run that a method decides. */
export interface MethodRun {
  /** Method name for the report and `quantization_config` (`rtn`, `gptq`, …). */
  method: string;
  /** Weight bits (fractional for CLAQ's average and ABQ-LLM's bit balance). */
  wbits: number;
  /** Run-time activation bits (16 = none). */
  abits: number;
  /** Run-time q/k/v bits (absent or 16 = none). */
  kvBits?: number;
  /** Weight group size (0 = per channel). */
  groupSize: number;
  /** Keep the full-precision teacher chain (learned reconstruction, reassembly statistics). */
  teacher?: boolean;
  /** Settings echoed into the report. */
  settings?: Record<string, unknown>;
  /** Fields merged into the written `quantization_config` (e.g. `levels`, `average_bits`). */
  quantConfig?: Record<string, unknown>;
  /** The method's stages, given the run context. */
  stages: (ctx: RunContext) => Stage[];
  /**
   * Checks the method's flags against the model and the calibration before any work (a group
   * size that does not divide a layer, a batch that does not divide the samples); errors name
   * the flag.
   */
  check?: (c: ModelConfig, calib: { nsamples: number; seqlen: number }) => void;
}

/** What every method's options carry: the run-time activation settings. */
export interface MethodOptions {
  /** `--abits`, `--kv-bits`, `--act-scheme`. */
  activations: ActivationOptions;
  /**
   * Scales rounded as the packed format asked for (`--format`) stores them, from the start;
   * absent: float32. Set by the command for methods with a {@linkcode Method.packRequest}.
   */
  scaleFormat?: ScaleFormat;
}

/** A method's command line: what `methodMain` needs to run it from flags. */
export interface Method<O extends MethodOptions = MethodOptions> {
  /** Name of the method and of its command (`pipelines/{name}.ts`). */
  name: string;
  /** The usage line's flags, e.g. `[--wbits 4] [--act-order]`. */
  synopsis: string;
  /** The method's own flags (the common ones are added by the command). */
  flags: Options;
  /** Usage lines of the method's own flags. */
  usage: string;
  /**
   * Layer-wise methods read the calibration activations in block passes only, so they can live
   * in a file (`--offload-activations` / `--keep-activations`).
   */
  layerwise: boolean;
  /** Validated options from parsed flag values; errors name the flag. */
  options(f: Record<string, unknown>): O;
  /** The run these options make; `out` is the output directory (checkpoints go beside it). */
  plan(o: O, out: string): MethodRun;
  /**
   * What a packed format would have to hold (`--format`), for methods whose quantizer can
   * round its scales as the format stores them from the start; absent: `--format` is refused.
   */
  packRequest?(o: O): PackRequest;
}
