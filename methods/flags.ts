/**
 * The flag groups the methods share, each with its declarations, its usage lines and its
 * reader: weights (`--wbits`, `--group-size`), run-time activations (`--abits`, `--kv-bits`,
 * `--act-scheme`) and block-wise training (`--epochs`, `--batch`, `--resume`). A method's file
 * declares only what is its own.
 * @module
 */
import type { RotateOptions } from "../algorithms/rotation.ts";
import { intFlag, numFlag, type Options, UsageError } from "../cli/flags.ts";
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
  "act-clip": { type: "string" },
} as const satisfies Options;

/** Usage of {@linkcode ACTIVATION_FLAGS}. */
export const ACTIVATION_USAGE =
  `  --abits B            activation bits of every linear input at run time (16 = none)
  --kv-bits B          also quantize q/k (after RoPE) and v per token and head (off)
  --act-scheme S       token (dynamic per-token ranges, default) or static (one calibrated
                       range per linear input, fixed after the weights)
  --act-clip R         shrink each token's range to R·[min, max] before quantizing (0 < R ≤ 1;
                       QuaRot uses 0.9 on rotated activations)`;

/** Run-time activation settings. */
export interface ActivationOptions {
  /** Per-token (or static) activation bits of every linear input (16: none). */
  abits: number;
  /** Per-token q/k/v bits (absent: none). */
  kvBits?: number;
  /** One calibrated range per linear input instead of per-token ranges. */
  staticActs: boolean;
  /** Clip ratio of the per-token ranges (absent: 1). */
  clip?: number;
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
  const clip = f["act-clip"] === undefined
    ? undefined
    : numFlag(f["act-clip"], "--act-clip", 1, 0, 1);
  if (clip !== undefined) {
    if (clip === 0) throw new UsageError("--act-clip 0: expected a ratio in (0, 1]");
    if (abits >= 16) throw new UsageError("--act-clip needs --abits below 16");
    if (scheme === "static") throw new UsageError("--act-clip applies to per-token ranges only");
  }
  return { abits, kvBits, staticActs: scheme === "static", clip };
}

/** `--rotate`, `--rotate-seed`, common to every method (the run reads them). */
export const ROTATION_FLAGS = {
  rotate: { type: "boolean" },
  "rotate-seed": { type: "string" },
} as const satisfies Options;

/** Usage of {@linkcode ROTATION_FLAGS}. */
export const ROTATION_USAGE =
  `  --rotate             rotate the model first (QuaRot): norms fused, randomized Hadamard R1 on
                       the residual stream and R2 per head, R4 online on down_proj's input,
                       and R3 online on q/k after RoPE when --kv-bits is given
  --rotate-seed N      seed of the rotations' random signs (0)`;

/** Reads {@linkcode ROTATION_FLAGS}: the rotations to apply, or null. */
export function rotationFlags(f: Record<string, unknown>): RotateOptions | null {
  if (!f.rotate) {
    if (f["rotate-seed"] !== undefined) throw new UsageError("--rotate-seed needs --rotate");
    return null;
  }
  const kv = f["kv-bits"] === undefined ? 16 : Number(f["kv-bits"]);
  return { seed: intFlag(f["rotate-seed"], "--rotate-seed", 0, 0), down: true, qk: kv < 16 };
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
