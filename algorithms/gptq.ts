/**
 * GPTQ (`fasterquant` of the reference, PROTOCOL §6) on one linear layer: columns quantized one
 * at a time in blocks of 128, each column's rounding error fed back into the not-yet-quantized
 * columns through the upper Cholesky factor U of H⁻¹ (lazy batch updates between blocks).
 *
 * Internally the weight is column-major in processing order, so a column and its updates are
 * contiguous; the post-block update `W[:, i2:] −= Err1·U[i1:i2, i2:]` is one GEMM through ONNX
 * Runtime. Per-element arithmetic is float32 as in the reference.
 * @module
 */
import { Graph } from "../kernels/graph.ts";
import { inverseCholeskyUpperInPlace } from "../kernels/linalg.ts";
import type { Runtime } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import type { ScaleFormat } from "../formats/packed.ts";
import { checkBits, fakeQuant, findParams, findParamsView, type QuantParams } from "./quantizer.ts";

const f32 = Math.fround;

/** The weight as the column loop sees it, handed to a {@linkcode ColumnQuantizerFactory}. */
export interface PreparedWeight {
  /**
   * Column-major `[cols][rows]` in processing order, dead columns zeroed, before any error
   * feedback. Read it during the factory call only (the sweep updates it in place).
   */
  columns: Float32Array;
  /** Entries per column (output channels). */
  rows: number;
  /** Number of columns (input channels). */
  cols: number;
  /** Processing position → original column (act-order), or null for the identity. */
  perm: Int32Array | null;
}

/** Writes the quantized value of every entry of column `w` (processing position j) into `q`. */
export type ColumnQuantizer = (w: Float32Array, j: number, q: Float32Array) => void;

/** Called once before the sweep; returns the per-column quantizer that replaces min-max RTN. */
export type ColumnQuantizerFactory = (prep: PreparedWeight) => ColumnQuantizer;

/** GPTQ options; defaults are the reference's. */
export interface GptqOptions {
  /** 2..8 (ignored by a custom `quantizeColumn`). */
  bits: number;
  /** Symmetric range, zero point fixed at (maxq+1)/2 (false). */
  sym?: boolean;
  /** Columns per group; 0 = per output channel. */
  groupSize: number;
  /** Quantize columns in order of decreasing diag(H). */
  actOrder: boolean;
  /** Group parameters fixed up front from the original W (reference `--static-groups`). */
  staticGroups: boolean;
  /** Columns per lazy-update block (128). */
  blockSize?: number;
  /** Damping as a fraction of mean(diag H) (0.01). */
  percdamp?: number;
  /** Shrink-grid search for the range minimising Σ|q−x|^2.4 instead of min-max (false). */
  mse?: boolean;
  /** Scales rounded as a packed format stores them (fp16); absent: float32. */
  scaleFormat?: ScaleFormat;
  /** Replaces the min-max quantizer of each column (CLAQ). */
  quantizeColumn?: ColumnQuantizerFactory;
  /** Retries of a failed Cholesky, each with 10× the damping, before falling back to RTN (3). */
  dampRetries?: number;
}

/** GPTQ's output for one layer. */
export interface GptqResult {
  /** Fake-quantized weight `[out, in]`, original column order. */
  weight: Tensor;
  /** `[out, nGroups]` row-major; empty with a custom column quantizer. */
  scale: Float32Array;
  /** Zero points, shaped like `scale`. */
  zero: Float32Array;
  /** Groups per row (1 per channel; 0 with a custom column quantizer). */
  nGroups: number;
  /** Group of every original column (GPTQ's `g_idx`). */
  gIdx: Int32Array;
  /** Processing position → original column when act-order, else null. */
  perm: Int32Array | null;
  /** The reference's printed loss: Σ (w − q)² / U_ii² / 2. */
  error: number;
  /** Damping finally added to diag(H) (0 after a fallback). */
  damp: number;
  /** True when no damping made H factorisable and the layer was rounded to nearest. */
  fellBack: boolean;
  /** What went wrong when it fell back. */
  warning?: string;
}

/** Rows swept together by the built-in quantizer (a 128×128 float32 block stays in L2). */
const ROW_CHUNK = 128;

/** Y = C − Aᵀ·B (A [k, m], B [k, n], C [m, n]): the post-block update, column-major. */
const BLOCK_UPDATE_GRAPH = (() => {
  const g = new Graph();
  const a = g.input("a", ["k", "m"]);
  const b = g.input("b", ["k", "n"]);
  const c = g.input("c", ["m", "n"]);
  g.output(g.op("Gemm", [a, b, c], { transA: 1, alpha: { float: -1 }, beta: { float: 1 } }), "y");
  return g.toBytes();
})();

/**
 * Quantizes `W` (`[out, in]`) with GPTQ given `H = 2/n Σ x xᵀ` (`[in, in]`). Neither input is
 * modified.
 */
export async function gptq(
  rt: Runtime,
  W: Tensor,
  H: Float32Array,
  opts: GptqOptions,
): Promise<GptqResult> {
  const [rows, cols] = W.shape;
  if (W.shape.length !== 2) throw new Error(`gptq: expected a 2-D weight, got [${W.shape}]`);
  if (H.length !== cols * cols) {
    throw new Error(`gptq: H has ${H.length} values, expected ${cols}×${cols}`);
  }
  const hook = opts.quantizeColumn;
  if (!hook) checkBits(opts.bits);
  const { bits, actOrder } = opts;
  const sym = opts.sym ?? false, mse = opts.mse ?? false, sf = opts.scaleFormat;
  const blockSize = opts.blockSize ?? 128;
  if (!Number.isInteger(blockSize) || blockSize < 1) {
    throw new Error(`gptq: bad block size ${blockSize}`);
  }
  if (!Number.isInteger(opts.groupSize)) {
    throw new Error(`--group-size: ${opts.groupSize} is not an integer`);
  }
  const g = opts.groupSize > 0 ? opts.groupSize : 0;
  const staticGroups = opts.staticGroups && g > 0;

  const channel = !hook && g === 0 ? findParams(W.data, rows, cols, bits, sym, mse, sf) : null;

  const Wt = transposeToColumns(W.data, rows, cols);
  const diag = deadFixedDiagonal(H, cols);
  for (let i = 0; i < cols; i++) if (H[i * cols + i] === 0) Wt.fill(0, i * rows, (i + 1) * rows);
  const fixed = !hook && staticGroups
    ? staticGroupParams(Wt, rows, cols, g, bits, sym, mse, sf)
    : null;

  let perm: Int32Array | null = null;
  if (actOrder) {
    perm = argsortDescending(diag);
    permuteColumnsInPlace(Wt, rows, perm);
  }

  let inv: DampedInverse | null = await dampedInverseCholesky(
    rt,
    H,
    cols,
    perm,
    perm ? Float32Array.from(perm, (p) => diag[p]) : diag,
    opts.percdamp ?? 0.01,
    opts.dampRetries ?? 3,
  );
  const { damp, fellBack, warning } = inv;
  let U: Float32Array | null = inv.U;
  inv = null;

  const nGroups = hook ? 0 : g > 0 ? Math.ceil(cols / g) : 1;
  const scale = new Float32Array(rows * nGroups);
  const zero = new Float32Array(rows * nGroups);
  if (channel) {
    scale.set(channel.scale);
    zero.set(channel.zero);
  }
  if (fixed) {
    fixed.forEach((p, k) => storeGroup(scale, zero, p, k, nGroups));
  }
  const customColumn = hook?.({ columns: Wt, rows, cols, perm });

  // A block's columns of Wt are dead once copied into W1: the quantized columns Qt take their
  // place (zeroed first, as a fresh Qt would be).
  const Qt = Wt;
  const width = Math.min(blockSize, cols);
  const W1buf = new Float32Array(width * rows), errBuf = new Float32Array(width * rows);
  const ublkBuf = new Float32Array(width * (cols - width));
  let loss = 0;
  let params: QuantParams | null = channel;
  for (let i1 = 0; i1 < cols; i1 += blockSize) {
    const i2 = Math.min(i1 + blockSize, cols), count = i2 - i1;
    const W1 = W1buf.subarray(0, count * rows), Err = errBuf.subarray(0, count * rows);
    W1.set(Wt.subarray(i1 * rows, i2 * rows));
    let quantize: (i: number, w: Float32Array, q: Float32Array, r0: number) => void;
    let chunk = rows;
    if (customColumn) {
      quantize = (i, w, q) => customColumn(w, i1 + i, q);
    } else {
      // Every group's parameters are fixed before the block's columns are swept: dynamic groups
      // read the block-level W (error feedback of earlier blocks, not of this block's columns).
      const blockParams: QuantParams[] = [];
      for (let idx = i1; idx < i2; idx++) {
        if (fixed) {
          params = fixed[Math.floor((perm ? perm[idx] : idx) / g)];
        } else if (g > 0 && idx % g === 0) {
          const view = {
            data: Wt,
            rows,
            cols: Math.min(g, cols - idx),
            rowStride: 1,
            colStride: rows,
            offset: idx * rows,
          };
          params = findParamsView(view, bits, sym, mse, sf);
          storeGroup(scale, zero, params, idx / g, nGroups);
        }
        blockParams.push(params!);
      }
      quantize = (i, w, q, r0) => quantizeColumn(w, q, blockParams[i], r0);
      chunk = ROW_CHUNK;
    }
    Qt.fill(0, i1 * rows, i2 * rows);
    for (let r0 = 0; r0 < rows; r0 += chunk) {
      const r1 = Math.min(r0 + chunk, rows);
      loss += sweepRows(W1, Err, Qt, U, cols, rows, i1, count, r0, r1, quantize);
    }
    if (i2 < cols && !fellBack) {
      const rest = cols - i2;
      const Ublk = ublkBuf.subarray(0, count * rest);
      for (let i = 0; i < count; i++) {
        Ublk.set(U.subarray((i1 + i) * cols + i2, (i1 + i + 1) * cols), i * rest);
      }
      const y = await rt.run(BLOCK_UPDATE_GRAPH, {
        a: { data: Ublk, shape: [count, rest] },
        b: { data: Err, shape: [count, rows] },
        c: { data: Wt.subarray(i2 * rows), shape: [rest, rows] },
      }, { arena: false });
      Wt.set(y.y.data, i2 * rows);
    }
  }
  U = null;

  return {
    weight: { data: columnsToRows(Qt, rows, cols, perm), shape: [rows, cols] },
    scale,
    zero,
    nGroups,
    gIdx: groupIndex(cols, g, perm, staticGroups),
    perm,
    error: loss,
    damp,
    fellBack,
    ...(warning ? { warning } : {}),
  };
}

/** q = fake-quantized w, whose entry r is row r0 + r. */
function quantizeColumn(w: Float32Array, q: Float32Array, p: QuantParams, r0: number): void {
  const { scale, zero, maxq } = p;
  for (let r = 0; r < w.length; r++) q[r] = fakeQuant(w[r], scale[r0 + r], zero[r0 + r], maxq);
}

/**
 * The column loop of one block over rows [r0, r1) (rows never interact inside a block, so
 * chunks of rows stay in cache): quantize column i, record `err = (w − q)/U_ii`, feed it to the
 * block's later columns. Returns this chunk's share of the loss.
 */
function sweepRows(
  W1: Float32Array,
  Err: Float32Array,
  Qt: Float32Array,
  U: Float32Array,
  cols: number,
  rows: number,
  i1: number,
  count: number,
  r0: number,
  r1: number,
  quantize: (i: number, w: Float32Array, q: Float32Array, r0: number) => void,
): number {
  let loss = 0;
  for (let i = 0; i < count; i++) {
    const idx = i1 + i;
    const w = W1.subarray(i * rows + r0, i * rows + r1);
    const q = Qt.subarray(idx * rows + r0, idx * rows + r1);
    quantize(i, w, q, r0);
    loss += columnError(w, q, U[idx * cols + idx], Err.subarray(i * rows + r0, i * rows + r1)) / 2;
    feedError(W1, Err, U, idx * cols + i1, i, count, rows, r0, r1);
  }
  return loss;
}

/** e = (w − q)/d in float32; returns Σ (w − q)²/d² as the reference accumulates it. */
function columnError(w: Float32Array, q: Float32Array, d: number, e: Float32Array): number {
  const d2 = f32(d * d);
  let loss = 0;
  for (let r = 0; r < w.length; r++) {
    const diff = f32(w[r] - q[r]);
    loss += f32(f32(diff * diff) / d2);
    e[r] = diff / d;
  }
  return loss;
}

/**
 * Intra-block feedback of block column i: `W1[r0:r1, j] −= e_i · U[idx, j]` for the later columns
 * j of the block (column-major W1 and Err; `uRow` indexes U[idx, i1]), rounded as float32.
 */
function feedError(
  W1: Float32Array,
  Err: Float32Array,
  U: Float32Array,
  uRow: number,
  i: number,
  count: number,
  rows: number,
  r0: number,
  r1: number,
): void {
  const e0 = i * rows;
  for (let j = i + 1; j < count; j++) {
    const u = U[uRow + j];
    if (u === 0) continue;
    const off = j * rows;
    for (let r = r0; r < r1; r++) W1[off + r] = W1[off + r] - f32(Err[e0 + r] * u);
  }
}

/** Stable argsort by decreasing value (NaN first, ties keep index order), as torch on CPU. */
export function argsortDescending(values: ArrayLike<number>): Int32Array {
  const idx = Array.from({ length: values.length }, (_, i) => i);
  const key = (i: number) => Number.isNaN(values[i]) ? Infinity : values[i];
  idx.sort((a, b) => {
    const ka = key(a), kb = key(b);
    if (ka === kb) {
      const na = Number.isNaN(values[a]), nb = Number.isNaN(values[b]);
      return na === nb ? 0 : na ? -1 : 1;
    }
    return kb > ka ? 1 : -1;
  });
  return Int32Array.from(idx);
}

interface DampedInverse {
  U: Float32Array;
  damp: number;
  fellBack: boolean;
  warning?: string;
}

/**
 * U = chol(H⁻¹, upper) of `Hp + damp·I`, where Hp is H with every zero diagonal entry (a dead
 * input) set to 1 and, under act-order, rows and columns in processing order `perm` (`diag` is
 * diag(Hp)); the reference's `damp = percdamp·mean(diag Hp)`. A failed factorisation retries with 10×, 100×, …
 * the damping (on mean |diag|), then gives U = I, which turns the column loop into plain rounding
 * to nearest. H is not modified; each attempt rebuilds its damped copy from H into one `n×n`
 * buffer, which the factorisation consumes and which becomes U.
 */
async function dampedInverseCholesky(
  rt: Runtime,
  H: Float32Array,
  n: number,
  perm: Int32Array | null,
  diag: Float32Array,
  percdamp: number,
  retries: number,
): Promise<DampedInverse> {
  let sum = 0, sumAbs = 0;
  for (let i = 0; i < n; i++) {
    sum += diag[i];
    sumAbs += Math.abs(diag[i]);
  }
  let Hd: Float32Array | null = null;
  let lastPivot = -1;
  for (let attempt = 0; attempt <= retries; attempt++) {
    const base = attempt === 0 ? f32(sum / n) : f32(sumAbs / n);
    const damp = f32(f32(percdamp * 10 ** attempt) * base);
    if (!Number.isFinite(damp)) break;
    Hd ??= new Float32Array(n * n);
    if (perm) permuteSymmetric(H, n, perm, Hd);
    else Hd.set(H);
    for (let i = 0; i < n; i++) Hd[i * n + i] = f32(diag[i] + damp);
    const r = await inverseCholeskyUpperInPlace(rt, Hd, n);
    if (r.ok) return { U: r.U, damp, fellBack: false };
    lastPivot = r.pivot;
  }
  const U = Hd ?? new Float32Array(n * n);
  U.fill(0);
  for (let i = 0; i < n; i++) U[i * n + i] = 1;
  return {
    U,
    damp: 0,
    fellBack: true,
    warning: `gptq: H is not positive definite even with ${10 ** retries}× damping ` +
      `(pivot ${lastPivot}); layer rounded to nearest instead`,
  };
}

function staticGroupParams(
  Wt: Float32Array,
  rows: number,
  cols: number,
  g: number,
  bits: number,
  sym: boolean,
  mse: boolean,
  sf?: ScaleFormat,
): QuantParams[] {
  const out: QuantParams[] = [];
  for (let c0 = 0; c0 < cols; c0 += g) {
    out.push(findParamsView(
      {
        data: Wt,
        rows,
        cols: Math.min(g, cols - c0),
        rowStride: 1,
        colStride: rows,
        offset: c0 * rows,
      },
      bits,
      sym,
      mse,
      sf,
    ));
  }
  return out;
}

function storeGroup(
  scale: Float32Array,
  zero: Float32Array,
  p: QuantParams,
  k: number,
  nGroups: number,
): void {
  for (let r = 0; r < p.scale.length; r++) {
    scale[r * nGroups + k] = p.scale[r];
    zero[r * nGroups + k] = p.zero[r];
  }
}

/** GPTQ's g_idx: the group of each original column. */
function groupIndex(
  cols: number,
  g: number,
  perm: Int32Array | null,
  staticGroups: boolean,
): Int32Array {
  const gIdx = new Int32Array(cols);
  if (g === 0) return gIdx;
  for (let idx = 0; idx < cols; idx++) {
    const c = perm ? perm[idx] : idx;
    gIdx[c] = Math.floor((staticGroups ? c : idx) / g);
  }
  return gIdx;
}

/** diag(H), with the zeros of dead inputs replaced by 1. */
function deadFixedDiagonal(H: Float32Array, n: number): Float32Array {
  const d = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const v = H[i * n + i];
    d[i] = v === 0 ? 1 : v;
  }
  return d;
}

function transposeToColumns(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[base + c];
  }
  return out;
}

/** Column-major (processing order) back to row-major original order. */
function columnsToRows(
  Qt: Float32Array,
  rows: number,
  cols: number,
  perm: Int32Array | null,
): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let j = 0; j < cols; j++) {
    const c = perm ? perm[j] : j;
    const base = j * rows;
    for (let r = 0; r < rows; r++) out[r * cols + c] = Qt[base + r];
  }
  return out;
}

/** Column j of the result is column perm[j] of Wt, cycle by cycle with one column of storage. */
function permuteColumnsInPlace(Wt: Float32Array, rows: number, perm: Int32Array): void {
  const done = new Uint8Array(perm.length);
  const tmp = new Float32Array(rows);
  for (let start = 0; start < perm.length; start++) {
    if (done[start]) continue;
    tmp.set(Wt.subarray(start * rows, (start + 1) * rows));
    let j = start;
    for (;;) {
      done[j] = 1;
      const src = perm[j];
      if (src === start) {
        Wt.set(tmp, j * rows);
        break;
      }
      Wt.copyWithin(j * rows, src * rows, (src + 1) * rows);
      j = src;
    }
  }
}

function permuteSymmetric(H: Float32Array, n: number, perm: Int32Array, out: Float32Array): void {
  for (let i = 0; i < n; i++) {
    const src = perm[i] * n, dst = i * n;
    for (let j = 0; j < n; j++) out[dst + j] = H[src + perm[j]];
  }
}
