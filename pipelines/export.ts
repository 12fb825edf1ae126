/**
 * Exports a model (ours or any checkpoint we read) as one ONNX graph from token ids to logits.
 * `deno run -A pipelines/export.ts --model DIR --out model.onnx [--seqlen 256] [--batch 1]`
 * @module
 */
import { DEFAULT_MODEL } from "../fixtures/paths.ts";
import { exportOnnx } from "../formats/onnx.ts";
import { openModel } from "../formats/open.ts";
import { intFlag, parseFlags, runMain, UsageError } from "../cli/flags.ts";
import { Interrupts } from "../cli/signals.ts";

const USAGE =
  "usage: deno run -A pipelines/export.ts [--model DIR] --out FILE.onnx [--seqlen N] [--batch N]";

/** Exports a model from command-line flags. */
export async function exportMain(argv: string[], interrupts = new Interrupts()): Promise<void> {
  const f = parseFlags(argv, {
    model: { type: "string" },
    out: { type: "string" },
    seqlen: { type: "string" },
    batch: { type: "string" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) return console.log(USAGE);
  if (!f.out) throw new UsageError(`--out is required\n${USAGE}`);
  const out = f.out as string;
  const existing = await Deno.stat(out).catch(() => null);
  if (existing?.isDirectory) {
    throw new UsageError(`--out ${out}: is a directory; give the .onnx file to write`);
  }
  if (existing && !out.endsWith(".onnx")) {
    throw new UsageError(`--out ${out}: exists and is not an .onnx file; refusing to replace it`);
  }
  const model = await openModel((f.model as string | undefined) ?? DEFAULT_MODEL);
  try {
    const bytes = await exportOnnx(model, {
      batch: intFlag(f.batch, "--batch", 1),
      seqlen: intFlag(f.seqlen, "--seqlen", Math.min(256, model.config.maxSeq), 2),
    });
    const tmp = `${out}.tmp-${crypto.randomUUID().slice(0, 8)}`;
    interrupts.track(tmp);
    try {
      await Deno.writeFile(tmp, bytes);
      await Deno.rename(tmp, out);
    } catch (e) {
      await Deno.remove(tmp).catch(() => {});
      throw new Error(`--out ${out}: cannot write (${(e as Error).message})`);
    } finally {
      interrupts.release(tmp);
    }
    console.log(`${out}: ${(bytes.length / 2 ** 20).toFixed(1)} MiB`);
  } finally {
    model.close();
  }
}

if (import.meta.main) await runMain(exportMain);
