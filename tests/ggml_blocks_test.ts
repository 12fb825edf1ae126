/**
 * ggml block layouts on hand-made blocks with known values (the positions of nibbles, scale
 * bits and high bits written out by hand from ggml-common.h), and our grids written as blocks.
 */
import assert from "node:assert/strict";
import { dequantize, gridToBlocks } from "../formats/ggml_blocks.ts";
import { GGML_TYPES } from "../formats/gguf.ts";
import type { GridWeight } from "../formats/quantized.ts";

const put16 = (b: Uint8Array, at: number, h: number) => {
  b[at] = h & 255;
  b[at + 1] = h >> 8;
};

Deno.test("Q4_0, Q4_1 and Q8_0 blocks by hand", () => {
  const q40 = new Uint8Array(18);
  put16(q40, 0, 0x3800); // d = 0.5
  for (let j = 0; j < 16; j++) q40[2 + j] = j | ((15 - j) << 4);
  const x = dequantize(GGML_TYPES.Q4_0, q40, 32, "q4_0");
  assert.equal(x[0], -4); // (0 − 8)·0.5
  assert.equal(x[15], 3.5); // (15 − 8)·0.5
  assert.equal(x[16], 3.5); // high nibble of byte 0: 15
  assert.equal(x[31], -4); // high nibble of byte 15: 0

  const q41 = new Uint8Array(20);
  put16(q41, 0, 0x3400); // d = 0.25
  put16(q41, 2, 0xbc00); // m = −1
  for (let j = 0; j < 16; j++) q41[4 + j] = 3 | (12 << 4);
  const y = dequantize(GGML_TYPES.Q4_1, q41, 32, "q4_1");
  assert.equal(y[5], -0.25); // 3·0.25 − 1
  assert.equal(y[20], 2); // 12·0.25 − 1

  const q80 = new Uint8Array(34);
  put16(q80, 0, 0x4000); // d = 2
  q80[2] = 0x80; // −128
  q80[3] = 127;
  q80[33] = 0xff; // −1
  const z = dequantize(GGML_TYPES.Q8_0, q80, 32, "q8_0");
  assert.deepEqual([z[0], z[1], z[31]], [-256, 254, -2]);
});

Deno.test("Q4_K: 6-bit scales and minimums, runs of 32 in low then high nibbles", () => {
  const b = new Uint8Array(144);
  put16(b, 0, 0x3c00); // d = 1
  put16(b, 2, 0x3800); // dmin = 0.5
  // scales[12]: bytes 0–3 low 6 bits = scales of runs 0–3 (high 2 bits feed runs 4–7), bytes
  // 4–7 = minimums of runs 0–3, bytes 8–11 = low nibble scale / high nibble minimum of runs 4–7.
  b.set([0xc1, 2, 3, 4, 5, 6, 7, 0x48, 0x21, 0x43, 0x65, 0x87], 4);
  // run scales: 1 2 3 4 | 1+(3<<4)=49 3 5 7; minimums: 5 6 7 8 | 2 4 6 8+(1<<4)=24
  for (let l = 0; l < 128; l++) b[16 + l] = (l % 16) | ((15 - (l % 16)) << 4);
  const x = dequantize(GGML_TYPES.Q4_K, b, 256, "q4_k");
  assert.equal(x[0], 1 * 0 - 0.5 * 5); // run 0: low nibble of qs[0]
  assert.equal(x[31], 1 * 15 - 0.5 * 5); // run 0: low nibble of qs[31]
  assert.equal(x[32], 2 * 15 - 0.5 * 6); // run 1: high nibble of qs[0]
  assert.equal(x[64], 3 * 0 - 0.5 * 7); // run 2: low nibble of qs[32]
  assert.equal(x[128 + 1], 49 * 1 - 0.5 * 2); // run 4: low nibble of qs[65]
  assert.equal(x[255], 7 * 0 - 0.5 * 24); // run 7: high nibble of qs[127]
});

Deno.test("Q6_K: low nibbles, high bit pairs, 16 signed scales, d last", () => {
  const b = new Uint8Array(210);
  for (let l = 0; l < 128; l++) b[l] = (l & 15) | (((l >> 4) & 15) << 4); // ql
  for (let l = 0; l < 64; l++) b[128 + l] = 0b11100100; // qh pairs 0, 1, 2, 3
  for (let i = 0; i < 16; i++) b[192 + i] = (i % 2 ? -(i + 1) : i + 1) & 255; // scales
  put16(b, 208, 0x3800); // d = 0.5
  const x = dequantize(GGML_TYPES.Q6_K, b, 256, "q6_k");
  // y[l] = d·sc[l/16]·((ql[l] & 15 | (qh[l] & 3) << 4) − 32) for the first 32, …
  assert.equal(x[0], 0.5 * 1 * ((0 | (0 << 4)) - 32));
  assert.equal(x[17], 0.5 * -2 * ((1 | (0 << 4)) - 32)); // l = 17 uses scale 1 (−2)
  assert.equal(x[32], 0.5 * 3 * ((0 | (1 << 4)) - 32)); // ql[32] low, qh bits 2–3, scale 2
  assert.equal(x[64], 0.5 * 5 * ((0 | (2 << 4)) - 32)); // ql[0] high, qh bits 4–5, scale 4
  assert.equal(x[96], 0.5 * 7 * ((2 | (3 << 4)) - 32)); // ql[32] high (2), qh bits 6–7
  assert.equal(x[128], 0.5 * 9 * ((0 | (0 << 4)) - 32)); // second half: ql[64], qh[32], scale 8
  assert.equal(x[255], 0.5 * -16 * ((7 | (3 << 4)) - 32)); // ql[127] high (7), scale 8+1+6 (−16)
});

Deno.test("a grid written as Q4_0 / Q4_1 / Q8_0 blocks dequantizes to scale·(code − zero)", () => {
  const rows = 2, cols = 64;
  const grid = (maxq: number, zero: (k: number) => number): GridWeight => ({
    rows,
    cols,
    maxq,
    groupSize: 32,
    codes: Uint8Array.from({ length: rows * cols }, (_, i) => (i * 7) % (maxq + 1)),
    scales: Float32Array.of(0.5, 0.125, 0.0625, 2),
    zeros: Float32Array.from({ length: 4 }, (_, k) => zero(k)),
    gIdx: Int32Array.from({ length: cols }, (_, c) => c >> 5),
    contiguous: true,
  });
  for (
    const [type, g] of [
      ["Q4_0", grid(15, () => 8)],
      ["Q4_1", grid(15, (k) => [0, 3, 8, 15][k])],
      ["Q8_0", grid(255, () => 128)],
    ] as const
  ) {
    const { bytes, stats } = gridToBlocks(g, type, type);
    assert.equal(stats.inexactMins, 0);
    const x = dequantize(GGML_TYPES[type], bytes, rows * cols, type);
    for (let i = 0; i < rows * cols; i++) {
      const k = Math.floor(i / cols) * 2 + ((i % cols) >> 5);
      assert.equal(x[i], g.scales[k] * (g.codes[i] - g.zeros[k]), `${type} at ${i}`);
    }
  }
  assert.throws(() => gridToBlocks(grid(15, () => 7), "Q4_0", "w"), /w: zero point 7 .* needs 8/);
  const g = grid(15, () => 8);
  g.scales[0] = 0.1;
  assert.throws(() => gridToBlocks(g, "Q4_0", "w"), /not fp16 values/);
});
