/**
 * Opening a model of any format we read as a {@linkcode ModelSource}: a Hugging Face directory
 * (plain, GPTQ or compressed-tensors), a llama2.c directory or `.bin` file, a GGUF file; and
 * its tokenizer.
 * @module
 */
import type { ModelSource } from "../models/source.ts";
import { loadTokenizer, type TextTokenizer } from "../text/tokenizer.ts";
import { spmTokenizer } from "../text/spm.ts";
import { openCompressedTensors } from "./compressed_tensors.ts";
import { openGguf, readSpmVocab } from "./gguf_llama.ts";
import { openGptq } from "./gptq.ts";
import { openHf } from "./hf.ts";
import { openLlama2c } from "./llama2c.ts";

/**
 * Opens a model: a Hugging Face directory (`config.json` + safetensors; GPTQ and
 * compressed-tensors checkpoints by their `quantization_config.quant_method`), a llama2.c
 * directory (one `.bin` checkpoint beside its `tok*.bin`), a llama2.c `.bin` file, or a GGUF
 * file (`.gguf`).
 */
export async function openModel(path: string): Promise<ModelSource> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(path);
  } catch {
    throw new Error(`--model ${path}: no such file or directory`);
  }
  if (stat.isFile) return path.endsWith(".gguf") ? await openGguf(path) : await openLlama2c(path);
  if (await exists(`${path}/config.json`)) {
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(await Deno.readTextFile(`${path}/config.json`));
    } catch (e) {
      throw new Error(`${path}/config.json: ${(e as Error).message}`);
    }
    const method = (json.quantization_config as Record<string, unknown> | undefined)
      ?.quant_method;
    if (method === "gptq") return await openGptq(path, json);
    if (method === "compressed-tensors") return await openCompressedTensors(path, json);
    return await openHf(path);
  }
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

/**
 * The tokenizer of a model: a GGUF file's own vocabulary (llama.cpp's SentencePiece tokenizer),
 * or the tokenizer files in the model's directory (`tokenizer.json`, llama2.c `tok*.bin`, or
 * the vocabulary-only `tokenizer.gguf` we write beside models read from GGUF).
 */
export async function openTokenizer(path: string): Promise<TextTokenizer> {
  if (path.endsWith(".gguf")) return spmTokenizer(await readSpmVocab(path));
  const dir = await modelDir(path);
  if (!(await exists(`${dir}/tokenizer.json`)) && await exists(`${dir}/tokenizer.gguf`)) {
    return spmTokenizer(await readSpmVocab(`${dir}/tokenizer.gguf`));
  }
  return await loadTokenizer(dir);
}

/** The directory holding a model's files (a llama2.c `.bin` path → its folder). */
export async function modelDir(path: string): Promise<string> {
  const st = await Deno.stat(path);
  return st.isFile ? path.replace(/\/[^/]*$/, "") || "." : path;
}

async function exists(p: string): Promise<boolean> {
  try {
    await Deno.stat(p);
    return true;
  } catch {
    return false;
  }
}
