/**
 * The deployable ONNX decoder: a whole model (ours or any checkpoint we read) as one graph with
 * dynamic batch and sequence sizes and a KV cache, named as Optimum and transformers.js name
 * decoder-with-past models — inputs `input_ids`, `attention_mask`, `position_ids`,
 * `past_key_values.{i}.key|value` [batch, kv_heads, past, head_dim]; outputs `logits`,
 * `present.{i}.key|value` — in the directory layout of the Hugging Face ONNX ecosystem.
 *
 * Every block is built by the block graph's own `addBlock` (RoPE from `position_ids`, the cache
 * concatenated in front, the mask from `attention_mask`), so the activation quantizers and
 * QLLM's reassembly gathers run exactly as in our evaluation, and each linear layer with an
 * exact integer grid ({@linkcode openQuantized}) is a `MatMulNBits` node (`matmul_nbits.ts`);
 * the layers that cannot map stay float `Gemm`s, each named with its reason in the report.
 * Tensors stream to disk block by block (`onnx_file.ts`).
 * @module
 */
import { DType, Graph, type Value } from "../kernels/graph.ts";
import type { Tensor } from "../kernels/tensor.ts";
import {
  addBlock,
  decoderMask,
  gemmLinear,
  type KvPair,
  type LinearOp,
  rmsNorm,
} from "../models/block_graph.ts";
import { LINEAR_NAMES, type LinearName, type ModelConfig, toHfConfig } from "../models/config.ts";
import { ropeAt } from "../models/rope.ts";
import type { ModelSource } from "../models/source.ts";
import { type PackedLinear, packGrid } from "./matmul_nbits.ts";
import { OnnxFileWriter } from "./onnx_file.ts";
import { openModel } from "./open.ts";
import { type GridWeight, openQuantized, type QuantizedModel } from "./quantized.ts";
import { copyTokenizerFiles } from "./writer.ts";

/** The transformers.js `dtype` of an export, by container bits of its linear layers. */
export const DTYPE_OF_BITS: Record<number, string> = { 32: "fp32", 8: "q8", 4: "q4", 2: "q2" };

/** The file name transformers.js loads for each `dtype` (its `DEFAULT_DTYPE_SUFFIX_MAPPING`). */
export const ONNX_FILE_OF_DTYPE: Record<string, string> = {
  fp32: "model.onnx",
  q8: "model_quantized.onnx",
  q4: "model_q4.onnx",
  q2: "model_q2.onnx",
};

/** How a model is exported. */
export interface OnnxExportOptions {
  /**
   * The 8-bit grid (blocks of 32 columns) of an embedding or head table, when they are to be
   * stored in 8 bits; absent: float. The caller's quantizer (`run/export.ts`).
   */
  quantizeTable?: (table: Tensor, name: string) => GridWeight;
  /** Tensor bytes above which the weights go to an external data file (protobuf's 2 GB). */
  inlineLimit?: number;
  /** Progress lines. */
  log?: (msg: string) => void;
  /**
   * `MatMulNBits`' `accuracy_level`: 1 (default) computes with float activations, exactly the
   * weights we evaluated; 4 lets ORT quantize each block of activations to int8 and use its
   * integer kernels (faster at decode on the CPU; the results move, and the report's perplexity
   * says by how much).
   */
  accuracyLevel?: 1 | 4;
}

/** The `accuracy_level` values an export takes. */
export const ACCURACY_LEVELS = [1, 4] as const;

/** Bytes of the exported file by part. */
export interface ExportParts {
  /** Packed codes of the MatMulNBits layers. */
  linear_weights: number;
  /** Their scales. */
  scales: number;
  /** Their zero points. */
  zero_points: number;
  /** Act-order input orders (int64). */
  indices: number;
  /** Linear layers kept in float. */
  float_linear_weights: number;
  /** The token embedding (codes, scales and zero points when 8-bit). */
  embeddings: number;
  /** The output head when it is not the embedding. */
  head: number;
  /** Norm weights, biases, reassembly maps, static activation scales. */
  other_tensors: number;
  /** The graph itself and the protobuf framing. */
  graph: number;
}

/** The export report: one per ONNX file. */
export interface ExportReport {
  /** The model file, relative to the export directory. */
  file: string;
  /** The transformers.js `dtype` that picks this file. */
  dtype: string;
  /** The source model. */
  source: string;
  /** The source's `quantization_config` (empty when not quantized). */
  quantization: Record<string, unknown>;
  /** Bytes of the model file and its external data. */
  bytes: number;
  /** Whether the tensors are in `<file>_data`. */
  external_data: boolean;
  /** Bytes by part. */
  parts: ExportParts;
  /** Weights of the linear layers. */
  linear_params: number;
  /** Bits per linear weight, counting codes, scales, zero points, orders and float layers. */
  bits_per_weight: number;
  /** MatMulNBits layers by container bits, and float layers. */
  layers: Record<string, number>;
  /** Layers kept in float, and why. */
  fallbacks: { layer: string; reason: string }[];
  /** What was done to map a layer exactly (containers, shifted codes, float zero points). */
  notes: { layer: string; note: string }[];
  /** Bits of the embedding and head tables (32: float). */
  embeddings_bits: 8 | 32;
  /** `MatMulNBits`' `accuracy_level` (1: float activations; 4: int8 activations in ORT). */
  accuracy_level: 1 | 4;
  /** Run-time activation quantization in the graph. */
  activation_bits: number | null;
  /** Run-time q/k/v quantization in the graph. */
  kv_bits: number | null;
  /** Perplexity of the exported model, when the export evaluated it. */
  perplexity?: Record<string, number>;
}

/** Container bits a quantized model's layers get (3-bit codes: the 4-bit container). */
function containerOf(bits: number): number {
  return bits >= 16 ? 32 : bits <= 2 ? 2 : bits <= 4 ? 4 : 8;
}

/**
 * Writes the export of `modelPath` into the directory `dir` (which must exist): `config.json`,
 * `generation_config.json`, the tokenizer files, `onnx/<file>.onnx` and returns its report
 * (which the caller completes and writes).
 */
export async function writeOnnxExport(
  modelPath: string,
  dir: string,
  o: OnnxExportOptions = {},
): Promise<ExportReport> {
  const model = await openModel(modelPath);
  const quant = await openQuantized(modelPath);
  try {
    const c = model.config;
    const qbits = typeof quant.quant.bits === "number" ? quant.quant.bits : 16;
    const dtype = DTYPE_OF_BITS[containerOf(qbits)];
    const file = ONNX_FILE_OF_DTYPE[dtype];
    await Deno.mkdir(`${dir}/onnx`, { recursive: true });
    const writer = await OnnxFileWriter.create(`${dir}/onnx/${file}`);
    let r: ExportReport;
    try {
      const built = await buildDecoder(model, qbits < 16 ? quant : null, writer, o);
      const written = await writer.finish(built.graph, { inlineLimit: o.inlineLimit });
      r = built.report;
      const tensors = Object.values(r.parts).reduce((s, v) => s + v, 0);
      r.parts.graph = written.bytes + written.dataBytes - tensors;
      r.bytes = written.bytes + written.dataBytes;
      r.external_data = written.dataPath !== undefined;
      r.file = `onnx/${file}`;
      r.dtype = dtype;
      r.source = modelPath;
      r.quantization = quant.quant;
    } catch (e) {
      await writer.abort();
      throw e;
    }
    await copyTokenizerFiles(modelPath, dir);
    if (!await Deno.stat(`${dir}/generation_config.json`).then(() => true, () => false)) {
      await writeJson(`${dir}/generation_config.json`, {
        bos_token_id: c.bos,
        eos_token_id: c.eos,
      });
    }
    await writeJson(`${dir}/config.json`, exportConfig(c, r));
    return r;
  } finally {
    quant.close();
    model.close();
  }
}

/** `config.json` of an export: the model's, with transformers.js's pointers to the file. */
function exportConfig(c: ModelConfig, r: ExportReport): Record<string, unknown> {
  const base = r.file.replace(/^onnx\//, "");
  return {
    ...toHfConfig(c),
    use_cache: true,
    "transformers.js_config": {
      dtype: r.dtype,
      ...(r.external_data ? { use_external_data_format: { [base]: 1 } } : {}),
    },
    qllm_deno_export: {
      file: r.file,
      quantization: r.quantization,
      activation_bits: r.activation_bits,
      kv_bits: r.kv_bits,
      accuracy_level: r.accuracy_level,
    },
  };
}

interface Built {
  graph: Graph;
  report: ExportReport;
}

/** Builds the decoder graph, streaming its tensors to `w`. */
async function buildDecoder(
  model: ModelSource,
  quant: QuantizedModel | null,
  w: OnnxFileWriter,
  o: OnnxExportOptions,
): Promise<Built> {
  const c = model.config;
  const g = new Graph();
  const parts = emptyParts();
  const report: ExportReport = {
    file: "",
    dtype: "",
    source: model.path,
    quantization: {},
    bytes: 0,
    external_data: false,
    parts,
    linear_params: 0,
    bits_per_weight: 0,
    layers: {},
    fallbacks: [],
    notes: [],
    embeddings_bits: o.quantizeTable ? 8 : 32,
    accuracy_level: o.accuracyLevel ?? 1,
    activation_bits: c.activationBits ?? null,
    kv_bits: c.kvBits ?? null,
  };
  const add: Adder = async (name, data, shape) => ({
    v: await w.add(g, name, shape, data),
    bytes: data.byteLength,
  });
  const addTensor = (name: string, t: Tensor) => add(name, ...dataOf(t));

  const ids = g.input("input_ids", ["batch_size", "sequence_length"], DType.int64);
  const attentionMask = g.input(
    "attention_mask",
    ["batch_size", "total_sequence_length"],
    DType.int64,
  );
  const positions = g.input("position_ids", ["batch_size", "sequence_length"], DType.int64);
  const past: KvPair[] = [];
  for (let i = 0; i < c.layers; i++) {
    const shape = ["batch_size", c.kvHeads, "past_sequence_length", c.headDim];
    past.push({
      key: g.input(`past_key_values.${i}.key`, shape),
      value: g.input(`past_key_values.${i}.value`, shape),
    });
  }
  const bt = g.op("Shape", [ids]);
  const { cos, sin } = ropeAt(g, c, positions);
  const mask = decoderMask(g, attentionMask, bt, c.slidingWindow);

  const { x: embedded, head: headOp } = await tables(g, model, add, ids, bt, parts, o);
  let x = embedded;

  const presents: KvPair[] = [];
  const containers: Record<string, number> = {};
  for (let i = 0; i < c.layers; i++) {
    o.log?.(`export: block ${i + 1}/${c.layers}`);
    const prefix = `model.layers.${i}`;
    const weights = await model.block(i);
    let grids: Record<LinearName, GridWeight> | null = null;
    let whyFloat = quant?.notUniform ?? "";
    if (quant && !quant.notUniform) {
      try {
        grids = await quant.grids(i, weights);
      } catch (e) {
        whyFloat = (e as Error).message;
      }
    }
    const vals: Record<string, Value> = {};
    const ops = new Map<LinearName, LinearOp>();
    for (const [name, t] of Object.entries(weights)) {
      const l = LINEAR_NAMES.find((n) => name === `${n}.weight`);
      if (!l) {
        const r = await addTensor(`${prefix}.${name}`, t);
        parts.other_tensors += r.bytes;
        vals[name] = r.v;
        continue;
      }
      report.linear_params += t.data.length;
      const packed = grids ? packGrid(grids[l]) : { reason: whyFloat };
      if ("packed" in packed) {
        const p = packed.packed;
        const op = await packedLinearOp(g, w, p, `${prefix}.${l}`, parts, o.accuracyLevel);
        ops.set(l, (_g, v) => op(v));
        containers[`${p.bits}-bit`] = (containers[`${p.bits}-bit`] ?? 0) + 1;
        for (const note of p.notes) report.notes.push({ layer: `${prefix}.${l}`, note });
      } else {
        const r = await addTensor(`${prefix}.${name}`, t);
        parts.float_linear_weights += r.bytes;
        vals[name] = r.v;
        containers.float = (containers.float ?? 0) + 1;
        if (quant) report.fallbacks.push({ layer: `${prefix}.${l}`, reason: packed.reason });
      }
    }
    const linear: LinearOp = (g, v, name, w) => {
      const op = ops.get(name);
      if (!op) return gemmLinear(g, v, name, w);
      const bias = w[`${name}.bias`];
      return bias ? g.add(op(g, v, name, w), bias) : op(g, v, name, w);
    };
    const out = addBlock(
      g,
      c,
      { bt, abits: c.activationBits, kvBits: c.kvBits },
      { x, cos, sin, mask, w: vals, past: past[i], linear },
    );
    x = out.y;
    presents.push(out.present!);
  }
  report.layers = containers;

  const norm = await addTensor("model.norm.weight", await model.finalNorm());
  parts.other_tensors += norm.bytes;
  const h = rmsNorm(g, g.reshape(x, [-1, c.hidden]), norm.v, c.rmsEps);
  const logits = g.op("Reshape", [headOp(h), g.concat([bt, g.int64([c.vocab])], 0)]);
  g.output(logits, "logits");
  presents.forEach((p, i) => {
    g.output(p.key, `present.${i}.key`);
    g.output(p.value, `present.${i}.value`);
  });
  const linearBytes = parts.linear_weights + parts.scales + parts.zero_points + parts.indices +
    parts.float_linear_weights;
  report.bits_per_weight = report.linear_params ? (8 * linearBytes) / report.linear_params : 0;
  return { graph: g, report };
}

/**
 * The embedding lookup of `ids` and the head op: float tables, or 8-bit MatMulNBits tensors
 * (one table when tied). Each table is written and dropped before the blocks are read.
 */
async function tables(
  g: Graph,
  model: ModelSource,
  add: Adder,
  ids: Value,
  bt: Value,
  parts: ExportParts,
  o: OnnxExportOptions,
): Promise<{ x: Value; head: (h: Value) => Value }> {
  const c = model.config;
  if (o.quantizeTable) {
    const grid = o.quantizeTable(await model.embedding(), "model.embed_tokens.weight");
    const emb = await packedTable(g, add, grid, "model.embed_tokens");
    parts.embeddings += emb.bytes;
    let head = emb;
    if (!c.tiedEmbeddings) {
      head = await packedTable(
        g,
        add,
        o.quantizeTable(await model.head(), "lm_head.weight"),
        "lm_head",
      );
      parts.head += head.bytes;
    }
    return {
      x: gatherPacked(g, emb, ids, bt, c.hidden),
      head: (h) => matMulNBits(g, h, head.p, head.vals, o.accuracyLevel),
    };
  }
  const e = await add("model.embed_tokens.weight", ...dataOf(await model.embedding()));
  parts.embeddings += e.bytes;
  let headW = e.v;
  if (!c.tiedEmbeddings) {
    const h = await add("lm_head.weight", ...dataOf(await model.head()));
    parts.head += h.bytes;
    headW = h.v;
  }
  return {
    x: g.op("Gather", [e.v, ids], { axis: 0 }),
    head: (h) => g.op("Gemm", [h, headW], { transB: 1 }),
  };
}

function dataOf(t: Tensor): [Float32Array, number[]] {
  return [t.data, t.shape];
}

type Adder = (
  name: string,
  data: Float32Array | Uint8Array,
  shape: number[],
) => Promise<{ v: Value; bytes: number }>;

interface PackedValues {
  B: Value;
  scales: Value;
  zeros: Value;
  perm: Value | null;
}

/** Writes a packed layer's tensors; counts their bytes into `parts`. */
async function packedValues(
  g: Graph,
  add: Adder,
  p: PackedLinear,
  name: string,
  parts: ExportParts,
): Promise<PackedValues> {
  const kb = Math.ceil(p.K / p.blockSize), blob = (p.blockSize * p.bits) / 8;
  const B = await add(`${name}.qweight`, p.B, [p.N, kb, blob]);
  const scales = await add(`${name}.scales`, p.scales, [p.N, kb]);
  const zeros = await add(
    `${name}.qzeros`,
    p.zeros,
    p.zeros instanceof Float32Array ? [p.N, kb] : [p.zeros.length],
  );
  parts.linear_weights += B.bytes;
  parts.scales += scales.bytes;
  parts.zero_points += zeros.bytes;
  let perm: Value | null = null;
  if (p.perm) {
    perm = g.int64(p.perm);
    parts.indices += 8 * p.perm.length;
  }
  return { B: B.v, scales: scales.v, zeros: zeros.v, perm };
}

/** x [N, K] → [N, N_out] through `MatMulNBits` (after gathering act-order columns). */
function matMulNBits(
  g: Graph,
  x: Value,
  p: PackedLinear,
  v: PackedValues,
  accuracyLevel: 1 | 4 = 1,
): Value {
  const a = v.perm ? g.op("Gather", [x, v.perm], { axis: 1 }) : x;
  return g.op("MatMulNBits", [a, v.B, v.scales, v.zeros], {
    K: p.K,
    N: p.N,
    bits: p.bits,
    block_size: p.blockSize,
    // 1: float activations and accumulation; 4: activations quantized to int8 per block.
    accuracy_level: accuracyLevel,
  }, "com.microsoft");
}

/**
 * Writes a packed layer's tensors (`name.qweight|scales|qzeros`) to `w` and returns the ops
 * that compute it in `g`: x [N, K] → [N, N_out], the act-order gather in front when it has one.
 */
export async function packedLinearOp(
  g: Graph,
  w: OnnxFileWriter,
  p: PackedLinear,
  name: string,
  parts: ExportParts = emptyParts(),
  accuracyLevel: 1 | 4 = 1,
): Promise<(x: Value) => Value> {
  const add: Adder = async (n, data, shape) => ({
    v: await w.add(g, n, shape, data),
    bytes: data.byteLength,
  });
  const v = await packedValues(g, add, p, name, parts);
  return (x) => matMulNBits(g, x, p, v, accuracyLevel);
}

function emptyParts(): ExportParts {
  return {
    linear_weights: 0,
    scales: 0,
    zero_points: 0,
    indices: 0,
    float_linear_weights: 0,
    embeddings: 0,
    head: 0,
    other_tensors: 0,
    graph: 0,
  };
}

interface PackedTable {
  p: PackedLinear;
  vals: PackedValues;
  bytes: number;
}

/** An 8-bit table ([rows, cols]) as MatMulNBits tensors. */
async function packedTable(
  g: Graph,
  add: Adder,
  grid: GridWeight,
  name: string,
): Promise<PackedTable> {
  const r = packGrid(grid);
  if (!("packed" in r) || r.packed.bits !== 8 || r.packed.perm || r.packed.notes.length) {
    throw new Error(`${name}: its 8-bit grid does not pack as plain MatMulNBits blocks`);
  }
  const parts = emptyParts();
  const vals = await packedValues(g, add, r.packed, name, parts);
  return { p: r.packed, vals, bytes: parts.scales + parts.zero_points + parts.linear_weights };
}

/** The rows of an 8-bit table for token ids [B, T]: (code − zero) · scale → [B, T, cols]. */
function gatherPacked(g: Graph, t: PackedTable, ids: Value, bt: Value, cols: number): Value {
  const { p, vals } = t;
  const kb = Math.ceil(p.K / p.blockSize);
  const rows = g.op("Cast", [g.op("Gather", [vals.B, ids], { axis: 0 })], { to: DType.float32 });
  const zeros = g.op("Cast", [
    g.op("Gather", [g.reshape(vals.zeros, [p.N, kb]), ids], { axis: 0 }),
  ], { to: DType.float32 });
  const scales = g.op("Gather", [vals.scales, ids], { axis: 0 });
  const last = (v: Value) => g.op("Unsqueeze", [v, g.int64([-1])]);
  const values = g.mul(g.sub(rows, last(zeros)), last(scales));
  const flat = g.op("Reshape", [values, g.concat([bt, g.int64([kb * p.blockSize])], 0)]);
  return kb * p.blockSize === cols ? flat : g.slice(flat, [0], [cols], [2]);
}

async function writeJson(path: string, value: unknown): Promise<void> {
  await Deno.writeTextFile(path, JSON.stringify(value, null, 2) + "\n");
}
