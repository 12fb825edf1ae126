/**
 * Streaming safetensors reader and writer.
 *
 * The reader parses only the 8-byte header length and the JSON header when a file is opened,
 * validates every entry against the file's real size, and reads one tensor's byte range at a time.
 * The writer keeps at most one tensor in memory: tensor bytes stream to a temporary data file as
 * they are added, and `finish()` assembles header + data under a temporary name before renaming
 * it into place, so nothing is ever half-written under the final name.
 *
 * Format: `u64le headerLen`, `headerLen` bytes of UTF-8 JSON
 * (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`),
 * then the data section; offsets are relative to the start of the data section.
 * @module
 */

import type { Tensor } from "../kernels/tensor.ts";

/** Every dtype a safetensors header may name. */
export type Dtype = "F64" | "F32" | "F16" | "BF16" | "I64" | "I32" | "I16" | "I8" | "U8" | "BOOL";

/** The dtypes this module can write. */
export type WritableDtype = "F32" | "F16" | "BF16" | "I64" | "I32" | "I8" | "U8";

/** Typed arrays exchanged with `readRaw` and `add`. */
export type RawData = Float32Array | BigInt64Array | Int32Array | Int8Array | Uint8Array;

/** What the header says about one tensor. */
export interface TensorInfo {
  /** Stored element type. */
  dtype: Dtype;
  /** Dimensions (`[]` for a scalar). */
  shape: number[];
  /** Size of the tensor's data in the file, in bytes. */
  byteLength: number;
}

/** A tensor in its stored integer form (floating dtypes come back as Float32Array). */
export interface RawTensor {
  /** Stored element type. */
  dtype: Dtype;
  /** Dimensions (`[]` for a scalar). */
  shape: number[];
  /** The values, row-major (a Float32Array for F32, F16 and BF16). */
  data: RawData;
}

/** One tensor for `writeSafetensors`. */
export interface TensorEntry {
  /** Tensor name in the header. */
  name: string;
  /** Stored element type (F16/BF16 are rounded from a Float32Array). */
  dtype: WritableDtype;
  /** Dimensions (`[]` for a scalar). */
  shape: number[];
  /** The values, row-major (a Float32Array for F32, F16 and BF16). */
  data: RawData;
}

/** Bytes per element of every known dtype. */
export const DTYPE_BYTES: Readonly<Record<Dtype, number>> = Object.freeze({
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
});

/** An error about a safetensors file; the message names the file and, where relevant, the tensor. */
export class SafetensorsError extends Error {
  /** The file concerned. */
  readonly path: string;
  /** The tensor concerned, if any. */
  readonly tensor?: string;
  /** An error about `path`, and about `tensor` when given. */
  constructor(path: string, message: string, tensor?: string) {
    super(tensor === undefined ? `${path}: ${message}` : `${path}: tensor "${tensor}": ${message}`);
    this.name = "SafetensorsError";
    this.path = path;
    this.tensor = tensor;
  }
}

const METADATA_KEY = "__metadata__";
const COPY_CHUNK = 8 << 20;
const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function isDtype(s: unknown): s is Dtype {
  return typeof s === "string" && Object.hasOwn(DTYPE_BYTES, s);
}

function product(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function fmtShape(shape: readonly unknown[]): string {
  return `[${shape.map((d) => JSON.stringify(d)).join(", ")}]`;
}

function requireLittleEndian(path: string): void {
  if (!LITTLE_ENDIAN_HOST) {
    throw new SafetensorsError(path, "big-endian hosts are not supported");
  }
}

// ---------------------------------------------------------------------------------------------
// float16 / bfloat16 conversion (bit-exact)

/** float32 bit pattern of one float16 bit pattern (exact; subnormals, ±inf and NaN payloads kept). */
function halfToFloatBits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  let e = 113;
  let m = mant;
  while ((m & 0x400) === 0) {
    m <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((m & 0x3ff) << 13)) >>> 0;
}

function buildHalfTable(): Uint32Array {
  const table = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) table[h] = halfToFloatBits(h);
  return table;
}

/** float32 bits of every float16 bit pattern; built once, never modified. */
const HALF_TO_FLOAT_BITS: Readonly<Uint32Array> = buildHalfTable();

/** Rounds `m >>> shift` to nearest, ties to even (1 ≤ shift ≤ 24). */
function shiftRoundEven(m: number, shift: number): number {
  const q = m >>> shift;
  const rem = m & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  return rem > half || (rem === half && (q & 1) === 1) ? q + 1 : q;
}

/** float16 bit pattern nearest to a float32 bit pattern (round to nearest, ties to even). */
export function floatBitsToHalf(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 112; // rebiased exponent: float16 bias 15 vs float32 bias 127
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal
    return sign | shiftRoundEven(mant | 0x800000, 14 - e); // may carry into the smallest normal
  }
  const h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  return sign | (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1) ? h + 1 : h); // carry may reach inf
}

/** bfloat16 bit pattern nearest to a float32 bit pattern (round to nearest, ties to even). */
export function floatBitsToBf16(bits: number): number {
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x7fffff) !== 0) {
    return ((bits >>> 16) | 0x40) & 0xffff; // NaN stays NaN (quiet)
  }
  return ((bits >>> 0) + 0x7fff + ((bits >>> 16) & 1)) >>> 16; // carry may reach inf
}

/** Decodes float16 bit patterns to float32, exactly. */
export function decodeF16(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) bits[i] = HALF_TO_FLOAT_BITS[src[i]];
  return out;
}

/** Decodes bfloat16 bit patterns to float32, exactly (`bits << 16`). */
export function decodeBF16(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return out;
}

function floatBits(src: Float32Array): Uint32Array {
  return new Uint32Array(src.buffer, src.byteOffset, src.length);
}

/** Whether every float32 value is exactly a float16 (`F16`) or bfloat16 (`BF16`) value. */
export function exactlyRepresentable(src: Float32Array, dtype: "F16" | "BF16"): boolean {
  const bits = floatBits(src);
  if (dtype === "BF16") {
    for (let i = 0; i < bits.length; i++) if ((bits[i] & 0xffff) !== 0) return false;
    return true;
  }
  for (let i = 0; i < bits.length; i++) {
    if (HALF_TO_FLOAT_BITS[floatBitsToHalf(bits[i])] !== bits[i]) return false;
  }
  return true;
}

/** Encodes float32 values as float16 bit patterns (round to nearest, ties to even). */
export function encodeF16(src: Float32Array): Uint16Array {
  const bits = floatBits(src);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = floatBitsToHalf(bits[i]);
  return out;
}

/** Encodes float32 values as bfloat16 bit patterns (round to nearest, ties to even). */
export function encodeBF16(src: Float32Array): Uint16Array {
  const bits = floatBits(src);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = floatBitsToBf16(bits[i]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// low-level I/O helpers

async function readFully(file: Deno.FsFile, buf: Uint8Array, what: () => string): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const n = await file.read(buf.subarray(off));
    if (n === null) throw new Error(`${what()}: unexpected end of file after ${off} bytes`);
    off += n;
  }
}

async function writeFully(file: Deno.FsFile, buf: Uint8Array): Promise<void> {
  let off = 0;
  while (off < buf.length) off += await file.write(buf.subarray(off));
}

function bytesOf(data: ArrayBufferView): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function randomSuffix(): string {
  const b = crypto.getRandomValues(new Uint8Array(6));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

async function removeQuietly(path: string): Promise<void> {
  try {
    await Deno.remove(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// header parsing and validation

interface Entry {
  dtype: Dtype;
  shape: number[];
  begin: number;
  end: number;
}

interface ParsedHeader {
  entries: Map<string, Entry>;
  metadata: Record<string, string>;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function parseMetadata(path: string, raw: unknown): Record<string, string> {
  if (!isPlainObject(raw)) {
    throw new SafetensorsError(path, `"${METADATA_KEY}" must be an object of strings`);
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(raw)) {
    if (typeof v !== "string") {
      throw new SafetensorsError(
        path,
        `"${METADATA_KEY}" value for "${k}" must be a string, got ${JSON.stringify(v)}`,
      );
    }
    out[k] = v;
  }
  return out;
}

function parseShape(path: string, name: string, raw: unknown): number[] {
  if (!Array.isArray(raw) || !raw.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new SafetensorsError(
      path,
      `shape ${JSON.stringify(raw)} is not a list of non-negative integers`,
      name,
    );
  }
  return raw as number[];
}

function parseOffsets(path: string, name: string, raw: unknown): [number, number] {
  const ok = Array.isArray(raw) && raw.length === 2 &&
    raw.every((d) => Number.isSafeInteger(d) && d >= 0) && raw[0] <= raw[1];
  if (!ok) {
    throw new SafetensorsError(
      path,
      `data_offsets ${JSON.stringify(raw)} must be [begin, end] with 0 <= begin <= end`,
      name,
    );
  }
  return [raw[0], raw[1]];
}

function parseEntry(path: string, name: string, raw: unknown, dataSize: number): Entry {
  if (!isPlainObject(raw)) {
    throw new SafetensorsError(
      path,
      "entry must be an object with dtype, shape, data_offsets",
      name,
    );
  }
  if (!isDtype(raw.dtype)) {
    throw new SafetensorsError(path, `unknown dtype ${JSON.stringify(raw.dtype)}`, name);
  }
  const dtype = raw.dtype;
  const shape = parseShape(path, name, raw.shape);
  const [begin, end] = parseOffsets(path, name, raw.data_offsets);
  const need = product(shape) * DTYPE_BYTES[dtype];
  if (end - begin !== need) {
    throw new SafetensorsError(
      path,
      `data_offsets [${begin}, ${end}] hold ${end - begin} bytes but shape ${
        fmtShape(shape)
      } of ${dtype} needs ${need}`,
      name,
    );
  }
  if (end > dataSize) {
    throw new SafetensorsError(
      path,
      `data_offsets [${begin}, ${end}] run past the end of the data section ` +
        `(${dataSize} bytes; file truncated?)`,
      name,
    );
  }
  return { dtype, shape, begin, end };
}

function checkOverlaps(path: string, entries: Map<string, Entry>): void {
  const sorted = [...entries].filter(([, e]) => e.end > e.begin)
    .sort((a, b) => a[1].begin - b[1].begin);
  for (let i = 1; i < sorted.length; i++) {
    const [prevName, prev] = sorted[i - 1];
    const [name, cur] = sorted[i];
    if (cur.begin < prev.end) {
      throw new SafetensorsError(
        path,
        `data_offsets [${cur.begin}, ${cur.end}] overlap tensor "${prevName}" ` +
          `[${prev.begin}, ${prev.end}]`,
        name,
      );
    }
  }
}

function parseHeader(path: string, bytes: Uint8Array, dataSize: number): ParsedHeader {
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new SafetensorsError(path, `header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(json)) {
    throw new SafetensorsError(path, "header must be a JSON object");
  }
  let metadata: Record<string, string> = {};
  const entries = new Map<string, Entry>();
  for (const [name, raw] of Object.entries(json)) {
    if (name === METADATA_KEY) metadata = parseMetadata(path, raw);
    else entries.set(name, parseEntry(path, name, raw, dataSize));
  }
  checkOverlaps(path, entries);
  return { entries, metadata };
}

async function readHeader(
  path: string,
  file: Deno.FsFile,
): Promise<{ header: ParsedHeader; dataStart: number }> {
  const size = (await file.stat()).size;
  if (size < 8) {
    throw new SafetensorsError(
      path,
      `file is ${size} bytes, too short for the 8-byte header length`,
    );
  }
  const lenBuf = new Uint8Array(8);
  await readFully(file, lenBuf, () => `${path}: header length`);
  const len = new DataView(lenBuf.buffer).getBigUint64(0, true);
  if (len > BigInt(size - 8)) {
    throw new SafetensorsError(
      path,
      `header length ${len} runs past the end of the file (${size} bytes)`,
    );
  }
  const headerLen = Number(len);
  const headerBytes = new Uint8Array(headerLen);
  await readFully(file, headerBytes, () => `${path}: header`);
  const dataStart = 8 + headerLen;
  return { header: parseHeader(path, headerBytes, size - dataStart), dataStart };
}

// ---------------------------------------------------------------------------------------------
// reader

const READABLE: ReadonlySet<Dtype> = new Set(["F32", "F16", "BF16", "I64", "I32", "I8", "U8"]);

function viewAs(path: string, name: string, dtype: Dtype, bytes: Uint8Array): RawData {
  switch (dtype) {
    case "F32":
      return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    case "F16":
      return decodeF16(new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2));
    case "BF16":
      return decodeBF16(new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2));
    case "I64":
      return new BigInt64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 8);
    case "I32":
      return new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    case "I8":
      return new Int8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    case "U8":
      return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    default:
      throw new SafetensorsError(
        path,
        `reading dtype ${dtype} is not supported (supported: F32, F16, BF16, I64, I32, I8, U8)`,
        name,
      );
  }
}

/**
 * A safetensors file opened for random access. Opening reads only the header; each read fetches
 * one tensor's byte range. Concurrent reads on one reader are serialized.
 */
export class SafetensorsReader {
  /** The file path as given to `open`. */
  readonly path: string;
  /** The header's `__metadata__` (empty if absent). */
  readonly metadata: Record<string, string>;
  #file: Deno.FsFile | null;
  #entries: Map<string, Entry>;
  #dataStart: number;
  #tail: Promise<unknown> = Promise.resolve();

  private constructor(path: string, file: Deno.FsFile, header: ParsedHeader, dataStart: number) {
    this.path = path;
    this.#file = file;
    this.#entries = header.entries;
    this.metadata = header.metadata;
    this.#dataStart = dataStart;
  }

  /** Opens `path`, reading and validating only the header. Throws `SafetensorsError` if malformed. */
  static async open(path: string): Promise<SafetensorsReader> {
    const file = await Deno.open(path, { read: true }).catch((e) => {
      throw new SafetensorsError(path, `cannot open (${(e as Error).message})`);
    });
    try {
      const { header, dataStart } = await readHeader(path, file);
      return new SafetensorsReader(path, file, header, dataStart);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** Tensor names in header order (excluding `__metadata__`). */
  names(): string[] {
    return [...this.#entries.keys()];
  }

  /** Whether the file stores a tensor of that name. */
  has(name: string): boolean {
    return this.#entries.has(name);
  }

  /** Dtype, shape and byte length of a tensor; throws naming file and tensor if missing. */
  info(name: string): TensorInfo {
    const e = this.#entry(name);
    return { dtype: e.dtype, shape: [...e.shape], byteLength: e.end - e.begin };
  }

  /** Reads a floating tensor (F32, F16 or BF16) as exact float32 values. */
  async readF32(name: string): Promise<Tensor> {
    const e = this.#entry(name);
    if (e.dtype !== "F32" && e.dtype !== "F16" && e.dtype !== "BF16") {
      throw new SafetensorsError(
        this.path,
        `readF32 needs F32, F16 or BF16 data but the tensor is ${e.dtype} (use readRaw)`,
        name,
      );
    }
    const raw = await this.readRaw(name);
    return { data: raw.data as Float32Array, shape: raw.shape };
  }

  /**
   * Reads a tensor in its stored form: I64 → BigInt64Array, I32 → Int32Array, I8 → Int8Array,
   * U8 → Uint8Array;
   * F32/F16/BF16 → Float32Array. Other dtypes are an error.
   */
  async readRaw(name: string): Promise<RawTensor> {
    const e = this.#entry(name);
    requireLittleEndian(this.path);
    if (!READABLE.has(e.dtype)) viewAs(this.path, name, e.dtype, new Uint8Array(0)); // throws
    const bytes = await this.#serialized(() => this.#readRange(name, e));
    return { dtype: e.dtype, shape: [...e.shape], data: viewAs(this.path, name, e.dtype, bytes) };
  }

  /** Closes the file. Further reads fail. */
  close(): void {
    this.#file?.close();
    this.#file = null;
  }

  #entry(name: string): Entry {
    const e = this.#entries.get(name);
    if (e === undefined) throw new SafetensorsError(this.path, "no such tensor in file", name);
    return e;
  }

  #serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(fn, fn);
    // The chain keeps nothing of the result: holding the last tensor read kept a whole
    // embedding (1.5 GB at 128K × 2048 in bf16 and its float32) alive until the next read.
    this.#tail = run.then(() => undefined, () => undefined);
    return run;
  }

  async #readRange(name: string, e: Entry): Promise<Uint8Array> {
    const file = this.#file;
    if (file === null) throw new SafetensorsError(this.path, "reader is closed", name);
    const bytes = new Uint8Array(e.end - e.begin);
    await file.seek(this.#dataStart + e.begin, Deno.SeekMode.Start);
    await readFully(file, bytes, () => `${this.path}: tensor "${name}"`);
    return bytes;
  }
}

// ---------------------------------------------------------------------------------------------
// writer

const WRITABLE: Readonly<Record<WritableDtype, string>> = {
  F32: "Float32Array",
  F16: "Float32Array",
  BF16: "Float32Array",
  I64: "BigInt64Array",
  I32: "Int32Array",
  I8: "Int8Array",
  U8: "Uint8Array",
};

function arrayKind(data: unknown): string {
  if (data instanceof Float32Array) return "Float32Array";
  if (data instanceof BigInt64Array) return "BigInt64Array";
  if (data instanceof Int32Array) return "Int32Array";
  if (data instanceof Int8Array) return "Int8Array";
  if (data instanceof Uint8Array) return "Uint8Array";
  return (data as object)?.constructor?.name ?? typeof data;
}

function validateMetadata(path: string, metadata: Record<string, string>): void {
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== "string") {
      throw new SafetensorsError(path, `metadata value for "${k}" must be a string`);
    }
  }
}

function encodeTensor(
  path: string,
  name: string,
  dtype: WritableDtype,
  shape: readonly number[],
  data: RawData,
): Uint8Array {
  if (!Object.hasOwn(WRITABLE, dtype)) {
    throw new SafetensorsError(path, `cannot write dtype ${JSON.stringify(dtype)}`, name);
  }
  if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new SafetensorsError(
      path,
      `shape ${JSON.stringify(shape)} is not a list of non-negative integers`,
      name,
    );
  }
  const kind = arrayKind(data);
  if (kind !== WRITABLE[dtype]) {
    throw new SafetensorsError(
      path,
      `${dtype} data must be a ${WRITABLE[dtype]}, got ${kind}`,
      name,
    );
  }
  if (data.length !== product(shape)) {
    throw new SafetensorsError(
      path,
      `${data.length} values do not fill shape ${fmtShape(shape)} (${product(shape)} elements)`,
      name,
    );
  }
  if (dtype === "F16") return bytesOf(encodeF16(data as Float32Array));
  if (dtype === "BF16") return bytesOf(encodeBF16(data as Float32Array));
  return bytesOf(data);
}

/** The JSON header, space-padded so the data section starts at a multiple of 8 bytes. */
function encodeHeader(metadata: Record<string, string>, entries: Map<string, Entry>): Uint8Array {
  const obj: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) obj[METADATA_KEY] = metadata;
  for (const [name, e] of entries) {
    obj[name] = { dtype: e.dtype, shape: e.shape, data_offsets: [e.begin, e.end] };
  }
  const json = new TextEncoder().encode(JSON.stringify(obj));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20, 8 + json.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

async function copyFile(from: string, to: Deno.FsFile): Promise<void> {
  const src = await Deno.open(from, { read: true });
  try {
    const buf = new Uint8Array(COPY_CHUNK);
    for (;;) {
      const n = await src.read(buf);
      if (n === null) break;
      await writeFully(to, buf.subarray(0, n));
    }
  } finally {
    src.close();
  }
}

/** The state of an unfinished {@linkcode SafetensorsWriter}, from which a later process resumes it. */
export interface SafetensorsSnapshot {
  /** The final file path. */
  path: string;
  /** `__metadata__`. */
  metadata: Record<string, string>;
  /** The data file written so far. */
  dataPath: string;
  /** Tensors written: name, dtype, shape, begin, end (bytes in the data file). */
  entries: [string, Dtype, number[], number, number][];
  /** Bytes of data written. */
  size: number;
}

/**
 * Writes a safetensors file one tensor at a time, holding at most one tensor in memory.
 * Tensor bytes go to `<path>.data-<random>.tmp`; `finish()` writes `<path>.tmp-<random>` and
 * renames it to `path`. `abort()` (or a failing `finish()`) removes every temporary file.
 */
export class SafetensorsWriter {
  /** The final file path. */
  readonly path: string;
  #metadata: Record<string, string>;
  #dataPath: string;
  #data: Deno.FsFile | null;
  #entries = new Map<string, Entry>();
  #size = 0;
  #state: "open" | "finished" | "aborted" = "open";

  private constructor(
    path: string,
    metadata: Record<string, string>,
    dataPath: string,
    data: Deno.FsFile,
  ) {
    this.path = path;
    this.#metadata = metadata;
    this.#dataPath = dataPath;
    this.#data = data;
  }

  /** Starts a new file at `path` (nothing appears there until `finish()`). */
  static async create(
    path: string,
    metadata: Record<string, string> = {},
  ): Promise<SafetensorsWriter> {
    validateMetadata(path, metadata);
    const dataPath = `${path}.data-${randomSuffix()}.tmp`;
    const data = await Deno.open(dataPath, { write: true, createNew: true });
    return new SafetensorsWriter(path, { ...metadata }, dataPath, data);
  }

  /** Bytes of tensor data added so far. */
  get dataBytes(): number {
    return this.#size;
  }

  /** What {@linkcode resume} needs to continue this file in another process. */
  snapshot(): SafetensorsSnapshot {
    this.#open();
    return {
      path: this.path,
      metadata: { ...this.#metadata },
      dataPath: this.#dataPath,
      entries: [...this.#entries].map(([n, e]) => [n, e.dtype, [...e.shape], e.begin, e.end]),
      size: this.#size,
    };
  }

  /**
   * Continues a file from a {@linkcode snapshot}: its data file is cut back to what the snapshot
   * records (dropping anything written after it) and reopened for appending.
   */
  static async resume(s: SafetensorsSnapshot): Promise<SafetensorsWriter> {
    if (!(await pathExists(s.dataPath)) && await pathExists(s.path)) {
      await recoverData(s);
    }
    const data = await Deno.open(s.dataPath, { write: true }).catch((e) => {
      throw new SafetensorsError(s.path, `cannot resume: ${(e as Error).message}`);
    });
    try {
      const st = await data.stat();
      if (st.size < s.size) {
        throw new SafetensorsError(
          s.dataPath,
          `cannot resume: ${st.size} bytes, the checkpoint recorded ${s.size}`,
        );
      }
      await data.truncate(s.size);
      await data.seek(s.size, Deno.SeekMode.Start);
    } catch (e) {
      data.close();
      throw e;
    }
    const w = new SafetensorsWriter(s.path, { ...s.metadata }, s.dataPath, data);
    for (const [n, dtype, shape, begin, end] of s.entries) {
      w.#entries.set(n, { dtype, shape, begin, end });
    }
    w.#size = s.size;
    return w;
  }

  /** Number of tensors added so far. */
  get count(): number {
    return this.#entries.size;
  }

  /**
   * Appends one tensor. F16/BF16 take a Float32Array and round to nearest, ties to even;
   * I64/I32/I8/U8 take BigInt64Array/Int32Array/Int8Array/Uint8Array. Duplicate names and size
   * mismatches throw.
   */
  async add(
    name: string,
    dtype: WritableDtype,
    shape: readonly number[],
    data: RawData,
  ): Promise<void> {
    const file = this.#open();
    if (typeof name !== "string" || name === "" || name === METADATA_KEY) {
      throw new SafetensorsError(this.path, `invalid tensor name ${JSON.stringify(name)}`);
    }
    if (this.#entries.has(name)) {
      throw new SafetensorsError(this.path, "duplicate tensor name", name);
    }
    requireLittleEndian(this.path);
    const bytes = encodeTensor(this.path, name, dtype, shape, data);
    const begin = this.#size;
    try {
      await writeFully(file, bytes);
    } catch (e) {
      throw new SafetensorsError(this.#dataPath, `write failed: ${(e as Error).message}`, name);
    }
    this.#size += bytes.length;
    this.#entries.set(name, { dtype, shape: [...shape], begin, end: this.#size });
  }

  /** Writes header + data under a temporary name, renames it to `path`, removes temporaries. */
  async finish(): Promise<void> {
    this.#open();
    this.#state = "finished";
    const outPath = `${this.path}.tmp-${randomSuffix()}`;
    try {
      this.#closeData();
      const out = await Deno.open(outPath, { write: true, createNew: true });
      try {
        await writeFully(out, encodeHeader(this.#metadata, this.#entries));
        await copyFile(this.#dataPath, out);
        await out.syncData();
      } finally {
        out.close();
      }
      await Deno.rename(outPath, this.path);
    } catch (e) {
      await removeQuietly(outPath);
      if (e instanceof SafetensorsError) throw e;
      throw new SafetensorsError(outPath, `write failed: ${(e as Error).message}`);
    } finally {
      await removeQuietly(this.#dataPath);
    }
  }

  /** Discards everything written so far; removes all temporary files. Safe to call twice. */
  async abort(): Promise<void> {
    if (this.#state !== "open") return;
    this.#state = "aborted";
    this.#closeData();
    await removeQuietly(this.#dataPath);
  }

  #open(): Deno.FsFile {
    if (this.#state !== "open" || this.#data === null) {
      throw new SafetensorsError(this.path, `writer is already ${this.#state}`);
    }
    return this.#data;
  }

  #closeData(): void {
    this.#data?.close();
    this.#data = null;
  }
}

async function pathExists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * A writer that was finished after its snapshot (a process killed right after a shard filled):
 * its data file is gone but the finished file holds the same bytes after its header, so the
 * data file is rebuilt from it (the snapshot's part) and the finished file removed.
 */
async function recoverData(s: SafetensorsSnapshot): Promise<void> {
  const src = await Deno.open(s.path, { read: true });
  try {
    const len = new Uint8Array(8);
    await readFully(src, len, () => s.path);
    const start = 8 + Number(new DataView(len.buffer).getBigUint64(0, true));
    await src.seek(start, Deno.SeekMode.Start);
    const out = await Deno.open(s.dataPath, { write: true, createNew: true });
    try {
      const buf = new Uint8Array(COPY_CHUNK);
      for (let left = s.size; left > 0;) {
        const n = await src.read(buf.subarray(0, Math.min(buf.length, left)));
        if (n === null) throw new SafetensorsError(s.path, "shorter than the checkpoint recorded");
        await writeFully(out, buf.subarray(0, n));
        left -= n;
      }
    } finally {
      out.close();
    }
  } finally {
    src.close();
  }
  await Deno.remove(s.path);
}

/** Writes a whole safetensors file atomically (temporary name, then rename). */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorEntry[],
  metadata?: Record<string, string>,
): Promise<void> {
  const w = await SafetensorsWriter.create(path, metadata);
  try {
    for (const t of tensors) await w.add(t.name, t.dtype, t.shape, t.data);
  } catch (e) {
    await w.abort();
    throw e;
  }
  await w.finish();
}
