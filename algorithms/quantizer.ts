/**
 * Uniform affine (min-max) fake quantization, as the GPTQ reference's `quant.Quantizer`
 * (PROTOCOL §5): per row of a matrix, range always containing 0, round half to even, all
 * arithmetic in float32 (`Math.fround` wherever torch computes in fp32), so results match the
 * reference bit for bit up to the order of float sums.
 *
 * Weights are `[out, in]` row-major; "rows" are output channels, groups are runs of
 * consecutive input columns.
 * @module
 */
import type { Tensor } from "../kernels/tensor.ts";
import { roundScale, type ScaleFormat } from "../formats/packed.ts";

const f32 = Math.fround;

/** MSE grid search of the GPTQ reference: norm, grid steps, largest shrink. */
export const MSE_SEARCH = { norm: 2.4, grid: 100, maxShrink: 0.8 } as const;

/** How a weight is quantized. */
export interface QuantSpec {
  /** Bits per weight, 2..8; 16 or more means "not quantized". */
  bits: number;
  /** Symmetric range (GPTQ's `sym=True`: zero point fixed at (maxq+1)/2). */
  sym: boolean;
  /** Consecutive input columns sharing a scale; 0 = one scale per output channel. */
  groupSize: number;
  /** GPTQ's shrink-grid search for the range minimising Σ|q−x|^2.4. */
  mse?: boolean;
  /**
   * Scales rounded as a packed format stores them (fp16), before the zero points are derived
   * from them; absent: float32, the reference's.
   */
  scaleFormat?: ScaleFormat;
}

/** Per-row quantization parameters. */
export interface QuantParams {
  /** Step size of every row. */
  scale: Float32Array;
  /** Zero point: an integer-valued float in [0, maxq]. */
  zero: Float32Array;
  /** 2^bits − 1. */
  maxq: number;
}

/** A strided 2-D view: element (r, j) is `data[offset + r·rowStride + j·colStride]`. */
export interface MatrixView {
  data: Float32Array;
  rows: number;
  cols: number;
  rowStride: number;
  colStride: number;
  offset: number;
}

/** torch.round: round half to even (JS `Math.round` rounds .5 up). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Throws unless `bits` is an integer in 2..8 (or ≥ 16, "off"). */
export function checkBits(bits: number): void {
  if (!Number.isInteger(bits) || bits < 2) {
    throw new Error(`--bits: ${bits} is not a supported bit width (2..15, or 16 = off)`);
  }
}

/**
 * Throws when a tensor's input width is not a multiple of the group size. Callers that need
 * equal groups (packed formats, static groups) call this; {@linkcode rtnWeight} itself accepts
 * a shorter last group as the reference does.
 */
export function checkGroupSize(inFeatures: number, groupSize: number, tensorName: string): void {
  if (!Number.isInteger(groupSize) || groupSize < 0) {
    throw new Error(`--group-size: ${groupSize} is not a non-negative integer (${tensorName})`);
  }
  if (groupSize > 0 && inFeatures % groupSize !== 0) {
    throw new Error(
      `${tensorName}: in_features ${inFeatures} is not a multiple of --group-size ${groupSize}`,
    );
  }
}

/** Quantizes then dequantizes one value: `scale·(clamp(round(x/scale) + zero, 0, maxq) − zero)`. */
export function fakeQuant(x: number, scale: number, zero: number, maxq: number): number {
  let q = roundHalfEven(f32(x / scale)) + zero;
  if (q < 0) q = 0;
  else if (q > maxq) q = maxq;
  return f32(scale * (q - zero));
}

/** Fake-quantizes `n` values of `src` (from `srcOffset`, step `stride`) into `dst` (contiguous). */
export function quantizeRow(
  src: Float32Array,
  dst: Float32Array,
  scale: number,
  zero: number,
  maxq: number,
  n = src.length,
  srcOffset = 0,
  stride = 1,
  dstOffset = 0,
): void {
  for (let j = 0; j < n; j++) {
    dst[dstOffset + j] = fakeQuant(src[srcOffset + j * stride], scale, zero, maxq);
  }
}

/**
 * Per-row parameters of a row-major `[rows, cols]` block, as `Quantizer.find_params`:
 * range `[min(0, min x), max(0, max x)]`, an all-zero row gets `[-1, 1]`; symmetric:
 * `xmax = max(|xmin|, xmax)`, `xmin = −xmax` when `xmin < 0`, `zero = (maxq+1)/2`.
 */
export function findParams(
  rowsData: Float32Array,
  rows: number,
  cols: number,
  bits: number,
  sym: boolean,
  mse = false,
  scaleFormat?: ScaleFormat,
): QuantParams {
  return findParamsView(
    { data: rowsData, rows, cols, rowStride: cols, colStride: 1, offset: 0 },
    bits,
    sym,
    mse,
    scaleFormat,
  );
}

/**
 * {@linkcode findParams} on a strided view (e.g. a column range of a column-major matrix);
 * `scaleFormat` rounds every scale (and every scale the MSE search tries) as a packed format
 * stores it.
 */
export function findParamsView(
  v: MatrixView,
  bits: number,
  sym: boolean,
  mse = false,
  scaleFormat?: ScaleFormat,
): QuantParams {
  const maxq = 2 ** bits - 1;
  const xmin = new Float32Array(v.rows);
  const xmax = new Float32Array(v.rows);
  minMax(v, xmin, xmax);
  const scale = new Float32Array(v.rows);
  const zero = new Float32Array(v.rows);
  for (let r = 0; r < v.rows; r++) {
    let lo = xmin[r], hi = xmax[r];
    if (sym) {
      hi = Math.max(Math.abs(lo), hi);
      if (lo < 0) lo = -hi;
    }
    if (lo === 0 && hi === 0) {
      lo = -1;
      hi = 1;
    }
    xmin[r] = lo;
    xmax[r] = hi;
    scale[r] = f32(f32(hi - lo) / maxq);
    if (scaleFormat) scale[r] = roundScale(scale[r], scaleFormat, maxq);
    zero[r] = sym ? (maxq + 1) / 2 : roundHalfEven(f32(-lo / scale[r]));
  }
  if (mse) mseSearch(v, xmin, xmax, maxq, sym, scale, zero, scaleFormat);
  return { scale, zero, maxq };
}

function minMax(v: MatrixView, xmin: Float32Array, xmax: Float32Array): void {
  const { data, rows, cols, rowStride, colStride, offset } = v;
  for (let r = 0; r < rows; r++) {
    let lo = 0, hi = 0;
    const base = offset + r * rowStride;
    for (let j = 0; j < cols; j++) {
      const x = data[base + j * colStride];
      if (x < lo) lo = x;
      if (x > hi) hi = x;
    }
    xmin[r] = lo;
    xmax[r] = hi;
  }
}

/** Shrinks [xmin, xmax] by p = 1 − i/grid and keeps, per row, the first p with least Σ|q−x|^norm. */
function mseSearch(
  v: MatrixView,
  xmin: Float32Array,
  xmax: Float32Array,
  maxq: number,
  sym: boolean,
  scale: Float32Array,
  zero: Float32Array,
  scaleFormat?: ScaleFormat,
): void {
  const { data, rows, cols, rowStride, colStride, offset } = v;
  const { norm, grid, maxShrink } = MSE_SEARCH;
  const steps = Math.floor(maxShrink * grid);
  for (let r = 0; r < rows; r++) {
    let best = Infinity;
    const base = offset + r * rowStride;
    for (let i = 0; i < steps; i++) {
      const p = f32(1 - i / grid);
      const lo = f32(p * xmin[r]), hi = f32(p * xmax[r]);
      let s = f32(f32(hi - lo) / maxq);
      if (scaleFormat) s = roundScale(s, scaleFormat, maxq);
      const z = sym ? zero[r] : roundHalfEven(f32(-lo / s));
      let err = 0;
      for (let j = 0; j < cols; j++) {
        const x = data[base + j * colStride];
        err += Math.pow(Math.abs(f32(fakeQuant(x, s, z, maxq) - x)), norm);
      }
      if (err < best) {
        best = err;
        scale[r] = s;
        zero[r] = z;
      }
    }
  }
}

/** Result of round-to-nearest weight quantization. */
export interface RtnResult {
  /** The fake-quantized weight, same shape as the input. */
  weight: Tensor;
  /** `[out, nGroups]` row-major (nGroups = 1 per channel); empty when bits ≥ 16. */
  scale: Float32Array;
  /** Zero points, shaped like `scale`. */
  zero: Float32Array;
  /** Groups per row (1 per channel; 0 when bits ≥ 16). */
  nGroups: number;
}

/**
 * Round-to-nearest fake quantization of a `[out, in]` weight, per output channel or per
 * output channel × run of `groupSize` input columns (the last run is shorter when
 * `in % groupSize ≠ 0`, as PROTOCOL §5's 172-column case).
 */
export function rtnWeight(W: Tensor, spec: QuantSpec): RtnResult {
  checkBits(spec.bits);
  const [rows, cols] = W.shape;
  if (W.shape.length !== 2) throw new Error(`rtnWeight: expected a 2-D weight, got [${W.shape}]`);
  if (spec.bits >= 16) {
    return {
      weight: { data: W.data.slice(), shape: [rows, cols] },
      scale: new Float32Array(0),
      zero: new Float32Array(0),
      nGroups: 0,
    };
  }
  if (!Number.isInteger(spec.groupSize) || spec.groupSize < 0) {
    throw new Error(`--group-size: ${spec.groupSize} is not a non-negative integer`);
  }
  const g = spec.groupSize > 0 ? spec.groupSize : cols;
  const nGroups = Math.ceil(cols / g);
  const out = new Float32Array(rows * cols);
  const scale = new Float32Array(rows * nGroups);
  const zero = new Float32Array(rows * nGroups);
  for (let k = 0; k < nGroups; k++) {
    const c0 = k * g, width = Math.min(g, cols - c0);
    const p = findParamsView(
      { data: W.data, rows, cols: width, rowStride: cols, colStride: 1, offset: c0 },
      spec.bits,
      spec.sym,
      spec.mse,
      spec.scaleFormat,
    );
    for (let r = 0; r < rows; r++) {
      scale[r * nGroups + k] = p.scale[r];
      zero[r * nGroups + k] = p.zero[r];
      quantizeRow(
        W.data,
        out,
        p.scale[r],
        p.zero[r],
        p.maxq,
        width,
        r * cols + c0,
        1,
        r * cols + c0,
      );
    }
  }
  return { weight: { data: out, shape: [rows, cols] }, scale, zero, nGroups };
}

/**
 * Dynamic per-token activation fake quantization (PROTOCOL §5): every row of a row-major
 * `[rows, cols]` matrix with its own asymmetric min-max range (including 0). Returns a new array.
 */
export function fakeQuantPerToken(
  x: Float32Array,
  rows: number,
  cols: number,
  bits: number,
): Float32Array {
  checkBits(bits);
  if (bits >= 16) return x.slice();
  const p = findParams(x, rows, cols, bits, false);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    quantizeRow(x, out, p.scale[r], p.zero[r], p.maxq, cols, r * cols, 1, r * cols);
  }
  return out;
}
