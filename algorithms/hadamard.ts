/**
 * Orthogonal rotations for QuaRot-style rotation of a model: randomized Hadamard matrices of any
 * order we can build, as Kronecker products A ⊗ B/√p of a small orthogonal factor A of order m
 * — a ±1 Hadamard matrix over √m (1, 2, or Paley's constructions from a prime q: q + 1 for
 * q ≡ 3 mod 4, 2(q + 1) for q ≡ 1 mod 4, so 12, 20, 36, 44, 60, 68, 84, 108, …) — and a
 * Sylvester matrix B of order p = 2^k, times random signs D. Where the odd part of n has no
 * Hadamard matrix we can build (stories260k's 172 = 43·4, LLaMA-2-7B's 11008 = 43·256), A is a
 * seeded random orthogonal matrix of that order instead (Gram–Schmidt on Gaussian vectors), and
 * the rotation's name says so.
 *
 * A rotation is applied as x·Q to rows x of length n: with x viewed as an m × p matrix X (row a,
 * column b holding x[a·p + b]) and Q = D·(A ⊗ B/√p), x·Q is Aᵀ·(X∘D)·B/√p — two small products
 * instead of an n × n one, in TypeScript (float64) for the weights and as graph ops at run time.
 * @module
 */
import type { Graph, Value } from "../kernels/graph.ts";
import { rotateByFactors } from "../models/block_graph.ts";
import { Rng } from "../kernels/tensor.ts";

/** An orthogonal n × n matrix Q = D·(A ⊗ B/√p), kept in factored form. */
export interface Rotation {
  /** Order n = m·p. */
  n: number;
  /** What it is, for reports: `randomized hadamard 12x32`, `random orthogonal 43 x hadamard 4`. */
  name: string;
  /** ±1 signs D (length n), applied first; null for none. */
  signs: Float64Array | null;
  /** Order m of the factor A. */
  m: number;
  /** The orthogonal factor A (m × m, row-major). */
  a: Float64Array;
  /** Order p = 2^k of the Sylvester factor B. */
  p: number;
  /** Whether A is a (scaled) Hadamard matrix rather than a random orthogonal one. */
  hadamard: boolean;
}

function isPrime(q: number): boolean {
  if (q < 2 || !Number.isInteger(q)) return false;
  for (let d = 2; d * d <= q; d++) if (q % d === 0) return false;
  return true;
}

/** The quadratic character modulo the prime q as a table: χ(x) = table[x mod q] ∈ {0, 1, −1}. */
function characterTable(q: number): Int8Array {
  const t = new Int8Array(q).fill(-1);
  t[0] = 0;
  for (let y = 1; y < q; y++) t[(y * y) % q] = 1;
  return t;
}

/** Paley I (q ≡ 3 mod 4, prime): a Hadamard matrix of order q + 1. */
function paley1(q: number): Float64Array {
  const n = q + 1, h = new Float64Array(n * n), chi = characterTable(q);
  // H = I + S with S = [[0, 1ᵀ], [−1, Jacobsthal]] skew-symmetric.
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s: number;
      if (i === 0) s = j === 0 ? 0 : 1;
      else if (j === 0) s = -1;
      else s = chi[(j - i + q) % q];
      h[i * n + j] = s + (i === j ? 1 : 0);
    }
  }
  return h;
}

/** Paley II (q ≡ 1 mod 4, prime): a Hadamard matrix of order 2(q + 1). */
function paley2(q: number): Float64Array {
  const c = q + 1, n = 2 * c, h = new Float64Array(n * n), chi = characterTable(q);
  // C = [[0, 1ᵀ], [1, Jacobsthal]] is a symmetric conference matrix; H = C ⊗ [[1, 1], [1, −1]]
  // + I ⊗ [[1, −1], [−1, −1]].
  for (let i = 0; i < c; i++) {
    for (let j = 0; j < c; j++) {
      const v = i === 0 ? (j === 0 ? 0 : 1) : j === 0 ? 1 : chi[(j - i + q) % q];
      const blocks = v === 0 ? [1, -1, -1, -1] : [v, v, v, -v];
      for (let a = 0; a < 2; a++) {
        for (let b = 0; b < 2; b++) h[(2 * i + a) * n + 2 * j + b] = blocks[2 * a + b];
      }
    }
  }
  return h;
}

/** The largest order of a Paley factor: the factor is applied as a dense m × m product. */
const MAX_FACTOR = 256;

/** A ±1 Hadamard matrix of order m (≤ {@linkcode MAX_FACTOR}) by Paley's constructions, or null. */
function baseHadamard(m: number): Float64Array | null {
  if (m > MAX_FACTOR) return null;
  if (m === 1) return Float64Array.of(1);
  if (m === 2) return Float64Array.of(1, 1, 1, -1);
  if (m % 4 === 0 && isPrime(m - 1) && (m - 1) % 4 === 3) return paley1(m - 1);
  if (m % 4 === 0 && isPrime(m / 2 - 1) && (m / 2 - 1) % 4 === 1) return paley2(m / 2 - 1);
  return null;
}

/**
 * A ±1 Hadamard matrix of order n as A ⊗ B (A of order m ≤ 256 built by Paley or trivially, B
 * Sylvester of order p = 2^k), choosing the smallest A; null when none of our constructions has
 * order n.
 */
export function hadamardFactors(n: number): { m: number; a: Float64Array; p: number } | null {
  if (!Number.isInteger(n) || n < 1) return null;
  for (let p = 2 ** Math.floor(Math.log2(n)); p >= 1; p /= 2) {
    if (n % p !== 0) continue;
    const a = baseHadamard(n / p);
    if (a) return { m: n / p, a, p };
  }
  return null;
}

/** A seeded random orthogonal matrix (Gram–Schmidt on Gaussian vectors, twice for accuracy). */
function randomOrthogonal(n: number, rng: Rng): Float64Array {
  const q = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const row = q.subarray(i * n, (i + 1) * n);
    for (let j = 0; j < n; j++) row[j] = rng.normal();
    for (let pass = 0; pass < 2; pass++) {
      for (let k = 0; k < i; k++) {
        const prev = q.subarray(k * n, (k + 1) * n);
        let dot = 0;
        for (let j = 0; j < n; j++) dot += row[j] * prev[j];
        for (let j = 0; j < n; j++) row[j] -= dot * prev[j];
      }
    }
    let norm = 0;
    for (let j = 0; j < n; j++) norm += row[j] * row[j];
    norm = Math.sqrt(norm);
    for (let j = 0; j < n; j++) row[j] /= norm;
  }
  return q;
}

/**
 * A rotation of order n: randomized Hadamard (random signs when `seed` is given, none when it is
 * null) where one can be built, else a seeded random orthogonal factor for the odd part of n
 * times the Sylvester matrix of its power of two.
 */
export function rotation(n: number, seed: number | null): Rotation {
  if (!Number.isInteger(n) || n < 1) throw new Error(`rotation: order ${n}`);
  const rng = new Rng((seed ?? 0) + 1);
  let signs: Float64Array | null = null;
  if (seed !== null) {
    signs = new Float64Array(n);
    for (let i = 0; i < n; i++) signs[i] = rng.uniform() < 0.5 ? -1 : 1;
  }
  const f = hadamardFactors(n);
  if (f) {
    const s = 1 / Math.sqrt(f.m);
    const name = `${seed === null ? "" : "randomized "}hadamard ${f.m === 1 ? n : `${f.m}x${f.p}`}`;
    return { n, name, signs, m: f.m, a: f.a.map((v) => v * s), p: f.p, hadamard: true };
  }
  let p = 1;
  while (n % (2 * p) === 0) p *= 2;
  const m = n / p;
  const name = `random orthogonal ${m}${p > 1 ? ` x hadamard ${p}` : ""}`;
  return { n, name, signs, m, a: randomOrthogonal(m, rng), p, hadamard: false };
}

/** In place: every row of `x` (rows × n, row-major) becomes row·Q. */
export function rotateRows(x: Float32Array | Float64Array, rows: number, r: Rotation): void {
  const n = r.n;
  if (x.length !== rows * n) throw new Error(`rotateRows: ${x.length} values are not ${rows}×${n}`);
  const v = new Float64Array(n), out = new Float64Array(n);
  for (let i = 0; i < rows; i++) {
    const row = x.subarray(i * n, (i + 1) * n);
    for (let j = 0; j < n; j++) v[j] = r.signs ? row[j] * r.signs[j] : row[j];
    applyFactors(v, r.m, r.a, r.p, out);
    for (let j = 0; j < n; j++) row[j] = out[j];
  }
}

/** out = Aᵀ·X·B/√p for x viewed as m × p (B Sylvester by the fast Walsh–Hadamard transform). */
function applyFactors(
  x: Float64Array,
  m: number,
  a: Float64Array,
  p: number,
  out: Float64Array,
): void {
  // X·B: a fast Walsh–Hadamard transform of each of the m rows.
  for (let r = 0; r < m; r++) {
    const row = x.subarray(r * p, (r + 1) * p);
    for (let h = 1; h < p; h *= 2) {
      for (let i = 0; i < p; i += 2 * h) {
        for (let j = i; j < i + h; j++) {
          const u = row[j], w = row[j + h];
          row[j] = u + w;
          row[j + h] = u - w;
        }
      }
    }
  }
  const scale = 1 / Math.sqrt(p);
  // Aᵀ·(X·B): out[a', b] = Σ_a A[a, a']·(XB)[a, b].
  for (let c = 0; c < m; c++) {
    for (let b = 0; b < p; b++) {
      let s = 0;
      for (let r = 0; r < m; r++) s += a[r * m + c] * x[r * p + b];
      out[c * p + b] = s * scale;
    }
  }
}

/** In place: every column of `w` (rows × n is its transpose: here `w` is n × cols) becomes Qᵀ·w. */
export function rotateColumns(w: Float32Array, n: number, cols: number, r: Rotation): void {
  // (Qᵀ·W)ᵀ = Wᵀ·Q: rotate the rows of the transpose.
  const t = new Float64Array(n * cols);
  for (let i = 0; i < n; i++) for (let j = 0; j < cols; j++) t[j * n + i] = w[i * cols + j];
  rotateRows(t, cols, r);
  for (let i = 0; i < n; i++) for (let j = 0; j < cols; j++) w[i * cols + j] = t[j * n + i];
}

/** x·Q as graph ops on x [N, n] (N may be unknown): the block graph's online rotation. */
export function rotateGraph(g: Graph, x: Value, r: Rotation): Value {
  return rotateByFactors(
    g,
    x,
    g.constant(Float32Array.from(r.signs ?? new Float64Array(r.n).fill(1)), [r.n]),
    g.constant(Float32Array.from(r.a), [r.m, r.m]),
  );
}

/** The Sylvester Hadamard matrix of order p = 2^k (symmetric), row-major. */
export function sylvester(p: number): Float64Array {
  const h = new Float64Array(p * p);
  for (let i = 0; i < p; i++) {
    for (let j = 0; j < p; j++) {
      // H[i, j] = (−1)^popcount(i & j)
      let bits = i & j, parity = 0;
      while (bits) {
        parity ^= 1;
        bits &= bits - 1;
      }
      h[i * p + j] = parity ? -1 : 1;
    }
  }
  return h;
}
