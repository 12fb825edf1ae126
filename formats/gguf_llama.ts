/**
 * LLaMA models as llama.cpp reads GGUF files: `general.architecture` `llama`, its
 * hyperparameters (`llama.context_length`, `embedding_length`, `block_count`,
 * `feed_forward_length`, `attention.head_count(_kv)`, `rope.dimension_count`, `rope.freq_base`,
 * `attention.layer_norm_rms_epsilon`), the SentencePiece vocabulary (`tokenizer.ggml.*`), and
 * llama.cpp's tensor names (`token_embd`, `blk.{i}.attn_q`, …, `output_norm`, `output`; no
 * `output` when the head is the embedding). llama.cpp rotates interleaved RoPE pairs, like
 * llama2.c, so the rows of q and k are written in interleaved order within each head (the
 * inverse of the Hugging Face permutation) and put back in rotate-half order when read.
 *
 * Linear layers are written as F32/F16, or from their exact grids as Q4_0, Q4_1 or Q8_0 blocks
 * (`ggml_blocks.ts`); a layer whose input width is not a multiple of 32 cannot be cut into
 * blocks and is stored as F16 floats, as llama.cpp's own quantizer does. Norms stay F32.
 * Reading dequantizes one block at a time (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K).
 * @module
 */
import type { Tensor } from "../kernels/tensor.ts";
import {
  blockTensorShapes,
  LINEAR_NAMES,
  type LinearName,
  type ModelConfig,
} from "../models/config.ts";
import { type BlockWeights, expectShape, type ModelSource } from "../models/source.ts";
import { type SpmVocab, spmVocabFromHf, spmVocabFromLlama2c } from "../text/spm.ts";
import { parseLlama2cVocab } from "../text/tokenizer.ts";
import { dequantize, floatsToBytes, gridToBlocks } from "./ggml_blocks.ts";
import {
  GGML_TYPES,
  gguf,
  GgufFile,
  type GgufMetadata,
  type GgufTensorPlan,
  GgufWriter,
} from "./gguf.ts";
import { halfToInterleaved, interleavedToHalf, permuteRows, ropeRowOrder } from "./llama2c.ts";
import { type GgufGridType, roundGridScales, type ScaleFormat, TOOLKIT } from "./packed.ts";
import type { GridWeight } from "./quantized.ts";

/** Our block tensor names → llama.cpp's, relative to `blk.{i}.`. */
export const GGUF_BLOCK_NAMES: Readonly<Record<string, string>> = {
  "input_layernorm.weight": "attn_norm.weight",
  "self_attn.q_proj.weight": "attn_q.weight",
  "self_attn.k_proj.weight": "attn_k.weight",
  "self_attn.v_proj.weight": "attn_v.weight",
  "self_attn.o_proj.weight": "attn_output.weight",
  "post_attention_layernorm.weight": "ffn_norm.weight",
  "mlp.gate_proj.weight": "ffn_gate.weight",
  "mlp.up_proj.weight": "ffn_up.weight",
  "mlp.down_proj.weight": "ffn_down.weight",
};

const ROPE_ROWS = new Set(["self_attn.q_proj.weight", "self_attn.k_proj.weight"]);

// `general.file_type` values (llama_ftype).
const FILE_TYPE: Record<string, number> = { F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q8_0: 7 };

// ---------------------------------------------------------------------------------------------
// vocabulary

/**
 * The SentencePiece vocabulary of a model: from a `.gguf` file, or a directory's
 * `tokenizer.json` (+ `tokenizer_config.json`), `tokenizer.gguf` or llama2.c `tok*.bin`.
 */
export async function readSpmVocab(path: string): Promise<SpmVocab> {
  const st = await Deno.stat(path);
  if (st.isFile && path.endsWith(".gguf")) return await vocabOfGgufFile(path);
  const dir = st.isFile ? path.replace(/\/[^/]*$/, "") || "." : path;
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.isFile) names.push(e.name);
  if (names.includes("tokenizer.json")) {
    const tj = JSON.parse(await Deno.readTextFile(`${dir}/tokenizer.json`));
    const cfg = names.includes("tokenizer_config.json")
      ? JSON.parse(await Deno.readTextFile(`${dir}/tokenizer_config.json`))
      : {};
    return spmVocabFromHf(tj, cfg, `${dir}/tokenizer.json`);
  }
  if (names.includes("tokenizer.gguf")) return await vocabOfGgufFile(`${dir}/tokenizer.gguf`);
  const tok = names.sort().find((n) => /^tok.*\.bin$/.test(n));
  if (tok) {
    const v = parseLlama2cVocab(await Deno.readFile(`${dir}/${tok}`));
    return spmVocabFromLlama2c(v.pieces, v.scores);
  }
  throw new Error(
    `${dir}: no tokenizer (tokenizer.json, tokenizer.gguf or a llama2.c tok*.bin) to write ` +
      `into the GGUF file`,
  );
}

async function vocabOfGgufFile(path: string): Promise<SpmVocab> {
  const f = await GgufFile.open(path);
  try {
    return vocabFromGguf(f);
  } finally {
    f.close();
  }
}

/** The `tokenizer.ggml.*` entries of a vocabulary. */
export function vocabMetadata(v: SpmVocab): GgufMetadata {
  const m: GgufMetadata = new Map([
    ["tokenizer.ggml.model", gguf.str("llama")],
    ["tokenizer.ggml.tokens", gguf.strings(v.tokens)],
    ["tokenizer.ggml.scores", gguf.f32s(v.scores)],
    ["tokenizer.ggml.token_type", gguf.i32s(v.types)],
    ["tokenizer.ggml.bos_token_id", gguf.u32(v.bos)],
    ["tokenizer.ggml.eos_token_id", gguf.u32(v.eos)],
    ["tokenizer.ggml.unknown_token_id", gguf.u32(v.unk)],
    ["tokenizer.ggml.add_bos_token", gguf.bool(v.addBos)],
    ["tokenizer.ggml.add_eos_token", gguf.bool(false)],
    ["tokenizer.ggml.add_space_prefix", gguf.bool(v.addSpacePrefix)],
  ]);
  if (v.pad !== undefined) m.set("tokenizer.ggml.padding_token_id", gguf.u32(v.pad));
  return m;
}

/** The SentencePiece vocabulary of a GGUF file (`tokenizer.ggml.model` `llama`). */
export function vocabFromGguf(f: GgufFile): SpmVocab {
  const model = f.get("tokenizer.ggml.model");
  if (model !== "llama") {
    throw new Error(
      `${f.path}: tokenizer.ggml.model "${model}" is not supported (only llama's SentencePiece)`,
    );
  }
  const tokens = f.get("tokenizer.ggml.tokens") as string[];
  const n = tokens.length;
  const arr = (key: string, fill: number) => {
    const v = f.get(key) as number[] | undefined;
    if (v !== undefined && v.length !== n) {
      throw new Error(`${f.path}: ${key} has ${v.length} entries for ${n} tokens`);
    }
    return v ?? new Array(n).fill(fill);
  };
  const num = (key: string, fallback?: number) => {
    const v = f.get(key);
    return typeof v === "number" ? v : fallback;
  };
  const pad = num("tokenizer.ggml.padding_token_id");
  return {
    tokens,
    scores: Float32Array.from(arr("tokenizer.ggml.scores", 0)),
    types: Int32Array.from(arr("tokenizer.ggml.token_type", 1)),
    bos: num("tokenizer.ggml.bos_token_id", 1)!,
    eos: num("tokenizer.ggml.eos_token_id", 2)!,
    unk: num("tokenizer.ggml.unknown_token_id", 0)!,
    ...(pad !== undefined ? { pad } : {}),
    addBos: f.get("tokenizer.ggml.add_bos_token") !== false,
    addSpacePrefix: f.get("tokenizer.ggml.add_space_prefix") !== false,
  };
}

// ---------------------------------------------------------------------------------------------
// reading

/** The model config of a llama GGUF file. */
export function ggufConfig(f: GgufFile): ModelConfig {
  const arch = f.get("general.architecture");
  if (arch !== "llama") {
    throw new Error(`${f.path}: general.architecture "${arch}" is not supported (only llama)`);
  }
  const num = (key: string, fallback?: number): number => {
    const v = f.get(`llama.${key}`) ?? fallback;
    if (typeof v !== "number") throw new Error(`${f.path}: metadata "llama.${key}" is missing`);
    return v;
  };
  const scaling = f.get("llama.rope.scaling.type");
  if (scaling !== undefined && scaling !== "none") {
    throw new Error(`${f.path}: llama.rope.scaling.type "${scaling}" is not supported`);
  }
  const hidden = num("embedding_length"), heads = num("attention.head_count");
  const headDim = hidden / heads;
  const rot = num("rope.dimension_count", headDim);
  if (rot !== headDim) {
    throw new Error(`${f.path}: llama.rope.dimension_count ${rot} ≠ head size ${headDim}`);
  }
  const embd = f.tensors.get("token_embd.weight");
  if (!embd) throw new Error(`${f.path}: tensor "token_embd.weight" is missing`);
  const vocab = embd.dims[1];
  const bos = f.get("tokenizer.ggml.bos_token_id"), eos = f.get("tokenizer.ggml.eos_token_id");
  return {
    modelType: "llama",
    hidden,
    intermediate: num("feed_forward_length"),
    layers: num("block_count"),
    heads,
    kvHeads: num("attention.head_count_kv", heads),
    headDim,
    vocab,
    maxSeq: num("context_length"),
    rmsEps: num("attention.layer_norm_rms_epsilon"),
    ropeTheta: num("rope.freq_base", 10000),
    tiedEmbeddings: !f.tensors.has("output.weight"),
    qkvBias: false,
    bos: typeof bos === "number" ? bos : 1,
    eos: typeof eos === "number" ? eos : 2,
  };
}

/** Opens a llama GGUF file as a {@linkcode ModelSource} (weights dequantized to float32). */
export async function openGguf(path: string): Promise<ModelSource> {
  const f = await GgufFile.open(path);
  try {
    const config = ggufConfig(f);
    const read = async (name: string, shape: number[], ropeRows = false): Promise<Tensor> => {
      const t = f.tensors.get(name);
      if (!t) throw new Error(`${path}: tensor "${name}" is missing`);
      const got = [...t.dims].reverse();
      const n = got.reduce((a, b) => a * b, 1);
      const data = dequantize(t.type!, await f.readBytes(name), n, `${path}: tensor "${name}"`);
      const out = expectShape({ data, shape: got }, shape, name, path);
      return ropeRows ? interleavedToHalf(out, config.headDim) : out;
    };
    const c = config, shapes = blockTensorShapes(c);
    return {
      path,
      format: "gguf",
      config,
      embedding: () => read("token_embd.weight", [c.vocab, c.hidden]),
      async block(i: number): Promise<BlockWeights> {
        if (!(i >= 0 && i < c.layers)) throw new Error(`${path}: no decoder layer ${i}`);
        const out: BlockWeights = {};
        for (const [ours, theirs] of Object.entries(GGUF_BLOCK_NAMES)) {
          out[ours] = await read(`blk.${i}.${theirs}`, shapes[ours], ROPE_ROWS.has(ours));
        }
        return out;
      },
      finalNorm: () => read("output_norm.weight", [c.hidden]),
      head: () =>
        read(c.tiedEmbeddings ? "token_embd.weight" : "output.weight", [c.vocab, c.hidden]),
      close: () => f.close(),
    };
  } catch (e) {
    f.close();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// writing

/** How the linear layers are stored. */
export type GgufLinears =
  | { type: "F32" | "F16" }
  | {
    type: GgufGridType;
    /** The grids of block i's linears, given its weights. */
    grids: (i: number, weights: BlockWeights) => Promise<Record<LinearName, GridWeight>>;
    /** Scale rounding of grids whose scales are not yet fp16 (`fp16-min` for Q4_1). */
    scaleFormat: ScaleFormat;
  };

/** Options of {@linkcode writeGguf}. */
export interface GgufWriteOptions {
  /** How the linear layers are stored. */
  linears: GgufLinears;
  /** Type of the embedding and output matrices (F32). */
  floatType?: "F32" | "F16";
  /**
   * Store the embedding and output matrices as grid blocks instead (llama.cpp's files keep
   * them in Q8_0 when their rows are not a multiple of 256): the grid of a [vocab, hidden]
   * matrix, made by the caller's quantizer.
   */
  embedding?: { type: GgufGridType; grid: (name: string, t: Tensor) => GridWeight };
  /** `general.name`. */
  name?: string;
}

/** What {@linkcode writeGguf} wrote. */
export interface GgufWriteReport {
  /** The file written. */
  path: string;
  /** Its size. */
  bytes: number;
  /** Tensors per ggml type. */
  types: Record<string, number>;
  /** Linear layers stored as F16 floats because their input width is not a multiple of 32. */
  fallback: string[];
  /** Scales that were not fp16 (rounded; their layers no longer equal the evaluated weights). */
  roundedScales: number;
  /** Q4_1 blocks whose minimum −d·zero was not an fp16 value (stored rounded). */
  inexactMins: number;
}

/**
 * Refuses models whose function the llama GGUF files we write cannot hold: biases (llama.cpp
 * loads optional `attn_q.bias` … but our reader and writer do not carry them yet), Qwen3's q/k
 * norm, RoPE scaling (llama.cpp's llama3 scaling needs a `rope_freqs` tensor we do not write),
 * a head_dim other than hidden / heads, a sliding window, run-time quantizers, extra tensors.
 */
export function checkGgufModel(c: ModelConfig, path: string): void {
  const biases = [
    c.qkvBias ? "q/k/v" : "",
    c.oProjBias ? "o_proj" : "",
    c.mlpBias ? "gate/up/down" : "",
  ].filter((b) => b);
  const why = biases.length
    ? `biases on ${biases.join(", ")}`
    : c.qkNorm
    ? "Qwen3's q/k RMSNorm (q_norm, k_norm)"
    : c.ropeScaling
    ? `rope_scaling of type ${c.ropeScaling.type}`
    : c.headDim * c.heads !== c.hidden
    ? `head_dim ${c.headDim} ≠ hidden_size / num_attention_heads (${c.hidden / c.heads})`
    : c.slidingWindow !== undefined
    ? "a sliding attention window"
    : c.activationBits || c.kvBits
    ? "run-time activation quantization"
    : c.extraTensors && Object.keys(c.extraTensors).length
    ? `extra block tensors (${Object.keys(c.extraTensors).join(", ")})`
    : null;
  if (why) throw new Error(`${path}: a llama GGUF file cannot hold a model with ${why}`);
}

/**
 * Writes `model` as a llama GGUF file at `path` (atomically), with the vocabulary `vocab`,
 * block by block.
 */
export async function writeGguf(
  path: string,
  model: ModelSource,
  vocab: SpmVocab,
  o: GgufWriteOptions,
): Promise<GgufWriteReport> {
  const c = model.config;
  checkGgufModel(c, model.path);
  if (vocab.tokens.length !== c.vocab) {
    throw new Error(
      `${model.path}: the tokenizer has ${vocab.tokens.length} tokens, the model ${c.vocab}`,
    );
  }
  const floatType = GGML_TYPES[o.floatType ?? "F32"];
  const embType = o.embedding ? GGML_TYPES[o.embedding.type] : floatType;
  const linType = (cols: number) =>
    o.linears.type === "F32" || o.linears.type === "F16"
      ? GGML_TYPES[o.linears.type]
      : cols % 32 === 0
      ? GGML_TYPES[o.linears.type]
      : GGML_TYPES.F16;
  const plans: GgufTensorPlan[] = [
    { name: "token_embd.weight", shape: [c.vocab, c.hidden], type: embType },
  ];
  const blockShapes = blockTensorShapes(c);
  for (let i = 0; i < c.layers; i++) {
    for (const [ours, theirs] of Object.entries(GGUF_BLOCK_NAMES)) {
      const shape = blockShapes[ours];
      plans.push({
        name: `blk.${i}.${theirs}`,
        shape,
        type: shape.length === 1 ? GGML_TYPES.F32 : linType(shape[1]),
      });
    }
  }
  plans.push({ name: "output_norm.weight", shape: [c.hidden], type: GGML_TYPES.F32 });
  if (!c.tiedEmbeddings) {
    plans.push({ name: "output.weight", shape: [c.vocab, c.hidden], type: embType });
  }
  const fileType = o.linears.type;
  const meta: GgufMetadata = new Map([
    ["general.architecture", gguf.str("llama")],
    ["general.name", gguf.str(o.name ?? model.path.replace(/\/+$/, "").replace(/^.*\//, ""))],
    ["general.quantized_by", gguf.str(`${TOOLKIT.name} ${TOOLKIT.version}`)],
    ["llama.context_length", gguf.u32(c.maxSeq)],
    ["llama.embedding_length", gguf.u32(c.hidden)],
    ["llama.block_count", gguf.u32(c.layers)],
    ["llama.feed_forward_length", gguf.u32(c.intermediate)],
    ["llama.rope.dimension_count", gguf.u32(c.headDim)],
    ["llama.attention.head_count", gguf.u32(c.heads)],
    ["llama.attention.head_count_kv", gguf.u32(c.kvHeads)],
    ["llama.attention.layer_norm_rms_epsilon", gguf.f32(c.rmsEps)],
    ["llama.rope.freq_base", gguf.f32(c.ropeTheta)],
    ["llama.vocab_size", gguf.u32(c.vocab)],
    ["general.file_type", gguf.u32(FILE_TYPE[fileType])],
  ]);
  if (fileType !== "F32" && fileType !== "F16") {
    meta.set("general.quantization_version", gguf.u32(2));
  }
  for (const [k, v] of vocabMetadata(vocab)) meta.set(k, v);

  const report: GgufWriteReport = {
    path,
    bytes: 0,
    types: {},
    fallback: [],
    roundedScales: 0,
    inexactMins: 0,
  };
  for (const p of plans) report.types[p.type.name] = (report.types[p.type.name] ?? 0) + 1;
  const w = await GgufWriter.create(path, meta, plans);
  try {
    const floats = (t: Tensor, type: "F32" | "F16") => floatsToBytes(t.data, type);
    const matrix = (name: string, t: Tensor) =>
      o.embedding
        ? gridToBlocks(o.embedding.grid(name, t), o.embedding.type, `${model.path}: ${name}`).bytes
        : floats(t, floatType.name as "F32");
    await w.add("token_embd.weight", matrix("token_embd.weight", await model.embedding()));
    for (let i = 0; i < c.layers; i++) {
      const weights = await model.block(i);
      const grids = "grids" in o.linears ? await o.linears.grids(i, weights) : null;
      for (const [ours, theirs] of Object.entries(GGUF_BLOCK_NAMES)) {
        const name = `blk.${i}.${theirs}`;
        const plan = plans.find((p) => p.name === name)!;
        const rope = ROPE_ROWS.has(ours);
        const layer = ours.replace(/\.weight$/, "") as LinearName;
        if (grids && LINEAR_NAMES.includes(layer) && plan.type.name === o.linears.type) {
          const lin = o.linears as Extract<GgufLinears, { grids: unknown }>;
          const r = roundGridScales(grids[layer], lin.scaleFormat);
          report.roundedScales += r.changed;
          const g = rope ? interleavedGrid(r.grid, c.headDim) : r.grid;
          const b = gridToBlocks(g, lin.type, `${model.path}: ${name}`);
          report.inexactMins += b.stats.inexactMins;
          await w.add(name, b.bytes);
          continue;
        }
        if (grids && LINEAR_NAMES.includes(layer)) report.fallback.push(name);
        const t = rope ? halfToInterleaved(weights[ours], c.headDim) : weights[ours];
        await w.add(name, floats(t, plan.type.name as "F32" | "F16"));
      }
    }
    await w.add("output_norm.weight", floats(await model.finalNorm(), "F32"));
    if (!c.tiedEmbeddings) {
      await w.add("output.weight", matrix("output.weight", await model.head()));
    }
    await w.finish();
  } catch (e) {
    await w.abort();
    throw e;
  }
  report.bytes = (await Deno.stat(path)).size;
  return report;
}

/** A q/k grid with its rows in llama.cpp's interleaved RoPE order. */
function interleavedGrid(g: GridWeight, headDim: number): GridWeight {
  const order = ropeRowOrder(g.rows, headDim), groups = g.scales.length / g.rows;
  return {
    ...g,
    codes: permuteRows(g.codes, g.cols, order, true),
    scales: permuteRows(g.scales, groups, order, true),
    zeros: permuteRows(g.zeros, groups, order, true),
  };
}

/**
 * Writes a vocabulary-only GGUF file (llama.cpp's `ggml-vocab-*.gguf` kind): the tokenizer of
 * a model read from GGUF, kept beside the Hugging Face directory we write from it.
 */
export async function writeVocabGguf(path: string, v: SpmVocab): Promise<void> {
  const meta: GgufMetadata = new Map([["general.architecture", gguf.str("llama")]]);
  for (const [k, e] of vocabMetadata(v)) meta.set(k, e);
  const w = await GgufWriter.create(path, meta, []);
  await w.finish();
}
