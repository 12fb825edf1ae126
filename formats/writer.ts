/**
 * Writing a model as a Hugging Face directory, tensor by tensor: `config.json`, the tokenizer
 * files of the source model, and safetensors (sharded past 2 GiB). Everything is written into a
 * temporary sibling directory and renamed onto the output path only when complete.
 * @module
 */
import { firstNonFinite, type Tensor } from "../kernels/tensor.ts";
import { type CheckpointSnapshot, CheckpointWriter } from "./checkpoint.ts";
import { type ModelConfig, toHfConfig } from "../models/config.ts";
import type { BlockWeights } from "../models/source.ts";
import { readSpmVocab, writeVocabGguf } from "./gguf_llama.ts";
import {
  exactlyRepresentable,
  type SafetensorsSnapshot,
  SafetensorsWriter,
} from "./safetensors.ts";
import { claimTemp, isEmptyDir, isOurOutput, replaceDir, writeMarker } from "./output_dir.ts";

const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "generation_config.json",
  "tokenizer.model",
];

/** Extra `config.json` fields (e.g. a `quantization_config`). */
export type ConfigExtras = Record<string, unknown>;

/** Floating dtypes a model's weights are stored in. */
export type FloatDtype = "F32" | "F16" | "BF16";

const TORCH_DTYPE: Record<FloatDtype, string> = {
  F32: "float32",
  F16: "float16",
  BF16: "bfloat16",
};

/** The state of an unfinished {@linkcode ModelWriter}, from which another process resumes it. */
export interface ModelWriterSnapshot {
  /** Final output directory. */
  outDir: string;
  /** The temporary directory written into. */
  tmpDir: string;
  /** The preferred dtype. */
  dtype: FloatDtype;
  /** Tensors written per dtype. */
  written: Record<FloatDtype, number>;
  /** The weights. */
  weights: CheckpointSnapshot;
  /** `learned.safetensors`, once started. */
  learned: SafetensorsSnapshot | null;
}

/** Options of {@linkcode ModelWriter.create}. */
export interface ModelWriterOptions {
  /** Largest shard (2 GiB). */
  maxShardBytes?: number;
  /** `__metadata__` of every shard. */
  metadata?: Record<string, string>;
  /**
   * The dtype tensors are stored in where every value is exact in it (a bf16 model's norms and
   * embeddings, grid values that bf16 holds); other tensors are stored as F32. Default F32.
   */
  dtype?: FloatDtype;
}

/** Streams a model into `outDir`; nothing appears under `outDir` until {@linkcode finish}. */
export class ModelWriter {
  /** Final output directory (trailing slashes removed). */
  readonly outDir: string;
  /** Temporary sibling directory written into, renamed to `outDir` by {@linkcode finish}. */
  readonly tmpDir: string;
  #config: ModelConfig;
  #weights: CheckpointWriter;
  #learned: SafetensorsWriter | null = null;
  #dtype: FloatDtype;
  /** Tensors written per dtype. */
  readonly #written: Record<FloatDtype, number> = { F32: 0, F16: 0, BF16: 0 };

  private constructor(
    outDir: string,
    tmpDir: string,
    config: ModelConfig,
    w: CheckpointWriter,
    dtype: FloatDtype,
  ) {
    this.outDir = outDir;
    this.tmpDir = tmpDir;
    this.#config = config;
    this.#weights = w;
    this.#dtype = dtype;
  }

  /** Starts writing a model with `config` to `outDir`. */
  static async create(
    outDir: string,
    config: ModelConfig,
    o: ModelWriterOptions & { tmpDir?: string } = {},
  ): Promise<ModelWriter> {
    const clean = outDir.replace(/\/+$/, "");
    const tmpDir = o.tmpDir ?? partialDir(clean);
    try {
      await Deno.mkdir(tmpDir, { recursive: true });
      await claimTemp(tmpDir);
      const w = await CheckpointWriter.create(tmpDir, {
        maxShardBytes: o.maxShardBytes,
        metadata: { format: "pt", ...o.metadata },
      });
      return new ModelWriter(clean, tmpDir, config, w, o.dtype ?? "F32");
    } catch (e) {
      throw new Error(`--out ${outDir}: cannot write ${tmpDir} (${(e as Error).message})`);
    }
  }

  /** Tensors written so far per dtype. */
  get written(): Readonly<Record<FloatDtype, number>> {
    return this.#written;
  }

  /** What {@linkcode resume} needs to continue this model in another process. */
  snapshot(): ModelWriterSnapshot {
    return {
      outDir: this.outDir,
      tmpDir: this.tmpDir,
      dtype: this.#dtype,
      written: { ...this.#written },
      weights: this.#weights.snapshot(),
      learned: this.#learned?.snapshot() ?? null,
    };
  }

  /**
   * Continues a model from a {@linkcode snapshot} taken by a process that was killed: the
   * temporary directory is claimed by this process, and whatever was written after the
   * snapshot is discarded.
   */
  static async resume(s: ModelWriterSnapshot, config: ModelConfig): Promise<ModelWriter> {
    await claimTemp(s.tmpDir);
    const w = new ModelWriter(
      s.outDir,
      s.tmpDir,
      config,
      await CheckpointWriter.resume(s.weights),
      s.dtype,
    );
    if (s.learned) w.#learned = await SafetensorsWriter.resume(s.learned);
    Object.assign(w.#written, s.written);
    // Temporary files started after the snapshot (a new shard, activation files) go.
    const keep = new Set(
      [
        ...s.weights.done.map((d) => d.tmpPath),
        s.weights.current?.dataPath,
        s.learned?.dataPath,
      ].filter((p) => p !== undefined).map((p) => p!.replace(/^.*\//, "")),
    );
    for await (const e of Deno.readDir(s.tmpDir)) {
      if (keep.has(e.name) || !/^\.shard-|\.data-|\.tmp/.test(e.name)) continue;
      await Deno.remove(`${s.tmpDir}/${e.name}`, { recursive: true });
    }
    return w;
  }

  /**
   * Adds one tensor under its full Hugging Face name: in the writer's dtype where every value is
   * exact in it, else as F32. A NaN or infinity is refused, naming the tensor.
   */
  async add(name: string, t: Tensor): Promise<void> {
    const bad = firstNonFinite(t.data);
    if (bad >= 0) {
      throw new Error(
        `${this.outDir}: tensor "${name}" has a non-finite value (${t.data[bad]} at index ` +
          `${bad}); nothing non-finite is written`,
      );
    }
    const d = this.#dtype;
    const dtype = d !== "F32" && exactlyRepresentable(t.data, d) ? d : "F32";
    this.#written[dtype]++;
    await this.#weights.add(name, dtype, t.shape, t.data);
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
   * Completes the model inside {@linkcode tmpDir}: writes the final norm and head (only the
   * embedding when tied), the config (with `extras`) and copies the tokenizer files from
   * `tokenizerFrom`. The directory is then a complete model, still under its temporary name
   * (a run evaluates it there and adds its report before moving it into place).
   */
  async complete(
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
      const w = this.#written;
      const used = (Object.keys(w) as FloatDtype[]).filter((k) => w[k] > 0);
      const torchDtype = used.length === 1 ? TORCH_DTYPE[used[0]] : "float32";
      await Deno.writeTextFile(
        `${this.tmpDir}/config.json`,
        JSON.stringify(
          { ...toHfConfig(this.#config), torch_dtype: torchDtype, ...extras },
          null,
          2,
        ) + "\n",
      );
      await copyTokenizerFiles(tokenizerFrom, this.tmpDir);
    } catch (e) {
      await this.abort();
      throw new Error(`${this.tmpDir}: ${(e as Error).message}`);
    }
  }

  /**
   * Completes the model and moves it into place: onto a missing output path, or over a previous
   * output of ours (a generated model or a run's output: {@linkcode isOurOutput}) with
   * {@linkcode replaceDir}; anything else at that path is refused and left alone.
   */
  async finish(
    finalNorm: Tensor,
    head: Tensor | null,
    tokenizerFrom: string,
    extras: ConfigExtras = {},
  ): Promise<void> {
    await this.complete(finalNorm, head, tokenizerFrom, extras);
    try {
      const st = await Deno.lstat(this.outDir).catch(() => null);
      if (
        st && !(st.isDirectory && (await isOurOutput(this.outDir) || await isEmptyDir(this.outDir)))
      ) {
        throw new Error(`${this.outDir} exists and is not an output of qllm-deno: left as it is`);
      }
      await writeMarker(this.tmpDir, { kind: "model" });
      await replaceDir(this.tmpDir, this.outDir);
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

/** A fresh temporary sibling of `outDir`: `<outDir>.partial-<random>`. */
export function partialDir(outDir: string): string {
  return `${outDir.replace(/\/+$/, "")}.partial-${crypto.randomUUID().slice(0, 8)}`;
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
