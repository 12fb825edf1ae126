/**
 * Exports a model (ours or any checkpoint we read) as one ONNX graph from token ids to logits.
 * `deno run -A pipelines/export.ts --model DIR --out model.onnx [--seqlen 256] [--batch 1]`
 *
 * `--format gptq|compressed-tensors|gguf` packs it for other runtimes instead (`run/pack.ts`):
 * `--out` is a directory (gptq, compressed-tensors) or a `.gguf` file; float32 scales are
 * rounded to fp16, and the packed model's own perplexity is printed (`--eval FILE|none`,
 * `--eval-windows N`); `--type f16` writes an unquantized model's GGUF as F16, and
 * `--embedding-type q8_0` stores a GGUF's embedding and head as Q8_0, as llama.cpp's files do.
 * @module
 */
import { DEFAULT_MODEL, fixtureText } from "../fixtures/paths.ts";
import { Runtime } from "../kernels/session.ts";
import { packAndEvaluate } from "../run/pack.ts";
import { packedFormatFlag } from "../run/main.ts";
import { exportOnnx } from "../formats/onnx.ts";
import { openModel } from "../formats/open.ts";
import { intFlag, parseFlags, runMain } from "../cli/flags.ts";

const USAGE =
  "usage: deno run -A pipelines/export.ts [--model DIR] --out FILE.onnx [--seqlen N] [--batch N]\n" +
  "       deno run -A pipelines/export.ts [--model DIR] --format gptq|compressed-tensors|gguf\n" +
  "         --out DIR|FILE.gguf [--type f32|f16] [--embedding-type q8_0] [--eval FILE|none]\n" +
  "         [--eval-windows N]";

function embeddingFlag(f: Record<string, unknown>): "Q8_0" {
  if (String(f["embedding-type"]).toUpperCase() !== "Q8_0") {
    throw new Error(`--embedding-type ${f["embedding-type"]}: only q8_0 (default: as --type)`);
  }
  return "Q8_0";
}

/** `--format gptq|compressed-tensors|gguf`: pack, evaluate the packed model, print JSON. */
async function exportPacked(f: Record<string, unknown>): Promise<void> {
  const type = String(f.type ?? "f32").toUpperCase();
  if (type !== "F32" && type !== "F16") throw new Error(`--type ${f.type}: expected f32 or f16`);
  const evalFile = (f.eval as string | undefined) ?? fixtureText("tinystories_val.txt");
  const rt = new Runtime("cpu");
  try {
    const r = await packAndEvaluate(rt, (f.model as string | undefined) ?? DEFAULT_MODEL, {
      format: packedFormatFlag(f.format)!,
      out: f.out as string,
      floatType: type,
      ...(f["embedding-type"] === undefined ? {} : { embeddingType: embeddingFlag(f) }),
      evalFiles: evalFile === "none" ? [] : [evalFile],
      windows: f["eval-windows"] === undefined
        ? undefined
        : intFlag(f["eval-windows"], "--eval-windows"),
      log: (m) => console.error(m),
    });
    console.log(JSON.stringify(r, null, 2));
  } finally {
    await rt.release();
  }
}

async function main(argv: string[]) {
  const f = parseFlags(argv, {
    model: { type: "string" },
    out: { type: "string" },
    seqlen: { type: "string" },
    batch: { type: "string" },
    format: { type: "string" },
    type: { type: "string" },
    eval: { type: "string" },
    "eval-windows": { type: "string" },
    "embedding-type": { type: "string" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) return console.log(USAGE);
  if (!f.out) throw new Error(`--out is required\n${USAGE}`);
  if (f.format !== undefined && f.format !== "onnx") return await exportPacked(f);
  const model = await openModel((f.model as string | undefined) ?? DEFAULT_MODEL);
  try {
    const bytes = await exportOnnx(model, {
      batch: intFlag(f.batch, "--batch", 1),
      seqlen: intFlag(f.seqlen, "--seqlen", Math.min(256, model.config.maxSeq), 2),
    });
    const out = f.out as string;
    const tmp = `${out}.tmp-${crypto.randomUUID().slice(0, 8)}`;
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, out);
    console.log(`${out}: ${(bytes.length / 2 ** 20).toFixed(1)} MiB`);
  } finally {
    model.close();
  }
}

if (import.meta.main) await runMain(main);
