/**
 * What the packed formats (GPTQ, compressed-tensors, GGUF) have in common: which grids each can
 * hold (checked before any work, with a message naming the formats that can), and their fp16
 * scales. A quantizer asked for a packed format rounds its scales with {@linkcode roundScale}
 * from the start, so the packed model dequantizes bit for bit to the weights it evaluated;
 * packing an existing model whose scales are float32 rounds them with the same function (its
 * codes unchanged) and says so.
 * @module
 */
import { floatBitsToHalf } from "./safetensors.ts";
import { codeBits, type GridWeight } from "./quantized.ts";

/** This toolkit, as packed checkpoints name their producer. */
export const TOOLKIT = { name: "qllm-deno", version: "0.1.0" } as const;

/** The packed formats we write and read. */
export const PACKED_FORMATS = ["gptq", "compressed-tensors", "gguf"] as const;

/** A packed format. */
export type PackedFormat = (typeof PACKED_FORMATS)[number];

/**
 * How scales are rounded for a packed format: `fp16` (GPTQ, compressed-tensors, GGUF Q4_0 and
 * Q8_0), or `fp16-min` for GGUF Q4_1, whose blocks store d and the minimum m = −d·zero both as
 * fp16: d keeps 11 − bits significant bits, so that d·zero is an fp16 value for every zero
 * point the grid can have.
 */
export type ScaleFormat = "fp16" | "fp16-min";

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);
const HALF = new Uint16Array(1);

/** The fp16 value nearest to `x` (ties to even). */
export function toFp16(x: number): number {
  F32[0] = x;
  HALF[0] = floatBitsToHalf(U32[0]);
  const h = HALF[0], e = (h >> 10) & 31, m = h & 1023, s = h & 0x8000 ? -1 : 1;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (e ? (1024 + m) * 2 ** (e - 25) : m * 2 ** -24);
}

/**
 * A positive scale rounded for a packed format (a zero scale becomes the smallest fp16
 * subnormal, 2^-24, so no division by zero follows). `maxq` is the grid's largest code.
 */
export function roundScale(s: number, mode: ScaleFormat, maxq: number): number {
  let r: number;
  if (mode === "fp16-min" && s >= 2 ** -14) {
    const sig = 11 - codeBits(maxq);
    const ulp = 2 ** (Math.floor(Math.log2(s)) - (sig - 1));
    const q = s / ulp, f = Math.floor(q);
    r = (q - f > 0.5 || (q - f === 0.5 && f % 2 === 1) ? f + 1 : f) * ulp;
    r = toFp16(r);
  } else {
    r = toFp16(s);
  }
  return r === 0 && s >= 0 ? 2 ** -24 : r;
}

/**
 * A grid with its scales rounded for a packed format, its codes unchanged, and how many scales
 * changed (0: the packed weights are exactly the grid's).
 */
export function roundGridScales(
  g: GridWeight,
  mode: ScaleFormat,
): { grid: GridWeight; changed: number } {
  const scales = new Float32Array(g.scales.length);
  let changed = 0;
  for (let i = 0; i < scales.length; i++) {
    scales[i] = roundScale(g.scales[i], mode, g.maxq);
    if (scales[i] !== g.scales[i]) changed++;
  }
  return { grid: { ...g, scales }, changed };
}

/** What a packed format is asked to hold: the quantization a run makes or a model has. */
export interface PackRequest {
  /** Method name (`rtn`, `gptq`, `claq`, …). */
  method: string;
  /** Largest code (2^bits − 1; 2^bits for ABQ-LLM's bit balance). */
  maxq: number;
  /** Columns per group (0: per channel). */
  groupSize: number;
  /** Symmetric grid (zero point fixed at (maxq + 1)/2). */
  sym: boolean;
  /** Act-order without static groups: groups are not runs of consecutive columns. */
  scatteredGroups: boolean;
  /** Why the weights have no uniform grid (codebooks), or null. */
  notUniform: string | null;
  /** Run-time activation or q/k/v quantization, reassembly gathers or static ranges. */
  runtimeExtras: string | null;
}

/** The GGUF block type of a grid, when GGUF can hold it. */
export type GgufGridType = "Q4_0" | "Q4_1" | "Q8_0";

/**
 * Refuses what a packed format cannot hold, with a message naming the formats (or options)
 * that can; returns the GGUF block type for `gguf`.
 */
export function checkPackable(format: PackedFormat, r: PackRequest): GgufGridType | null {
  const flag = `--format ${format}`;
  if (r.notUniform) {
    throw new Error(
      `${flag}: ${r.method}'s weights are not on a uniform grid (${r.notUniform}); no packed ` +
        `format holds them (${PACKED_FORMATS.join(", ")} store uniform integer grids): use the ` +
        `fake-quantized Hugging Face output`,
    );
  }
  if (r.runtimeExtras) {
    throw new Error(
      `${flag}: the model needs ${r.runtimeExtras} at run time, which ${format} cannot express ` +
        `(packed formats hold weight-only quantization); use the Hugging Face output or ONNX`,
    );
  }
  const bits = codeBits(r.maxq);
  if (format === "gptq") {
    if (![2, 3, 4, 8].includes(bits)) {
      throw new Error(`${flag}: GPTQ checkpoints hold 2, 3, 4 or 8 bits, not ${bits}`);
    }
    return null;
  }
  if (format === "compressed-tensors") {
    if (bits !== 4 && bits !== 8) {
      throw new Error(
        `${flag}: pack-quantized holds 4- and 8-bit weights, not ${bits}-bit; ` +
          `--format gptq holds 2, 3, 4 and 8 bits`,
      );
    }
    return null;
  }
  if (r.groupSize !== 32) {
    throw new Error(
      `${flag}: GGUF's Q4_0/Q4_1/Q8_0 blocks are groups of 32 columns, not ` +
        `${r.groupSize ? `groups of ${r.groupSize}` : "one group per channel"}: use ` +
        `--group-size 32, or --format gptq / compressed-tensors, which hold any group size`,
    );
  }
  if (r.scatteredGroups) {
    throw new Error(
      `${flag}: act-order without --static-groups gives groups that are not runs of 32 ` +
        `consecutive columns, which GGUF blocks cannot hold: add --static-groups, or use ` +
        `--format gptq / compressed-tensors (they store g_idx)`,
    );
  }
  if (bits === 4) return r.sym ? "Q4_0" : "Q4_1";
  if (bits === 8 && r.sym) return "Q8_0";
  throw new Error(
    `${flag}: GGUF holds 4-bit groups of 32 (Q4_0 symmetric, Q4_1 asymmetric) and 8-bit ` +
      `symmetric ones (Q8_0), not ${bits}-bit ${r.sym ? "symmetric" : "asymmetric"} weights: ` +
      `use --wbits 4${bits === 8 ? ", --wbits 8 --sym" : ""}, or --format gptq / ` +
      `compressed-tensors`,
  );
}

/** The scale rounding a format needs for a grid stored as `ggufType` (or any, for the others). */
export function scaleFormatOf(ggufType: GgufGridType | null): ScaleFormat {
  return ggufType === "Q4_1" ? "fp16-min" : "fp16";
}
