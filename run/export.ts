/**
 * Exporting a model as a deployable directory (`formats/onnx.ts`): written under a temporary
 * name and renamed into place only when complete, the embedding and head quantized to 8 bits
 * when asked, the exported model's perplexity measured through ONNX Runtime when asked, and
 * the export report written beside the ONNX file (`onnx/<file>.report.json`).
 * @module
 */
import { rtnWeight } from "../algorithms/quantizer.ts";
import { Progress } from "../cli/progress.ts";
import type { Interrupts } from "../cli/signals.ts";
import { onnxPerplexity } from "../eval/perplexity.ts";
import { type ExportReport, writeOnnxExport } from "../formats/onnx.ts";
import { gridOf, type GridWeight } from "../formats/quantized.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { claimTemp, writeMarker } from "../formats/output_dir.ts";
import { OnnxDecoder } from "../serve/decoder.ts";
import { checkOutput, commitOutput } from "./output.ts";
import { readDataset } from "../text/dataset.ts";

/** Columns per block of the 8-bit embedding and head. */
export const TABLE_BLOCK = 32;

/** What to export. */
export interface ExportRun {
  /** Source model (ours or any checkpoint we read). */
  model: string;
  /** Output directory. */
  out: string;
  /** Bits of the embedding and head tables: 32 (float, default) or 8. */
  embeddings?: 8 | 32;
  /** Texts to measure the exported model's perplexity on (none by default). */
  eval?: { files: string[]; windows?: number; seqlen?: number };
  /** Tensor bytes above which the weights go to external data (default: protobuf's 2 GB). */
  inlineLimit?: number;
  /** No progress lines. */
  quiet?: boolean;
  /** `MatMulNBits`' `accuracy_level` (`formats/onnx.ts`; default 1). */
  accuracyLevel?: 1 | 4;
  /** Replace a file or a directory that is not ours at `out` (`--overwrite`). */
  overwrite?: boolean;
  /** Where the export registers its temporary directory, removed if the process is interrupted. */
  interrupts?: Interrupts;
}

/** The 8-bit grid (asymmetric min-max per row and block of 32 columns) of a table. */
export function tableGrid8(t: Tensor, name: string): GridWeight {
  const r = rtnWeight(t, { bits: 8, sym: false, groupSize: TABLE_BLOCK });
  const groups = { shape: [t.shape[0], r.nGroups] };
  return gridOf(
    name,
    r.weight,
    { data: r.scale, ...groups },
    { data: r.zero, ...groups },
    255,
    TABLE_BLOCK,
    null,
  );
}

/** Exports a model; returns the report it wrote. */
export async function exportModel(r: ExportRun): Promise<ExportReport> {
  const progress = new Progress(r.quiet);
  const out = r.out.replace(/\/+$/, "") || r.out;
  await checkOutput(out, {
    overwrite: r.overwrite,
    inputs: [
      { flag: "--model", path: r.model },
      ...(r.eval?.files ?? []).map((path) => ({ flag: "--eval", path })),
    ],
  });
  const tmp = `${out}.partial-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.mkdir(tmp);
  } catch (e) {
    throw new Error(`--out ${out}: cannot create ${tmp} (${(e as Error).message})`);
  }
  r.interrupts?.track(tmp);
  try {
    await claimTemp(tmp);
    const report = await writeOnnxExport(r.model, tmp, {
      quantizeTable: r.embeddings === 8 ? tableGrid8 : undefined,
      inlineLimit: r.inlineLimit,
      accuracyLevel: r.accuracyLevel,
      log: (m) => progress.log(m),
    });
    progress.log(
      `${report.file}: ${(report.bytes / 2 ** 20).toFixed(1)} MiB, ` +
        `${report.bits_per_weight.toFixed(2)} bits per linear weight, ` +
        `${report.fallbacks.length} layers kept in float`,
    );
    if (r.eval?.files.length) {
      const dec = await OnnxDecoder.open(tmp);
      try {
        report.perplexity = {};
        for (const f of r.eval.files) {
          const ids = await readDataset(f, dec.tokenizer);
          const p = await onnxPerplexity(dec, ids, {
            seqlen: r.eval.seqlen,
            maxWindows: r.eval.windows,
            log: (m) => progress.log(m),
          });
          report.perplexity[f.replace(/^.*\//, "")] = p.ppl;
          progress.log(`${f}: perplexity ${p.ppl.toFixed(3)} (${p.windows} windows)`);
        }
      } finally {
        await dec.release();
      }
    }
    await Deno.writeTextFile(
      `${tmp}/${report.file.replace(/\.onnx$/, ".report.json")}`,
      JSON.stringify(report, null, 2) + "\n",
    );
    await writeMarker(tmp, { kind: "export", format: "onnx" });
    await commitOutput(tmp, out, { overwrite: r.overwrite });
    return { ...report };
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  } finally {
    r.interrupts?.release(tmp);
  }
}
