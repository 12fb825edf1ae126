/**
 * Packing a linear layer's integer grid ({@linkcode GridWeight}) for ONNX Runtime's
 * `MatMulNBits` (com.microsoft): Y = A · dequant(B)ᵀ with B [N, k_blocks, blob] uint8, codes
 * packed low bits first along K, one scale and zero point per row and block of `block_size`
 * columns, dequantized as (code − zero) · scale — exactly the value our weights hold.
 *
 * What maps exactly:
 * - 2-, 4- and 8-bit codes in containers of their size; 3-bit codes (and ABQ-LLM's 5-level
 *   2-bit ones) in the 4-bit container, since ORT rejects 3 bits;
 * - groups of a power-of-two size ≥ 16 as blocks; per-channel scales repeated per block;
 * - act-order groups (runs of `group_size` columns in a permuted order): the columns are stored
 *   group by group, and the layer's input is gathered into that order in front of it (ORT's
 *   `g_idx` input is deprecated and disables its prepacked kernels);
 * - zero points outside the container's range (learned clipping does not keep 0 in the range):
 *   the codes of a block are shifted with its zero point where the container has room, else a
 *   2-bit layer moves to the 4-bit container, else a 4-bit layer keeps float zero points (which
 *   ORT computes by dequantizing the matrix at every call; the report says so).
 * Anything else (a group size that is not a power of two ≥ 16, codes over 8 bits, groups that
 * are not runs) is named as the reason to keep the layer in float.
 * @module
 */
import { codeBits, type GridWeight } from "./quantized.ts";

/** A layer's tensors and attributes for one `MatMulNBits` node. */
export interface PackedLinear {
  /** Input width K. */
  K: number;
  /** Output width N. */
  N: number;
  /** Container bits: 2, 4 or 8. */
  bits: 2 | 4 | 8;
  /** Columns per block. */
  blockSize: number;
  /** Codes [N, k_blocks, blob_size], blob_size = block_size · bits / 8. */
  B: Uint8Array;
  /** Scales [N, k_blocks]. */
  scales: Float32Array;
  /**
   * Zero points: uint8, packed like the codes ([N · ⌈k_blocks · bits / 8⌉]), or float
   * [N, k_blocks] when the container cannot hold them.
   */
  zeros: Uint8Array | Float32Array;
  /** Storage order of the input columns (the gather in front of the layer), or null. */
  perm: Int32Array | null;
  /** What was done to map the grid, for the export report (empty when nothing special). */
  notes: string[];
}

/** Either the packed layer or why it stays float. */
export type NBitsPacking = { packed: PackedLinear } | { reason: string };

const CONTAINERS = [2, 4, 8] as const;

/** The block size for a grid: its group size, or for per-channel scales one that fits K. */
export function blockSizeFor(groupSize: number, K: number): number | null {
  if (groupSize > 0) {
    return groupSize >= 16 && (groupSize & (groupSize - 1)) === 0 ? groupSize : null;
  }
  let b = 16;
  while (b < 128 && b < K) b *= 2;
  return b;
}

/**
 * The storage order of the columns: identity for contiguous groups, else the columns sorted by
 * group (stable); null when the groups are not then runs of `blockSize` columns.
 */
export function groupOrder(grid: GridWeight, blockSize: number): Int32Array | null {
  const K = grid.cols;
  const order = Int32Array.from({ length: K }, (_, c) => c);
  if (grid.contiguous) return order;
  order.sort((a, b) => grid.gIdx[a] - grid.gIdx[b] || a - b);
  for (let j = 0; j < K; j++) {
    if (grid.gIdx[order[j]] !== Math.floor(j / blockSize)) return null;
  }
  return order;
}

/** Packs a grid for `MatMulNBits`, or says why it cannot. */
export function packGrid(grid: GridWeight): NBitsPacking {
  const { rows: N, cols: K } = grid;
  const need = codeBits(grid.maxq);
  const natural = CONTAINERS.find((b) => b >= need);
  if (natural === undefined) return { reason: `codes need ${need} bits (MatMulNBits: 2, 4, 8)` };
  const blockSize = blockSizeFor(grid.groupSize, K);
  if (blockSize === null) {
    return {
      reason: `group size ${grid.groupSize} is not a power of two ≥ 16 (MatMulNBits block_size)`,
    };
  }
  const order = groupOrder(grid, blockSize);
  if (order === null) {
    return { reason: `its act-order groups are not runs of ${blockSize} columns` };
  }
  const notes: string[] = [];
  if (need !== natural) notes.push(`${need}-bit codes in the ${natural}-bit container`);
  const kb = Math.ceil(K / blockSize);
  const groupOf = (b: number) => grid.groupSize > 0 ? b : 0;
  const groups = grid.scales.length / N;
  // Lowest and highest code of each row and block.
  const lo = new Int32Array(N * kb).fill(255), hi = new Int32Array(N * kb);
  for (let n = 0; n < N; n++) {
    for (let j = 0; j < K; j++) {
      const q = grid.codes[n * K + order[j]], i = n * kb + Math.floor(j / blockSize);
      if (q < lo[i]) lo[i] = q;
      if (q > hi[i]) hi[i] = q;
    }
  }
  const zeroAt = (n: number, b: number) => grid.zeros[n * groups + groupOf(b)];
  const integral = grid.zeros.every((z) => Number.isInteger(z));
  for (const bits of CONTAINERS.filter((b) => b >= natural && b <= Math.max(natural, 4))) {
    const shift = integral ? shifts(N, kb, bits, zeroAt, lo, hi) : null;
    if (!shift) continue;
    if (bits !== natural) {
      notes.push(`moved to the ${bits}-bit container: zero points out of range`);
    }
    if (shift.some((s) => s !== 0)) notes.push("codes shifted with out-of-range zero points");
    const zeros = packRows(N, kb, bits, (n, b) => zeroAt(n, b) + shift[n * kb + b]);
    return {
      packed: {
        K,
        N,
        bits,
        blockSize,
        B: packCodes(grid, order, bits, blockSize, shift),
        scales: blockScales(grid, kb, groupOf),
        zeros,
        perm: grid.contiguous ? null : order,
        notes,
      },
    };
  }
  if (natural > 4) {
    return {
      reason: "zero points outside the 8-bit range (MatMulNBits holds float ones at 4 bits)",
    };
  }
  notes.push(
    "float zero points (outside the container's range): ORT dequantizes this layer at every call",
  );
  const zeros = new Float32Array(N * kb);
  for (let n = 0; n < N; n++) for (let b = 0; b < kb; b++) zeros[n * kb + b] = zeroAt(n, b);
  return {
    packed: {
      K,
      N,
      bits: 4,
      blockSize,
      B: packCodes(grid, order, 4, blockSize, null),
      scales: blockScales(grid, kb, groupOf),
      zeros,
      perm: grid.contiguous ? null : order,
      notes,
    },
  };
}

/**
 * A shift per row and block that brings its zero point and codes into [0, 2^bits − 1] (0
 * where they are already), or null when some block's range does not fit.
 */
function shifts(
  N: number,
  kb: number,
  bits: number,
  zeroAt: (n: number, b: number) => number,
  lo: Int32Array,
  hi: Int32Array,
): Int32Array | null {
  const cap = 2 ** bits - 1;
  const out = new Int32Array(N * kb);
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < kb; b++) {
      const i = n * kb + b, z = zeroAt(n, b);
      const min = Math.max(-z, -lo[i]), max = Math.min(cap - z, cap - hi[i]);
      if (min > max) return null;
      out[i] = min > 0 ? min : max < 0 ? max : 0;
    }
  }
  return out;
}

/** Codes in storage order, shifted, packed low bits first into [N, k_blocks, blob]. */
function packCodes(
  grid: GridWeight,
  order: Int32Array,
  bits: number,
  blockSize: number,
  shift: Int32Array | null,
): Uint8Array {
  const { rows: N, cols: K } = grid;
  const kb = Math.ceil(K / blockSize), blob = (blockSize * bits) / 8, per = 8 / bits;
  const B = new Uint8Array(N * kb * blob);
  for (let n = 0; n < N; n++) {
    for (let j = 0; j < K; j++) {
      const b = Math.floor(j / blockSize), p = j % blockSize;
      const q = grid.codes[n * K + order[j]] + (shift ? shift[n * kb + b] : 0);
      B[(n * kb + b) * blob + Math.floor(p / per)] |= q << ((p % per) * bits);
    }
  }
  return B;
}

/** Values per row and block packed low bits first, each row padded to whole bytes. */
export function packRows(
  N: number,
  kb: number,
  bits: number,
  value: (n: number, b: number) => number,
): Uint8Array {
  const per = 8 / bits, rowBytes = Math.ceil(kb / per);
  const out = new Uint8Array(N * rowBytes);
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < kb; b++) {
      out[n * rowBytes + Math.floor(b / per)] |= value(n, b) << ((b % per) * bits);
    }
  }
  return out;
}

/** Scales [N, k_blocks]: each block's group (per-channel scales repeated). */
function blockScales(grid: GridWeight, kb: number, groupOf: (b: number) => number): Float32Array {
  const N = grid.rows, groups = grid.scales.length / N;
  const out = new Float32Array(N * kb);
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < kb; b++) out[n * kb + b] = grid.scales[n * groups + groupOf(b)];
  }
  return out;
}
