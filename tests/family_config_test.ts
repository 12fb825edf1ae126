/**
 * Model families as their checkpoints ship them: the published `config.json` of Llama 3.1/3.2,
 * Qwen2.5, Qwen3 and Mistral read into ModelConfig (RoPE scaling, explicit head_dim, biases,
 * sliding windows, tied embeddings, q/k norm) and accepted for running, what the block graph
 * cannot run (a sliding window on some layers only) refused by name, malformed fields refused
 * naming the key, and the generator's family-shaped checkpoints.
 */
import assert from "node:assert/strict";
import {
  generateLlama,
  LLAMA32_1B_SHAPE,
  type LlamaSpec,
  QWEN25_SHAPE,
} from "../fixtures/generate.ts";
import { openCheckpoint } from "../formats/checkpoint.ts";
import { openModel } from "../formats/open.ts";
import { checkSeqlen, parseHfConfig, readHfConfig } from "../models/config.ts";

type Json = Record<string, unknown>;

/** Llama-3.2-1B's config.json as Meta publishes it (the fields we read). */
const LLAMA32_1B: Json = {
  architectures: ["LlamaForCausalLM"],
  attention_bias: false,
  bos_token_id: 128000,
  eos_token_id: 128001,
  head_dim: 64,
  hidden_act: "silu",
  hidden_size: 2048,
  intermediate_size: 8192,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 16,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_scaling: {
    factor: 32.0,
    high_freq_factor: 4.0,
    low_freq_factor: 1.0,
    original_max_position_embeddings: 8192,
    rope_type: "llama3",
  },
  rope_theta: 500000.0,
  tie_word_embeddings: true,
  torch_dtype: "bfloat16",
  vocab_size: 128256,
};

/** Qwen2.5-0.5B's config.json (sliding_window present but unused). */
const QWEN25_05B: Json = {
  architectures: ["Qwen2ForCausalLM"],
  bos_token_id: 151643,
  eos_token_id: 151643,
  hidden_act: "silu",
  hidden_size: 896,
  intermediate_size: 4864,
  max_position_embeddings: 32768,
  max_window_layers: 24,
  model_type: "qwen2",
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  tie_word_embeddings: true,
  torch_dtype: "bfloat16",
  use_sliding_window: false,
  vocab_size: 151936,
};

/** Qwen3-0.6B's config.json: explicit head_dim 128 (≠ 1024 / 16), q/k RMSNorm. */
const QWEN3_06B: Json = {
  architectures: ["Qwen3ForCausalLM"],
  attention_bias: false,
  bos_token_id: 151643,
  eos_token_id: 151645,
  head_dim: 128,
  hidden_act: "silu",
  hidden_size: 1024,
  intermediate_size: 3072,
  max_position_embeddings: 40960,
  max_window_layers: 28,
  model_type: "qwen3",
  num_attention_heads: 16,
  num_hidden_layers: 28,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-6,
  rope_scaling: null,
  rope_theta: 1000000,
  sliding_window: null,
  tie_word_embeddings: true,
  use_sliding_window: false,
  vocab_size: 151936,
};

/** Mistral-7B-v0.1's config.json: a 4096-token sliding window. */
const MISTRAL_7B: Json = {
  architectures: ["MistralForCausalLM"],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: "silu",
  hidden_size: 4096,
  intermediate_size: 14336,
  max_position_embeddings: 32768,
  model_type: "mistral",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  sliding_window: 4096,
  tie_word_embeddings: false,
  vocab_size: 32000,
};

const F = "config.json";

Deno.test("Llama 3.2: llama3 RoPE scaling, head_dim, tied embeddings read and runnable", () => {
  const c = readHfConfig(LLAMA32_1B, F);
  assert.deepEqual(
    [c.modelType, c.hidden, c.intermediate, c.layers, c.heads, c.kvHeads, c.headDim, c.vocab],
    ["llama", 2048, 8192, 16, 32, 8, 64, 128256],
  );
  assert.deepEqual([c.maxSeq, c.rmsEps, c.ropeTheta, c.bos, c.eos], [
    131072,
    1e-5,
    5e5,
    128000,
    128001,
  ]);
  assert.deepEqual(c.ropeScaling, {
    type: "llama3",
    factor: 32,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositions: 8192,
  });
  assert.equal(c.tiedEmbeddings, true);
  assert.deepEqual([c.qkvBias, c.oProjBias, c.mlpBias, c.qkNorm], [false, false, false, false]);
  assert.deepEqual(parseHfConfig(LLAMA32_1B, F).ropeScaling, c.ropeScaling);
  // Llama 3.1's linear-era sibling: linear scaling is read too.
  const linear = parseHfConfig({ ...LLAMA32_1B, rope_scaling: { type: "linear", factor: 2 } }, F);
  assert.deepEqual(linear.ropeScaling, { type: "linear", factor: 2 });
  // transformers' LLaMA has no sliding window, whatever its config says.
  assert.equal(parseHfConfig({ ...LLAMA32_1B, sliding_window: 16 }, F).slidingWindow, undefined);
  // rope_type "default" is no scaling at all.
  const plain = parseHfConfig({ ...LLAMA32_1B, rope_scaling: { rope_type: "default" } }, F);
  assert.equal(plain.ropeScaling, undefined);
});

Deno.test("LLaMA attention_bias / mlp_bias: biases on q/k/v and o_proj, on gate/up/down", () => {
  const c = parseHfConfig({
    ...LLAMA32_1B,
    rope_scaling: null,
    attention_bias: true,
    mlp_bias: true,
  }, F);
  assert.deepEqual([c.qkvBias, c.oProjBias, c.mlpBias], [true, true, true]);
  const only = parseHfConfig({ ...LLAMA32_1B, rope_scaling: null, mlp_bias: true }, F);
  assert.deepEqual([only.qkvBias, only.oProjBias, only.mlpBias], [false, false, true]);
});

Deno.test("Qwen2.5: q/k/v biases, unused sliding window, tied embeddings: runnable", () => {
  const c = parseHfConfig(QWEN25_05B, F);
  assert.deepEqual(
    [c.modelType, c.hidden, c.heads, c.kvHeads, c.headDim, c.vocab, c.ropeTheta],
    ["qwen2", 896, 14, 2, 64, 151936, 1e6],
  );
  assert.deepEqual([c.qkvBias, c.oProjBias, c.tiedEmbeddings], [true, false, true]);
  assert.equal(c.slidingWindow, undefined);
  // With use_sliding_window on, the layers from max_window_layers on slide: all of them run;
  // some of them only is refused by name (one block graph serves every layer).
  const swa = parseHfConfig({ ...QWEN25_05B, use_sliding_window: true, max_window_layers: 0 }, F);
  assert.equal(swa.slidingWindow, 32768);
  assert.equal(
    parseHfConfig({ ...QWEN25_05B, use_sliding_window: true }, F).slidingWindow,
    undefined,
    "max_window_layers 24 of 24: no layer slides",
  );
  const some = { ...QWEN25_05B, use_sliding_window: true, max_window_layers: 21 };
  assert.equal(readHfConfig(some, F).slidingFromLayer, 21);
  assert.throws(() => parseHfConfig(some, F), /sliding window on layers 21–23 only/);
  assert.throws(() => parseHfConfig(some, F), /max_window_layers 21 of 24/);
});

Deno.test("Qwen3: explicit head_dim 128, q/k norm read and runnable; attention_bias on o_proj too", () => {
  const c = readHfConfig(QWEN3_06B, F);
  assert.deepEqual([c.modelType, c.hidden, c.heads, c.headDim, c.qkNorm, c.qkvBias], [
    "qwen3",
    1024,
    16,
    128,
    true,
    false,
  ]);
  assert.equal(parseHfConfig(QWEN3_06B, F).qkNorm, true);
  const biased = parseHfConfig({ ...QWEN3_06B, attention_bias: true }, F);
  assert.deepEqual([biased.qkvBias, biased.oProjBias], [true, true]);
});

Deno.test("Mistral: sliding window read; a sequence past it runs", () => {
  const c = parseHfConfig(MISTRAL_7B, F);
  assert.equal(c.slidingWindow, 4096);
  checkSeqlen(c, 4096);
  checkSeqlen(c, 8192);
  assert.throws(() => checkSeqlen(c, 65536), /--seqlen 65536: longer than the model's max_pos/);
  assert.equal(parseHfConfig({ ...MISTRAL_7B, sliding_window: null }, F).slidingWindow, undefined);
});

Deno.test("malformed fields are refused naming the file and the key", () => {
  const cases: [Json, RegExp][] = [
    [{ rms_norm_eps: 0 }, /"rms_norm_eps" must be positive/],
    [{ rms_norm_eps: -1e-6 }, /"rms_norm_eps" must be positive/],
    [{ hidden_size: 0 }, /"hidden_size" must be an integer ≥ 1/],
    [{ hidden_size: "2048" }, /"hidden_size" must be a number/],
    [{ num_hidden_layers: 2.5 }, /"num_hidden_layers" must be an integer/],
    [{ head_dim: 63 }, /head_dim 63 must be an even integer/],
    [{ num_key_value_heads: 7 }, /not a multiple of num_key_value_heads 7/],
    [
      { rope_scaling: { rope_type: "yarn", factor: 4 } },
      /rope_scaling type "yarn" is not supported/,
    ],
    [
      { rope_scaling: { rope_type: "linear", factor: 0 } },
      /rope_scaling: "factor" must be positive/,
    ],
    [
      { rope_scaling: { ...(LLAMA32_1B.rope_scaling as Json), high_freq_factor: 1 } },
      /high_freq_factor 1 must exceed low_freq_factor 1/,
    ],
    [{ tie_word_embeddings: "yes" }, /"tie_word_embeddings" must be true or false/],
    [{ hidden_act: "gelu" }, /hidden_act "gelu" is not supported/],
    [{ model_type: "gpt2" }, /model_type "gpt2" is not supported/],
  ];
  for (const [patch, re] of cases) {
    assert.throws(() => readHfConfig({ ...LLAMA32_1B, ...patch }, "/m/config.json"), (e: Error) => {
      assert.match(e.message, /^\/m\/config\.json/);
      assert.match(e.message, re);
      return true;
    });
  }
});

/** Small-width variants of the published shapes, with their real vocabularies. */
const SMALL: Partial<LlamaSpec> = {
  hidden: 64,
  intermediate: 128,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  headDim: 16,
};

Deno.test("generator: Llama-3.2-1B- and Qwen2.5-shaped checkpoints, bf16, with their configs", async () => {
  const dir = await Deno.makeTempDir({ prefix: "qllm-family-" });
  try {
    const llama = await generateLlama(`${dir}/llama3`, { ...LLAMA32_1B_SHAPE, ...SMALL });
    const lc = readHfConfig(JSON.parse(await Deno.readTextFile(`${llama}/config.json`)), F);
    assert.deepEqual([lc.vocab, lc.headDim, lc.ropeTheta, lc.tiedEmbeddings, lc.bos], [
      128256,
      16,
      5e5,
      true,
      128000,
    ]);
    assert.deepEqual(lc.ropeScaling, LLAMA32_1B_SHAPE.ropeScaling);
    // The block graph runs the llama3 RoPE: the model opens.
    const opened = await openModel(llama);
    assert.deepEqual(opened.config.ropeScaling, LLAMA32_1B_SHAPE.ropeScaling);
    opened.close();
    const ckpt = await openCheckpoint(llama);
    try {
      assert.equal(ckpt.info("model.embed_tokens.weight").dtype, "BF16");
      assert.deepEqual(ckpt.info("model.embed_tokens.weight").shape, [128256, 64]);
      assert.equal(ckpt.has("lm_head.weight"), false);
    } finally {
      ckpt.close();
    }
    assert.ok((await Deno.stat(`${llama}/tokenizer.json`)).size > 1e6, "the Llama 3 tokenizer");

    const qwen = await generateLlama(`${dir}/qwen`, { ...QWEN25_SHAPE, ...SMALL });
    const model = await openModel(qwen);
    try {
      const c = model.config;
      assert.deepEqual([c.modelType, c.vocab, c.qkvBias, c.tiedEmbeddings], [
        "qwen2",
        151936,
        true,
        true,
      ]);
      const b = await model.block(1);
      assert.deepEqual(b["self_attn.q_proj.bias"].shape, [64]);
      assert.deepEqual(b["self_attn.k_proj.bias"].shape, [32]);
      assert.ok(b["self_attn.v_proj.bias"].data.some((v) => v !== 0), "biases drawn, not zero");
      assert.equal(config(await Deno.readTextFile(`${qwen}/config.json`)).torch_dtype, "bfloat16");
    } finally {
      model.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

function config(text: string): Json {
  return JSON.parse(text);
}
