/**
 * The flag groups the methods share, each with its declarations, its usage lines and its
 * reader: weights (`--wbits`, `--group-size`), run-time activations (`--abits`, `--kv-bits`,
 * `--act-scheme`) and block-wise training (`--epochs`, `--batch`, `--resume`). A method's file
 * declares only what is its own.
 * @module
 */
import { intFlag, type Options, UsageError } from "../cli/flags.ts";
import { LINEAR_NAMES, linearShape, type ModelConfig } from "../models/config.ts";

/** `--wbits`, `--group-size`. */
export const WEIGHT_FLAGS = {
  wbits: { type: "string" },
  "group-size": { type: "string" },
} as const satisfies Options;

/** Usage of {@linkcode WEIGHT_FLAGS}. */
export const WEIGHT_USAGE = `  --wbits B            weight bits (4)
  --group-size N       input columns per weight group (0 = per output channel)`;

/** Weight bits and group size, `--wbits` within [min, max]. */
export function weightFlags(
  f: Record<string, unknown>,
  o: { min?: number; max?: number; fallback?: number } = {},
): { wbits: number; groupSize: number } {
  const min = o.min ?? 2, max = o.max ?? 16;
  const wbits = intFlag(f.wbits, "--wbits", o.fallback ?? 4, min);
  if (wbits > max) {
    throw new UsageError(
      `--wbits ${wbits}: expected ${min} to ${max}${max === 16 ? " (16: not quantized)" : ""}`,
    );
  }
  return { wbits, groupSize: intFlag(f["group-size"], "--group-size", 0, 0) };
}

/** `--abits`, `--kv-bits`, `--act-scheme`. */
export const ACTIVATION_FLAGS = {
  abits: { type: "string" },
  "kv-bits": { type: "string" },
  "act-scheme": { type: "string" },
} as const satisfies Options;

/** Usage of {@linkcode ACTIVATION_FLAGS}. */
export const ACTIVATION_USAGE =
  `  --abits B            activation bits of every linear input at run time (16 = none)
  --kv-bits B          also quantize q/k (after RoPE) and v per token and head (off)
  --act-scheme S       token (dynamic per-token ranges, default) or static (one calibrated
                       range per linear input, fixed after the weights)`;

/** Run-time activation settings. */
export interface ActivationOptions {
  /** Per-token (or static) activation bits of every linear input (16: none). */
  abits: number;
  /** Per-token q/k/v bits (absent: none). */
  kvBits?: number;
  /** One calibrated range per linear input instead of per-token ranges. */
  staticActs: boolean;
}

/** Reads {@linkcode ACTIVATION_FLAGS}. */
export function activationFlags(f: Record<string, unknown>): ActivationOptions {
  const abits = intFlag(f.abits, "--abits", 16, 2);
  if (abits > 16) throw new UsageError(`--abits ${abits}: expected 2 to 16 (16: not quantized)`);
  const kvBits = f["kv-bits"] === undefined ? undefined : intFlag(f["kv-bits"], "--kv-bits", 16, 2);
  if (kvBits !== undefined && kvBits > 16) {
    throw new UsageError(`--kv-bits ${kvBits}: expected 2 to 16 (16: not quantized)`);
  }
  const scheme = (f["act-scheme"] ?? "token") as string;
  if (scheme !== "token" && scheme !== "static") {
    throw new UsageError(`--act-scheme ${scheme}: expected token or static`);
  }
  if (scheme === "static" && abits >= 16) {
    throw new UsageError("--act-scheme static needs --abits below 16");
  }
  return { abits, kvBits, staticActs: scheme === "static" };
}

/** `--epochs`, `--batch`, `--resume`. */
export const TRAIN_FLAGS = {
  epochs: { type: "string" },
  batch: { type: "string" },
  resume: { type: "string" },
} as const satisfies Options;

/** Usage of {@linkcode TRAIN_FLAGS}, with the method's default epochs. */
export function trainUsage(epochs: number): string {
  return `  --epochs N           epochs over the calibration set per block (${epochs})
  --batch N            calibration samples per step (1)
  --resume DIR         a previous run's checkpoint directory (<out>.ckpt): the blocks saved
                       there are folded without training, the others are trained`;
}

/** Reads {@linkcode TRAIN_FLAGS}. */
export function trainFlags(
  f: Record<string, unknown>,
  epochs: number,
): { epochs: number; batch: number; resume?: string } {
  const resume = f.resume as string | undefined;
  if (resume !== undefined) {
    let dir = false;
    try {
      dir = Deno.statSync(resume).isDirectory;
    } catch { /* reported below */ }
    if (!dir) throw new UsageError(`--resume ${resume}: no such directory`);
  }
  return {
    epochs: intFlag(f.epochs, "--epochs", epochs, 0),
    batch: intFlag(f.batch, "--batch", 1),
    resume,
  };
}

/**
 * Refuses, before any work, a `--group-size` that does not divide the input width of every
 * linear layer of the model (unless partial groups are allowed), naming the layer.
 */
export function checkGroups(c: ModelConfig, groupSize: number, allowPartial = false): void {
  if (groupSize === 0 || allowPartial) return;
  for (const name of LINEAR_NAMES) {
    const cols = linearShape(c, name)[1];
    if (cols % groupSize !== 0) {
      throw new UsageError(
        `--group-size ${groupSize}: does not divide the input width ${cols} of ${name} ` +
          "(choose a divisor, or --allow-partial-group where the method takes it)",
      );
    }
  }
}

/** Refuses a `--batch` that does not divide `--nsamples`. */
export function checkBatch(batch: number, nsamples: number): void {
  if (nsamples % batch !== 0) {
    throw new UsageError(`--batch ${batch}: must divide --nsamples ${nsamples}`);
  }
}
