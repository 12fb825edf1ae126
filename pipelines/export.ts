/**
 * Exports a model (ours or any checkpoint we read) as a deployable directory.
 * `deno run -A pipelines/export.ts [--model DIR] --out DIR [--format onnx] [--embeddings 8]
 * [--eval val,FILE] [--eval-windows N] [--json] [--quiet]`
 * @module
 */
import { DEFAULT_MODEL, FIXTURE_DEFAULTS } from "../fixtures/paths.ts";
import { intFlag, parseFlags, runMain, UsageError } from "../cli/flags.ts";
import { exportModel } from "../run/export.ts";

const USAGE = `usage: deno run -A pipelines/export.ts [--model DIR] --out DIR [--format F]
       [--embeddings 32|8] [--eval val,wikitext2,FILE] [--eval-windows N] [--json] [--quiet]
  --format F           onnx (default): onnx/model*.onnx with MatMulNBits layers and a KV cache,
                       config.json, generation_config.json and the tokenizer files, in the
                       layout transformers.js and Optimum load
  --embeddings B       32 (float, default) or 8: the embedding and head in 8 bits
  --eval A,B           also measure the exported model's perplexity (val, wikitext2 or a file)
  --eval-windows N     evaluate the first N windows only`;

const FLAGS = {
  model: { type: "string" },
  out: { type: "string" },
  format: { type: "string" },
  embeddings: { type: "string" },
  eval: { type: "string" },
  "eval-windows": { type: "string" },
  json: { type: "boolean" },
  quiet: { type: "boolean" },
  help: { type: "boolean" },
} as const;

type Flags = ReturnType<typeof parseFlags<typeof FLAGS>>;

/** The formats the command writes, by `--format` name. */
const FORMATS: Record<string, (f: Flags, model: string, out: string) => Promise<unknown>> = {
  onnx: (f, model, out) => {
    const embeddings = intFlag(f.embeddings, "--embeddings", 32);
    if (embeddings !== 32 && embeddings !== 8) {
      throw new UsageError(`--embeddings ${embeddings}: expected 32 or 8`);
    }
    const evalFiles = ((f.eval as string | undefined) ?? "").split(",").filter((s) => s)
      .map((n) => FIXTURE_DEFAULTS.evalTexts[n] ?? n);
    return exportModel({
      model,
      out,
      embeddings,
      eval: {
        files: evalFiles,
        windows: f["eval-windows"] === undefined
          ? undefined
          : intFlag(f["eval-windows"], "--eval-windows"),
      },
      quiet: !!f.quiet,
    });
  },
};

/** Runs the command on `argv`; returns what the format's writer returned. */
export async function exportMain(argv: string[]): Promise<unknown> {
  const f = parseFlags(argv, FLAGS, USAGE);
  if (f.help) return console.log(USAGE);
  if (!f.out) throw new UsageError(`--out is required\n${USAGE}`);
  const format = (f.format as string | undefined) ?? "onnx";
  const write = FORMATS[format];
  if (!write) {
    throw new UsageError(`--format ${format}: expected ${Object.keys(FORMATS).join(", ")}`);
  }
  const result = await write(f, (f.model as string | undefined) ?? DEFAULT_MODEL, f.out as string);
  if (f.json) console.log(JSON.stringify(result));
  return result;
}

if (import.meta.main) await runMain(async (argv) => void await exportMain(argv));
