/**
 * CLAQ (Wang et al., 2024): GPTQ with per-column K-means codebooks, adaptive per-column precision
 * for a fractional average (`--target-bits 2.1`) and full-precision outlier reservation
 * (`--outlier-ratio 0.004`, or `dynamic` for the reference's by-rank ratios), as a
 * {@linkcode LinearQuantizer} of the layer-wise stage.
 * @module
 */
import { claq, CLAQ_DYNAMIC_OUTLIERS, type OutlierReservation } from "../algorithms/claq.ts";
import { intFlag, numFlag, UsageError } from "../cli/flags.ts";
import type { Stage } from "../stages/job.ts";
import { type LinearQuantizer, quantizeLinears } from "../stages/quantize_linears.ts";
import { ACTIVATION_FLAGS, ACTIVATION_USAGE, activationFlags } from "./flags.ts";
import type { Method, MethodOptions } from "./method.ts";

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

/**
 * The base bits the reference pairs with a target average: columns get ⌊target⌋ or ⌊target⌋ + 1
 * bits (3.12: 88 % at 3 bits, 12 % at 4), except below 3, where they get 2 or 4 (2.1: 5 % at 4
 * bits) — both with the reference's `--wbits 2`.
 */
export function claqBaseBits(target: number): number {
  return Math.max(2, Math.ceil(target) - 2);
}

/** CLAQ's options. */
export interface ClaqMethodOptions extends MethodOptions {
  /** The CLAQ stage's settings. */
  claq: ClaqStageOptions;
}

/** CLAQ's command line. */
export const CLAQ: Method<ClaqMethodOptions> = {
  name: "claq",
  synopsis: "[--target-bits 2.1] [--wbits B] [--outlier-ratio R|dynamic] [--act-order]",
  flags: {
    wbits: { type: "string" },
    "target-bits": { type: "string" },
    "outlier-ratio": { type: "string" },
    "act-order": { type: "boolean" },
    "true-sequential": { type: "boolean" },
    percdamp: { type: "string" },
    ...ACTIVATION_FLAGS,
  },
  usage:
    `  --target-bits X      fractional average bits: the columns with most outliers get more bits
                       (2.1: 5 % of the columns at 4 bits, the rest at 2; 3.12: 12 % at 4, the
                       rest at 3, as the reference's --wbits 2 --outlierorder X)
  --wbits B            base bits per column (default 2 below 4 target bits, else ⌈X⌉ − 2;
                       2 without --target-bits); the target must lie in [B, B + 2]
  --outlier-ratio R    fraction of each column's entries kept in fp16 at each tail, or
                       "dynamic" (1.4 % for the 10 % most outlier-rich columns, 0.4 % for the rest)
  --act-order          quantize columns in order of decreasing Hessian diagonal
  --true-sequential    re-capture the inputs after each group of layers
  --percdamp X         damping, as a fraction of the mean Hessian diagonal (0.01)
${ACTIVATION_USAGE}`,
  layerwise: true,
  options(f) {
    const target = f["target-bits"] === undefined
      ? undefined
      : numFlag(f["target-bits"], "--target-bits", 0, 2, 8);
    const bits = intFlag(f.wbits, "--wbits", target === undefined ? 2 : claqBaseBits(target), 2);
    if (bits > 8) throw new UsageError(`--wbits ${bits}: CLAQ takes 2 to 8 bits`);
    if (target !== undefined && (target < bits || target > bits + 2)) {
      throw new UsageError(
        `--target-bits ${target}: must lie in [--wbits, --wbits + 2] = [${bits}, ${bits + 2}]`,
      );
    }
    const outlierRatio: number | OutlierReservation = f["outlier-ratio"] === "dynamic"
      ? CLAQ_DYNAMIC_OUTLIERS
      : numFlag(f["outlier-ratio"], "--outlier-ratio", 0, 0, 0.25);
    return {
      claq: {
        bits,
        targetBits: target,
        outlierRatio,
        actOrder: !!f["act-order"],
        trueSequential: !!f["true-sequential"],
        percdamp: numFlag(f.percdamp, "--percdamp", 0.01, 0, 1),
      },
      activations: activationFlags(f),
    };
  },
  plan: ({ claq, activations }) => ({
    method: "claq",
    wbits: claq.targetBits ?? claq.bits,
    quantConfig: {
      bits: claq.bits,
      average_bits: claq.targetBits ?? claq.bits,
      codebook: "per-column k-means",
    },
    abits: activations.abits,
    kvBits: activations.kvBits,
    groupSize: 0,
    settings: { ...claq },
    stages: () => [claqStage(claq)],
  }),
};
