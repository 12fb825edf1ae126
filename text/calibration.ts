/**
 * Calibration windows as GPTQ's `datautils.get_loaders` draws them (PROTOCOL §4):
 * `random.seed(seed)`, then per sample `i = random.randint(0, N - seqlen - 1)` and the window
 * `ids[i : i + seqlen]`, with CPython's RNG reproduced by {@link MT19937}.
 * @module
 */

import { MT19937 } from "../kernels/mt19937.ts";

/** Start positions of `nsamples` calibration windows in a stream of `nTokens` ids. */
export function calibrationStarts(
  nTokens: number,
  nsamples: number,
  seqlen: number,
  seed: number,
): number[] {
  const hi = nTokens - seqlen - 1;
  if (hi < 0) {
    throw new RangeError(
      `calibrationStarts: ${nTokens} tokens are too few for windows of ${seqlen} (need > ${seqlen})`,
    );
  }
  const rng = new MT19937(seed);
  const starts: number[] = [];
  for (let s = 0; s < nsamples; s++) starts.push(rng.randint(0, hi));
  return starts;
}

/** Calibration windows: `data` holds `nsamples` windows of `seqlen` ids, row after row. */
export interface CalibrationWindows {
  /** Token ids, `[nsamples, seqlen]` row-major. */
  data: Int32Array;
  /** Start position of each window in the source stream. */
  starts: number[];
  /** Number of windows. */
  nsamples: number;
  /** Tokens per window. */
  seqlen: number;
}

/** Cuts the calibration windows of {@link calibrationStarts} from `ids`. */
export function calibrationWindows(
  ids: ArrayLike<number>,
  nsamples: number,
  seqlen: number,
  seed: number,
): CalibrationWindows {
  const starts = calibrationStarts(ids.length, nsamples, seqlen, seed);
  const data = new Int32Array(nsamples * seqlen);
  starts.forEach((start, s) => {
    for (let t = 0; t < seqlen; t++) data[s * seqlen + t] = ids[start + t];
  });
  return { data, starts, nsamples, seqlen };
}
