/**
 * Exports a model (ours or any checkpoint we read) for other runtimes.
 * `deno run -A pipelines/export.ts [--model DIR] --out DIR [--format onnx] [--embeddings 8]
 * [--eval val,FILE] [--eval-windows N] [--json] [--quiet]` writes a deployable ONNX directory;
 * `--format gptq|compressed-tensors|gguf` packs it instead (`run/pack.ts`): `--out` is a
 * directory (gptq, compressed-tensors) or a `.gguf` file; float32 scales are rounded to fp16, and
 * the packed model's own perplexity is printed (`--eval FILE|none`, `--eval-windows N`);
 * `--type f16` writes an unquantized model's GGUF as F16, and `--embedding-type q8_0` stores a
 * GGUF's embedding and head as Q8_0, as llama.cpp's files do.
 * @module
 */
import { intFlag, parseFlags, runMain, UsageError } from "../cli/flags.ts";
import { Interrupts } from "../cli/signals.ts";
import { ACCURACY_LEVELS } from "../formats/onnx.ts";
import { claimTemp, replaceDir } from "../formats/output_dir.ts";
import { DEFAULT_MODEL, FIXTURE_DEFAULTS } from "../fixtures/paths.ts";
import { Runtime } from "../kernels/session.ts";
import { exportModel } from "../run/export.ts";
import { packedFormatFlag } from "../run/main.ts";
import { checkOutput } from "../run/output.ts";
import { packAndEvaluate } from "../run/pack.ts";

const USAGE = `usage: deno run -A pipelines/export.ts [--model DIR] --out DIR [--format F]
       [--embeddings 32|8] [--eval val,wikitext2,FILE] [--eval-windows N] [--json] [--quiet]
  --format F           onnx (default): onnx/model*.onnx with MatMulNBits layers and a KV cache,
                       config.json, generation_config.json and the tokenizer files, in the
                       layout transformers.js and Optimum load;
                       gptq | compressed-tensors: a Hugging Face directory for vLLM and
                       transformers; gguf: a .gguf file for llama.cpp (--out FILE.gguf)
  --embeddings B       onnx: 32 (float, default) or 8: the embedding and head in 8 bits
  --accuracy-level L   onnx: MatMulNBits' accuracy_level: 1 (default: float activations, the
                       weights exactly as evaluated) or 4 (ORT quantizes the activations to
                       int8 per block: faster on the CPU; measure with --eval)
  --type T             gguf: f32 (default) or f16 for an unquantized model's weights
  --embedding-type T   gguf: q8_0 stores the embedding and head as Q8_0
  --eval A,B           also measure the exported model's perplexity (val, wikitext2 or a file;
                       packed formats evaluate val unless --eval none)
  --eval-windows N     evaluate the first N windows only
  --overwrite          replace a file or a directory at --out that is not an output of ours`;

const FLAGS = {
  model: { type: "string" },
  out: { type: "string" },
  format: { type: "string" },
  embeddings: { type: "string" },
  "accuracy-level": { type: "string" },
  type: { type: "string" },
  "embedding-type": { type: "string" },
  eval: { type: "string" },
  "eval-windows": { type: "string" },
  json: { type: "boolean" },
  quiet: { type: "boolean" },
  overwrite: { type: "boolean" },
  help: { type: "boolean" },
} as const;

type Flags = ReturnType<typeof parseFlags<typeof FLAGS>>;

const evalFiles = (f: Flags, fallback: string[]) =>
  ((f.eval as string | undefined) ?? fallback.join(",")).split(",")
    .filter((s) => s && s !== "none").map((n) => FIXTURE_DEFAULTS.evalTexts[n] ?? n);

const evalWindows = (f: Flags) =>
  f["eval-windows"] === undefined ? undefined : intFlag(f["eval-windows"], "--eval-windows");

/**
 * A packed format: pack into a temporary directory beside `--out` (removed on every exit path),
 * evaluate the packed model there, then move it into place; returns its result.
 */
async function exportPacked(
  f: Flags,
  model: string,
  out: string,
  interrupts: Interrupts,
): Promise<unknown> {
  const type = String(f.type ?? "f32").toUpperCase();
  if (type !== "F32" && type !== "F16") {
    throw new UsageError(`--type ${f.type}: expected f32 or f16`);
  }
  if (f["accuracy-level"] !== undefined) {
    throw new UsageError("--accuracy-level: only for --format onnx");
  }
  if (f["embedding-type"] !== undefined && String(f["embedding-type"]).toUpperCase() !== "Q8_0") {
    throw new UsageError(`--embedding-type ${f["embedding-type"]}: only q8_0 (default: as --type)`);
  }
  const format = packedFormatFlag(f.format)!;
  const evals = evalFiles(f, ["val"]);
  await checkOutput(out, {
    overwrite: !!f.overwrite,
    inputs: [{ flag: "--model", path: model }, ...evals.map((path) => ({ flag: "--eval", path }))],
  });
  const tmp = `${out}.partial-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.mkdir(tmp);
  } catch (e) {
    throw new Error(`--out ${out}: cannot create ${tmp} (${(e as Error).message})`);
  }
  interrupts.track(tmp);
  const rt = new Runtime("cpu");
  try {
    await claimTemp(tmp);
    const inner = `${tmp}/${format === "gguf" ? "model.gguf" : "model"}`;
    const r = await packAndEvaluate(rt, model, {
      format,
      out: inner,
      floatType: type,
      ...(f["embedding-type"] === undefined ? {} : { embeddingType: "Q8_0" as const }),
      evalFiles: evals,
      windows: evalWindows(f),
      log: f.quiet ? () => {} : (m) => console.error(m),
    });
    if (format === "gguf") await Deno.rename(inner, out);
    else await replaceDir(inner, out);
    return { ...r, path: out };
  } finally {
    await rt.release();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    interrupts.release(tmp);
  }
}

/** The formats the command writes, by `--format` name. */
const FORMATS: Record<
  string,
  (f: Flags, model: string, out: string, interrupts: Interrupts) => Promise<unknown>
> = {
  onnx: (f, model, out, interrupts) => {
    const embeddings = intFlag(f.embeddings, "--embeddings", 32);
    if (embeddings !== 32 && embeddings !== 8) {
      throw new UsageError(`--embeddings ${embeddings}: expected 32 or 8`);
    }
    const accuracyLevel = intFlag(f["accuracy-level"], "--accuracy-level", 1);
    if (!(ACCURACY_LEVELS as readonly number[]).includes(accuracyLevel)) {
      throw new UsageError(
        `--accuracy-level ${accuracyLevel}: expected ${ACCURACY_LEVELS.join(" or ")}`,
      );
    }
    return exportModel({
      model,
      out,
      embeddings,
      accuracyLevel: accuracyLevel as 1 | 4,
      eval: { files: evalFiles(f, []), windows: evalWindows(f) },
      quiet: !!f.quiet,
      overwrite: !!f.overwrite,
      interrupts,
    });
  },
  gptq: exportPacked,
  "compressed-tensors": exportPacked,
  gguf: exportPacked,
};

/** Runs the command on `argv`; returns what the format's writer returned. */
export async function exportMain(
  argv: string[],
  interrupts: Interrupts = new Interrupts(),
): Promise<unknown> {
  const f = parseFlags(argv, FLAGS, USAGE);
  if (f.help) return console.log(USAGE);
  if (!f.out) throw new UsageError(`--out is required\n${USAGE}`);
  const format = (f.format as string | undefined) ?? "onnx";
  const write = FORMATS[format];
  if (!write) {
    throw new UsageError(`--format ${format}: expected ${Object.keys(FORMATS).join(", ")}`);
  }
  const out = (f.out as string).replace(/\/+$/, "") || (f.out as string);
  const result = await write(f, (f.model as string | undefined) ?? DEFAULT_MODEL, out, interrupts);
  if (f.json || format !== "onnx") console.log(JSON.stringify(result, null, 2));
  return result;
}

if (import.meta.main) await runMain(async (argv, i) => void await exportMain(argv, i));
