/**
 * The run report every quantization pipeline writes (`<out>/report.json`, and the page
 * `<out>/report.html` drawn from it) and prints: settings, perplexity and zero-shot accuracy
 * before and after, bits per weight, per-block stage figures, time and memory.
 * @module
 */
import type { TaskResult } from "../eval/zero_shot.ts";
import type { StageReport } from "../stages/job.ts";
import type { PackResult } from "./pack.ts";

export { peakRss } from "../kernels/rss.ts";

/** The run report (also written to `<out>/report.json`). */
export interface QuantizeReport {
  /** Method name (`rtn`, `gptq`, …). */
  method: string;
  /** Weight bits. */
  wbits: number;
  /** Run-time activation bits (16 = none). */
  abits: number;
  /** Weight group size (0 = per channel). */
  group_size: number;
  /** Stored bits per linear weight, metadata included (32 when nothing was stored). */
  bits_per_weight: number;
  /** Wall-clock time of the whole run. */
  seconds: number;
  /** Peak resident set size of the process, in bytes. */
  peak_rss_bytes: number;
  /** Perplexity per evaluation file, full-precision and quantized. */
  eval: Record<string, { fp: number; quant: number }>;
  /** Zero-shot accuracies per task (`--tasks`), full-precision and quantized. */
  tasks?: Record<string, { fp: TaskResult; quant: TaskResult }>;
  /** Source model path. */
  model: string;
  /** Output directory. */
  out: string;
  /** The run's settings, as given. */
  settings: Record<string, unknown>;
  /** Where the calibration activations lived: in memory, or offloaded to a file. */
  activations: "memory" | "file";
  /** Calibration data actually used, with the windows' start positions. */
  calibration: { file: string; nsamples: number; seqlen: number; seed: number; starts: number[] };
  /** Seconds per stage and sub-step (`stage_gptq`, `hessian_seconds`, …), summed over blocks. */
  timing: Record<string, number>;
  /**
   * Peak RSS in bytes of each phase (`eval_fp`, `quantize`, `eval_quant`, `tasks_fp`, …) and
   * stage (`stage_gptq`: the highest over blocks); absent where it cannot be measured.
   */
  peak_rss_by_phase?: Record<string, number>;
  /** Stored bits per weight of each linear (`model.layers.{i}.{layer}.weight`). */
  bits_by_layer?: Record<string, number>;
  /** Every stage report of every block, in order. */
  blocks: StageReport[];
  /** The packed output (`--format`) and the perplexity of the packed model itself. */
  packed?: PackResult;
}

/** The report's `tasks`: each task's full-precision and quantized results side by side. */
export function taskReport(
  fp: Record<string, TaskResult>,
  quant: Record<string, TaskResult>,
): NonNullable<QuantizeReport["tasks"]> {
  const out: NonNullable<QuantizeReport["tasks"]> = {};
  for (const name of Object.keys(fp)) out[name] = { fp: fp[name], quant: quant[name] };
  return out;
}

/** Writes `text` to a temporary name beside `path`, then renames it into place. */
export async function writeAtomically(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp`;
  try {
    await Deno.writeTextFile(tmp, text);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`cannot write ${path}: ${(e as Error).message}`);
  }
}

/** Prints the report: the whole JSON object with `--json`, else a short summary. */
export function printReport(report: QuantizeReport, json: boolean): void {
  if (json) {
    console.log(JSON.stringify(report));
    return;
  }
  console.log(
    `${report.method} w${+report.wbits.toFixed(2)}a${report.abits}` +
      `${report.group_size ? ` g${report.group_size}` : ""}: ` +
      `${report.bits_per_weight.toFixed(3)} bits/weight, ${report.seconds.toFixed(1)} s, ` +
      `peak RSS ${(report.peak_rss_bytes / 2 ** 20).toFixed(0)} MiB → ${report.out}`,
  );
  for (const [name, e] of Object.entries(report.eval)) {
    console.log(`  ${name}: perplexity ${e.fp.toFixed(4)} (fp) → ${e.quant.toFixed(4)}`);
  }
  for (const [name, t] of Object.entries(report.tasks ?? {})) {
    const pct = (v: number) => `${(100 * v).toFixed(2)} %`;
    const parts = t.fp.metrics.map((m) => `${m} ${pct(t.fp[m])} (fp) → ${pct(t.quant[m])}`);
    console.log(`  ${name}: ${parts.join(", ")} (${t.fp.questions} questions)`);
  }
  const p = report.packed;
  if (p) {
    console.log(
      `  packed ${p.format}${p.gguf_type ? ` ${p.gguf_type}` : ""}: ${p.path} ` +
        `(${(p.bytes / 2 ** 20).toFixed(2)} MiB, linears ${p.linears_exact ? "exact" : "rounded"})`,
    );
    for (const [name, ppl] of Object.entries(p.eval ?? {})) {
      console.log(`  ${name}: perplexity of the packed model ${ppl.toFixed(4)}`);
    }
  }
}
