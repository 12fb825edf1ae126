/**
 * Choosing the next token from a row of logits: greedy (temperature 0), or sampling at a
 * temperature from the top-k and the nucleus (top-p) of the distribution, in that order (as
 * Hugging Face's logits warpers), drawn with a seeded Mersenne Twister (Python's `random`).
 * @module
 */
import { MT19937 } from "../kernels/mt19937.ts";

/** How tokens are chosen. */
export interface SamplingOptions {
  /** 0: greedy (the default); above 0: sample from softmax(logits / temperature). */
  temperature?: number;
  /** Keep only the k most likely tokens (0 or absent: all). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p (1: all). */
  topP?: number;
  /** Seed of the draws (absent: a random one). */
  seed?: number;
}

/** Checks sampling options; the message names the option. */
export function checkSampling(o: SamplingOptions): void {
  const t = o.temperature ?? 0, k = o.topK ?? 0, p = o.topP ?? 1;
  if (!(Number.isFinite(t) && t >= 0)) throw new Error(`temperature ${t}: expected ≥ 0`);
  if (!(Number.isInteger(k) && k >= 0)) throw new Error(`top_k ${k}: expected an integer ≥ 0`);
  if (!(p > 0 && p <= 1)) throw new Error(`top_p ${p}: expected a number in (0, 1]`);
  if (o.seed !== undefined && !(Number.isSafeInteger(o.seed) && o.seed >= 0)) {
    throw new Error(`seed ${o.seed}: expected an integer ≥ 0`);
  }
}

/** The index of the largest value (the first one on ties). */
export function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/**
 * The distribution sampling draws from, in float64: softmax(logits / T) over the top-k tokens,
 * cut to the nucleus of probability top-p and renormalized; tokens outside get 0.
 */
export function samplingDistribution(row: ArrayLike<number>, o: SamplingOptions): Float64Array {
  const t = o.temperature ?? 1, V = row.length;
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => row[b] - row[a] || a - b);
  const k = o.topK && o.topK < V ? o.topK : V;
  const kept = order.slice(0, k);
  const max = row[kept[0]] / t;
  const probs = new Float64Array(V);
  let z = 0;
  for (const i of kept) z += probs[i] = Math.exp(row[i] / t - max);
  const p = o.topP ?? 1;
  let cum = 0, n = 0;
  while (n < kept.length) {
    cum += probs[kept[n++]] / z;
    if (p < 1 && cum >= p) break;
  }
  let z2 = 0;
  for (let j = 0; j < n; j++) z2 += probs[kept[j]];
  const out = new Float64Array(V);
  for (let j = 0; j < n; j++) out[kept[j]] = probs[kept[j]] / z2;
  return out;
}

/** Picks tokens from logits rows by one sampling configuration. */
export class Sampler {
  #o: SamplingOptions;
  #rng: MT19937 | null;

  /** A sampler; `o.seed` fixes its draws. */
  constructor(o: SamplingOptions = {}) {
    checkSampling(o);
    this.#o = o;
    this.#rng = (o.temperature ?? 0) > 0
      ? new MT19937(o.seed ?? Math.floor(Math.random() * 2 ** 32))
      : null;
  }

  /** The next token for one row of logits. */
  pick(row: ArrayLike<number>): number {
    if (!this.#rng) return argmax(row);
    const probs = samplingDistribution(row, this.#o);
    const r = this.#rng.random();
    let cum = 0, last = 0;
    for (let i = 0; i < probs.length; i++) {
      if (probs[i] === 0) continue;
      last = i;
      cum += probs[i];
      if (r < cum) return i;
    }
    return last;
  }
}
