/**
 * CLAQ (ANCHORS §1.5): GPTQ's column loop with the min-max quantizer replaced by a per-column
 * K-means codebook fitted on the error-updated column, plus
 * - **adaptive precision**: columns ranked by their count of outliers (|w| ≥ 13·mean|W|) get more
 *   bits, so that the average is a fractional target (2.1, 3.12, …);
 * - **outlier reservation**: each column keeps its most extreme entries in full precision.
 *
 * Departures from the reference, on purpose: each column uses its own reservation ratio (the
 * reference reuses the first 128-block's ratios); the codebook is fitted on the entries that are
 * actually quantized (the reference also feeds the reserved outliers to K-means); K-means is the
 * deterministic 1-D Lloyd of `kernels/kmeans.ts` instead of scikit-learn's seeded k-means++.
 * @module
 */
import { kmeans1dSorted, nearestCentroid } from "../kernels/kmeans.ts";
import type { Runtime } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { type ColumnQuantizer, gptq, type PreparedWeight } from "./gptq.ts";
import { roundHalfEven } from "./quantizer.ts";

/** The reference's outlier threshold: |w| ≥ 13·mean|W| counts as an outlier. */
export const OUTLIER_THRESHOLD = 13;

/**
 * Per-column reservation ratios by outlier rank: the `topFraction` of columns with most
 * outliers keep `highRatio` of their entries in each tail, the others `lowRatio`.
 */
export interface OutlierReservation {
  /** Fraction of columns, those with most outliers, that keep `highRatio`. */
  topFraction: number;
  /** Fraction of entries per tail kept in full precision in the top columns. */
  highRatio: number;
  /** Fraction of entries per tail kept in full precision in the other columns. */
  lowRatio: number;
}

/** The reference's `--outlier_col_dynamic`: top 10% of columns keep 1.4% per tail, others 0.4%. */
export const CLAQ_DYNAMIC_OUTLIERS: OutlierReservation = {
  topFraction: 0.1,
  highRatio: 0.014,
  lowRatio: 0.004,
};

/** CLAQ options. */
export interface ClaqOptions {
  /** Base bits per weight (codebook of 2^bits centroids per column), 2..8. */
  bits: number;
  /**
   * Fractional average bits B (adaptive precision, see {@linkcode allocateColumnBits});
   * omitted = every column at `bits`.
   */
  targetBits?: number;
  /**
   * Full-precision outliers per column and tail: one ratio for every column, or ratios by
   * outlier rank; omitted or 0 = none.
   */
  outlierRatio?: number | OutlierReservation;
  /** Quantize columns in order of decreasing diag(H) (false). */
  actOrder?: boolean;
  /** Columns per lazy-update block (128). */
  blockSize?: number;
  /** Damping as a fraction of mean(diag H) (0.01). */
  percdamp?: number;
}

/** CLAQ's output for one layer. */
export interface ClaqResult {
  /** Fake-quantized weight `[out, in]`, original column order. */
  weight: Tensor;
  /** Bits of every original column. */
  columnBits: Uint8Array;
  /** Ascending codebook (2^bits values) of every original column. */
  codebooks: Float32Array[];
  /** Entries kept in full precision, all columns together. */
  outlierCount: number;
  /** Mean of `columnBits`: the figure the reference reports (2.1, 3.12, …). */
  averageBits: number;
  /**
   * Storage cost per weight, everything counted, for `rows` entries per column:
   * `Σ_c [rows·b_c + 2^b_c·16 + k_c·(16 + ⌈log2 rows⌉)] / (rows·cols)`, i.e. a b_c-bit index for
   * every entry, a codebook of 2^b_c fp16 values per column, and for each of the column's k_c
   * reserved outliers its fp16 value and its row index.
   */
  bitsPerWeight: number;
  /** GPTQ's loss Σ (w − q)² / U_ii² / 2. */
  error: number;
  /** null; | Processing position → original column when act-order, else null. */
  perm: Int32Array | null;
  /** Damping finally added to diag(H) (0 after a fallback). */
  damp: number;
  /** True when no damping made H factorisable and columns were rounded to their codebooks without error feedback. */
  fellBack: boolean;
  /** What went wrong when it fell back. */
  warning?: string;
}

/**
 * The bit split for a fractional target B over base bits b (ANCHORS §1.5, generalised):
 * B ∈ [b, b+1): a fraction (B−b)/2 of columns at b+2 bits, the rest at b (2.1 → 5% at 4 bits);
 * B ∈ [b+1, b+2]: a fraction B−(b+1) at b+2, the rest at b+1 (b = 2, 3.12 → 12% at 4, rest 3).
 * The number of high columns is round-half-even(cols·fraction), as the reference's Python round.
 */
export function allocateColumnBits(
  cols: number,
  bits: number,
  targetBits: number,
): { low: number; high: number; highCount: number } {
  if (!(targetBits >= bits && targetBits <= bits + 2)) {
    throw new Error(`claq: target bits ${targetBits} out of range [${bits}, ${bits + 2}]`);
  }
  const [low, fraction] = targetBits < bits + 1
    ? [bits, (targetBits - bits) / 2]
    : [bits + 1, targetBits - (bits + 1)];
  const high = bits + 2;
  if (high > 8) throw new Error(`claq: ${high} bits per column is more than 8`);
  return { low, high, highCount: roundHalfEven(cols * fraction) };
}

/** Per-column counts of entries with |w| ≥ 13·mean|W| (column-major input). */
export function outlierCounts(columns: Float32Array, rows: number, cols: number): Int32Array {
  let sum = 0;
  for (let i = 0; i < columns.length; i++) sum += Math.abs(columns[i]);
  const t = OUTLIER_THRESHOLD * Math.fround(sum / columns.length);
  const counts = new Int32Array(cols);
  for (let c = 0; c < cols; c++) {
    let k = 0;
    for (let r = c * rows; r < (c + 1) * rows; r++) if (Math.abs(columns[r]) >= t) k++;
    counts[c] = k;
  }
  return counts;
}

/** Column positions ordered by decreasing count (stable). */
function rankByCount(counts: Int32Array): Int32Array {
  return Int32Array.from(
    Array.from(counts.keys()).sort((a, b) => counts[b] - counts[a]),
  );
}

/** CLAQ on one layer: `W` `[out, in]`, `H = 2/n Σ x xᵀ` `[in, in]`. Inputs are not modified. */
export async function claq(
  rt: Runtime,
  W: Tensor,
  H: Float32Array,
  opts: ClaqOptions,
): Promise<ClaqResult> {
  if (!Number.isInteger(opts.bits) || opts.bits < 2 || opts.bits > 8) {
    throw new Error(`claq: bits ${opts.bits} not in 2..8`);
  }
  const [rows, cols] = W.shape;
  // Filled per processing position by the column quantizer.
  let bitsAt: Uint8Array = new Uint8Array(cols);
  let ratioAt: Float64Array = new Float64Array(cols);
  const books: Float32Array[] = new Array(cols);
  const kept = new Int32Array(cols);

  const factory = (prep: PreparedWeight): ColumnQuantizer => {
    const ranked = rankByCount(outlierCounts(prep.columns, rows, cols));
    bitsAt = columnBitsByRank(ranked, opts);
    ratioAt = outlierRatiosByRank(ranked, opts.outlierRatio ?? 0);
    return (w, j, q) => {
      const r = quantizeColumnKMeans(w, bitsAt[j], ratioAt[j], q);
      books[j] = r.codebook;
      kept[j] = r.kept;
    };
  };

  const res = await gptq(rt, W, H, {
    bits: opts.bits,
    groupSize: 0,
    actOrder: opts.actOrder ?? false,
    staticGroups: false,
    blockSize: opts.blockSize,
    percdamp: opts.percdamp,
    quantizeColumn: factory,
  });

  const columnBits = new Uint8Array(cols);
  const codebooks: Float32Array[] = new Array(cols);
  let outlierCount = 0, bitsSum = 0, storage = 0;
  const indexBits = Math.ceil(Math.log2(Math.max(rows, 2)));
  for (let j = 0; j < cols; j++) {
    const c = res.perm ? res.perm[j] : j;
    columnBits[c] = bitsAt[j];
    codebooks[c] = books[j];
    outlierCount += kept[j];
    bitsSum += bitsAt[j];
    storage += rows * bitsAt[j] + 2 ** bitsAt[j] * 16 + kept[j] * (16 + indexBits);
  }
  return {
    weight: res.weight,
    columnBits,
    codebooks,
    outlierCount,
    averageBits: bitsSum / cols,
    bitsPerWeight: storage / (rows * cols),
    error: res.error,
    perm: res.perm,
    damp: res.damp,
    fellBack: res.fellBack,
    ...(res.warning ? { warning: res.warning } : {}),
  };
}

function columnBitsByRank(ranked: Int32Array, opts: ClaqOptions): Uint8Array {
  const bits = new Uint8Array(ranked.length).fill(opts.bits);
  if (opts.targetBits === undefined) return bits;
  const { low, high, highCount } = allocateColumnBits(ranked.length, opts.bits, opts.targetBits);
  ranked.forEach((c, rank) => bits[c] = rank < highCount ? high : low);
  return bits;
}

function outlierRatiosByRank(ranked: Int32Array, spec: number | OutlierReservation): Float64Array {
  const ratios = new Float64Array(ranked.length);
  if (typeof spec === "number") return ratios.fill(spec);
  const top = roundHalfEven(ranked.length * spec.topFraction);
  ranked.forEach((c, rank) => ratios[c] = rank < top ? spec.highRatio : spec.lowRatio);
  return ratios;
}

/**
 * Quantizes one column: the k = round(rows·ratio) largest and k smallest entries are kept as
 * they are (both tails, as the reference), the others go to the nearest of 2^bits K-means
 * centroids fitted on them.
 */
export function quantizeColumnKMeans(
  w: Float32Array,
  bits: number,
  ratio: number,
  q: Float32Array,
): { codebook: Float32Array; kept: number } {
  const n = w.length;
  const sorted = Float64Array.from(w).sort();
  const k = Math.min(roundHalfEven(n * ratio), Math.floor((n - 1) / 2));
  const fit = kmeans1dSorted(sorted.subarray(k, n - k), 2 ** bits);
  const codebook = Float32Array.from(fit.centroids);
  // Thresholds with quotas, so that ties at a threshold keep exactly k per tail.
  const lo = k > 0 ? sorted[k - 1] : -Infinity, hi = k > 0 ? sorted[n - k] : Infinity;
  let lowLeft = 0, highLeft = 0;
  for (let i = 0; i < k; i++) if (sorted[i] === lo) lowLeft++;
  for (let i = n - k; i < n; i++) if (sorted[i] === hi) highLeft++;
  for (let r = 0; r < n; r++) {
    const x = w[r];
    if (x < lo || x > hi) {
      q[r] = x;
    } else if (x === lo && lowLeft > 0) {
      q[r] = x;
      lowLeft--;
    } else if (x === hi && highLeft > 0) {
      q[r] = x;
      highLeft--;
    } else {
      q[r] = codebook[nearestCentroid(x, codebook)];
    }
  }
  return { codebook, kept: 2 * k };
}
