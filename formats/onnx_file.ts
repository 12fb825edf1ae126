/**
 * Writing an ONNX model file whose tensors stream to disk as they are made: each tensor's bytes
 * go to a data file at once (the graph only declares it, {@linkcode Graph.external}), so a
 * model's weights are never held in memory as one protobuf. At the end the model is assembled
 * with its tensors inline — the protobuf written field by field, each tensor copied from the
 * data file — or, when they pass `inlineLimit` (protobuf's 2 GB), with the data file beside it as
 * ONNX external data (`model.onnx_data`, the name transformers.js and ONNX Runtime look for).
 * @module
 */
import onnxProto from "onnx-proto";
import { DType, type DTypeCode, type Graph, type Value } from "../kernels/graph.ts";

// deno-lint-ignore no-explicit-any
const onnx: any = (onnxProto as any).onnx;

/** Where a tensor lies in the data file. */
interface Stored {
  name: string;
  shape: number[];
  dtype: DTypeCode;
  offset: number;
  length: number;
}

/** What {@linkcode OnnxFileWriter.finish} wrote. */
export interface OnnxFileResult {
  /** The model file. */
  path: string;
  /** Its size in bytes. */
  bytes: number;
  /** The external data file, when the tensors did not fit inline. */
  dataPath?: string;
  /** The external data file's size in bytes (0 when inline). */
  dataBytes: number;
}

/** Tensors start at multiples of this in the data file (the page size, for ORT's mmap). */
const ALIGN = 4096;

/** Protobuf's limit on one message, less room for the graph itself. */
export const INLINE_LIMIT = 2 ** 31 - 2 ** 24;

// Protobuf field tags (field number << 3 | wire type 2, length-delimited).
const MODEL_GRAPH = 0x3a; // ModelProto.graph = 7
const GRAPH_INITIALIZER = 0x2a; // GraphProto.initializer = 5
const TENSOR_RAW_DATA = 0x4a; // TensorProto.raw_data = 9

function varint(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
  return out;
}

function fieldHeader(tag: number, length: number): Uint8Array {
  return Uint8Array.from([tag, ...varint(length)]);
}

/** Streams one ONNX model file's tensors to disk, then assembles the file. */
export class OnnxFileWriter {
  /** The model file to write. */
  readonly path: string;
  #dataPath: string;
  #data: Deno.FsFile;
  #offset = 0;
  #stored: Stored[] = [];

  private constructor(path: string, dataPath: string, data: Deno.FsFile) {
    this.path = path;
    this.#dataPath = dataPath;
    this.#data = data;
  }

  /** Starts a model file at `path` (its tensors go to `path + ".tensors.tmp"` meanwhile). */
  static async create(path: string): Promise<OnnxFileWriter> {
    const dataPath = `${path}.tensors.tmp`;
    const data = await Deno.open(dataPath, { write: true, create: true, truncate: true });
    return new OnnxFileWriter(path, dataPath, data);
  }

  /** Bytes of tensor data written so far (alignment padding aside). */
  get tensorBytes(): number {
    return this.#stored.reduce((s, t) => s + t.length, 0);
  }

  /**
   * Writes a tensor (float32 or uint8 data; `bytes` for other element types) and declares it
   * in `g` as an external initializer named `name`.
   */
  async add(
    g: Graph,
    name: string,
    shape: number[],
    data: Float32Array | Uint8Array,
    dtype: DTypeCode = data instanceof Float32Array ? DType.float32 : DType.uint8,
  ): Promise<Value> {
    const v = g.external(name, shape, dtype);
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const offset = Math.ceil(this.#offset / ALIGN) * ALIGN;
    await this.#data.seek(offset, Deno.SeekMode.Start);
    await writeAll(this.#data, bytes);
    this.#offset = offset + bytes.length;
    this.#stored.push({ name, shape: [...shape], dtype, offset, length: bytes.length });
    return v;
  }

  /**
   * Writes the model file for graph `g` (whose external initializers must be exactly the
   * tensors added here): inline when the tensors take at most `inlineLimit` bytes, else with the
   * data file beside it as `<file>_data`.
   */
  async finish(g: Graph, o: { inlineLimit?: number } = {}): Promise<OnnxFileResult> {
    const declared = g.externals().map((e) => e.name).join("\n");
    if (declared !== this.#stored.map((t) => t.name).join("\n")) {
      throw new Error(`${this.path}: the graph's external tensors are not the ones written`);
    }
    const parts = g.encodeParts();
    const inline = this.tensorBytes <= (o.inlineLimit ?? INLINE_LIMIT);
    const dataName = `${this.path.replace(/^.*\//, "")}_data`;
    const fields = this.#stored.map((t) => {
      const proto = onnx.TensorProto.create({ name: t.name, dims: t.shape, dataType: t.dtype });
      if (!inline) {
        proto.dataLocation = 1; // EXTERNAL
        proto.externalData = [
          { key: "location", value: dataName },
          { key: "offset", value: String(t.offset) },
          { key: "length", value: String(t.length) },
        ];
      }
      const head = onnx.TensorProto.encode(proto).finish() as Uint8Array;
      const raw = inline ? fieldHeader(TENSOR_RAW_DATA, t.length) : new Uint8Array();
      const size = head.length + raw.length + (inline ? t.length : 0);
      return { t, prefix: concat([fieldHeader(GRAPH_INITIALIZER, size), head, raw]), size };
    });
    const graphLength = parts.graph.length +
      fields.reduce((s, f) => s + f.prefix.length + (inline ? f.t.length : 0), 0);
    const out = await Deno.open(this.path, { write: true, create: true, truncate: true });
    try {
      await writeAll(out, parts.model);
      await writeAll(out, fieldHeader(MODEL_GRAPH, graphLength));
      await writeAll(out, parts.graph);
      for (const f of fields) {
        await writeAll(out, f.prefix);
        if (inline) await this.#copy(out, f.t);
      }
    } finally {
      out.close();
    }
    this.#data.close();
    const bytes = (await Deno.stat(this.path)).size;
    if (inline) {
      await Deno.remove(this.#dataPath);
      return { path: this.path, bytes, dataBytes: 0 };
    }
    const dataPath = `${this.path}_data`;
    await Deno.rename(this.#dataPath, dataPath);
    return { path: this.path, bytes, dataPath, dataBytes: (await Deno.stat(dataPath)).size };
  }

  /** Removes what was written. */
  async abort(): Promise<void> {
    try {
      this.#data.close();
    } catch { /* already closed */ }
    await Deno.remove(this.#dataPath).catch(() => {});
    await Deno.remove(this.path).catch(() => {});
  }

  async #copy(out: Deno.FsFile, t: Stored): Promise<void> {
    const src = await Deno.open(this.#dataPath, { read: true });
    try {
      await src.seek(t.offset, Deno.SeekMode.Start);
      const buf = new Uint8Array(Math.min(t.length, 1 << 22));
      for (let left = t.length; left > 0;) {
        const want = Math.min(left, buf.length);
        let got = 0;
        while (got < want) {
          const n = await src.read(buf.subarray(got, want));
          if (n === null) throw new Error(`${this.#dataPath}: ends inside tensor "${t.name}"`);
          got += n;
        }
        await writeAll(out, buf.subarray(0, want));
        left -= want;
      }
    } finally {
      src.close();
    }
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

async function writeAll(f: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await f.write(bytes.subarray(at));
}
