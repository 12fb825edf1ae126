/**
 * Packing a model for other runtimes — GPTQ and compressed-tensors directories for
 * vLLM/transformers, GGUF files for llama.cpp — from the exact grids of our output
 * (`formats/quantized.ts`), and evaluating the packed model itself, read back through our
 * readers, so the report gives the perplexity of what ships. A quantization run with `--format`
 * packs its output after evaluating it (its scales are already fp16, so the packed linears are
 * exactly the evaluated ones); `pipelines/export.ts --format` packs an existing output,
 * rounding float32 scales to fp16 if needed (the report says how many).
 * @module
 */
import { perplexity } from "../eval/perplexity.ts";
import { writeCompressedTensors } from "../formats/compressed_tensors.ts";
import { checkGgufModel, readSpmVocab, writeGguf } from "../formats/gguf_llama.ts";
import { writeGptq } from "../formats/gptq.ts";
import { openModel, openTokenizer } from "../formats/open.ts";
import {
  checkPackable,
  type GgufGridType,
  type PackedFormat,
  type PackRequest,
  scaleFormatOf,
} from "../formats/packed.ts";
import {
  gridOf,
  type GridWeight,
  openQuantized,
  type QuantizedModel,
} from "../formats/quantized.ts";
import { rtnWeight } from "../algorithms/quantizer.ts";
import type { Tensor } from "../kernels/tensor.ts";
import type { Runtime } from "../kernels/session.ts";
import { LINEAR_NAMES, linearShape, type ModelConfig } from "../models/config.ts";
import { readDataset } from "../text/dataset.ts";

/** Options of {@linkcode packModel}. */
export interface PackOptions {
  /** The packed format. */
  format: PackedFormat;
  /**
   * Output: a directory (gptq, compressed-tensors) or `.gguf` file; default beside the model,
   * `<dir>/gptq`, `<dir>/compressed-tensors` or `<dir>/model-<TYPE>.gguf`.
   */
  out?: string;
  /** GGUF: type of the embedding and head, and of the linears of an unquantized model (F32). */
  floatType?: "F32" | "F16";
  /**
   * GGUF: the embedding and head as Q8_0 blocks (rounded to nearest on a symmetric 8-bit grid
   * of 32 columns, fp16 scales), as llama.cpp's own Q4_0/Q4_1/Q8_0 files store them.
   */
  embeddingType?: "Q8_0";
}

/** A [rows, cols] float matrix rounded to nearest onto Q8_0's grid (symmetric, groups of 32). */
export function q8Grid(name: string, t: Tensor): GridWeight {
  const r = rtnWeight(t, { bits: 8, groupSize: 32, sym: true, scaleFormat: "fp16" });
  const shape = [t.shape[0], r.nGroups];
  return gridOf(name, r.weight, { data: r.scale, shape }, { data: r.zero, shape }, 255, 32, null);
}

/** What was packed, and how exactly. */
export interface PackResult {
  /** The packed format. */
  format: PackedFormat;
  /** The directory or file written. */
  path: string;
  /** Bytes on disk (the weights' files). */
  bytes: number;
  /** GGUF: the linears' ggml type (F32/F16 for an unquantized model). */
  gguf_type?: string;
  /** GPTQ: `gptq` (v1) or `gptq_v2` (a zero point of 0 occurred). */
  checkpoint_format?: string;
  /** Scales that were not fp16 and were rounded (the codes kept). */
  rounded_scales: number;
  /** GGUF Q4_1 blocks whose minimum −d·zero is not an fp16 value. */
  inexact_mins: number;
  /** GGUF: linears stored as F16 floats (input width not a multiple of 32). */
  fallback: string[];
  /** Every linear layer dequantizes bit for bit to the weights of the source model. */
  linears_exact: boolean;
  /** GGUF: the embedding's (and head's) type when not F32. */
  embedding_type?: string;
  /** Perplexity of the packed model itself, read back, per evaluation file. */
  eval?: Record<string, number>;
}

/** What a packed format must hold for a model we wrote (from its `quantization_config`). */
export function packRequestOf(q: QuantizedModel, c: ModelConfig): PackRequest {
  const qc = q.quant;
  const extras = [
    ...(c.activationBits ? [`${c.activationBits}-bit activations`] : []),
    ...(c.kvBits ? [`${c.kvBits}-bit q/k/v`] : []),
    ...Object.keys(c.extraTensors ?? {}).length
      ? [`extra block tensors (${Object.keys(c.extraTensors!).join(", ")})`]
      : [],
  ];
  return {
    method: String(qc.quant_method ?? "the model").replace(/^qllm-deno\//, ""),
    maxq: q.maxq,
    groupSize: typeof qc.group_size === "number" && qc.group_size > 0 ? qc.group_size : 0,
    sym: qc.sym === true,
    scatteredGroups: qc.desc_act === true && qc.static_groups !== true &&
      typeof qc.group_size === "number" && qc.group_size > 0,
    notUniform: q.notUniform,
    runtimeExtras: extras.length ? extras.join(", ") : null,
  };
}

/**
 * Refuses, before any work, a model a format cannot hold: GPTQ packs whole int32 words along
 * both dimensions of every linear; a llama GGUF file holds no biases, q/k norm, RoPE scaling,
 * explicit head_dim or sliding window (`checkGgufModel`).
 */
export function checkPackShapes(format: PackedFormat, c: ModelConfig, maxq: number): void {
  if (format === "gguf") checkGgufModel(c, "--format gguf");
  if (format !== "gptq") return;
  const bits = Math.ceil(Math.log2(maxq + 1));
  for (const l of LINEAR_NAMES) {
    const [n, k] = linearShape(c, l);
    if ((k * bits) % 32 || (n * bits) % 32) {
      throw new Error(
        `--format gptq: ${l} is [${n}, ${k}]; GPTQ packs ${bits}-bit values into whole int32 ` +
          `words along both dimensions: use --format compressed-tensors (it pads) or gguf`,
      );
    }
  }
}

/** Packs the model at `dir` (our output, or any model for an unquantized GGUF). */
export async function packModel(dir: string, o: PackOptions): Promise<PackResult> {
  const model = await openModel(dir);
  const q = await openQuantized(dir);
  try {
    const bits = q.quant.bits;
    const unquantized = !String(q.quant.quant_method ?? "").startsWith("qllm-deno/") ||
      typeof bits !== "number" || bits >= 16;
    const base = {
      format: o.format,
      rounded_scales: 0,
      inexact_mins: 0,
      fallback: [],
      ...(o.embeddingType ? { embedding_type: o.embeddingType } : {}),
    };
    if (o.format === "gguf" && unquantized) {
      const type = o.floatType ?? "F32";
      const path = o.out ?? `${dir.replace(/\/+$/, "")}/model-${type}.gguf`;
      const r = await writeGguf(path, model, await readSpmVocab(dir), {
        linears: { type },
        floatType: type,
        ...(o.embeddingType ? { embedding: { type: o.embeddingType, grid: q8Grid } } : {}),
      });
      return { ...base, path, bytes: r.bytes, gguf_type: type, linears_exact: type === "F32" };
    }
    let ggufType: GgufGridType | null;
    try {
      ggufType = checkPackable(o.format, packRequestOf(q, model.config));
    } catch (e) {
      throw new Error(`${dir}: ${(e as Error).message}`);
    }
    checkPackShapes(o.format, model.config, q.maxq);
    const grids = (i: number, w: Parameters<QuantizedModel["grids"]>[1]) => q.grids(i, w);
    if (o.format === "gguf") {
      const path = o.out ?? `${dir.replace(/\/+$/, "")}/model-${ggufType}.gguf`;
      const r = await writeGguf(path, model, await readSpmVocab(dir), {
        linears: { type: ggufType!, grids, scaleFormat: scaleFormatOf(ggufType) },
        floatType: o.floatType,
        ...(o.embeddingType ? { embedding: { type: o.embeddingType, grid: q8Grid } } : {}),
      });
      return {
        ...base,
        path,
        bytes: r.bytes,
        gguf_type: ggufType!,
        rounded_scales: r.roundedScales,
        inexact_mins: r.inexactMins,
        fallback: r.fallback,
        linears_exact: r.roundedScales === 0 && r.inexactMins === 0 && !r.fallback.length,
      };
    }
    const path = o.out ?? `${dir.replace(/\/+$/, "")}/${o.format}`;
    if (o.format === "gptq") {
      const r = await writeGptq(path, model, q);
      return {
        ...base,
        path,
        bytes: r.bytes,
        checkpoint_format: r.checkpointFormat,
        rounded_scales: r.roundedScales,
        linears_exact: r.roundedScales === 0,
      };
    }
    const r = await writeCompressedTensors(path, model, q);
    return {
      ...base,
      path,
      bytes: r.bytes,
      rounded_scales: r.roundedScales,
      linears_exact: r.roundedScales === 0,
    };
  } finally {
    q.close();
    model.close();
  }
}

/**
 * Perplexity of a packed model read back (with its own tokenizer: a GGUF file's vocabulary, a
 * directory's tokenizer files) on each file, as PROTOCOL.md §3.
 */
export async function evaluatePacked(
  rt: Runtime,
  path: string,
  files: string[],
  o: { seqlen: number; windows?: number; log?: (m: string) => void },
): Promise<Record<string, number>> {
  const model = await openModel(path);
  try {
    const tok = await openTokenizer(path);
    const out: Record<string, number> = {};
    for (const f of files) {
      o.log?.(`evaluating the packed model ${path} on ${f}`);
      const ids = await readDataset(f, tok);
      out[f.replace(/^.*\//, "")] =
        (await perplexity(rt, model, ids, { seqlen: o.seqlen, maxWindows: o.windows })).ppl;
    }
    return out;
  } finally {
    model.close();
  }
}

/**
 * Packs a model and evaluates the packed model itself (`pipelines/export.ts --format`): the
 * result says how many scales were rounded and gives the packed model's perplexity.
 */
export async function packAndEvaluate(
  rt: Runtime,
  dir: string,
  o: PackOptions & { evalFiles: string[]; windows?: number; log?: (m: string) => void },
): Promise<PackResult> {
  o.log?.(`packing ${dir} as ${o.format}`);
  const r = await packModel(dir, o);
  if (o.evalFiles.length) {
    const m = await openModel(r.path);
    const seqlen = Math.min(256, m.config.maxSeq);
    m.close();
    r.eval = await evaluatePacked(rt, r.path, o.evalFiles, {
      seqlen,
      windows: o.windows,
      log: o.log,
    });
  }
  return r;
}
