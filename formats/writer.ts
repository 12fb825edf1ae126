/**
 * Writing a model as a Hugging Face directory, tensor by tensor: `config.json`, the tokenizer
 * files of the source model, and safetensors (sharded past 2 GiB). Everything is written into a
 * temporary sibling directory and renamed onto the output path only when complete.
 * @module
 */
import type { Tensor } from "../kernels/tensor.ts";
import { CheckpointWriter } from "./checkpoint.ts";
import { type ModelConfig, toHfConfig } from "../models/config.ts";
import type { BlockWeights } from "../models/source.ts";
import { SafetensorsWriter } from "./safetensors.ts";
import { readSpmVocab, writeVocabGguf } from "./gguf_llama.ts";

const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "generation_config.json",
  "tokenizer.model",
];

/** Extra `config.json` fields (e.g. a `quantization_config`). */
export type ConfigExtras = Record<string, unknown>;

/** Streams a model into `outDir`; nothing appears under `outDir` until {@linkcode finish}. */
export class ModelWriter {
  /** Final output directory (trailing slashes removed). */
  readonly outDir: string;
  /** Temporary sibling directory written into, renamed to `outDir` by {@linkcode finish}. */
  readonly tmpDir: string;
  #config: ModelConfig;
  #weights: CheckpointWriter;
  #learned: SafetensorsWriter | null = null;

  private constructor(outDir: string, tmpDir: string, config: ModelConfig, w: CheckpointWriter) {
    this.outDir = outDir;
    this.tmpDir = tmpDir;
    this.#config = config;
    this.#weights = w;
  }

  /** Starts writing a model with `config` to `outDir`. */
  static async create(
    outDir: string,
    config: ModelConfig,
    o: { maxShardBytes?: number; metadata?: Record<string, string> } = {},
  ): Promise<ModelWriter> {
    const clean = outDir.replace(/\/+$/, "");
    const tmpDir = `${clean}.partial-${crypto.randomUUID().slice(0, 8)}`;
    await Deno.mkdir(tmpDir, { recursive: true });
    const w = await CheckpointWriter.create(tmpDir, {
      maxShardBytes: o.maxShardBytes,
      metadata: { format: "pt", ...o.metadata },
    });
    return new ModelWriter(clean, tmpDir, config, w);
  }

  /** Adds one tensor under its full Hugging Face name, as F32. */
  async add(name: string, t: Tensor): Promise<void> {
    await this.#weights.add(name, "F32", t.shape, t.data);
  }

  /** Adds a decoder block's tensors under `model.layers.{i}.`. */
  async addBlock(i: number, weights: BlockWeights): Promise<void> {
    for (const [rel, t] of Object.entries(weights)) await this.add(`model.layers.${i}.${rel}`, t);
  }

  /** Adds learned state (scales, indices, …) to `learned.safetensors` beside the model. */
  async addLearned(
    name: string,
    t: Tensor | { int32: Int32Array; shape: number[] },
  ): Promise<void> {
    this.#learned ??= await SafetensorsWriter.create(`${this.tmpDir}/learned.safetensors`, {
      format: "qllm-deno-learned",
    });
    if ("int32" in t) await this.#learned.add(name, "I32", t.shape, t.int32);
    else await this.#learned.add(name, "F32", t.shape, t.data);
  }

  /** Writes a text file (e.g. the run report) into the model directory. */
  async addFile(name: string, text: string): Promise<void> {
    await Deno.writeTextFile(`${this.tmpDir}/${name}`, text);
  }

  /**
   * Completes the model: writes the final norm and head (only the embedding when tied), the
   * config (with `extras`), copies the tokenizer files from `tokenizerFrom`, then moves the
   * directory into place, replacing a previous output.
   */
  async finish(
    finalNorm: Tensor,
    head: Tensor | null,
    tokenizerFrom: string,
    extras: ConfigExtras = {},
  ): Promise<void> {
    try {
      await this.add("model.norm.weight", finalNorm);
      if (!this.#config.tiedEmbeddings) {
        if (!head) throw new Error("an untied model needs its lm_head");
        await this.add("lm_head.weight", head);
      }
      await this.#weights.finish();
      await this.#learned?.finish();
      await Deno.writeTextFile(
        `${this.tmpDir}/config.json`,
        JSON.stringify({ ...toHfConfig(this.#config), ...extras }, null, 2) + "\n",
      );
      await copyTokenizerFiles(tokenizerFrom, this.tmpDir);
      await Deno.remove(this.outDir, { recursive: true }).catch(() => {});
      await Deno.rename(this.tmpDir, this.outDir);
    } catch (e) {
      await this.abort();
      throw e;
    }
  }

  /** Removes everything written so far. */
  async abort(): Promise<void> {
    await this.#weights.abort().catch(() => {});
    await this.#learned?.abort().catch(() => {});
    await Deno.remove(this.tmpDir, { recursive: true }).catch(() => {});
  }
}

/**
 * Copies a model's tokenizer files (`tokenizer.json`, its config, special tokens, generation
 * config; llama2.c's `tok*.bin` when there are none) from the model at `from` (a directory or
 * file) into `to`; a GGUF model's vocabulary becomes `tokenizer.gguf`.
 */
export async function copyTokenizerFiles(from: string, to: string): Promise<void> {
  const st = await Deno.stat(from);
  if (st.isFile && from.endsWith(".gguf")) {
    // GGUF: its own vocabulary, as a vocabulary-only GGUF file.
    return await writeVocabGguf(`${to}/tokenizer.gguf`, await readSpmVocab(from));
  }
  const dir = st.isFile ? from.replace(/\/[^/]*$/, "") : from;
  let copied = 0;
  for (const name of TOKENIZER_FILES) {
    try {
      await Deno.copyFile(`${dir}/${name}`, `${to}/${name}`);
      copied++;
    } catch { /* optional file */ }
  }
  if (copied === 0) {
    // llama2.c: keep its tokenizer beside the converted model so our loader finds it.
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && /^tok.*\.bin$/.test(e.name)) {
        await Deno.copyFile(`${dir}/${e.name}`, `${to}/${e.name}`);
      }
    }
  }
}
