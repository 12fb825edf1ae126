/**
 * The integer grid under a quantized model this toolkit wrote: for each linear layer, codes,
 * scales, zero points and a group index such that
 * W[r, c] = scale[r, g(c)] · (code[r, c] − zero[r, g(c)]) holds bit for bit for the
 * fake-quantized weights we evaluated. Packed formats (ONNX MatMulNBits, GPTQ,
 * compressed-tensors, GGUF) are written from it, so what they store is what we measured.
 *
 * The scales and zero points come from `learned.safetensors` (every uniform method saves them:
 * RTN and GPTQ from their quantizer, the learned methods from the fold of their clipped grid);
 * the codes are recovered from the weights and checked against them.
 * @module
 */
import type { Tensor } from "../kernels/tensor.ts";
import { LINEAR_NAMES, type LinearName } from "../models/config.ts";
import { SafetensorsReader } from "./safetensors.ts";

/** A linear layer's weight as integer codes on a uniform grid. */
export interface GridWeight {
  /** Output width (rows of W). */
  rows: number;
  /** Input width (columns of W). */
  cols: number;
  /** Largest code: 2^bits − 1, or 2^bits for ABQ-LLM's bit-balanced weights. */
  maxq: number;
  /** Columns per group (0: one group per row); the last group may be shorter. */
  groupSize: number;
  /** The codes [rows, cols], row-major, columns in their original order. */
  codes: Uint8Array;
  /** Scale of each row and group, [rows, groups]. */
  scales: Float32Array;
  /** Integer-valued zero point of each row and group, [rows, groups]. */
  zeros: Float32Array;
  /** The group of each column, [cols]. */
  gIdx: Int32Array;
  /** Groups are runs of `groupSize` consecutive columns (false under act-order). */
  contiguous: boolean;
}

/** Bits a code needs: ⌈log2(maxq + 1)⌉. */
export function codeBits(maxq: number): number {
  return Math.ceil(Math.log2(maxq + 1));
}

/**
 * Recovers the codes of a fake-quantized weight `W` from its scales and zero points
 * ([rows, groups]) and group index (`null`: runs of `groupSize` columns), checking that every
 * entry is exactly scale · (code − zero) with 0 ≤ code ≤ maxq; throws, naming `name`, otherwise.
 */
export function gridOf(
  name: string,
  W: Tensor,
  scales: Tensor,
  zeros: Tensor,
  maxq: number,
  groupSize: number,
  gIdx: Int32Array | null,
): GridWeight {
  const [rows, cols] = W.shape;
  const groups = scales.shape[1];
  if (scales.shape[0] !== rows || zeros.shape[0] !== rows || zeros.shape[1] !== groups) {
    throw new Error(
      `${name}: scales [${scales.shape}] and zeros [${zeros.shape}] do not fit the weight ` +
        `[${W.shape}]`,
    );
  }
  const idx = gIdx ??
    Int32Array.from({ length: cols }, (_, c) => groupSize ? c / groupSize | 0 : 0);
  if (idx.length !== cols || idx.some((g) => g < 0 || g >= groups)) {
    throw new Error(`${name}: the group index does not fit ${cols} columns and ${groups} groups`);
  }
  const codes = new Uint8Array(rows * cols);
  let bad = 0, first = -1;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c, k = r * groups + idx[c];
      const s = scales.data[k], z = zeros.data[k], w = W.data[i];
      const q = Math.round(w / s + z);
      if (q >= 0 && q <= maxq && Math.fround(s * (q - z)) === w) {
        codes[i] = q;
      } else if (bad++ === 0) {
        first = i;
      }
    }
  }
  if (bad) {
    const r = Math.floor(first / cols), c = first % cols;
    throw new Error(
      `${name}: ${bad} of ${
        rows * cols
      } weights are not on the saved grid (first at [${r}, ${c}]: ` +
        `${W.data[first]})`,
    );
  }
  let contiguous = true;
  for (let c = 0; c < cols && contiguous; c++) {
    contiguous = idx[c] === (groupSize ? c / groupSize | 0 : 0);
  }
  return {
    rows,
    cols,
    maxq,
    groupSize,
    codes,
    scales: scales.data,
    zeros: zeros.data,
    gIdx: idx,
    contiguous,
  };
}

/** A quantized model's grids, read one block at a time. */
export interface QuantizedModel {
  /** The model's `quantization_config` (empty for a model we did not quantize). */
  readonly quant: Record<string, unknown>;
  /** Largest code of the model's weights. */
  readonly maxq: number;
  /**
   * Why the model's linear weights have no uniform grid (not quantized, codebooks, …), or
   * `null` when they have one.
   */
  readonly notUniform: string | null;
  /** The grid of each linear layer of block `i`, given the block's tensors. */
  grids(i: number, weights: Record<string, Tensor>): Promise<Record<LinearName, GridWeight>>;
  /** Releases the open files. */
  close(): void;
}

/**
 * Opens the grids of a model directory this toolkit wrote (`config.json`'s
 * `quantization_config` and `learned.safetensors`).
 */
export async function openQuantized(dir: string): Promise<QuantizedModel> {
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  } catch { /* a llama2.c file, or no config: not ours */ }
  const quant = (json.quantization_config ?? {}) as Record<string, unknown>;
  const bits = typeof quant.bits === "number" ? quant.bits : 16;
  const maxq = typeof quant.levels === "number" ? quant.levels - 1 : 2 ** bits - 1;
  const groupSize = typeof quant.group_size === "number" && quant.group_size > 0
    ? quant.group_size
    : 0;
  const learnedPath = `${dir}/learned.safetensors`;
  let notUniform: string | null = null;
  if (!String(quant.quant_method ?? "").startsWith("qllm-deno/") || bits >= 16) {
    notUniform = "the model is not quantized (no quantization_config with bits below 16)";
  } else if (quant.codebook) {
    notUniform = `its weights use per-column codebooks (${quant.codebook}), not a uniform grid`;
  }
  let learned: SafetensorsReader | null = null;
  if (!notUniform) {
    try {
      learned = await SafetensorsReader.open(learnedPath);
    } catch (e) {
      notUniform = `${learnedPath}: ${(e as Error).message}`;
    }
  }
  return {
    quant,
    maxq,
    notUniform,
    async grids(i, weights) {
      if (notUniform || !learned) throw new Error(`${dir}: ${notUniform}`);
      const out = {} as Record<LinearName, GridWeight>;
      for (const l of LINEAR_NAMES) {
        const key = `model.layers.${i}.${l}`;
        for (const k of ["scales", "zeros"]) {
          if (!learned.has(`${key}.${k}`)) {
            throw new Error(`${learnedPath}: no tensor "${key}.${k}" (a run of an older version?)`);
          }
        }
        const gIdx = learned.has(`${key}.g_idx`)
          ? Int32Array.from((await learned.readRaw(`${key}.g_idx`)).data as Int32Array)
          : null;
        out[l] = gridOf(
          `${key}.weight`,
          weights[`${l}.weight`],
          await learned.readF32(`${key}.scales`),
          await learned.readF32(`${key}.zeros`),
          maxq,
          groupSize,
          gIdx,
        );
      }
      return out;
    },
    close: () => learned?.close(),
  };
}
