/**
 * ggml's tensor block layouts (ggml-common.h, read from ggml's source): how a row of weights is
 * stored in a GGUF file, and back.
 *
 * - Q8_0: blocks of 32, `{f16 d; i8 q[32]}`, x = d·q.
 * - Q4_0: blocks of 32, `{f16 d; u8 qs[16]}`, byte j holds q[j] (low nibble) and q[j+16] (high),
 *   x = d·(q − 8): exactly our symmetric 4-bit grid, whose zero point is 8.
 * - Q4_1: blocks of 32, `{f16 d; f16 m; u8 qs[16]}`, x = d·q + m: our asymmetric grid with
 *   m = −d·zero (exact when −d·zero is an fp16 value).
 * - Q4_K: super-blocks of 256, `{f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}`: eight runs of 32
 *   with 6-bit scales and minimums, x = d·sc·q − dmin·m.
 * - Q6_K: super-blocks of 256, `{u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}`: sixteen runs of
 *   16, 6-bit q split into low nibbles and high pairs, x = d·sc·(q − 32).
 *
 * Writing goes from exact integer codes (`formats/quantized.ts`); reading dequantizes in float32
 * with ggml's order of operations.
 * @module
 */
import type { GridWeight } from "./quantized.ts";
import { decodeBF16, decodeF16, encodeF16 } from "./safetensors.ts";
import { GGML_TYPES, type GgmlType } from "./gguf.ts";

const f32 = Math.fround;

/** Float32 values of `n` elements stored as `type` in `bytes`. */
export function dequantize(
  type: GgmlType,
  bytes: Uint8Array,
  n: number,
  what: string,
): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const half = (off: number) => view.getUint16(off, true);
  const nb = n / type.blockSize;
  switch (type.name) {
    case "F32":
      return new Float32Array(bytes.slice().buffer, 0, n);
    case "F16":
      return decodeF16(new Uint16Array(bytes.slice().buffer, 0, n));
    case "BF16":
      return decodeBF16(new Uint16Array(bytes.slice().buffer, 0, n));
  }
  const out = new Float32Array(n);
  const ds = new Uint16Array(nb * 2);
  const bs = type.typeSize;
  switch (type.name) {
    case "Q8_0": {
      for (let b = 0; b < nb; b++) ds[b] = half(b * bs);
      const d = decodeF16(ds);
      for (let b = 0; b < nb; b++) {
        for (let j = 0; j < 32; j++) out[b * 32 + j] = f32(view.getInt8(b * bs + 2 + j) * d[b]);
      }
      return out;
    }
    case "Q4_0":
    case "Q4_1": {
      const hasMin = type.name === "Q4_1", qOff = hasMin ? 4 : 2;
      for (let b = 0; b < nb; b++) {
        ds[2 * b] = half(b * bs);
        ds[2 * b + 1] = hasMin ? half(b * bs + 2) : 0;
      }
      const dm = decodeF16(ds);
      for (let b = 0; b < nb; b++) {
        const d = dm[2 * b], m = dm[2 * b + 1];
        for (let j = 0; j < 16; j++) {
          const q = bytes[b * bs + qOff + j];
          if (hasMin) {
            out[b * 32 + j] = f32(f32((q & 15) * d) + m);
            out[b * 32 + j + 16] = f32(f32((q >> 4) * d) + m);
          } else {
            out[b * 32 + j] = f32(((q & 15) - 8) * d);
            out[b * 32 + j + 16] = f32(((q >> 4) - 8) * d);
          }
        }
      }
      return out;
    }
    case "Q4_K": {
      for (let b = 0; b < nb; b++) {
        ds[2 * b] = half(b * bs);
        ds[2 * b + 1] = half(b * bs + 2);
      }
      const dm = decodeF16(ds);
      for (let b = 0; b < nb; b++) {
        const sc = bytes.subarray(b * bs + 4, b * bs + 16), qs = b * bs + 16;
        const d = dm[2 * b], dmin = dm[2 * b + 1];
        for (let s = 0; s < 8; s++) {
          const [scale, min] = scaleMinK4(s, sc);
          const d1 = f32(d * scale), m1 = f32(dmin * min);
          // Runs of 64 values share 32 bytes: the first 32 in low nibbles, the next in high.
          const base = qs + (s >> 1) * 32, shift = (s & 1) * 4;
          for (let l = 0; l < 32; l++) {
            out[b * 256 + s * 32 + l] = f32(f32(d1 * ((bytes[base + l] >> shift) & 15)) - m1);
          }
        }
      }
      return out;
    }
    case "Q6_K": {
      for (let b = 0; b < nb; b++) ds[b] = half(b * bs + 208);
      const d = decodeF16(ds);
      for (let b = 0; b < nb; b++) {
        const o = b * bs;
        for (let h = 0; h < 2; h++) {
          const ql = o + h * 64, qh = o + 128 + h * 32, sc = o + 192 + h * 8;
          const y = b * 256 + h * 128;
          for (let l = 0; l < 32; l++) {
            const is = l >> 4, hb = bytes[qh + l];
            const q = [
              (bytes[ql + l] & 15) | ((hb & 3) << 4),
              (bytes[ql + l + 32] & 15) | (((hb >> 2) & 3) << 4),
              (bytes[ql + l] >> 4) | (((hb >> 4) & 3) << 4),
              (bytes[ql + l + 32] >> 4) | (((hb >> 6) & 3) << 4),
            ];
            for (let k = 0; k < 4; k++) {
              const s = view.getInt8(sc + is + 2 * k);
              out[y + l + 32 * k] = f32(f32(d[b] * s) * (q[k] - 32));
            }
          }
        }
      }
      return out;
    }
  }
  throw new Error(
    `${what}: ggml type ${type.name} is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, ` +
      `Q4_1, Q4_K, Q6_K)`,
  );
}

/** Scale and minimum of run `j` of a Q4_K super-block (6 bits each in 12 bytes). */
function scaleMinK4(j: number, q: Uint8Array): [number, number] {
  if (j < 4) return [q[j] & 63, q[j + 4] & 63];
  return [(q[j + 4] & 15) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)];
}

/** The ggml types a uniform grid can be written as, and what each requires. */
export const GRID_TYPES = {
  Q4_0: { bits: 4, zero: 8 },
  Q4_1: { bits: 4, zero: null },
  Q8_0: { bits: 8, zero: 128 },
} as const;

/** A ggml type a grid can be written as. */
export type GridTypeName = keyof typeof GRID_TYPES;

/** What writing a grid as ggml blocks did. */
export interface BlockStats {
  /** Q4_1 blocks whose minimum −d·zero is not an fp16 value (stored rounded). */
  inexactMins: number;
  /** Blocks written. */
  blocks: number;
}

/**
 * A linear weight's grid (codes, fp16 scales, groups of 32 contiguous columns) as ggml blocks of
 * `type`. Throws, naming `what`, when the grid is not one the type holds.
 */
export function gridToBlocks(
  grid: GridWeight,
  typeName: GridTypeName,
  what: string,
): { bytes: Uint8Array; stats: BlockStats } {
  const spec = GRID_TYPES[typeName], type = GGML_TYPES[typeName];
  const { rows, cols, codes, scales, zeros } = grid;
  if (grid.groupSize !== 32 || !grid.contiguous || cols % 32 !== 0) {
    throw new Error(`${what}: ${typeName} needs groups of 32 consecutive columns`);
  }
  if (grid.maxq > 2 ** spec.bits - 1) {
    throw new Error(`${what}: codes up to ${grid.maxq} do not fit ${typeName}'s ${spec.bits} bits`);
  }
  const groups = cols / 32, nb = rows * groups, bs = type.typeSize;
  const d16 = encodeF16(scales);
  if (!sameValues(decodeF16(d16), scales)) {
    throw new Error(`${what}: scales are not fp16 values (round them before packing)`);
  }
  const mins = new Float32Array(nb);
  let inexactMins = 0;
  for (let k = 0; k < nb; k++) {
    if (spec.zero !== null && zeros[k] !== spec.zero) {
      throw new Error(
        `${what}: zero point ${zeros[k]} in group ${k % groups} of row ${Math.floor(k / groups)}` +
          `; ${typeName} needs ${spec.zero} (a symmetric grid)`,
      );
    }
    mins[k] = -scales[k] * zeros[k];
  }
  const m16 = encodeF16(mins);
  if (typeName === "Q4_1") {
    const back = decodeF16(m16);
    for (let k = 0; k < nb; k++) if (back[k] !== -scales[k] * zeros[k]) inexactMins++;
  }
  const out = new Uint8Array(nb * bs);
  const view = new DataView(out.buffer);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const k = r * groups + g, o = k * bs, c0 = r * cols + g * 32;
      view.setUint16(o, d16[k], true);
      if (typeName === "Q8_0") {
        for (let j = 0; j < 32; j++) view.setInt8(o + 2 + j, codes[c0 + j] - 128);
        continue;
      }
      let q = o + 2;
      if (typeName === "Q4_1") {
        view.setUint16(o + 2, m16[k], true);
        q = o + 4;
      }
      for (let j = 0; j < 16; j++) out[q + j] = codes[c0 + j] | (codes[c0 + j + 16] << 4);
    }
  }
  return { bytes: out, stats: { inexactMins, blocks: nb } };
}

function sameValues(a: Float32Array, b: Float32Array): boolean {
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i] && !(a[i] !== a[i] && b[i] !== b[i])) return false;
  }
  return true;
}

/** Float values as F32 or F16 bytes. */
export function floatsToBytes(data: Float32Array, type: "F32" | "F16"): Uint8Array {
  if (type === "F32") return new Uint8Array(data.slice().buffer);
  const h = encodeF16(data);
  return new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
}
