/**
 * Opening a model for streaming: the config plus readers for the embedding, one decoder block
 * at a time, the final norm and the head. Hugging Face directories (safetensors, sharded or not)
 * and llama2.c checkpoints are read the same way.
 * @module
 */
import type { Tensor } from "../kernels/tensor.ts";
import { openCheckpoint } from "./checkpoint.ts";
import { blockTensorShapes, type ModelConfig, parseHfConfig } from "./config.ts";
import { openLlama2c } from "./llama2c.ts";

/**
 * One decoder block's tensors, keyed by their Hugging Face names relative to
 * `model.layers.{i}.` (`self_attn.q_proj.weight`, `input_layernorm.weight`, …).
 * Linear weights are [out, in] (y = x·Wᵀ).
 */
export type BlockWeights = Record<string, Tensor>;

/** A model whose tensors are read on demand, one block at a time. */
export interface ModelSource {
  /** The directory or file it was opened from. */
  readonly path: string;
  /** `hf` for a Hugging Face directory, `llama2c` for a llama2.c checkpoint. */
  readonly format: "hf" | "llama2c";
  /** The model's shape and options. */
  readonly config: ModelConfig;
  /** Token embedding [vocab, hidden]. */
  embedding(): Promise<Tensor>;
  /** Decoder block `i`'s tensors. */
  block(i: number): Promise<BlockWeights>;
  /** Final RMSNorm weight [hidden]. */
  finalNorm(): Promise<Tensor>;
  /** Output projection [vocab, hidden] (the embedding when tied). */
  head(): Promise<Tensor>;
  /** Releases the open files; no reads after it. */
  close(): void;
}

/** Throws unless `t` has `shape`; the message names the tensor and the file. */
export function expectShape(t: Tensor, shape: number[], tensorName: string, file: string): Tensor {
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new Error(
      `${file}: tensor "${tensorName}" has shape [${t.shape.join(", ")}], ` +
        `expected [${shape.join(", ")}] from the config`,
    );
  }
  return t;
}

/**
 * Opens a model: a Hugging Face directory (`config.json` + safetensors), a llama2.c directory
 * (one `.bin` checkpoint beside its `tok*.bin`), or a llama2.c `.bin` file.
 */
export async function openModel(path: string): Promise<ModelSource> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(path);
  } catch {
    throw new Error(`--model ${path}: no such file or directory`);
  }
  if (stat.isFile) return await openLlama2c(path);
  if (await exists(`${path}/config.json`)) return await openHf(path);
  const bins: string[] = [];
  for await (const e of Deno.readDir(path)) {
    if (e.isFile && e.name.endsWith(".bin") && !/^tok.*\.bin$/.test(e.name)) bins.push(e.name);
  }
  if (bins.length === 1) return await openLlama2c(`${path}/${bins[0]}`);
  throw new Error(
    `--model ${path}: neither a Hugging Face model (config.json) nor a llama2.c checkpoint ` +
      `(one .bin file${bins.length ? `; found ${bins.length}: ${bins.join(", ")}` : ""})`,
  );
}

async function exists(p: string): Promise<boolean> {
  try {
    await Deno.stat(p);
    return true;
  } catch {
    return false;
  }
}

async function openHf(dir: string): Promise<ModelSource> {
  const configFile = `${dir}/config.json`;
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(await Deno.readTextFile(configFile));
  } catch (e) {
    throw new Error(`${configFile}: ${(e as Error).message}`);
  }
  const config = parseHfConfig(json, configFile);
  const ckpt = await openCheckpoint(dir);
  const shapes = blockTensorShapes(config);
  const read = async (name: string, shape: number[]) => {
    if (!ckpt.has(name)) throw new Error(`${dir}: tensor "${name}" is missing from the checkpoint`);
    return expectShape(await ckpt.readF32(name), shape, name, dir);
  };
  const [v, d] = [config.vocab, config.hidden];
  const embedName = ckpt.has("model.embed_tokens.weight") ? "model.embed_tokens.weight" : null;
  const headName = !config.tiedEmbeddings && ckpt.has("lm_head.weight")
    ? "lm_head.weight"
    : embedName ?? "lm_head.weight";
  return {
    path: dir,
    format: "hf",
    config,
    embedding: () => read(embedName ?? "model.embed_tokens.weight", [v, d]),
    async block(i: number) {
      if (!(i >= 0 && i < config.layers)) throw new Error(`${dir}: no decoder layer ${i}`);
      const out: BlockWeights = {};
      for (const [rel, shape] of Object.entries(shapes)) {
        out[rel] = await read(`model.layers.${i}.${rel}`, shape);
      }
      return out;
    },
    finalNorm: () => read("model.norm.weight", [d]),
    head: () => read(headName, [v, d]),
    close: () => ckpt.close(),
  };
}
