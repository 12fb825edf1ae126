/**
 * Dense symmetric linear algebra for GPTQ: blocked Cholesky with failure detection, blocked
 * lower-triangular inverse, and the upper Cholesky factor of H⁻¹ that GPTQ's column loop uses.
 *
 * Blocks of `blockSize` (default 128): the diagonal blocks are factored/inverted in float64 in
 * TypeScript, the panel updates run as float32 GEMMs through ONNX Runtime (float32 is what the
 * reference computes in). Matrices are `n×n` row-major Float32Arrays.
 * {@linkcode inverseCholeskyUpperInPlace} runs the whole chain in the matrix's own storage.
 * @module
 */
import { Graph } from "./graph.ts";
import { matmulT } from "./matmul.ts";
import type { Runtime } from "./session.ts";

/** The outcome of a factorisation: the factor, or the first pivot that was not positive. */
export type CholeskyResult =
  | { ok: true; L: Float32Array }
  | { ok: false; pivot: number };

/** The outcome of {@linkcode inverseCholeskyUpper}. */
export type InverseCholeskyResult =
  | { ok: true; U: Float32Array }
  | { ok: false; pivot: number };

/** Thrown by callers that cannot continue without a factor. */
export class CholeskyError extends Error {
  /** Index (in the caller's order) of the first non-positive or non-finite pivot. */
  readonly pivot: number;
  constructor(pivot: number, what = "matrix") {
    super(`Cholesky: ${what} is not positive definite (pivot ${pivot})`);
    this.name = "CholeskyError";
    this.pivot = pivot;
  }
}

const DEFAULT_BLOCK = 128;

/** Y = C − A·Bᵀ (A [m, k], B [b, k], C [m, b]). */
const PANEL_GRAPH = (() => {
  const g = new Graph();
  const a = g.input("a", ["m", "k"]);
  const b = g.input("b", ["n", "k"]);
  const c = g.input("c", ["m", "n"]);
  g.output(g.op("Gemm", [a, b, c], { transB: 1, alpha: { float: -1 }, beta: { float: 1 } }), "y");
  return g.toBytes();
})();

/** Y = −D·(A·X) (D [b, b], A [b, i], X [i, n]). */
const TRI_INV_GRAPH = (() => {
  const g = new Graph();
  const d = g.input("d", ["b", "b"]);
  const a = g.input("a", ["b", "i"]);
  const b = g.input("x", ["i", "n"]);
  g.output(g.op("Gemm", [d, g.matmul(a, b)], { alpha: { float: -1 } }), "y");
  return g.toBytes();
})();

/**
 * In-place float64 lower Cholesky of an `n×n` row-major matrix (reads the lower triangle,
 * leaves L there and zeros above). Returns −1, or the index of the first pivot that is not
 * positive and finite.
 */
export function choleskyF64(a: Float64Array, n: number): number {
  for (let j = 0; j < n; j++) {
    const rj = j * n;
    let d = a[rj + j];
    for (let k = 0; k < j; k++) d -= a[rj + k] * a[rj + k];
    if (!(d > 0) || d === Infinity) return j;
    const ljj = Math.sqrt(d);
    a[rj + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      const ri = i * n;
      let s = a[ri + j];
      for (let k = 0; k < j; k++) s -= a[ri + k] * a[rj + k];
      a[ri + j] = s / ljj;
    }
    for (let k = j + 1; k < n; k++) a[rj + k] = 0;
  }
  return -1;
}

/** Float64 inverse of a lower-triangular `n×n` row-major matrix (non-zero diagonal). */
export function invertLowerF64(L: Float64Array, n: number): Float64Array {
  const X = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    X[j * n + j] = 1 / L[j * n + j];
    for (let i = j + 1; i < n; i++) {
      let s = 0;
      for (let k = j; k < i; k++) s += L[i * n + k] * X[k * n + j];
      X[i * n + j] = -s / L[i * n + i];
    }
  }
  return X;
}

/**
 * Blocked lower Cholesky `A = L·Lᵀ` of a symmetric `n×n` matrix (only its lower triangle is
 * read). Left-looking: block column k is `A[k:, k:k+b] − L[k:, :k]·L[k:k+b, :k]ᵀ`, one GEMM.
 * Never returns NaN: a non-positive or non-finite pivot yields `{ok: false, pivot}`.
 */
export async function cholesky(
  rt: Runtime,
  A: Float32Array,
  n: number,
  blockSize = DEFAULT_BLOCK,
): Promise<CholeskyResult> {
  if (A.length !== n * n) throw new Error(`cholesky: ${A.length} values for a ${n}×${n} matrix`);
  const bad = firstNonFiniteLower(A, n);
  if (bad >= 0) return { ok: false, pivot: bad };
  const L = A.slice();
  const pivot = await choleskyInPlace(rt, L, n, blockSize);
  return pivot < 0 ? { ok: true, L } : { ok: false, pivot };
}

/**
 * Blocked inverse of a lower-triangular `n×n` matrix with positive diagonal. Block row i:
 * `X[i, :i] = −X_ii · (L[i, :i] · X[:i, :i])`, one fused GEMM pair.
 */
export async function invertLower(
  rt: Runtime,
  L: Float32Array,
  n: number,
  blockSize = DEFAULT_BLOCK,
): Promise<Float32Array> {
  const X = new Float32Array(n * n);
  X.set(L.subarray(0, n * n));
  await invertLowerInPlace(rt, X, n, blockSize);
  return X;
}

/**
 * The upper-triangular U with `H⁻¹ = Uᵀ·U` (what the reference gets from
 * `cholesky(cholesky_inverse(cholesky(H)), upper=True)`), with one Cholesky and one triangular
 * inverse: with J the reversal permutation and `J·H·J = L′·L′ᵀ`, `U = J·L′⁻¹·J`.
 * H must already carry its damping and is not modified. On failure the pivot is reported in H's
 * own order.
 */
export async function inverseCholeskyUpper(
  rt: Runtime,
  H: Float32Array,
  n: number,
  blockSize = DEFAULT_BLOCK,
): Promise<InverseCholeskyResult> {
  const last = n * n - 1;
  const A = new Float32Array(n * n);
  for (let i = 0; i < n * n; i++) A[i] = H[last - i];
  return await upperFromReversed(rt, A, n, blockSize);
}

/**
 * {@linkcode inverseCholeskyUpper} computed in H's own storage, with no other `n×n` buffer (the
 * largest temporary is `n²/4` values): on success the returned U is H itself, bit for bit what
 * {@linkcode inverseCholeskyUpper} gives. H is consumed either way: after a failure its contents
 * are unspecified.
 */
export async function inverseCholeskyUpperInPlace(
  rt: Runtime,
  H: Float32Array,
  n: number,
  blockSize = DEFAULT_BLOCK,
): Promise<InverseCholeskyResult> {
  if (H.length !== n * n) throw new Error(`inverseCholeskyUpper: ${H.length} values for ${n}×${n}`);
  return await upperFromReversed(rt, H.reverse(), n, blockSize);
}

/** U from `A = J·H·J`, overwriting A. */
async function upperFromReversed(
  rt: Runtime,
  A: Float32Array,
  n: number,
  blockSize: number,
): Promise<InverseCholeskyResult> {
  const bad = firstNonFiniteLower(A, n);
  if (bad >= 0) return { ok: false, pivot: n - 1 - bad };
  const pivot = await choleskyInPlace(rt, A, n, blockSize);
  if (pivot >= 0) return { ok: false, pivot: n - 1 - pivot };
  await invertLowerInPlace(rt, A, n, blockSize);
  const U = A.reverse();
  if (!U.every(Number.isFinite)) return { ok: false, pivot: 0 };
  return { ok: true, U };
}

/** Column of the first non-finite entry of the lower triangle, row by row, or −1. */
function firstNonFiniteLower(A: Float32Array, n: number): number {
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) if (!Number.isFinite(A[i * n + j])) return j;
  }
  return -1;
}

/**
 * The blocked Cholesky of {@linkcode cholesky} over A's own storage (finite lower triangle):
 * block column k of A is read once, at step k, and then overwritten by L's. Returns −1, or the
 * first failing pivot (A is then partly overwritten).
 */
async function choleskyInPlace(
  rt: Runtime,
  A: Float32Array,
  n: number,
  blockSize: number,
): Promise<number> {
  // Only the lower triangle is read, and the entries above the diagonal that the panel products
  // carry along end up above the diagonal of the f64 block, which choleskyF64 ignores.
  for (let i = 0; i < n; i++) A.fill(0, i * n + i + 1, (i + 1) * n);
  let panel = 0;
  for (let k = 0; k < n; k += blockSize) panel = Math.max(panel, (n - k) * k);
  const Lk = new Float32Array(panel); // L[k:, :k], contiguous as the GEMM needs it
  for (let k = 0; k < n; k += blockSize) {
    const b = Math.min(blockSize, n - k), m = n - k;
    let S: Float32Array = new Float32Array(m * b);
    for (let i = 0; i < m; i++) {
      const src = (k + i) * n + k;
      S.set(A.subarray(src, src + b), i * b);
    }
    if (k > 0) {
      for (let i = 0; i < m; i++) Lk.set(A.subarray((k + i) * n, (k + i) * n + k), i * k);
      S = (await rt.run(PANEL_GRAPH, {
        a: { data: Lk.subarray(0, m * k), shape: [m, k] },
        b: { data: Lk.subarray(0, b * k), shape: [b, k] },
        c: { data: S, shape: [m, b] },
      }, { arena: false })).y.data;
    }
    const D = Float64Array.from(S.subarray(0, b * b));
    const fail = choleskyF64(D, b);
    if (fail >= 0) return k + fail;
    for (let i = 0; i < b; i++) {
      for (let j = 0; j <= i; j++) A[(k + i) * n + k + j] = D[i * b + j];
    }
    if (m > b) {
      const invDt = Float32Array.from(invertLowerF64(D, b));
      const L21 = await matmulT(rt, { data: S.subarray(b * b), shape: [m - b, b] }, {
        data: invDt,
        shape: [b, b],
      });
      for (let i = 0; i < m - b; i++) {
        const src = L21.data.subarray(i * b, i * b + b);
        if (!src.every(Number.isFinite)) return k + b;
        A.set(src, (k + b + i) * n + k);
      }
    }
  }
  return -1;
}

/**
 * The blocked inverse of {@linkcode invertLower} over L's own storage. Before block row i the
 * finished `X[:i, :i]` lies packed with row stride i at the start of the buffer (the exact GEMM
 * operand, so no copy) and L's rows i.. are still in place at stride n; each step widens the
 * packed block to stride i + b and appends the new block row.
 */
async function invertLowerInPlace(
  rt: Runtime,
  X: Float32Array,
  n: number,
  blockSize: number,
): Promise<void> {
  for (let i = 0; i < n; i += blockSize) {
    const b = Math.min(blockSize, n - i), w = i + b;
    const D = new Float64Array(b * b);
    for (let r = 0; r < b; r++) {
      for (let c = 0; c <= r; c++) D[r * b + c] = X[(i + r) * n + i + c];
    }
    const Xii = invertLowerF64(D, b);
    let y: Float32Array | null = null;
    if (i > 0) {
      const Lrow = new Float32Array(b * i);
      for (let r = 0; r < b; r++) Lrow.set(X.subarray((i + r) * n, (i + r) * n + i), r * i);
      y = (await rt.run(TRI_INV_GRAPH, {
        d: { data: Float32Array.from(Xii), shape: [b, b] },
        a: { data: Lrow, shape: [b, i] },
        x: { data: X.subarray(0, i * i), shape: [i, i] },
      }, { arena: false })).y.data;
    }
    // Last row first: row r moves up to r·w ≥ r·i, past every row not yet moved.
    for (let r = i - 1; r >= 0; r--) {
      X.copyWithin(r * w, r * i, r * i + i);
      X.fill(0, r * w + i, (r + 1) * w);
    }
    for (let r = 0; r < b; r++) {
      const dst = (i + r) * w;
      if (y) X.set(y.subarray(r * i, (r + 1) * i), dst);
      for (let c = 0; c < b; c++) X[dst + i + c] = Xii[r * b + c];
    }
  }
}
