/**
 * The run report every quantization pipeline writes (`<out>/report.json`) and prints: settings,
 * perplexity before and after, bits per weight, per-block stage figures, time and memory.
 * @module
 */
import type { StageReport } from "../stages/job.ts";
import type { PackResult } from "./pack.ts";

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
  /** Every stage report of every block, in order. */
  blocks: StageReport[];
  /** The packed output (`--format`) and the perplexity of the packed model itself. */
  packed?: PackResult;
}

/** Peak resident set size of this process (Linux VmHWM), else the current RSS. */
export function peakRss(): number {
  try {
    const m = Deno.readTextFileSync("/proc/self/status").match(/VmHWM:\s+(\d+) kB/);
    if (m) return Number(m[1]) * 1024;
  } catch { /* not Linux */ }
  return Deno.memoryUsage().rss;
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
