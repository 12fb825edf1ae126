/**
 * One-dimensional k-means (CLAQ clusters the scalar values of one weight column).
 *
 * Deterministic: Lloyd iterations to a fixed point from up to three starts — quantiles (means
 * of k equal-count runs of the sorted values), k evenly spaced points over [min, max], and, for
 * k ≤ 16, greedy k-means++ with a fixed seed — keeping the one with the least sum of squares (a
 * single start often leaves a lone outlier merged with the bulk). In 1-D every cluster of a Lloyd
 * step is a contiguous run of the sorted values, cut at the midpoints between neighbouring
 * centroids, so with prefix sums one iteration costs O(k log n) after the O(n log n) sort; the
 * k-means++ start costs O(k²·n). Ties between two centroids go to the lower one.
 * @module
 */
import { Rng } from "./tensor.ts";

/** A fitted 1-D codebook. */
export interface KMeans1D {
  /** Ascending centroids, length k (repeated when there are fewer than k distinct values). */
  centroids: Float64Array;
  /** Lloyd iterations run (0 when the values had at most k distinct values). */
  iterations: number;
}

/** A fitted codebook with the cluster of every input value. */
export interface KMeans1DAssigned extends KMeans1D {
  /** Index into `centroids` of every input value, in input order. */
  assignment: Uint16Array;
}

/** The k-means++ start costs O(k²·n) with its greedy trials: only used up to this k. */
export const PLUS_PLUS_MAX_K = 16;

/** Default cap on Lloyd iterations (as scikit-learn's `max_iter`). */
export const KMEANS_MAX_ITER = 300;

/** Fits k centroids to `values` and assigns each value to its nearest centroid. */
export function kmeans1d(
  values: ArrayLike<number>,
  k: number,
  maxIter = KMEANS_MAX_ITER,
): KMeans1DAssigned {
  const sorted = Float64Array.from(values).sort();
  const fit = kmeans1dSorted(sorted, k, maxIter);
  const assignment = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) assignment[i] = nearestCentroid(values[i], fit.centroids);
  return { ...fit, assignment };
}

/**
 * {@linkcode kmeans1d} without the assignment, on values already sorted ascending. Lloyd runs
 * from three deterministic starts and the lowest within-cluster sum of squares wins.
 */
export function kmeans1dSorted(
  sorted: Float64Array,
  k: number,
  maxIter = KMEANS_MAX_ITER,
): KMeans1D {
  if (!Number.isInteger(k) || k < 1 || k > 65536) throw new Error(`kmeans1d: bad k ${k}`);
  const n = sorted.length;
  if (n === 0) return { centroids: new Float64Array(k), iterations: 0 };
  const distinct = distinctValues(sorted, k);
  if (distinct) {
    const centroids = Float64Array.from(
      { length: k },
      (_, j) => distinct[Math.min(j, distinct.length - 1)],
    );
    return { centroids, iterations: 0 };
  }
  const sums = new Prefix(sorted);
  let best: KMeans1D | null = null, bestSse = Infinity;
  const inits = [quantileInit(sums, k), uniformInit(sorted, k)];
  if (k <= PLUS_PLUS_MAX_K) inits.push(plusPlusInit(sorted, k));
  for (const init of inits) {
    const fit = lloyd(sorted, sums, init, maxIter);
    const sse = sums.sse(sorted, fit.centroids);
    if (sse < bestSse) [best, bestSse] = [fit, sse];
  }
  return best!;
}

/** Prefix sums of values and squares over sorted data. */
class Prefix {
  readonly s1: Float64Array;
  readonly s2: Float64Array;
  constructor(sorted: Float64Array) {
    const n = sorted.length;
    this.s1 = new Float64Array(n + 1);
    this.s2 = new Float64Array(n + 1);
    for (let i = 0; i < n; i++) {
      this.s1[i + 1] = this.s1[i] + sorted[i];
      this.s2[i + 1] = this.s2[i] + sorted[i] * sorted[i];
    }
  }
  mean(a: number, b: number): number {
    return (this.s1[b] - this.s1[a]) / (b - a);
  }
  /** Σ (x − nearest centroid)² over all values. */
  sse(sorted: Float64Array, centroids: Float64Array): number {
    let total = 0, start = 0;
    for (let j = 0; j < centroids.length; j++) {
      const end = j < centroids.length - 1
        ? upperBound(sorted, (centroids[j] + centroids[j + 1]) / 2)
        : sorted.length;
      if (end > start) {
        const c = centroids[j], m = end - start;
        total += this.s2[end] - this.s2[start] - 2 * c * (this.s1[end] - this.s1[start]) +
          c * c * m;
      }
      start = Math.max(start, end);
    }
    return total;
  }
}

/** Lloyd iterations from ascending `centroids` until no cut point moves. */
function lloyd(sorted: Float64Array, sums: Prefix, init: Float64Array, maxIter: number): KMeans1D {
  const k = init.length, n = sorted.length;
  const centroids = init.slice();
  // ends[j] = one past the last sorted index of cluster j.
  const ends = new Int32Array(k).fill(-1);
  let iterations = 0;
  for (; iterations < maxIter; iterations++) {
    let changed = false;
    for (let j = 0; j < k - 1; j++) {
      const e = upperBound(sorted, (centroids[j] + centroids[j + 1]) / 2);
      if (e !== ends[j]) changed = true;
      ends[j] = e;
    }
    ends[k - 1] = n;
    if (!changed && iterations > 0) break;
    let start = 0;
    for (let j = 0; j < k; j++) {
      if (ends[j] > start) centroids[j] = sums.mean(start, ends[j]);
      start = Math.max(start, ends[j]);
    }
  }
  return { centroids, iterations };
}

/** Means of k equal-count runs of the sorted values. */
function quantileInit(sums: Prefix, k: number): Float64Array {
  const n = sums.s1.length - 1;
  return Float64Array.from({ length: k }, (_, j) => {
    const a = Math.floor((j * n) / k), b = Math.max(Math.floor(((j + 1) * n) / k), a + 1);
    return sums.mean(Math.min(a, n - 1), Math.min(b, n));
  });
}

/** k evenly spaced points from the smallest to the largest value (catches isolated outliers). */
function uniformInit(sorted: Float64Array, k: number): Float64Array {
  const lo = sorted[0], hi = sorted[sorted.length - 1];
  return Float64Array.from(
    { length: k },
    (_, j) => k === 1 ? (lo + hi) / 2 : lo + ((hi - lo) * j) / (k - 1),
  );
}

/**
 * Greedy k-means++ (as scikit-learn: 2 + ⌊ln k⌋ candidates per step, keep the one that lowers
 * the potential most) with a fixed-seed generator, so the result is reproducible.
 */
function plusPlusInit(sorted: Float64Array, k: number): Float64Array {
  const n = sorted.length;
  const rng = new Rng(10);
  const trials = 2 + Math.floor(Math.log(k));
  const chosen = [sorted[Math.floor(rng.uniform() * n)]];
  const d2 = Float64Array.from(sorted, (x) => (x - chosen[0]) ** 2);
  let potential = d2.reduce((s, v) => s + v, 0);
  for (let c = 1; c < k; c++) {
    let bestCand = sorted[0], bestPot = Infinity;
    for (let t = 0; t < trials; t++) {
      let target = rng.uniform() * potential, i = 0;
      while (i < n - 1 && target >= d2[i]) target -= d2[i++];
      const cand = sorted[i];
      let pot = 0;
      for (let m = 0; m < n; m++) pot += Math.min(d2[m], (sorted[m] - cand) ** 2);
      if (pot < bestPot) [bestPot, bestCand] = [pot, cand];
    }
    chosen.push(bestCand);
    for (let m = 0; m < n; m++) d2[m] = Math.min(d2[m], (sorted[m] - bestCand) ** 2);
    potential = bestPot;
  }
  return Float64Array.from(chosen).sort();
}

/** Index of the centroid nearest to x (ascending centroids; ties go to the lower index). */
export function nearestCentroid(x: number, centroids: ArrayLike<number>): number {
  let lo = 0, hi = centroids.length - 1;
  // Invariant: the answer is in [lo, hi]; x belongs above midpoint m iff x > m.
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (x > (centroids[mid] + centroids[mid + 1]) / 2) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Number of sorted values ≤ x. */
function upperBound(sorted: Float64Array, x: number): number {
  let lo = 0, hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The distinct values when there are at most k of them, else null. */
function distinctValues(sorted: Float64Array, k: number): number[] | null {
  const out = [sorted[0]];
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i] !== sorted[i - 1]) {
      if (out.length === k) return null;
      out.push(sorted[i]);
    }
  }
  return out;
}
