/**
 * The Hugging Face directory around a packed checkpoint (GPTQ, compressed-tensors): what both
 * formats share. Writing streams the model block by block — embedding, norms and head as fp16,
 * each linear layer as the tensors its format's {@linkcode LinearCodec} makes from the layer's
 * exact grid (scales rounded to fp16 if they are not already) — into a temporary sibling
 * directory renamed onto the output at the end, with `config.json` (`torch_dtype` float16 and
 * the format's `quantization_config`) and the source's tokenizer files. Reading gives a
 * {@linkcode ModelSource} whose linear weights the codec dequantizes one block at a time.
 * @module
 */
import { claimTemp, replaceDir, writeMarker } from "./output_dir.ts";
import type { Tensor } from "../kernels/tensor.ts";
import {
  blockTensorShapes,
  LINEAR_NAMES,
  type LinearName,
  type ModelConfig,
  parseHfConfig,
  toHfConfig,
} from "../models/config.ts";
import { type BlockWeights, expectShape, type ModelSource } from "../models/source.ts";
import { type Checkpoint, CheckpointWriter, openCheckpoint } from "./checkpoint.ts";
import { roundGridScales } from "./packed.ts";
import type { GridWeight, QuantizedModel } from "./quantized.ts";
import type { RawData, WritableDtype } from "./safetensors.ts";
import { copyTokenizerFiles } from "./writer.ts";

/** One stored tensor of a packed linear layer. */
export interface PackedTensor {
  /** Suffix after the layer's prefix (`qweight`, `weight_packed`, …). */
  name: string;
  /** Stored dtype. */
  dtype: WritableDtype;
  /** Dimensions, outermost first. */
  shape: number[];
  /** The values (a Float32Array for F16). */
  data: RawData;
}

/** How a format stores one linear layer. */
export interface LinearCodec {
  /** The tensors of a layer from its grid (scales already fp16); throws naming `prefix`. */
  pack(prefix: string, grid: GridWeight): PackedTensor[];
  /** The layer's float weight [rows, cols], dequantized from the checkpoint. */
  unpack(ckpt: Checkpoint, prefix: string, rows: number, cols: number): Promise<Float32Array>;
}

/** What writing a packed directory did. */
export interface PackedHfReport {
  /** The directory written. */
  path: string;
  /** Bytes of the safetensors files. */
  bytes: number;
  /** Scales that were not fp16 and were rounded (0: the linears are exactly the grid's). */
  roundedScales: number;
}

/**
 * Writes `model` (whose linear layers have the grids `q`) as a packed Hugging Face directory.
 * `quantizationConfig` is a function of nothing but the settings, except where a codec learns
 * something while packing (GPTQ's checkpoint format): it is called after the last block.
 */
export async function writePackedHf(
  out: string,
  model: ModelSource,
  q: QuantizedModel,
  codec: LinearCodec,
  quantizationConfig: () => Record<string, unknown>,
): Promise<PackedHfReport> {
  const c = model.config;
  const clean = out.replace(/\/+$/, "");
  const tmp = `${clean}.partial-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(tmp, { recursive: true });
  await claimTemp(tmp);
  const w = await CheckpointWriter.create(tmp, { metadata: { format: "pt" } });
  let roundedScales = 0;
  try {
    const f16 = (name: string, t: Tensor) => w.add(name, "F16", t.shape, t.data);
    await f16("model.embed_tokens.weight", await model.embedding());
    for (let i = 0; i < c.layers; i++) {
      const weights = await model.block(i);
      const grids = await q.grids(i, weights);
      for (const [rel, t] of Object.entries(weights)) {
        const layer = rel.replace(/\.weight$/, "") as LinearName;
        const name = `model.layers.${i}.${rel}`;
        if (!LINEAR_NAMES.includes(layer)) {
          await f16(name, t);
          continue;
        }
        const r = roundGridScales(grids[layer], "fp16");
        roundedScales += r.changed;
        const prefix = `model.layers.${i}.${layer}`;
        for (const p of codec.pack(prefix, r.grid)) {
          await w.add(`${prefix}.${p.name}`, p.dtype, p.shape, p.data);
        }
      }
    }
    await f16("model.norm.weight", await model.finalNorm());
    if (!c.tiedEmbeddings) await f16("lm_head.weight", await model.head());
    const files = await w.finish();
    await Deno.writeTextFile(
      `${tmp}/config.json`,
      JSON.stringify(
        { ...toHfConfig(c), torch_dtype: "float16", quantization_config: quantizationConfig() },
        null,
        2,
      ) + "\n",
    );
    await copyTokenizerFiles(model.path, tmp);
    let bytes = 0;
    for (const f of files) bytes += (await Deno.stat(`${tmp}/${f}`)).size;
    await writeMarker(tmp, { kind: "packed", format: "hf" });
    await replaceDir(tmp, clean);
    return { path: clean, bytes, roundedScales };
  } catch (e) {
    await w.abort().catch(() => {});
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}

/**
 * Opens a packed Hugging Face directory as a {@linkcode ModelSource} of kind `format`: the
 * codec dequantizes each linear layer when its block is read.
 */
export async function openPackedHf(
  dir: string,
  json: Record<string, unknown>,
  format: "gptq" | "compressed-tensors",
  codec: LinearCodec,
): Promise<ModelSource> {
  const file = `${dir}/config.json`;
  const config: ModelConfig = parseHfConfig(json, file);
  const ckpt = await openCheckpoint(dir);
  try {
    const read = async (name: string, shape: number[]) => {
      if (!ckpt.has(name)) throw new Error(`${dir}: tensor "${name}" is missing`);
      return expectShape(await ckpt.readF32(name), shape, name, dir);
    };
    const shapes = blockTensorShapes(config);
    const [v, d] = [config.vocab, config.hidden];
    const head = !config.tiedEmbeddings && ckpt.has("lm_head.weight")
      ? "lm_head.weight"
      : "model.embed_tokens.weight";
    return {
      path: dir,
      format,
      config,
      embedding: () => read("model.embed_tokens.weight", [v, d]),
      async block(i: number): Promise<BlockWeights> {
        if (!(i >= 0 && i < config.layers)) throw new Error(`${dir}: no decoder layer ${i}`);
        const out: BlockWeights = {};
        for (const [rel, shape] of Object.entries(shapes)) {
          const layer = rel.replace(/\.weight$/, "") as LinearName;
          out[rel] = LINEAR_NAMES.includes(layer)
            ? {
              data: await codec.unpack(ckpt, `model.layers.${i}.${layer}`, shape[0], shape[1]),
              shape,
            }
            : await read(`model.layers.${i}.${rel}`, shape);
        }
        return out;
      },
      finalNorm: () => read("model.norm.weight", [d]),
      head: () => read(head, [v, d]),
      close: () => ckpt.close(),
    };
  } catch (e) {
    ckpt.close();
    throw e;
  }
}

/** Reads an integer tensor of a packed checkpoint, checking its dtype and shape. */
export async function readInts(
  ckpt: Checkpoint,
  name: string,
  shape: number[],
  dtypes: string[] = ["I32"],
): Promise<Int32Array | Int8Array | Uint8Array> {
  if (!ckpt.has(name)) throw new Error(`${ckpt.dir}: tensor "${name}" is missing`);
  const t = await ckpt.readRaw(name);
  if (!dtypes.includes(t.dtype) || t.shape.join() !== shape.join()) {
    throw new Error(
      `${ckpt.dir}: tensor "${name}" is ${t.dtype} [${t.shape}], expected ` +
        `${dtypes.join(" or ")} [${shape}]`,
    );
  }
  return t.data as Int32Array | Int8Array | Uint8Array;
}

/** Reads a float tensor (F16, BF16 or F32) of a packed checkpoint, checking its shape. */
export async function readFloats(
  ckpt: Checkpoint,
  name: string,
  shape: number[],
): Promise<Float32Array> {
  if (!ckpt.has(name)) throw new Error(`${ckpt.dir}: tensor "${name}" is missing`);
  return expectShape(await ckpt.readF32(name), shape, name, ckpt.dir).data;
}

/** The transpose of a row-major [rows, cols] array. */
export function transposed<T extends Float32Array | Uint8Array | Int32Array>(
  a: T,
  rows: number,
  cols: number,
): T {
  const out = new (a.constructor as { new (n: number): T })(a.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c];
  return out;
}

/**
 * W[r, c] = scale[r, g(c)] · (code[r, c] − zero[r, g(c)]) in float32, the value every packed
 * format defines (scales and zeros [rows, groups], codes [rows, cols]).
 */
export function dequantizeGrid(
  codes: ArrayLike<number>,
  scales: Float32Array,
  zeros: ArrayLike<number>,
  gIdx: Int32Array,
  rows: number,
  cols: number,
): Float32Array {
  const groups = scales.length / rows, out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const k = r * groups + gIdx[c];
      out[r * cols + c] = Math.fround(scales[k] * (codes[r * cols + c] - zeros[k]));
    }
  }
  return out;
}

/** g_idx of runs of `groupSize` consecutive columns (0: one group). */
export function contiguousGIdx(cols: number, groupSize: number): Int32Array {
  return Int32Array.from({ length: cols }, (_, c) => groupSize ? Math.floor(c / groupSize) : 0);
}
