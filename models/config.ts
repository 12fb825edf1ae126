/**
 * The shape of a LLaMA-family decoder, read from a Hugging Face `config.json` or a llama2.c
 * header. Architectures and options we cannot run exactly are refused by name.
 * @module
 */

/**
 * RoPE frequency scaling (`rope_scaling`): `linear` divides every position by `factor`; `llama3`
 * (Llama 3.1/3.2) divides the low frequencies by `factor`, keeps the high ones and blends
 * between `originalMaxPositions / lowFreqFactor` and `originalMaxPositions / highFreqFactor`
 * wavelengths.
 */
export type RopeScaling =
  | { type: "linear"; factor: number }
  | {
    type: "llama3";
    factor: number;
    lowFreqFactor: number;
    highFreqFactor: number;
    originalMaxPositions: number;
  };

/** Everything the block graph and the pipelines need to know about a model. */
export interface ModelConfig {
  /** `llama`, `mistral`, `qwen2` or `qwen3` (HF `model_type`); llama2.c checkpoints are `llama`. */
  modelType: "llama" | "mistral" | "qwen2" | "qwen3";
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
  /** RMSNorm epsilon (`rms_norm_eps`, default 1e-6; 1e-5 for llama2.c); positive. */
  rmsEps: number;
  /** RoPE base frequency (`rope_theta`, default 10000). */
  ropeTheta: number;
  /** RoPE frequency scaling (`rope_scaling`), when the model has one. */
  ropeScaling?: RopeScaling;
  /** Input and output embeddings share one matrix. */
  tiedEmbeddings: boolean;
  /** q/k/v projections carry biases (Qwen2, or `attention_bias: true`). */
  qkvBias: boolean;
  /** o_proj carries a bias (LLaMA's `attention_bias: true`; not Qwen's). */
  oProjBias?: boolean;
  /** gate/up/down projections carry biases (`mlp_bias: true`). */
  mlpBias?: boolean;
  /** q and k pass a per-head RMSNorm before RoPE (Qwen3's `q_norm` / `k_norm`). */
  qkNorm?: boolean;
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
  /**
   * Sliding attention window (Mistral; Qwen2/Qwen3 with `use_sliding_window`): a query at
   * position p sees the keys at positions p − window + 1 … p.
   */
  slidingWindow?: number;
  /**
   * First layer with the sliding window when earlier layers attend to everything (Qwen's
   * `max_window_layers` between 0 and the layer count); refused by {@linkcode refuseUnrunnable}.
   */
  slidingFromLayer?: number;
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
}

const SUPPORTED = ["llama", "mistral", "qwen2", "qwen3"] as const;

type Json = Record<string, unknown>;

/** Readers of a config's fields; every error names the file and the key. */
function fields(json: Json, file: string) {
  const bad = (key: string, what: string) =>
    new Error(`${file}: "${key}" ${what} (found ${JSON.stringify(json[key])})`);
  const num = (key: string, fallback?: number): number => {
    const v = json[key] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v)) throw bad(key, "must be a number");
    return v;
  };
  return {
    num,
    positive: (key: string, fallback?: number): number => {
      const v = num(key, fallback);
      if (!(v > 0)) throw bad(key, "must be positive");
      return v;
    },
    count: (key: string, fallback?: number): number => {
      const v = num(key, fallback);
      if (!Number.isInteger(v) || v < 1) throw bad(key, "must be an integer ≥ 1");
      return v;
    },
    flag: (key: string, fallback: boolean): boolean => {
      const v = json[key] ?? fallback;
      if (typeof v !== "boolean") throw bad(key, "must be true or false");
      return v;
    },
  };
}

/** `rope_scaling` (`rope_type` or the older `type`); `default` and null are none. */
function ropeScaling(json: Json, file: string): RopeScaling | undefined {
  const r = json.rope_scaling;
  if (r === undefined || r === null) return undefined;
  if (typeof r !== "object" || Array.isArray(r)) {
    throw new Error(`${file}: "rope_scaling" must be an object or null`);
  }
  const o = r as Json;
  const type = o.rope_type ?? o.type;
  const f = fields(o, `${file}: rope_scaling`);
  switch (type) {
    case "default":
      return undefined;
    case "linear":
      return { type, factor: f.positive("factor") };
    case "llama3": {
      const s: RopeScaling = {
        type,
        factor: f.positive("factor"),
        lowFreqFactor: f.positive("low_freq_factor"),
        highFreqFactor: f.positive("high_freq_factor"),
        originalMaxPositions: f.count("original_max_position_embeddings"),
      };
      if (!(s.highFreqFactor > s.lowFreqFactor)) {
        throw new Error(
          `${file}: rope_scaling: high_freq_factor ${s.highFreqFactor} must exceed ` +
            `low_freq_factor ${s.lowFreqFactor}`,
        );
      }
      return s;
    }
    default:
      throw new Error(
        `${file}: rope_scaling type ${JSON.stringify(type)} is not supported ` +
          "(supported: linear, llama3)",
      );
  }
}

/**
 * Reads a Hugging Face `config.json` into a {@linkcode ModelConfig}, validating every field it
 * uses (errors name `file` and the key): sizes are positive integers, `rms_norm_eps` positive,
 * the heads divide, `head_dim` is even. Options the block graph does not run yet are read, not
 * refused: {@linkcode parseHfConfig} refuses them.
 */
export function readHfConfig(json: Record<string, unknown>, file: string): ModelConfig {
  const modelType = String(json.model_type ?? "");
  if (!(SUPPORTED as readonly string[]).includes(modelType)) {
    throw new Error(
      `${file}: model_type "${modelType}" is not supported (supported: ${SUPPORTED.join(", ")})`,
    );
  }
  const f = fields(json, file);
  const act = json.hidden_act ?? "silu";
  if (act !== "silu") throw new Error(`${file}: hidden_act "${act}" is not supported (only silu)`);
  const hidden = f.count("hidden_size");
  const heads = f.count("num_attention_heads");
  const kvHeads = f.count("num_key_value_heads", heads);
  const headDim = json.head_dim === undefined || json.head_dim === null
    ? hidden / heads
    : f.count("head_dim");
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new Error(`${file}: head_dim ${headDim} must be an even integer`);
  }
  if (heads % kvHeads !== 0) {
    throw new Error(
      `${file}: num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`,
    );
  }
  const layers = f.count("num_hidden_layers");
  const qwen = modelType === "qwen2" || modelType === "qwen3";
  // Qwen2's q/k/v always carry biases; LLaMA's `attention_bias` adds them to q/k/v and o_proj.
  const attentionBias = modelType === "qwen2" || f.flag("attention_bias", false);
  // Qwen2/Qwen3 and Mistral sliding windows (transformers' LLaMA has none, whatever the config
  // says): Qwen uses one only with `use_sliding_window`, on the layers from `max_window_layers`.
  let sliding: number | undefined, slidingFrom = 0;
  const windowed = qwen || modelType === "mistral";
  if (windowed && json.sliding_window !== undefined && json.sliding_window !== null) {
    const window = f.count("sliding_window");
    const used = qwen ? f.flag("use_sliding_window", false) : true;
    const from = qwen ? f.num("max_window_layers", 0) : 0;
    if (used && from < layers) {
      sliding = window;
      slidingFrom = Math.max(0, from);
    }
  }
  const scaling = ropeScaling(json, file);
  return {
    modelType: modelType as ModelConfig["modelType"],
    hidden,
    intermediate: f.count("intermediate_size"),
    layers,
    heads,
    kvHeads,
    headDim,
    vocab: f.count("vocab_size"),
    maxSeq: f.count("max_position_embeddings", 2048),
    rmsEps: f.positive("rms_norm_eps", 1e-6),
    ropeTheta: f.positive("rope_theta", 10000),
    ...(scaling ? { ropeScaling: scaling } : {}),
    tiedEmbeddings: f.flag("tie_word_embeddings", false),
    qkvBias: attentionBias,
    // Qwen2's o_proj never has a bias; Qwen3's follows attention_bias, as LLaMA's.
    oProjBias: attentionBias && modelType !== "qwen2",
    mlpBias: f.flag("mlp_bias", false),
    qkNorm: modelType === "qwen3",
    slidingWindow: sliding,
    ...(slidingFrom > 0 ? { slidingFromLayer: slidingFrom } : {}),
    activationBits: activationBits(json, file),
    kvBits: kvBits(json, file),
    extraTensors: extraTensors(json, file),
    bos: typeof json.bos_token_id === "number" ? json.bos_token_id : 1,
    eos: typeof json.eos_token_id === "number" ? json.eos_token_id : 2,
  };
}

/**
 * Refuses, by name, what a config asks that the block graph does not run: a sliding window on
 * only some of the layers (Qwen's `max_window_layers` between 0 and the layer count), since one
 * block graph serves every layer. (RoPE scaling, every bias, Qwen3's q/k norm and a sliding
 * window on all layers run.)
 */
export function refuseUnrunnable(c: ModelConfig, file: string): void {
  const no = (what: string) => new Error(`${file}: ${what} is not supported`);
  if (c.slidingFromLayer !== undefined) {
    throw no(
      `a sliding window on layers ${c.slidingFromLayer}–${c.layers - 1} only ` +
        `(max_window_layers ${c.slidingFromLayer} of ${c.layers} layers; 0 or ${c.layers} run)`,
    );
  }
}

/** Parses a Hugging Face `config.json` the toolkit can run; `file` names the file in errors. */
export function parseHfConfig(json: Record<string, unknown>, file: string): ModelConfig {
  const c = readHfConfig(json, file);
  refuseUnrunnable(c, file);
  return c;
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
    qwen3: "Qwen3ForCausalLM",
  };
  const r = c.ropeScaling;
  const qwen = c.modelType === "qwen2" || c.modelType === "qwen3";
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
    rope_scaling: r === undefined
      ? null
      : r.type === "linear"
      ? { rope_type: "linear", factor: r.factor }
      : {
        rope_type: "llama3",
        factor: r.factor,
        low_freq_factor: r.lowFreqFactor,
        high_freq_factor: r.highFreqFactor,
        original_max_position_embeddings: r.originalMaxPositions,
      },
    tie_word_embeddings: c.tiedEmbeddings,
    attention_bias: c.modelType === "qwen2" ? undefined : c.qkvBias,
    mlp_bias: c.mlpBias ? true : undefined,
    sliding_window: c.slidingWindow ?? (c.modelType === "mistral" ? null : undefined),
    use_sliding_window: qwen ? c.slidingWindow !== undefined : undefined,
    max_window_layers: qwen && c.slidingWindow !== undefined ? 0 : undefined,
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

/** Whether a block's linear layer `name` carries a bias under config `c`. */
export function linearHasBias(c: ModelConfig, name: LinearName): boolean {
  if (name === "self_attn.o_proj") return !!c.oProjBias;
  if (name.startsWith("mlp.")) return !!c.mlpBias;
  return c.qkvBias;
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
  if (c.oProjBias) shapes["self_attn.o_proj.bias"] = [c.hidden];
  if (c.mlpBias) {
    shapes["mlp.gate_proj.bias"] = [c.intermediate];
    shapes["mlp.up_proj.bias"] = [c.intermediate];
    shapes["mlp.down_proj.bias"] = [c.hidden];
  }
  if (c.qkNorm) {
    shapes["self_attn.q_norm.weight"] = [c.headDim];
    shapes["self_attn.k_norm.weight"] = [c.headDim];
  }
  return shapes;
}
