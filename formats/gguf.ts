/**
 * The GGUF container (version 3, ggml's `docs/gguf.md`): a header, typed key/value metadata,
 * tensor infos (name, dimensions innermost first, ggml type, offset) and the aligned tensor
 * data. The reader parses the header and metadata once and reads one tensor's bytes at a time;
 * the writer takes every tensor's name, shape and type up front (so the offsets are known),
 * then streams the tensors in order into a temporary file renamed into place at the end.
 * What the tensors mean (llama.cpp's names, block layouts) lives in `gguf_llama.ts` and
 * `ggml_blocks.ts`.
 * @module
 */
import { readAt } from "./read_at.ts";

/** Metadata value types. */
export const GgufValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;

/** A metadata value type code. */
export type GgufValueTypeCode = (typeof GgufValueType)[keyof typeof GgufValueType];

/** A scalar metadata value (64-bit integers come back as numbers when safe, else bigints). */
export type GgufScalar = number | bigint | boolean | string;

/** One metadata entry: its type and value (arrays carry their element type). */
export type GgufEntry =
  | { type: Exclude<GgufValueTypeCode, 9>; value: GgufScalar }
  | { type: 9; elementType: GgufValueTypeCode; value: GgufScalar[] };

/** Metadata in file order. */
export type GgufMetadata = Map<string, GgufEntry>;

/** A ggml tensor type: its code, elements per block and bytes per block. */
export interface GgmlType {
  /** Name as ggml prints it (`Q4_0`). */
  name: string;
  /** `ggml_type` code. */
  code: number;
  /** Elements per block. */
  blockSize: number;
  /** Bytes per block. */
  typeSize: number;
}

const TYPES: GgmlType[] = [
  ["F32", 0, 1, 4],
  ["F16", 1, 1, 2],
  ["Q4_0", 2, 32, 18],
  ["Q4_1", 3, 32, 20],
  ["Q5_0", 6, 32, 22],
  ["Q5_1", 7, 32, 24],
  ["Q8_0", 8, 32, 34],
  ["Q8_1", 9, 32, 36],
  ["Q2_K", 10, 256, 84],
  ["Q3_K", 11, 256, 110],
  ["Q4_K", 12, 256, 144],
  ["Q5_K", 13, 256, 176],
  ["Q6_K", 14, 256, 210],
  ["Q8_K", 15, 256, 292],
  ["I8", 24, 1, 1],
  ["I16", 25, 1, 2],
  ["I32", 26, 1, 4],
  ["I64", 27, 1, 8],
  ["F64", 28, 1, 8],
  ["BF16", 30, 1, 2],
].map(([name, code, blockSize, typeSize]) => ({ name, code, blockSize, typeSize }) as GgmlType);

/** ggml types by name (`F32`, `Q4_0`, …): the ones whose block sizes this module knows. */
export const GGML_TYPES: Readonly<Record<string, GgmlType>> = Object.fromEntries(
  TYPES.map((t) => [t.name, t]),
);

const BY_CODE = new Map(TYPES.map((t) => [t.code, t]));

/** The ggml type of a code, or undefined when this module does not know its block layout. */
export function ggmlType(code: number): GgmlType | undefined {
  return BY_CODE.get(code);
}

/** Bytes of `n` elements of `type` (n a multiple of its block size). */
export function ggmlBytes(type: GgmlType, n: number): number {
  return (n / type.blockSize) * type.typeSize;
}

const MAGIC = 0x46554747; // "GGUF" read as a little-endian uint32
const DEFAULT_ALIGNMENT = 32;

/** One tensor of a GGUF file. */
export interface GgufTensorInfo {
  /** Tensor name. */
  name: string;
  /** Dimensions, innermost (contiguous) first, as GGUF stores them. */
  dims: number[];
  /** ggml type code. */
  typeCode: number;
  /** The type, when this module knows its block layout. */
  type?: GgmlType;
  /** Offset of the data from the start of the data section. */
  offset: number;
  /** Byte length (0 for unknown types). */
  bytes: number;
}

/** A GGUF file opened for reading: metadata and tensor infos parsed, data read on demand. */
export class GgufFile {
  /** The file path. */
  readonly path: string;
  /** Format version (2 or 3). */
  readonly version: number;
  /** Data alignment (`general.alignment`, default 32). */
  readonly alignment: number;
  /** Metadata entries in file order. */
  readonly metadata: GgufMetadata;
  /** Tensor infos in file order. */
  readonly tensors: Map<string, GgufTensorInfo>;
  #file: Deno.FsFile | null;
  #dataStart: number;

  private constructor(
    path: string,
    file: Deno.FsFile,
    h: { version: number; alignment: number; metadata: GgufMetadata; dataStart: number },
    tensors: Map<string, GgufTensorInfo>,
  ) {
    this.path = path;
    this.#file = file;
    this.version = h.version;
    this.alignment = h.alignment;
    this.metadata = h.metadata;
    this.#dataStart = h.dataStart;
    this.tensors = tensors;
  }

  /** Opens and validates a GGUF file (header, metadata, tensor infos against the file size). */
  static async open(path: string): Promise<GgufFile> {
    const file = await Deno.open(path, { read: true });
    try {
      const size = (await file.stat()).size;
      let chunk = Math.min(size, 1 << 20);
      for (;;) {
        const buf = await readAt(file, 0, chunk, path);
        try {
          const h = parseHeader(path, buf, size);
          return new GgufFile(path, file, h, h.tensors);
        } catch (e) {
          if (!(e instanceof NeedMore) || chunk >= size) {
            throw e instanceof NeedMore ? new Error(`${path}: truncated GGUF header`) : e;
          }
          chunk = Math.min(size, chunk * 4);
        }
      }
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** A metadata value, or undefined. */
  get(key: string): GgufScalar | GgufScalar[] | undefined {
    return this.metadata.get(key)?.value;
  }

  /** The stored bytes of a tensor. */
  async readBytes(name: string): Promise<Uint8Array> {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`${this.path}: no tensor "${name}"`);
    if (!t.type) {
      throw new Error(`${this.path}: tensor "${name}": ggml type ${t.typeCode} is not supported`);
    }
    if (!this.#file) throw new Error(`${this.path}: file is closed`);
    return await readAt(this.#file, this.#dataStart + t.offset, t.bytes, this.path);
  }

  /** Closes the file. */
  close(): void {
    this.#file?.close();
    this.#file = null;
  }
}

class NeedMore extends Error {}

/** Sequential little-endian reads over a buffer; running off its end throws NeedMore. */
class Cursor {
  pos = 0;
  readonly view: DataView;
  constructor(readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  need(n: number): number {
    const p = this.pos;
    if (p + n > this.buf.length) throw new NeedMore();
    this.pos += n;
    return p;
  }
  u32 = () => this.view.getUint32(this.need(4), true);
  u64(): number | bigint {
    const v = this.view.getBigUint64(this.need(8), true);
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }
  string(): string {
    const n = Number(this.u64());
    const p = this.need(n);
    return new TextDecoder().decode(this.buf.subarray(p, p + n));
  }
}

function readScalar(c: Cursor, type: number, path: string, key: string): GgufScalar {
  const v = c.view;
  switch (type) {
    case GgufValueType.UINT8:
      return v.getUint8(c.need(1));
    case GgufValueType.INT8:
      return v.getInt8(c.need(1));
    case GgufValueType.UINT16:
      return v.getUint16(c.need(2), true);
    case GgufValueType.INT16:
      return v.getInt16(c.need(2), true);
    case GgufValueType.UINT32:
      return v.getUint32(c.need(4), true);
    case GgufValueType.INT32:
      return v.getInt32(c.need(4), true);
    case GgufValueType.FLOAT32:
      return v.getFloat32(c.need(4), true);
    case GgufValueType.BOOL:
      return v.getUint8(c.need(1)) !== 0;
    case GgufValueType.STRING:
      return c.string();
    case GgufValueType.UINT64:
      return c.u64();
    case GgufValueType.INT64: {
      const x = v.getBigInt64(c.need(8), true);
      return x >= BigInt(Number.MIN_SAFE_INTEGER) && x <= BigInt(Number.MAX_SAFE_INTEGER)
        ? Number(x)
        : x;
    }
    case GgufValueType.FLOAT64:
      return v.getFloat64(c.need(8), true);
    default:
      throw new Error(`${path}: metadata "${key}": unknown value type ${type}`);
  }
}

function parseHeader(path: string, buf: Uint8Array, size: number) {
  const c = new Cursor(buf);
  if (buf.length < 4 || c.u32() !== MAGIC) throw new Error(`${path}: not a GGUF file (magic)`);
  const version = c.u32();
  if (version !== 2 && version !== 3) {
    throw new Error(`${path}: GGUF version ${version} is not supported (2 or 3)`);
  }
  const nTensors = Number(c.u64()), nKv = Number(c.u64());
  const metadata: GgufMetadata = new Map();
  for (let i = 0; i < nKv; i++) {
    const key = c.string();
    const type = c.u32();
    if (type === GgufValueType.ARRAY) {
      const elementType = c.u32() as GgufValueTypeCode;
      const n = Number(c.u64());
      const value: GgufScalar[] = new Array(n);
      for (let j = 0; j < n; j++) value[j] = readScalar(c, elementType, path, key);
      metadata.set(key, { type, elementType, value });
    } else {
      metadata.set(key, {
        type: type as Exclude<GgufValueTypeCode, 9>,
        value: readScalar(c, type, path, key),
      });
    }
  }
  const alignment = Number(metadata.get("general.alignment")?.value ?? DEFAULT_ALIGNMENT);
  if (!(Number.isInteger(alignment) && alignment > 0 && alignment % 8 === 0)) {
    throw new Error(`${path}: general.alignment ${alignment} is not a positive multiple of 8`);
  }
  const tensors = new Map<string, GgufTensorInfo>();
  for (let i = 0; i < nTensors; i++) {
    const name = c.string();
    const nd = c.u32();
    if (nd < 1 || nd > 4) throw new Error(`${path}: tensor "${name}" has ${nd} dimensions`);
    const dims: number[] = [];
    for (let d = 0; d < nd; d++) dims.push(Number(c.u64()));
    const typeCode = c.u32();
    const offset = Number(c.u64());
    const type = ggmlType(typeCode);
    const n = dims.reduce((a, b) => a * b, 1);
    if (type && dims[0] % type.blockSize !== 0) {
      throw new Error(
        `${path}: tensor "${name}": ${dims[0]} columns are not a multiple of ${type.name}'s ` +
          `block of ${type.blockSize}`,
      );
    }
    if (tensors.has(name)) throw new Error(`${path}: duplicate tensor "${name}"`);
    if (offset % alignment !== 0) {
      throw new Error(`${path}: tensor "${name}": offset ${offset} is not aligned`);
    }
    tensors.set(name, {
      name,
      dims,
      typeCode,
      type,
      offset,
      bytes: type ? ggmlBytes(type, n) : 0,
    });
  }
  const dataStart = alignUp(c.pos, alignment);
  for (const t of tensors.values()) {
    if (dataStart + t.offset + t.bytes > size) {
      throw new Error(
        `${path}: tensor "${t.name}" runs past the end of the file (truncated?)`,
      );
    }
  }
  return { version, alignment, metadata, dataStart, tensors };
}

function alignUp(x: number, a: number): number {
  return Math.ceil(x / a) * a;
}

// ---------------------------------------------------------------------------------------------
// writing

/** Growable little-endian byte buffer for the header. */
class Out {
  buf = new Uint8Array(1 << 16);
  n = 0;
  #view = new DataView(this.buf.buffer);
  room(k: number): DataView {
    if (this.n + k > this.buf.length) {
      const b = new Uint8Array(Math.max(this.buf.length * 2, this.n + k));
      b.set(this.buf.subarray(0, this.n));
      this.buf = b;
      this.#view = new DataView(b.buffer);
    }
    return this.#view;
  }
  u8(x: number) {
    this.room(1).setUint8(this.n, x);
    this.n += 1;
  }
  u32(x: number) {
    this.room(4).setUint32(this.n, x, true);
    this.n += 4;
  }
  u64(x: number | bigint) {
    this.room(8).setBigUint64(this.n, BigInt(x), true);
    this.n += 8;
  }
  bytes(b: Uint8Array) {
    this.room(b.length);
    this.buf.set(b, this.n);
    this.n += b.length;
  }
  string(s: string) {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
}

function writeScalar(o: Out, type: GgufValueTypeCode, v: GgufScalar, key: string): void {
  const num = () => {
    if (typeof v !== "number" && typeof v !== "bigint") {
      throw new Error(`GGUF metadata "${key}": ${JSON.stringify(v)} is not a number`);
    }
    return Number(v);
  };
  switch (type) {
    case GgufValueType.UINT8:
      return o.u8(num());
    case GgufValueType.INT8:
      o.room(1).setInt8(o.n, num());
      o.n += 1;
      return;
    case GgufValueType.UINT16:
    case GgufValueType.INT16:
      o.room(2).setUint16(o.n, num() & 0xffff, true);
      o.n += 2;
      return;
    case GgufValueType.UINT32:
      return o.u32(num());
    case GgufValueType.INT32:
      o.room(4).setInt32(o.n, num(), true);
      o.n += 4;
      return;
    case GgufValueType.FLOAT32:
      o.room(4).setFloat32(o.n, num(), true);
      o.n += 4;
      return;
    case GgufValueType.BOOL:
      return o.u8(v ? 1 : 0);
    case GgufValueType.STRING:
      if (typeof v !== "string") throw new Error(`GGUF metadata "${key}": not a string`);
      return o.string(v);
    case GgufValueType.UINT64:
      return o.u64(BigInt(v as number | bigint));
    case GgufValueType.INT64:
      o.room(8).setBigInt64(o.n, BigInt(v as number | bigint), true);
      o.n += 8;
      return;
    case GgufValueType.FLOAT64:
      o.room(8).setFloat64(o.n, num(), true);
      o.n += 8;
      return;
    default:
      throw new Error(`GGUF metadata "${key}": cannot write value type ${type}`);
  }
}

/** A tensor the writer will receive: name, PyTorch-order shape (outermost first), ggml type. */
export interface GgufTensorPlan {
  /** Tensor name. */
  name: string;
  /** Outermost first ([rows, cols] for a matrix); stored reversed, as GGUF wants. */
  shape: number[];
  /** Stored type. */
  type: GgmlType;
}

/**
 * Writes a GGUF v3 file. The tensors are declared up front; `add` must then be called for each
 * of them in order with exactly its bytes. Nothing appears at `path` until `finish`.
 */
export class GgufWriter {
  /** Final path. */
  readonly path: string;
  #tmp: string;
  #file: Deno.FsFile | null;
  #plans: GgufTensorPlan[];
  #next = 0;
  #alignment: number;
  #written = 0;

  private constructor(
    path: string,
    tmp: string,
    file: Deno.FsFile,
    plans: GgufTensorPlan[],
    alignment: number,
  ) {
    this.path = path;
    this.#tmp = tmp;
    this.#file = file;
    this.#plans = plans;
    this.#alignment = alignment;
  }

  /** Writes the header, metadata and tensor infos to a temporary file beside `path`. */
  static async create(
    path: string,
    metadata: GgufMetadata,
    plans: GgufTensorPlan[],
  ): Promise<GgufWriter> {
    const alignment = Number(metadata.get("general.alignment")?.value ?? DEFAULT_ALIGNMENT);
    const o = new Out();
    o.u32(MAGIC);
    o.u32(3);
    o.u64(plans.length);
    o.u64(metadata.size);
    for (const [key, e] of metadata) {
      o.string(key);
      o.u32(e.type);
      if (e.type === GgufValueType.ARRAY) {
        o.u32(e.elementType);
        o.u64(e.value.length);
        for (const v of e.value) writeScalar(o, e.elementType, v, key);
      } else {
        writeScalar(o, e.type, e.value, key);
      }
    }
    let offset = 0;
    const names = new Set<string>();
    for (const p of plans) {
      if (names.has(p.name)) throw new Error(`${path}: duplicate tensor "${p.name}"`);
      names.add(p.name);
      const dims = [...p.shape].reverse();
      if (dims[0] % p.type.blockSize !== 0) {
        throw new Error(
          `${path}: tensor "${p.name}": ${dims[0]} columns are not a multiple of ` +
            `${p.type.name}'s block of ${p.type.blockSize}`,
        );
      }
      o.string(p.name);
      o.u32(dims.length);
      for (const d of dims) o.u64(d);
      o.u32(p.type.code);
      o.u64(offset);
      offset = alignUp(offset + planBytes(p), alignment);
    }
    o.room(alignUp(o.n, alignment) - o.n);
    o.n = alignUp(o.n, alignment);
    const tmp = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
    const file = await Deno.open(tmp, { write: true, createNew: true });
    try {
      await writeAll(file, o.buf.subarray(0, o.n));
    } catch (e) {
      file.close();
      await Deno.remove(tmp).catch(() => {});
      throw e;
    }
    return new GgufWriter(path, tmp, file, plans, alignment);
  }

  /** Appends the next declared tensor's bytes. */
  async add(name: string, bytes: Uint8Array): Promise<void> {
    const p = this.#plans[this.#next];
    if (!this.#file) throw new Error(`${this.path}: writer is closed`);
    if (!p || p.name !== name) {
      throw new Error(`${this.path}: tensor "${name}" out of order (expected "${p?.name}")`);
    }
    if (bytes.length !== planBytes(p)) {
      throw new Error(
        `${this.path}: tensor "${name}": ${bytes.length} bytes, ${p.type.name} ` +
          `[${p.shape}] needs ${planBytes(p)}`,
      );
    }
    await writeAll(this.#file, bytes);
    const pad = alignUp(bytes.length, this.#alignment) - bytes.length;
    if (pad && this.#next < this.#plans.length - 1) await writeAll(this.#file, new Uint8Array(pad));
    this.#written += bytes.length + pad;
    this.#next++;
  }

  /** Checks every tensor was written and renames the file into place. */
  async finish(): Promise<void> {
    if (this.#next !== this.#plans.length) {
      await this.abort();
      throw new Error(
        `${this.path}: ${this.#plans.length - this.#next} declared tensors were not written`,
      );
    }
    this.#file?.close();
    this.#file = null;
    await Deno.rename(this.#tmp, this.path);
  }

  /** Removes the temporary file. */
  async abort(): Promise<void> {
    this.#file?.close();
    this.#file = null;
    await Deno.remove(this.#tmp).catch(() => {});
  }
}

function planBytes(p: GgufTensorPlan): number {
  return ggmlBytes(p.type, p.shape.reduce((a, b) => a * b, 1));
}

async function writeAll(file: Deno.FsFile, b: Uint8Array): Promise<void> {
  let off = 0;
  while (off < b.length) off += await file.write(b.subarray(off));
}

/** Helpers that build metadata entries with the value types llama.cpp expects. */
export const gguf = {
  u32: (value: number): GgufEntry => ({ type: GgufValueType.UINT32, value }),
  i32: (value: number): GgufEntry => ({ type: GgufValueType.INT32, value }),
  f32: (value: number): GgufEntry => ({ type: GgufValueType.FLOAT32, value }),
  bool: (value: boolean): GgufEntry => ({ type: GgufValueType.BOOL, value }),
  str: (value: string): GgufEntry => ({ type: GgufValueType.STRING, value }),
  strings: (value: string[]): GgufEntry => ({
    type: GgufValueType.ARRAY,
    elementType: GgufValueType.STRING,
    value,
  }),
  f32s: (value: ArrayLike<number>): GgufEntry => ({
    type: GgufValueType.ARRAY,
    elementType: GgufValueType.FLOAT32,
    value: Array.from(value),
  }),
  i32s: (value: ArrayLike<number>): GgufEntry => ({
    type: GgufValueType.ARRAY,
    elementType: GgufValueType.INT32,
    value: Array.from(value),
  }),
};
