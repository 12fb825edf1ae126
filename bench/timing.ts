/**
 * Timing helpers shared by the benchmarks.
 * @module
 */

/** Summary statistics of repeated timings, in seconds. */
export interface Timing {
  median: number;
  min: number;
  samples: number[];
}

/** Median, min and the samples themselves. */
export function summarize(samples: number[]): Timing {
  const s = [...samples].sort((a, b) => a - b);
  const m = s.length >> 1;
  const median = s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  return { median, min: s[0], samples };
}

/** Seconds taken by one call of `fn`. */
export async function timeOnce(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}

/** How a set of functions is timed by {@linkcode timeAlternating}. */
export interface AlternateOptions {
  /** Rounds; in each, every function gets its own block of calls. */
  rounds: number;
  /** Untimed calls at the start of each block (caches; the previous session's threads idle). */
  warmup: number;
  /** Timed calls per block: at least `minReps`… */
  minReps: number;
  /** …and until the block has spent `minSeconds` (at most `maxReps`). */
  minSeconds: number;
  maxReps: number;
}

/**
 * Times several functions on the same footing: in each round, a block of calls of each function
 * in turn, so drifting machine load affects all of them alike while consecutive calls still run
 * back to back (ONNX Runtime sessions' spinning worker threads would otherwise steal the cores
 * from whichever session runs next).
 */
export async function timeAlternating(
  fns: Record<string, () => Promise<unknown>>,
  o: AlternateOptions,
): Promise<Record<string, Timing>> {
  const names = Object.keys(fns);
  const samples: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (let round = 0; round < o.rounds; round++) {
    for (const n of names) {
      for (let i = 0; i < o.warmup; i++) await fns[n]();
      let spent = 0;
      for (let rep = 0; rep < o.maxReps && (rep < o.minReps || spent < o.minSeconds); rep++) {
        const s = await timeOnce(fns[n]);
        samples[n].push(s);
        spent += s;
      }
    }
  }
  return Object.fromEntries(names.map((n) => [n, summarize(samples[n])]));
}
