/**
 * Hugging Face model directories: `config.json` and safetensors weights (one file or sharded
 * with an index), read one block at a time.
 * @module
 */
import { blockTensorShapes, type ModelConfig, parseHfConfig } from "../models/config.ts";
import {
  type BlockWeights,
  expectFinite,
  expectShape,
  type ModelSource,
} from "../models/source.ts";
import { type Checkpoint, openCheckpoint } from "./checkpoint.ts";

/** Opens a Hugging Face directory for streaming. */
export async function openHf(dir: string): Promise<ModelSource> {
  const configFile = `${dir}/config.json`;
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(await Deno.readTextFile(configFile));
  } catch (e) {
    throw new Error(`${configFile}: ${(e as Error).message}`);
  }
  const config = parseHfConfig(json, configFile);
  const ckpt = await openCheckpoint(dir);
  try {
    checkAgainstConfig(ckpt, config, configFile);
  } catch (e) {
    ckpt.close();
    throw e;
  }
  const shapes = blockTensorShapes(config);
  const read = async (name: string, shape: number[]) => {
    if (!ckpt.has(name)) throw new Error(`${dir}: tensor "${name}" is missing from the checkpoint`);
    const file = ckpt.fileOf(name);
    return expectFinite(expectShape(await ckpt.readF32(name), shape, name, file), name, file);
  };
  const [v, d] = [config.vocab, config.hidden];
  const embedName = ckpt.has("model.embed_tokens.weight") ? "model.embed_tokens.weight" : null;
  const headName = !config.tiedEmbeddings && ckpt.has("lm_head.weight")
    ? "lm_head.weight"
    : embedName ?? "lm_head.weight";
  const q0 = "model.layers.0.self_attn.q_proj.weight";
  const qDtype = ckpt.has(q0) ? ckpt.info(q0).dtype : "F32";
  return {
    path: dir,
    format: "hf",
    config,
    dtype: qDtype === "F16" || qDtype === "BF16" ? qDtype : "F32",
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

/** Tensors some checkpoints carry that no model computes with. */
const IGNORED = /(^|\.)rotary_emb\.inv_freq$/;

/**
 * Checks a checkpoint's tensor list against its config before anything is read: every tensor
 * the config implies is there with its shape and a floating dtype, and nothing else is (a layer
 * beyond `num_hidden_layers`, a bias or norm the config does not declare); errors name the
 * tensor and the config.
 */
export function checkAgainstConfig(ckpt: Checkpoint, c: ModelConfig, configFile: string): void {
  const [v, d] = [c.vocab, c.hidden];
  const expected = new Map<string, number[]>([["model.norm.weight", [d]]]);
  const embed = "model.embed_tokens.weight";
  if (ckpt.has(embed) || !c.tiedEmbeddings) expected.set(embed, [v, d]);
  if (!c.tiedEmbeddings || !ckpt.has(embed)) expected.set("lm_head.weight", [v, d]);
  const shapes = blockTensorShapes(c);
  for (let i = 0; i < c.layers; i++) {
    for (const [rel, shape] of Object.entries(shapes)) {
      expected.set(`model.layers.${i}.${rel}`, shape);
    }
  }
  for (const [name, shape] of expected) {
    if (!ckpt.has(name)) {
      throw new Error(
        `${ckpt.dir}: tensor "${name}" is missing (${configFile} implies it)`,
      );
    }
    const info = ckpt.info(name);
    if (info.shape.length !== shape.length || info.shape.some((x, k) => x !== shape[k])) {
      throw new Error(
        `${ckpt.fileOf(name)}: tensor "${name}" has shape [${info.shape.join(", ")}], ` +
          `expected [${shape.join(", ")}] from ${configFile}`,
      );
    }
    if (!["F32", "F16", "BF16"].includes(info.dtype)) {
      throw new Error(`${ckpt.fileOf(name)}: tensor "${name}" is ${info.dtype}, not a float`);
    }
  }
  const stored = [...ckpt.names(), ...Object.keys(ckpt.aliases())];
  for (const name of stored) {
    if (expected.has(name) || IGNORED.test(name)) continue;
    if (name === "lm_head.weight" && c.tiedEmbeddings) continue; // the shared matrix, stored once
    const layer = /^model\.layers\.(\d+)\./.exec(name);
    if (layer && Number(layer[1]) >= c.layers) {
      throw new Error(
        `${ckpt.fileOf(name)}: tensor "${name}" belongs to layer ${layer[1]}, but ` +
          `${configFile} says num_hidden_layers ${c.layers}`,
      );
    }
    throw new Error(
      `${ckpt.fileOf(name)}: tensor "${name}" is not part of the model ${configFile} ` +
        "describes (a bias or norm its config does not declare?)",
    );
  }
}
