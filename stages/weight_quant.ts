/**
 * The weight-only methods as {@linkcode LinearQuantizer}s: RTN, GPTQ and CLAQ. Each is a thin
 * adapter from the algorithm in `algorithms/` to the block stream.
 * @module
 */
import { claq, type OutlierReservation } from "../algorithms/claq.ts";
import { gptq } from "../algorithms/gptq.ts";
import { checkGroupSize, rtnWeight } from "../algorithms/quantizer.ts";
import type { Stage } from "./job.ts";
import { type LinearQuantizer, quantizeLinears } from "./quantize_linears.ts";

/** Uniform weight quantization settings shared by RTN and GPTQ. */
export interface UniformOptions {
  /** Weight bits, 2..8. */
  bits: number;
  /** Input columns per group; 0 = per output channel. */
  groupSize: number;
  /** Symmetric range, zero point fixed at (maxq+1)/2 (false). */
  sym?: boolean;
  /** GPTQ's MSE range search instead of min-max. */
  mse?: boolean;
  /**
   * Accept a group size that does not divide a layer's input width, the last group being
   * shorter (how the reference handles stories260k's 172-wide down_proj). Packed exports need
   * equal groups, so this is off unless asked for.
   */
  allowPartialGroup?: boolean;
}

function checkGroups(o: UniformOptions, layer: string, cols: number, block: number) {
  if (!o.allowPartialGroup) {
    checkGroupSize(cols, o.groupSize, `model.layers.${block}.${layer}.weight`);
  }
}

/** Bits of a packed uniform weight: indices, fp16 scales, zero points, and g_idx if needed. */
export function uniformStoredBits(
  rows: number,
  cols: number,
  bits: number,
  nGroups: number,
  sym: boolean,
  gIdx: boolean,
): number {
  return rows * cols * bits + rows * nGroups * (16 + (sym ? 0 : bits)) + (gIdx ? 32 * cols : 0);
}

/** Round-to-nearest (min-max per channel or group). */
export function rtn(o: UniformOptions & { trueSequential?: boolean }): Stage {
  const q: LinearQuantizer = {
    name: "rtn",
    trueSequential: false,
    quantize(_ctx, layer, W, _H, block) {
      const [rows, cols] = W.shape;
      checkGroups(o, layer, cols, block);
      const r = rtnWeight(W, { bits: o.bits, groupSize: o.groupSize, sym: !!o.sym, mse: o.mse });
      return Promise.resolve({
        weight: r.weight,
        learned: {
          scales: { data: r.scale, shape: [rows, r.nGroups] },
          zeros: { data: r.zero, shape: [rows, r.nGroups] },
        },
        storedBits: uniformStoredBits(rows, cols, o.bits, r.nGroups, !!o.sym, false),
      });
    },
  };
  return quantizeLinears(q);
}

/** GPTQ settings. */
export interface GptqStageOptions extends UniformOptions {
  /** Quantize columns in order of decreasing diag(H) (`--act-order`). */
  actOrder: boolean;
  /** Group parameters fixed up front from the original W (`--static-groups`). */
  staticGroups: boolean;
  /** Re-capture inputs after each group of layers (`--true-sequential`). */
  trueSequential: boolean;
  /** Damping as a fraction of mean(diag H) (0.01). */
  percdamp?: number;
  /** Columns per lazy-update block (128). */
  blockSize?: number;
}

/** GPTQ with the reference's options. */
export function gptqStage(o: GptqStageOptions): Stage {
  const q: LinearQuantizer = {
    name: "gptq",
    trueSequential: o.trueSequential,
    async quantize(ctx, layer, W, H, block) {
      const [rows, cols] = W.shape;
      checkGroups(o, layer, cols, block);
      const r = await gptq(ctx.rt, W, H, {
        bits: o.bits,
        sym: o.sym,
        groupSize: o.groupSize,
        actOrder: o.actOrder,
        staticGroups: o.staticGroups,
        mse: o.mse,
        percdamp: o.percdamp,
        blockSize: o.blockSize,
      });
      if (r.warning) ctx.log(`block ${block + 1}: ${layer}: ${r.warning}`);
      const needsGIdx = o.actOrder && o.groupSize > 0 && !o.staticGroups;
      return {
        weight: r.weight,
        learned: {
          scales: { data: r.scale, shape: [rows, r.nGroups] },
          zeros: { data: r.zero, shape: [rows, r.nGroups] },
          g_idx: { int32: r.gIdx, shape: [cols] },
          ...(r.perm ? { perm: { int32: r.perm, shape: [cols] } } : {}),
        },
        report: { gptq_error: r.error, damp: r.damp, fell_back: r.fellBack },
        storedBits: uniformStoredBits(rows, cols, o.bits, r.nGroups, !!o.sym, needsGIdx),
      };
    },
  };
  return quantizeLinears(q);
}

/** CLAQ settings. */
export interface ClaqStageOptions {
  /** Base bits (codebook of 2^bits centroids per column). */
  bits: number;
  /** Fractional average bits (adaptive precision), e.g. 2.1 or 3.12. */
  targetBits?: number;
  /** Full-precision outliers kept per column (fraction), or ratios by outlier rank. */
  outlierRatio?: number | OutlierReservation;
  /** Quantize columns in order of decreasing diag(H). */
  actOrder: boolean;
  /** Re-capture inputs after each group of layers. */
  trueSequential: boolean;
  /** Damping as a fraction of mean(diag H) (0.01). */
  percdamp?: number;
}

/** CLAQ: GPTQ with per-column K-means codebooks, adaptive precision, outlier reservation. */
export function claqStage(o: ClaqStageOptions): Stage {
  const q: LinearQuantizer = {
    name: "claq",
    trueSequential: o.trueSequential,
    async quantize(ctx, layer, W, H, block) {
      const [rows, cols] = W.shape;
      const r = await claq(ctx.rt, W, H, {
        bits: o.bits,
        targetBits: o.targetBits,
        outlierRatio: o.outlierRatio,
        actOrder: o.actOrder,
        percdamp: o.percdamp,
      });
      if (r.warning) ctx.log(`block ${block + 1}: ${layer}: ${r.warning}`);
      const maxK = Math.max(...r.codebooks.map((c) => c.length));
      const books = new Float32Array(cols * maxK);
      r.codebooks.forEach((c, j) => books.set(c, j * maxK));
      return {
        weight: r.weight,
        learned: {
          codebooks: { data: books, shape: [cols, maxK] },
          column_bits: { int32: Int32Array.from(r.columnBits), shape: [cols] },
        },
        report: {
          gptq_error: r.error,
          average_bits: r.averageBits,
          bits_per_weight: r.bitsPerWeight,
          outliers: r.outlierCount,
        },
        storedBits: r.bitsPerWeight * rows * cols,
      };
    },
  };
  return quantizeLinears(q);
}
