/**
 * Bit packing against hand-written words and an independent bit-stream reference (BigInt), so a
 * packing-order bug cannot cancel itself out in a round trip.
 */
import assert from "node:assert/strict";
import { packedWords, packInt32, unpackInt32 } from "../formats/bitpack.ts";

/** Reference: the values as one little-endian bit stream (BigInt), cut into 32-bit words. */
function streamWords(values: number[], bits: number): number[] {
  let acc = 0n;
  values.forEach((v, j) => acc |= BigInt(v) << BigInt(j * bits));
  return Array.from(
    { length: Math.ceil((values.length * bits) / 32) },
    (_, w) => Number(BigInt.asIntN(32, acc >> BigInt(32 * w))),
  );
}

Deno.test("4-bit and 8-bit words by hand", () => {
  // Eight 4-bit values along a column: 1..8 → 0x87654321, lowest bits first.
  assert.deepEqual([...packInt32([1, 2, 3, 4, 5, 6, 7, 8], 8, 1, 4, 0)], [0x87654321 | 0]);
  assert.deepEqual([...packInt32([15, 0, 0, 0, 0, 0, 0, 15], 1, 8, 4, 1)], [0xf000000f | 0]);
  assert.deepEqual([...packInt32([0x12, 0x34, 0x56, 0x78], 1, 4, 8, 1)], [0x78563412]);
  // Two columns packed along rows (GPTQ's qweight): word [0, c] holds rows 0..7 of column c.
  const codes = [1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15, 8, 0];
  assert.deepEqual([...packInt32(codes, 8, 2, 4, 0)], [0x87654321 | 0, 0x0fedcba9 | 0]);
});

Deno.test("3-bit words straddle as GPTQ's layout: 32 values in three words", () => {
  const v = Array.from({ length: 32 }, (_, j) => (j * 5 + 3) % 8);
  const words = packInt32(v, 32, 1, 3, 0);
  assert.equal(words.length, 3);
  // Value 10 splits 2 + 1 bits across words 0 and 1, value 21 splits 1 + 2 across words 1, 2.
  const w = Array.from(words, (x) => x >>> 0);
  assert.equal((w[0] >>> 30) | ((w[1] & 1) << 2), v[10]);
  assert.equal((w[1] >>> 31) | ((w[2] & 3) << 1), v[21]);
  for (let j = 0; j < 10; j++) assert.equal((w[0] >>> (3 * j)) & 7, v[j]);
  for (let j = 11; j < 21; j++) assert.equal((w[1] >>> (3 * (j - 11) + 1)) & 7, v[j]);
  for (let j = 22; j < 32; j++) assert.equal((w[2] >>> (3 * (j - 22) + 2)) & 7, v[j]);
  assert.deepEqual([...words], streamWords(v, 3));
});

Deno.test("packing matches the bit-stream reference and unpacks, padding the last word", () => {
  for (const bits of [2, 3, 4, 8]) {
    for (const n of [32, 64, 96, 12, 172]) {
      const v = Array.from({ length: n }, (_, j) => (j * 7 + bits) % 2 ** bits);
      const row = packInt32(v, 1, n, bits, 1);
      assert.equal(row.length, packedWords(n, bits));
      assert.deepEqual([...row], streamWords(v, bits), `${bits} bits, ${n} values`);
      assert.deepEqual([...unpackInt32(row, 1, n, bits, 1)], v);
      const col = packInt32(v, n, 1, bits, 0);
      assert.deepEqual([...col], [...row]);
      assert.deepEqual([...unpackInt32(col, n, 1, bits, 0)], v);
    }
  }
});

Deno.test("a value that does not fit is refused by name", () => {
  assert.throws(() => packInt32([16], 1, 1, 4, 1, "layer.qweight"), /layer\.qweight: value 16/);
});
