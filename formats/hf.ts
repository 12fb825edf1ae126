/**
 * Hugging Face model directories: `config.json` and safetensors weights (one file or sharded
 * with an index), read one block at a time.
 * @module
 */
import { blockTensorShapes, parseHfConfig } from "../models/config.ts";
import { type BlockWeights, expectShape, type ModelSource } from "../models/source.ts";
import { openCheckpoint } from "./checkpoint.ts";

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
