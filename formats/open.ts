/**
 * Opening a model of any format we read as a {@linkcode ModelSource}: a Hugging Face directory,
 * a llama2.c directory or `.bin` file.
 * @module
 */
import type { ModelSource } from "../models/source.ts";
import { openHf } from "./hf.ts";
import { openLlama2c } from "./llama2c.ts";

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
