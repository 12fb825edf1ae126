/**
 * The shape of a LLaMA-family decoder, read from a Hugging Face `config.json` or a llama2.c
 * header. Architectures and options we cannot run exactly are refused by name.
 * @module
 */

/** Everything the block graph and the pipelines need to know about a model. */
export interface ModelConfig {
  /** `llama`, `mistral` or `qwen2` (HF `model_type`); llama2.c checkpoints are `llama`. */
  modelType: "llama" | "mistral" | "qwen2";
  /** Model width (`hidden_size`). */
  hidden: number;
  /** MLP width (`intermediate_size`). */
  intermediate: number;
  /** Decoder blocks (`num_hidden_layers`). */
  layers: number;
  /** Query heads (`num_attention_heads`). */
  heads: number;
  /** Key/value heads (`num_key_value_heads`; fewer than `heads` for grouped-query attention). */
  kvHeads: number;
  /** Width of one head (`head_dim`, default hidden / heads); even. */
  headDim: number;
  /** Vocabulary size (`vocab_size`). */
  vocab: number;
  /** Longest sequence the model runs (`max_position_embeddings`). */
  maxSeq: number;
  /** RMSNorm epsilon (`rms_norm_eps`, default 1e-6; 1e-5 for llama2.c). */
  rmsEps: number;
  /** RoPE base frequency (`rope_theta`, default 10000). */
  ropeTheta: number;
  /** Input and output embeddings share one matrix. */
  tiedEmbeddings: boolean;
  /** q/k/v projections carry biases (Qwen2, or `attention_bias: true`). */
  qkvBias: boolean;
  /**
   * Activation bits the model must run with (per-token fake quantization of every linear's
   * input), from `quantization_config.activation_bits` of models this toolkit wrote.
   */
  activationBits?: number;
  /** Per-token fake quantization of q/k/v at run time (`quantization_config.kv_bits`). */
  kvBits?: number;
  /**
   * Extra per-block tensors a quantized model carries (channel reassembly maps, static
   * activation scales), with their shapes (`quantization_config.extra_block_tensors`).
   */
  extraTensors?: Record<string, number[]>;
  /** Mistral-style sliding attention window; sequences longer than it are refused. */
  slidingWindow?: number;
  /** Beginning-of-sequence token id (`bos_token_id`, default 1). */
  bos: number;
  /** End-of-sequence token id (`eos_token_id`, default 2). */
  eos: number;
}

/** Refuses a sequence length the model cannot run exactly; `flag` names the option in errors. */
export function checkSeqlen(c: ModelConfig, seqlen: number, flag = "--seqlen"): void {
  if (!Number.isInteger(seqlen) || seqlen < 2) {
    throw new Error(`${flag} ${seqlen}: must be an integer of at least 2`);
  }
  if (seqlen > c.maxSeq) {
    throw new Error(
      `${flag} ${seqlen}: longer than the model's max_position_embeddings ${c.maxSeq}`,
    );
  }
  if (c.slidingWindow !== undefined && seqlen > c.slidingWindow) {
    throw new Error(
      `${flag} ${seqlen}: longer than the model's sliding_window ${c.slidingWindow}, ` +
        "which this toolkit does not implement",
    );
  }
}

const SUPPORTED = ["llama", "mistral", "qwen2"] as const;

/** Parses a Hugging Face `config.json`; `file` names the file in errors. */
export function parseHfConfig(json: Record<string, unknown>, file: string): ModelConfig {
  const modelType = String(json.model_type ?? "");
  if (!(SUPPORTED as readonly string[]).includes(modelType)) {
    throw new Error(
      `${file}: model_type "${modelType}" is not supported (supported: ${SUPPORTED.join(", ")})`,
    );
  }
  const num = (key: string, fallback?: number): number => {
    const v = json[key] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new Error(`${file}: "${key}" must be a number (found ${JSON.stringify(v)})`);
    }
    return v;
  };
  const act = json.hidden_act ?? "silu";
  if (act !== "silu") throw new Error(`${file}: hidden_act "${act}" is not supported (only silu)`);
  if (json.rope_scaling != null) {
    throw new Error(`${file}: rope_scaling ${JSON.stringify(json.rope_scaling)} is not supported`);
  }
  if (json.mlp_bias === true) throw new Error(`${file}: mlp_bias true is not supported`);
  const maxSeq = num("max_position_embeddings", 2048);
  const sliding = json.use_sliding_window === false ? null : json.sliding_window;
  const hidden = num("hidden_size");
  const heads = num("num_attention_heads");
  const kvHeads = num("num_key_value_heads", heads);
  const headDim = typeof json.head_dim === "number" ? json.head_dim : hidden / heads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new Error(`${file}: head_dim ${headDim} must be an even integer`);
  }
  if (heads % kvHeads !== 0) {
    throw new Error(`${file}: num_attention_heads ${heads} is not a multiple of ${kvHeads}`);
  }
  return {
    modelType: modelType as ModelConfig["modelType"],
    hidden,
    intermediate: num("intermediate_size"),
    layers: num("num_hidden_layers"),
    heads,
    kvHeads,
    headDim,
    vocab: num("vocab_size"),
    maxSeq,
    rmsEps: num("rms_norm_eps", 1e-6),
    ropeTheta: num("rope_theta", 10000),
    tiedEmbeddings: json.tie_word_embeddings === true,
    qkvBias: modelType === "qwen2" || json.attention_bias === true,
    slidingWindow: typeof sliding === "number" ? sliding : undefined,
    activationBits: activationBits(json, file),
    kvBits: kvBits(json, file),
    extraTensors: extraTensors(json, file),
    bos: typeof json.bos_token_id === "number" ? json.bos_token_id : 1,
    eos: typeof json.eos_token_id === "number" ? json.eos_token_id : 2,
  };
}

function activationBits(json: Record<string, unknown>, file: string): number | undefined {
  const qc = json.quantization_config as Record<string, unknown> | undefined;
  const a = qc?.activation_bits;
  if (a === undefined || a === null) return undefined;
  if (typeof a !== "number" || !Number.isInteger(a) || a < 2) {
    throw new Error(`${file}: quantization_config.activation_bits ${JSON.stringify(a)} is invalid`);
  }
  return a >= 16 ? undefined : a;
}

function kvBits(json: Record<string, unknown>, file: string): number | undefined {
  const a = (json.quantization_config as Record<string, unknown> | undefined)?.kv_bits;
  if (a === undefined || a === null) return undefined;
  if (typeof a !== "number" || !Number.isInteger(a) || a < 2) {
    throw new Error(`${file}: quantization_config.kv_bits ${JSON.stringify(a)} is invalid`);
  }
  return a >= 16 ? undefined : a;
}

function extraTensors(json: Record<string, unknown>, file: string) {
  const e = (json.quantization_config as Record<string, unknown> | undefined)?.extra_block_tensors;
  if (e === undefined || e === null) return undefined;
  const ok = typeof e === "object" && !Array.isArray(e) &&
    Object.values(e as object).every((v) =>
      Array.isArray(v) && v.every((d) => Number.isInteger(d) && d > 0)
    );
  if (!ok) {
    throw new Error(`${file}: quantization_config.extra_block_tensors must map names to shapes`);
  }
  return e as Record<string, number[]>;
}

/** The `config.json` we write for a model (a plain LLaMA-family Hugging Face config). */
export function toHfConfig(c: ModelConfig): Record<string, unknown> {
  const arch = {
    llama: "LlamaForCausalLM",
    mistral: "MistralForCausalLM",
    qwen2: "Qwen2ForCausalLM",
  };
  return {
    architectures: [arch[c.modelType]],
    model_type: c.modelType,
    hidden_size: c.hidden,
    intermediate_size: c.intermediate,
    num_hidden_layers: c.layers,
    num_attention_heads: c.heads,
    num_key_value_heads: c.kvHeads,
    head_dim: c.headDim,
    vocab_size: c.vocab,
    max_position_embeddings: c.maxSeq,
    rms_norm_eps: c.rmsEps,
    rope_theta: c.ropeTheta,
    rope_scaling: null,
    tie_word_embeddings: c.tiedEmbeddings,
    attention_bias: c.modelType === "llama" ? c.qkvBias : undefined,
    hidden_act: "silu",
    bos_token_id: c.bos,
    eos_token_id: c.eos,
    torch_dtype: "float32",
  };
}

/** Names of a block's seven linear layers, relative to `model.layers.{i}.`. */
export const LINEAR_NAMES = [
  "self_attn.q_proj",
  "self_attn.k_proj",
  "self_attn.v_proj",
  "self_attn.o_proj",
  "mlp.gate_proj",
  "mlp.up_proj",
  "mlp.down_proj",
] as const;

/** A linear layer of a decoder block. */
export type LinearName = (typeof LINEAR_NAMES)[number];

/** Output and input width of a linear layer. */
export function linearShape(c: ModelConfig, name: LinearName): [number, number] {
  const q = c.heads * c.headDim, kv = c.kvHeads * c.headDim;
  switch (name) {
    case "self_attn.q_proj":
      return [q, c.hidden];
    case "self_attn.k_proj":
    case "self_attn.v_proj":
      return [kv, c.hidden];
    case "self_attn.o_proj":
      return [c.hidden, q];
    case "mlp.gate_proj":
    case "mlp.up_proj":
      return [c.intermediate, c.hidden];
    case "mlp.down_proj":
      return [c.hidden, c.intermediate];
  }
}

/** The tensor names of one block, with their expected shapes. */
export function blockTensorShapes(c: ModelConfig): Record<string, number[]> {
  const q = c.heads * c.headDim, kv = c.kvHeads * c.headDim;
  const shapes: Record<string, number[]> = {
    "input_layernorm.weight": [c.hidden],
    "self_attn.q_proj.weight": [q, c.hidden],
    "self_attn.k_proj.weight": [kv, c.hidden],
    "self_attn.v_proj.weight": [kv, c.hidden],
    "self_attn.o_proj.weight": [c.hidden, q],
    "post_attention_layernorm.weight": [c.hidden],
    "mlp.gate_proj.weight": [c.intermediate, c.hidden],
    "mlp.up_proj.weight": [c.intermediate, c.hidden],
    "mlp.down_proj.weight": [c.hidden, c.intermediate],
  };
  for (const [name, shape] of Object.entries(c.extraTensors ?? {})) shapes[name] = shape;
  if (c.qkvBias) {
    shapes["self_attn.q_proj.bias"] = [q];
    shapes["self_attn.k_proj.bias"] = [kv];
    shapes["self_attn.v_proj.bias"] = [kv];
  }
  return shapes;
}
