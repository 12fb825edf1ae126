/**
 * A port of CPython 3.11's `random` module core: the MT19937 Mersenne Twister as seeded by
 * `random.seed(int)`, plus the integer draws GPTQ's calibration sampling relies on
 * (`getrandbits`, `_randbelow`, `randint`, `randrange`) and `random()`.
 *
 * Exactness notes (PROTOCOL §4):
 * - `seed(n)` = `init_by_array(key)` where `key` is the 32-bit little-endian words of `|n|`
 *   (`[0]` for `n = 0`), after `init_genrand(19650218)`, exactly as CPython's `random_seed`.
 * - `getrandbits(k)` for `k <= 32` is `genrand_uint32() >>> (32 - k)`; for larger `k` CPython
 *   fills 32-bit words least significant first, dropping low bits of the last word.
 * - `randbelow(n)` = `_randbelow_with_getrandbits`: `k = bit_length(n)`, draw `getrandbits(k)`
 *   until the value is `< n`.
 * - `randint(a, b)` = `a + randbelow(b - a + 1)`.
 *
 * Every generator holds its own state; there is no module-level state.
 * @module
 */

const N = 624;
const M = 397;
const MATRIX_A = 0x9908b0df;
const UPPER_MASK = 0x80000000;
const LOWER_MASK = 0x7fffffff;

/** Number of bits needed to represent a non-negative integer (Python's `int.bit_length`). */
export function bitLength(n: number): number {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new RangeError(`bitLength: expected a non-negative safe integer, got ${n}`);
  }
  let k = 0;
  while (n >= 0x100000000) {
    n = Math.floor(n / 0x100000000);
    k += 32;
  }
  return k + (n === 0 ? 0 : 32 - Math.clz32(n));
}

/** The 32-bit little-endian words of `|n|` (`[0]` for 0), as CPython's `random_seed` builds the key. */
export function seedKey(n: number | bigint): Uint32Array {
  let v = typeof n === "bigint" ? n : BigInt(checkInteger(n));
  if (v < 0n) v = -v;
  const words: number[] = [];
  while (v > 0n) {
    words.push(Number(v & 0xffffffffn));
    v >>= 32n;
  }
  if (words.length === 0) words.push(0);
  return Uint32Array.from(words);
}

function checkInteger(n: number): number {
  if (!Number.isSafeInteger(n)) throw new RangeError(`MT19937: seed must be an integer, got ${n}`);
  return n;
}

/** CPython 3.11 `random.Random` (integer seeding, MT19937 core). */
export class MT19937 {
  readonly #mt = new Uint32Array(N);
  #mti = N + 1;

  /** A generator seeded like `random.Random(seed)` (default 0). */
  constructor(seed: number | bigint = 0) {
    this.seed(seed);
  }

  /** `random.seed(n)` for an integer `n` (negative seeds use `|n|`, as CPython does). */
  seed(n: number | bigint): void {
    this.initByArray(seedKey(n));
  }

  /** MT19937 `init_genrand(s)`. */
  initGenrand(s: number): void {
    const mt = this.#mt;
    mt[0] = s >>> 0;
    for (let i = 1; i < N; i++) {
      const prev = mt[i - 1];
      mt[i] = (Math.imul(1812433253, prev ^ (prev >>> 30)) + i) >>> 0;
    }
    this.#mti = N;
  }

  /** MT19937 `init_by_array(key)`, as CPython calls it from `seed`. */
  initByArray(key: ArrayLike<number>): void {
    const mt = this.#mt;
    const len = key.length;
    if (len === 0) throw new RangeError("MT19937.initByArray: empty key");
    this.initGenrand(19650218);
    let i = 1;
    let j = 0;
    for (let k = Math.max(N, len); k > 0; k--) {
      const prev = mt[i - 1];
      mt[i] = ((mt[i] ^ Math.imul(prev ^ (prev >>> 30), 1664525)) + (key[j] >>> 0) + j) >>> 0;
      i++;
      j++;
      if (i >= N) {
        mt[0] = mt[N - 1];
        i = 1;
      }
      if (j >= len) j = 0;
    }
    for (let k = N - 1; k > 0; k--) {
      const prev = mt[i - 1];
      mt[i] = ((mt[i] ^ Math.imul(prev ^ (prev >>> 30), 1566083941)) - i) >>> 0;
      i++;
      if (i >= N) {
        mt[0] = mt[N - 1];
        i = 1;
      }
    }
    mt[0] = 0x80000000;
  }

  /** MT19937 `genrand_uint32()`: the next 32-bit output, in [0, 2^32). */
  genrandUint32(): number {
    const mt = this.#mt;
    if (this.#mti >= N) {
      if (this.#mti === N + 1) this.initGenrand(5489);
      let kk = 0;
      for (; kk < N - M; kk++) {
        const y = (mt[kk] & UPPER_MASK) | (mt[kk + 1] & LOWER_MASK);
        mt[kk] = mt[kk + M] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
      }
      for (; kk < N - 1; kk++) {
        const y = (mt[kk] & UPPER_MASK) | (mt[kk + 1] & LOWER_MASK);
        mt[kk] = mt[kk + (M - N)] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
      }
      const y = (mt[N - 1] & UPPER_MASK) | (mt[0] & LOWER_MASK);
      mt[N - 1] = mt[M - 1] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
      this.#mti = 0;
    }
    let y = mt[this.#mti++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** `random.getrandbits(k)` for 0 <= k <= 53 (values stay exact as JS numbers). */
  getrandbits(k: number): number {
    if (!Number.isInteger(k) || k < 0 || k > 53) {
      throw new RangeError(`getrandbits: k must be an integer in [0, 53], got ${k}`);
    }
    if (k === 0) return 0;
    if (k <= 32) return this.genrandUint32() >>> (32 - k);
    // CPython: words least significant first; the last word keeps its top (k - 32) bits.
    const lo = this.genrandUint32();
    const hi = this.genrandUint32() >>> (64 - k);
    return hi * 0x100000000 + lo;
  }

  /** `random._randbelow(n)` (the getrandbits variant): uniform in [0, n), n >= 1. */
  randbelow(n: number): number {
    if (!Number.isSafeInteger(n) || n <= 0) {
      throw new RangeError(`randbelow: n must be a positive integer, got ${n}`);
    }
    const k = bitLength(n);
    let r = this.getrandbits(k);
    while (r >= n) r = this.getrandbits(k);
    return r;
  }

  /** `random.randint(a, b)`: uniform integer in [a, b], both ends included. */
  randint(a: number, b: number): number {
    if (!Number.isSafeInteger(a) || !Number.isSafeInteger(b)) {
      throw new RangeError(`randint: bounds must be integers, got (${a}, ${b})`);
    }
    if (b < a) throw new RangeError(`randint: empty range (${a}, ${b})`);
    return a + this.randbelow(b - a + 1);
  }

  /** `random.random()`: a float in [0, 1) with 53 random bits (`genrand_res53`). */
  random(): number {
    const a = this.genrandUint32() >>> 5;
    const b = this.genrandUint32() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }
}
