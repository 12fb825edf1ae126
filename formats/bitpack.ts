/**
 * Packing small unsigned integers into 32-bit words, lowest bits first, as GPTQ checkpoints
 * (AutoGPTQ, GPTQModel, transformers, vLLM) and compressed-tensors' `pack-quantized` store them:
 * the values along one axis form a little-endian bit stream cut into 32-bit words, so value j of
 * a run occupies bits [j·bits, (j+1)·bits) of the stream. For 2, 4 and 8 bits a value never
 * straddles two words; for 3 bits 32 values fill three words and two of them straddle (GPTQ's
 * 3-bit layout). A run whose length does not fill its last word is padded with zeros
 * (compressed-tensors pads; GPTQ needs whole words and checks it before packing).
 * @module
 */

/** Words needed for `n` values of `bits` bits. */
export function packedWords(n: number, bits: number): number {
  return Math.ceil((n * bits) / 32);
}

/**
 * Packs `n` values (`get(j)`, each in [0, 2^bits)) into `packedWords(n, bits)` words, written
 * through `set(w, word)`. Throws naming `what` on a value that does not fit.
 */
function packRun(
  n: number,
  bits: number,
  get: (j: number) => number,
  set: (w: number, word: number) => void,
  what: string,
): void {
  const words = packedWords(n, bits), max = 2 ** bits;
  let j = 0;
  for (let w = 0; w < words; w++) {
    let word = 0;
    const start = w * 32, end = start + 32;
    // Values overlapping bits [start, end) of the stream.
    for (j = Math.floor(start / bits); j < n && j * bits < end; j++) {
      const v = get(j);
      if (!(v >= 0 && v < max && Number.isInteger(v))) {
        throw new Error(`${what}: value ${v} at ${j} does not fit in ${bits} bits`);
      }
      const shift = j * bits - start;
      word |= shift >= 0 ? v << shift : v >>> -shift;
    }
    set(w, word | 0);
  }
}

/** Unpacks `n` values of `bits` bits (`set(j, v)`) from words read through `get(w)`. */
function unpackRun(
  n: number,
  bits: number,
  get: (w: number) => number,
  set: (j: number, v: number) => void,
): void {
  const mask = 2 ** bits - 1;
  for (let j = 0; j < n; j++) {
    const bit = j * bits, w = bit >>> 5, shift = bit & 31;
    let v = get(w) >>> shift;
    if (shift + bits > 32) v |= get(w + 1) << (32 - shift);
    set(j, v & mask);
  }
}

/**
 * Packs a row-major `[rows, cols]` matrix of codes along `axis`: axis 0 gives
 * `[packedWords(rows), cols]` (GPTQ's `qweight`, packed along K), axis 1 gives
 * `[rows, packedWords(cols)]` (GPTQ's `qzeros`, compressed-tensors' `weight_packed`).
 */
export function packInt32(
  codes: ArrayLike<number>,
  rows: number,
  cols: number,
  bits: number,
  axis: 0 | 1,
  what = "pack",
): Int32Array {
  if (codes.length !== rows * cols) {
    throw new Error(`${what}: ${codes.length} values do not fill [${rows}, ${cols}]`);
  }
  if (axis === 1) {
    const wpr = packedWords(cols, bits), out = new Int32Array(rows * wpr);
    for (let r = 0; r < rows; r++) {
      packRun(cols, bits, (j) => codes[r * cols + j], (w, x) => out[r * wpr + w] = x, what);
    }
    return out;
  }
  const wr = packedWords(rows, bits), out = new Int32Array(wr * cols);
  for (let c = 0; c < cols; c++) {
    packRun(rows, bits, (j) => codes[j * cols + c], (w, x) => out[w * cols + c] = x, what);
  }
  return out;
}

/**
 * Unpacks what {@linkcode packInt32} packed: `[rows, cols]` codes (padding dropped) from words
 * packed along `axis`.
 */
export function unpackInt32(
  words: Int32Array,
  rows: number,
  cols: number,
  bits: number,
  axis: 0 | 1,
  what = "unpack",
): Uint8Array {
  const out = new Uint8Array(rows * cols);
  if (axis === 1) {
    const wpr = packedWords(cols, bits);
    if (words.length !== rows * wpr) {
      throw new Error(`${what}: ${words.length} words, expected [${rows}, ${wpr}]`);
    }
    for (let r = 0; r < rows; r++) {
      unpackRun(cols, bits, (w) => words[r * wpr + w], (j, v) => out[r * cols + j] = v);
    }
    return out;
  }
  const wr = packedWords(rows, bits);
  if (words.length !== wr * cols) {
    throw new Error(`${what}: ${words.length} words, expected [${wr}, ${cols}]`);
  }
  for (let c = 0; c < cols; c++) {
    unpackRun(rows, bits, (w) => words[w * cols + c], (j, v) => out[j * cols + c] = v);
  }
  return out;
}
