/**
 * Tests of models/safetensors.ts and models/checkpoint.ts: exact round trips, F16/BF16 rounding
 * against an independent arithmetic reference, malformed files, the tinystories fixture with its
 * tied-weight alias, sharded checkpoints and crash safety of the writers.
 */

import assert from "node:assert/strict";
import { Rng } from "../kernels/tensor.ts";
import { fixtureModel } from "../fixtures/paths.ts";
import {
  decodeBF16,
  decodeF16,
  encodeBF16,
  encodeF16,
  type RawData,
  SafetensorsReader,
  SafetensorsWriter,
  type TensorEntry,
  writeSafetensors,
} from "../formats/safetensors.ts";
import {
  CheckpointWriter,
  INDEX_FILE,
  openCheckpoint,
  SINGLE_FILE,
} from "../formats/checkpoint.ts";

// ---------------------------------------------------------------------------------------------
// independent reference: float16 / bfloat16 by plain float64 arithmetic

function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** floor(log2(a)) for a positive finite a, exactly. */
function exponentOf(a: number): number {
  let e = Math.floor(Math.log2(a));
  while (2 ** e > a) e--;
  while (2 ** (e + 1) <= a) e++;
  return e;
}

function refHalfValue(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  if (e === 31) return m ? NaN : s * Infinity;
  if (e === 0) return s * m * 2 ** -24;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

function refEncodeHalf(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === Infinity) return sign | 0x7c00;
  if (a < 2 ** -14) return sign | roundHalfEven(a * 2 ** 24);
  let e = exponentOf(a);
  let m = roundHalfEven((a / 2 ** e - 1) * 1024);
  if (m === 1024) [e, m] = [e + 1, 0];
  if (e > 15) return sign | 0x7c00;
  return sign | ((e + 15) << 10) | m;
}

function f32Bits(x: number): number {
  const dv = new DataView(new ArrayBuffer(4));
  dv.setFloat32(0, x, true);
  return dv.getUint32(0, true);
}

function bitsF32(b: number): number {
  const dv = new DataView(new ArrayBuffer(4));
  dv.setUint32(0, b >>> 0, true);
  return dv.getFloat32(0, true);
}

function refEncodeBf16(x: number): number {
  if (Number.isNaN(x)) return 0x7fc0;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === Infinity) return sign | 0x7f80;
  const e = a < 2 ** -126 ? -126 : exponentOf(a);
  const ulp = 2 ** (e - 7);
  const v = roundHalfEven(a / ulp) * ulp;
  if (v >= 2 ** 128) return sign | 0x7f80;
  return sign | (f32Bits(v) >>> 16);
}

const isHalfNaN = (h: number) => (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
const isBf16NaN = (h: number) => (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;

function assertSameFloats(actual: Float32Array, expected: ArrayLike<number>, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    const ok = Number.isNaN(expected[i])
      ? Number.isNaN(actual[i])
      : Object.is(actual[i], expected[i]);
    if (!ok) assert.fail(`${what}[${i}]: got ${actual[i]}, expected ${expected[i]}`);
  }
}

function assertBitsEqual(actual: Uint16Array, expected: ArrayLike<number>, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) {
      assert.fail(
        `${what}[${i}]: got 0x${actual[i].toString(16)}, expected 0x${expected[i].toString(16)}`,
      );
    }
  }
}

/** float32 values from bit patterns. */
function fromBits(bits: number[]): Float32Array {
  return new Float32Array(new Uint32Array(bits.map((b) => b >>> 0)).buffer);
}

/** Interesting float32 bit patterns: zeros, infinities, NaNs, subnormals, limits, ties. */
function specialBits(): number[] {
  const values = [
    0,
    -0,
    1,
    -1,
    Infinity,
    -Infinity,
    65504,
    65519,
    65520,
    65536,
    -65520,
    2 ** -14,
    2 ** -24,
    2 ** -25,
    3 * 2 ** -25,
    5 * 2 ** -26,
    1023.5 * 2 ** -24,
    1 + 2 ** -11,
    1 + 3 * 2 ** -11,
    1 + 2 ** -8,
    1 + 3 * 2 ** -8,
    3.4028234663852886e38,
    1e-45,
    1.1754943508222875e-38,
    Math.PI,
    -Math.E,
    1e-8,
  ];
  const bits = values.map(f32Bits);
  bits.push(0x7fc00000, 0xffc00001, 0x7f800001, 0x7fbfffff, 0x00000001, 0x807fffff, 0x7f7fffff);
  return bits;
}

/** Every float16 midpoint and its float32 neighbours, plus random bit patterns. */
function roundingProbes(): Float32Array {
  const bits = specialBits();
  for (let h = 0; h < 0x7c00; h++) {
    const mid = f32Bits((refHalfValue(h) + refHalfValue(h + 1)) / 2);
    bits.push(mid - 1, mid, mid + 1, (mid | 0x80000000) >>> 0);
  }
  const rng = new Rng(7);
  for (let i = 0; i < 100_000; i++) bits.push(rng.uint32());
  return fromBits(bits);
}

// ---------------------------------------------------------------------------------------------
// helpers

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "safetensors_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

async function assertRejectsWith(fn: () => Promise<unknown>, parts: string[]): Promise<void> {
  let error: unknown = undefined;
  try {
    await fn();
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof Error, `expected an error mentioning ${parts.join(", ")}`);
  for (const p of parts) {
    assert.ok(error.message.includes(p), `error "${error.message}" should mention ${p}`);
  }
}

/** A raw safetensors file: u64 header length (or an override), header text, data bytes. */
function rawFile(header: string | object, dataLen: number, lengthOverride?: number): Uint8Array {
  const text = typeof header === "string" ? header : JSON.stringify(header);
  const json = new TextEncoder().encode(text);
  const out = new Uint8Array(8 + json.length + dataLen);
  new DataView(out.buffer).setBigUint64(0, BigInt(lengthOverride ?? json.length), true);
  out.set(json, 8);
  return out;
}

/** Parses a file independently of the reader: header object and the data section. */
async function parseFile(path: string): Promise<{
  headerLen: number;
  header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  data: Uint8Array;
}> {
  const bytes = await Deno.readFile(path);
  const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)));
  return { headerLen, header, data: bytes.slice(8 + headerLen) };
}

function sameTyped(actual: RawData, expected: RawData, what: string): void {
  assert.equal(actual.constructor, expected.constructor, `${what}: array type`);
  assert.deepEqual(
    new Uint8Array(actual.buffer, actual.byteOffset, actual.byteLength),
    new Uint8Array(expected.buffer, expected.byteOffset, expected.byteLength),
    `${what}: bytes`,
  );
}

// ---------------------------------------------------------------------------------------------
// conversions

Deno.test("decodeF16 matches the arithmetic reference for all 65536 patterns", () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const expected = Array.from(all, refHalfValue);
  assertSameFloats(decodeF16(all), expected, "decodeF16");
});

Deno.test("decodeBF16 is bits << 16 for all 65536 patterns", () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const out = new Uint32Array(decodeBF16(all).buffer);
  for (let i = 0; i < 65536; i++) assert.equal(out[i], (i << 16) >>> 0);
});

Deno.test("encodeF16 rounds to nearest even like the reference (ties, subnormals, inf, NaN)", () => {
  const x = roundingProbes();
  const got = encodeF16(x);
  for (let i = 0; i < x.length; i++) {
    if (Number.isNaN(x[i])) {
      assert.ok(isHalfNaN(got[i]), `NaN must stay NaN, got 0x${got[i].toString(16)}`);
      assert.equal(got[i] & 0x8000, (f32Bits(x[i]) >>> 16) & 0x8000, "NaN sign");
    } else if (got[i] !== refEncodeHalf(x[i])) {
      assert.fail(`encodeF16(${x[i]}) = 0x${got[i].toString(16)}, ref 0x${refEncodeHalf(x[i])}`);
    }
  }
  // Hand-checked cases.
  const cases: [number, number][] = [
    [1 + 2 ** -11, 0x3c00], // tie → even (down)
    [1 + 3 * 2 ** -11, 0x3c02], // tie → even (up)
    [2 ** -25, 0x0000], // half the smallest subnormal → 0
    [3 * 2 ** -25, 0x0002], // subnormal tie → even
    [1023.5 * 2 ** -24, 0x0400], // tie at the subnormal/normal boundary
    [65519, 0x7bff],
    [65520, 0x7c00], // tie with 65536 → inf
    [-Infinity, 0xfc00],
    [-0, 0x8000],
  ];
  assertBitsEqual(
    encodeF16(new Float32Array(cases.map((c) => c[0]))),
    cases.map((c) => c[1]),
    "f16",
  );
});

Deno.test("encodeBF16 rounds to nearest even like the reference", () => {
  const x = roundingProbes();
  const got = encodeBF16(x);
  for (let i = 0; i < x.length; i++) {
    if (Number.isNaN(x[i])) {
      assert.ok(isBf16NaN(got[i]), `NaN must stay NaN, got 0x${got[i].toString(16)}`);
    } else if (got[i] !== refEncodeBf16(x[i])) {
      assert.fail(`encodeBF16(${x[i]}) = 0x${got[i].toString(16)}, ref 0x${refEncodeBf16(x[i])}`);
    }
  }
  const cases: [number, number][] = [
    [1 + 2 ** -8, 0x3f80],
    [1 + 3 * 2 ** -8, 0x3f82],
    [bitsF32(0x7f7fffff), 0x7f80], // rounds up to inf
    [bitsF32(0x00000001), 0x0000],
    [bitsF32(0x00008000), 0x0000], // subnormal tie → even
    [bitsF32(0x00018000), 0x0002],
    [-0, 0x8000],
  ];
  assertBitsEqual(
    encodeBF16(new Float32Array(cases.map((c) => c[0]))),
    cases.map((c) => c[1]),
    "bf16",
  );
});

// ---------------------------------------------------------------------------------------------
// round trip

function roundTripTensors(): TensorEntry[] {
  const floats = fromBits(specialBits());
  const rng = new Rng(3);
  const gauss = rng.normalTensor([6, 7], 0.02).data;
  return [
    { name: "f32.special", dtype: "F32", shape: [floats.length], data: floats },
    { name: "f32.gauss", dtype: "F32", shape: [6, 7], data: gauss },
    { name: "f16.special", dtype: "F16", shape: [floats.length], data: floats },
    { name: "f16.gauss", dtype: "F16", shape: [7, 6], data: gauss },
    { name: "bf16.special", dtype: "BF16", shape: [floats.length], data: floats },
    { name: "bf16.gauss", dtype: "BF16", shape: [42], data: gauss },
    {
      name: "i32",
      dtype: "I32",
      shape: [2, 3],
      data: new Int32Array([0, -1, 2 ** 31 - 1, -(2 ** 31), 7, 42]),
    },
    { name: "i8", dtype: "I8", shape: [5], data: new Int8Array([-128, -1, 0, 1, 127]) },
    { name: "u8", dtype: "U8", shape: [1, 4], data: new Uint8Array([0, 1, 128, 255]) },
    { name: "scalar", dtype: "F32", shape: [], data: new Float32Array([2.5]) },
    { name: "empty", dtype: "F16", shape: [0, 3], data: new Float32Array(0) },
  ];
}

function storedBytes(t: TensorEntry): number {
  const perElement = { F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I8: 1, U8: 1 }[t.dtype];
  return t.shape.reduce((a, b) => a * b, 1) * perElement;
}

function expectedFloats(t: TensorEntry): number[] {
  const x = t.data as Float32Array;
  if (t.dtype === "F16") return Array.from(x, (v) => refHalfValue(refEncodeHalf(v)));
  if (t.dtype === "BF16") return Array.from(x, (v) => bitsF32(refEncodeBf16(v) << 16));
  return Array.from(x);
}

Deno.test("round trip of F32/F16/BF16/I32/I8/U8 is exact", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/rt.safetensors`;
    const tensors = roundTripTensors();
    await writeSafetensors(path, tensors, { format: "pt", note: "round trip" });
    assert.deepEqual(await listDir(dir), ["rt.safetensors"]);

    const r = await SafetensorsReader.open(path);
    try {
      assert.deepEqual(r.names(), tensors.map((t) => t.name));
      assert.deepEqual(r.metadata, { format: "pt", note: "round trip" });
      for (const t of tensors) {
        const info = r.info(t.name);
        assert.equal(info.dtype, t.dtype);
        assert.deepEqual(info.shape, t.shape);
        const raw = await r.readRaw(t.name);
        assert.deepEqual(raw.shape, t.shape);
        if (t.dtype === "F32") {
          sameTyped(raw.data, t.data, t.name); // bit-exact, NaN payloads included
        } else if (t.dtype === "F16" || t.dtype === "BF16") {
          const f = await r.readF32(t.name);
          assertSameFloats(f.data, expectedFloats(t), t.name);
          assert.deepEqual(f.shape, t.shape);
        } else {
          sameTyped(raw.data, t.data, t.name);
        }
      }
    } finally {
      r.close();
    }
  });
});

Deno.test("written file layout: padded header, contiguous data, reference F16/BF16 bits", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/layout.safetensors`;
    const tensors = roundTripTensors();
    await writeSafetensors(path, tensors, { format: "pt" });
    const { headerLen, header, data } = await parseFile(path);
    assert.equal(headerLen % 8, 0, "header length is a multiple of 8");
    assert.deepEqual(header.__metadata__, { format: "pt" });
    let end = 0;
    for (const t of tensors) {
      const e = header[t.name];
      assert.equal(e.dtype, t.dtype);
      assert.equal(e.data_offsets[0], end);
      end = e.data_offsets[1];
      if (t.dtype === "F16" || t.dtype === "BF16") {
        const bytes = data.slice(e.data_offsets[0], e.data_offsets[1]);
        const stored = new Uint16Array(bytes.buffer);
        const x = t.data as Float32Array;
        const ref = t.dtype === "F16" ? refEncodeHalf : refEncodeBf16;
        const isNaN16 = t.dtype === "F16" ? isHalfNaN : isBf16NaN;
        for (let i = 0; i < x.length; i++) {
          if (Number.isNaN(x[i])) assert.ok(isNaN16(stored[i]), `${t.name}[${i}] NaN`);
          else assert.equal(stored[i], ref(x[i]), `${t.name}[${i}]`);
        }
      }
    }
    assert.equal(data.length, end, "data section is exactly the tensors");
  });
});

Deno.test("concurrent reads on one reader return the right tensors", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/many.safetensors`;
    const tensors: TensorEntry[] = Array.from({ length: 20 }, (_, i) => ({
      name: `t${i}`,
      dtype: "F32",
      shape: [i + 1, 3],
      data: new Float32Array(3 * (i + 1)).fill(i),
    }));
    await writeSafetensors(path, tensors);
    const r = await SafetensorsReader.open(path);
    try {
      const got = await Promise.all(tensors.map((t) => r.readF32(t.name)));
      got.forEach((g, i) => assert.deepEqual(g.data, tensors[i].data));
    } finally {
      r.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// malformed files

interface BadCase {
  file: string;
  bytes: Uint8Array;
  mentions: string[];
}

function badCases(): BadCase[] {
  const f32 = (shape: number[], offsets: number[]) => ({
    dtype: "F32",
    shape,
    data_offsets: offsets,
  });
  return [
    { file: "short.safetensors", bytes: new Uint8Array(5), mentions: ["too short"] },
    {
      file: "longheader.safetensors",
      bytes: rawFile({ a: f32([1], [0, 4]) }, 4, 10_000),
      mentions: ["header length 10000"],
    },
    { file: "notjson.safetensors", bytes: rawFile("{not json", 0), mentions: ["not valid JSON"] },
    { file: "array.safetensors", bytes: rawFile("[1, 2, 3]", 0), mentions: ["JSON object"] },
    { file: "null.safetensors", bytes: rawFile("null", 0), mentions: ["JSON object"] },
    {
      file: "dtype.safetensors",
      bytes: rawFile({ "w.bad": { dtype: "F8", shape: [2], data_offsets: [0, 2] } }, 2),
      mentions: ['"w.bad"', "unknown dtype"],
    },
    {
      file: "mismatch.safetensors",
      bytes: rawFile({ "model.layers.0.mlp.up_proj.weight": f32([5, 6], [0, 100]) }, 100),
      mentions: [
        'tensor "model.layers.0.mlp.up_proj.weight": data_offsets [0, 100] hold 100 bytes ' +
        "but shape [5, 6] of F32 needs 120",
      ],
    },
    {
      file: "overlap.safetensors",
      bytes: rawFile({ "a.w": f32([4], [0, 16]), "b.w": f32([4], [8, 24]) }, 24),
      mentions: ['"a.w"', '"b.w"', "overlap"],
    },
    {
      file: "truncated.safetensors",
      bytes: rawFile({ "a.w": f32([2], [0, 8]), "b.w": f32([4], [8, 24]) }, 20),
      mentions: ['"b.w"', "truncated"],
    },
    {
      file: "shape.safetensors",
      bytes: rawFile({ "neg.w": f32([-1, 2], [0, 0]) }, 0),
      mentions: ['"neg.w"', "shape"],
    },
    {
      file: "offsets.safetensors",
      bytes: rawFile({ "rev.w": f32([1], [8, 4]) }, 8),
      mentions: ['"rev.w"', "data_offsets"],
    },
    {
      file: "meta.safetensors",
      bytes: rawFile({ __metadata__: { format: 1 } }, 0),
      mentions: ["__metadata__", "format"],
    },
  ];
}

Deno.test("malformed files fail at open with the file and tensor named", async () => {
  await withTempDir(async (dir) => {
    for (const c of badCases()) {
      const path = `${dir}/${c.file}`;
      await Deno.writeFile(path, c.bytes);
      await assertRejectsWith(() => SafetensorsReader.open(path), [c.file, ...c.mentions]);
    }
  });
});

Deno.test("missing tensors and unreadable dtypes are errors naming file and tensor", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/odd.safetensors`;
    const header = {
      "big.ints": { dtype: "I64", shape: [2], data_offsets: [0, 16] },
      "some.ints": { dtype: "I32", shape: [2], data_offsets: [16, 24] },
      "short.ints": { dtype: "I16", shape: [2], data_offsets: [24, 28] },
    };
    await Deno.writeFile(path, rawFile(header, 28));
    const r = await SafetensorsReader.open(path);
    try {
      assert.deepEqual(r.info("big.ints"), { dtype: "I64", shape: [2], byteLength: 16 });
      // I64 is read (compressed-tensors' weight_shape); I16 is not.
      assert.deepEqual((await r.readRaw("big.ints")).data, new BigInt64Array(2));
      await assertRejectsWith(() => r.readRaw("short.ints"), [
        "odd.safetensors",
        '"short.ints"',
        "I16",
      ]);
      await assertRejectsWith(() => r.readF32("some.ints"), ["odd.safetensors", '"some.ints"']);
      assert.throws(() => r.info("nope"), (e: Error) =>
        e.message.includes('"nope"') &&
        e.message.includes("odd.safetensors"));
      assert.equal(r.has("nope"), false);
      assert.deepEqual((await r.readRaw("some.ints")).data, new Int32Array(2));
    } finally {
      r.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// the real fixture

const TINY = fixtureModel("tinystories-656k");

Deno.test("fixture tinystories-656k opens and lists its tensors", async () => {
  const r = await SafetensorsReader.open(`${TINY}/model.safetensors`);
  try {
    const names = r.names();
    assert.equal(names.length, 20);
    assert.ok(names.includes("lm_head.weight"));
    assert.ok(names.includes("model.layers.1.self_attn.k_proj.weight"));
    assert.ok(!names.includes("model.embed_tokens.weight"));
    assert.equal(r.metadata["model.embed_tokens.weight"], "lm_head.weight");
    assert.deepEqual(r.info("model.layers.0.self_attn.k_proj.weight").shape, [64, 128]);
    // Compare with an independent parse of the whole file.
    const { header, data } = await parseFile(`${TINY}/model.safetensors`);
    const [b, e] = header["model.norm.weight"].data_offsets;
    const norm = await r.readF32("model.norm.weight");
    assert.deepEqual(norm.data, new Float32Array(data.slice(b, e).buffer));
  } finally {
    r.close();
  }
});

Deno.test("fixture alias model.embed_tokens.weight reads lm_head.weight", async () => {
  const ckpt = await openCheckpoint(TINY);
  try {
    assert.equal(ckpt.names().length, 20);
    assert.ok(ckpt.has("model.embed_tokens.weight"));
    assert.equal(ckpt.resolve("model.embed_tokens.weight"), "lm_head.weight");
    assert.deepEqual(ckpt.aliases(), { "model.embed_tokens.weight": "lm_head.weight" });
    assert.deepEqual(ckpt.info("model.embed_tokens.weight").shape, [2048, 128]);
    const embed = await ckpt.readF32("model.embed_tokens.weight");
    const head = await ckpt.readF32("lm_head.weight");
    assert.deepEqual(embed.shape, [2048, 128]);
    assert.deepEqual(embed.data, head.data);
    assert.ok(embed.data.every(Number.isFinite));
    assert.equal(ckpt.metadata.format, "pt");
    assert.throws(() => ckpt.info("model.nope"), /model\.nope/);
  } finally {
    ckpt.close();
  }
});

Deno.test("openCheckpoint on an empty directory names the directory", async () => {
  await withTempDir(async (dir) => {
    await assertRejectsWith(() => openCheckpoint(dir), [dir, "no checkpoint"]);
  });
});

// ---------------------------------------------------------------------------------------------
// checkpoints

async function writeCheckpoint(
  dir: string,
  tensors: TensorEntry[],
  maxShardBytes?: number,
): Promise<string[]> {
  const w = await CheckpointWriter.create(dir, {
    maxShardBytes,
    metadata: { format: "pt", "tied.alias": "f32.gauss" },
  });
  for (const t of tensors) await w.add(t.name, t.dtype, t.shape, t.data);
  return await w.finish();
}

async function assertCheckpointHolds(dir: string, tensors: TensorEntry[]): Promise<void> {
  const ckpt = await openCheckpoint(dir);
  try {
    assert.deepEqual(ckpt.names(), tensors.map((t) => t.name));
    assert.equal(ckpt.metadata.format, "pt");
    for (const t of tensors) {
      if (t.dtype === "F16" || t.dtype === "BF16") {
        assertSameFloats((await ckpt.readF32(t.name)).data, expectedFloats(t), t.name);
      } else {
        sameTyped((await ckpt.readRaw(t.name)).data, t.data, t.name);
      }
    }
    assert.deepEqual(await ckpt.readF32("tied.alias"), await ckpt.readF32("f32.gauss"));
  } finally {
    ckpt.close();
  }
}

Deno.test("sharded checkpoint re-opens with identical data", async () => {
  await withTempDir(async (dir) => {
    const tensors = roundTripTensors();
    const files = await writeCheckpoint(dir, tensors, 200);
    const n = files.length - 1;
    assert.ok(n >= 3, `expected several shards, got ${files.join(", ")}`);
    assert.equal(files[0], `model-00001-of-0000${n}.safetensors`);
    assert.deepEqual(await listDir(dir), [...files].sort(), "no temporary files remain");

    const index = JSON.parse(await Deno.readTextFile(`${dir}/${INDEX_FILE}`));
    const total = tensors.reduce((s, t) => s + storedBytes(t), 0);
    assert.equal(index.metadata.total_size, total);
    assert.deepEqual(Object.keys(index.weight_map), tensors.map((t) => t.name));
    for (const f of files.slice(0, n)) {
      const { headerLen, header, data } = await parseFile(`${dir}/${f}`);
      assert.equal(headerLen % 8, 0);
      const count = Object.keys(header).filter((k) => k !== "__metadata__").length;
      assert.ok(count >= 1 && (count === 1 || data.length <= 200), `${f} breaks the shard limit`);
    }
    await assertCheckpointHolds(dir, tensors);
  });
});

Deno.test("checkpoint that fits is one model.safetensors; rewriting replaces shards", async () => {
  await withTempDir(async (dir) => {
    const tensors = roundTripTensors();
    await writeCheckpoint(dir, tensors, 200);
    assert.deepEqual(await writeCheckpoint(dir, tensors), [SINGLE_FILE]);
    assert.deepEqual(await listDir(dir), [SINGLE_FILE]);
    await assertCheckpointHolds(dir, tensors);
  });
});

// ---------------------------------------------------------------------------------------------
// crash safety

Deno.test("aborted writers leave nothing behind", async () => {
  await withTempDir(async (dir) => {
    const w = await SafetensorsWriter.create(`${dir}/a.safetensors`);
    await w.add("x", "F32", [2], new Float32Array([1, 2]));
    assert.equal((await listDir(dir)).length, 1, "one temporary data file while writing");
    await w.abort();
    await w.abort();
    assert.deepEqual(await listDir(dir), []);

    const c = await CheckpointWriter.create(`${dir}/ckpt`, { maxShardBytes: 16 });
    for (let i = 0; i < 5; i++) await c.add(`t${i}`, "F32", [4], new Float32Array(4));
    await c.abort();
    assert.deepEqual(await listDir(`${dir}/ckpt`), []);
  });
});

Deno.test("failed adds are clear errors and leave no file under the final name", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/fail.safetensors`;
    const w = await SafetensorsWriter.create(path);
    await w.add("ok.w", "F32", [2], new Float32Array(2));
    await assertRejectsWith(
      () => w.add("bad.w", "F32", [2, 3], new Float32Array(5)),
      ["fail.safetensors", '"bad.w"', "shape [2, 3]"],
    );
    await assertRejectsWith(() => w.add("ok.w", "F32", [1], new Float32Array(1)), [
      '"ok.w"',
      "duplicate",
    ]);
    await assertRejectsWith(() => w.add("int.w", "I32", [1], new Float32Array(1)), [
      '"int.w"',
      "Int32Array",
    ]);
    await assertRejectsWith(() => Deno.stat(path), []);
    await w.abort();
    assert.deepEqual(await listDir(dir), []);

    await assertRejectsWith(
      () =>
        writeSafetensors(path, [{ name: "z", dtype: "U8", shape: [3], data: new Uint8Array(2) }]),
      ['"z"'],
    );
    assert.deepEqual(await listDir(dir), []);
  });
});

Deno.test("a failing finish removes its temporary files", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/blocked.safetensors`;
    await Deno.mkdir(path);
    await Deno.writeTextFile(`${path}/keep`, "x"); // rename onto a non-empty directory fails
    const w = await SafetensorsWriter.create(path);
    await w.add("x", "F32", [1], new Float32Array([1]));
    await assertRejectsWith(() => w.finish(), []);
    assert.deepEqual(await listDir(dir), ["blocked.safetensors"]);
    assert.deepEqual(await listDir(path), ["keep"]);

    const cdir = `${dir}/ckpt`;
    await Deno.mkdir(`${cdir}/${SINGLE_FILE}`, { recursive: true });
    await Deno.writeTextFile(`${cdir}/${SINGLE_FILE}/keep`, "x");
    const c = await CheckpointWriter.create(cdir);
    await c.add("x", "F32", [1], new Float32Array([1]));
    await assertRejectsWith(() => c.finish(), []);
    assert.deepEqual(await listDir(cdir), [SINGLE_FILE]);
  });
});
