/**
 * Exports a model (ours or any checkpoint we read) as one ONNX graph from token ids to logits.
 * `deno run -A pipelines/export.ts --model DIR --out model.onnx [--seqlen 256] [--batch 1]`
 * @module
 */
import { DEFAULT_MODEL } from "../fixtures/paths.ts";
import { exportOnnx } from "../formats/onnx.ts";
import { openModel } from "../formats/open.ts";
import { intFlag, parseFlags, runMain } from "../cli/flags.ts";

const USAGE =
  "usage: deno run -A pipelines/export.ts [--model DIR] --out FILE.onnx [--seqlen N] [--batch N]";

async function main(argv: string[]) {
  const f = parseFlags(argv, {
    model: { type: "string" },
    out: { type: "string" },
    seqlen: { type: "string" },
    batch: { type: "string" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) return console.log(USAGE);
  if (!f.out) throw new Error(`--out is required\n${USAGE}`);
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
