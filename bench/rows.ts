/**
 * One row of a benchmark table: a method's run from its command-line flags, with PROTOCOL.md's
 * calibration (128 × 256 windows of tinystories_train_sample.txt, seed 0) and evaluation (the
 * first 256 windows of tinystories_val.txt), so every row is what the README's command gives.
 * And the markdown of a table of such rows.
 * @module
 */
import { fixtureText } from "../fixtures/paths.ts";
import type { Method, MethodOptions } from "../methods/method.ts";
import { planFromFlags } from "../run/main.ts";
import { type RunCache, runQuantization } from "../run/quantize.ts";
import type { QuantizeReport } from "../run/report.ts";

/** The evaluation text of the tables. */
export const VAL = "tinystories_val.txt";

/** What a row runs. */
export interface Row<O extends MethodOptions = MethodOptions> {
  /** The model directory or file. */
  model: string;
  /** The method. */
  method: Method<O>;
  /** Its flags, as on the command line. */
  flags: string[];
  /** Output directory (removed afterwards). */
  out: string;
  /** Shared tokenized texts and full-precision perplexities. */
  cache: RunCache;
  /** Calibration windows (128). */
  nsamples?: number;
}

/** Runs a row and returns its report; the written model is removed. */
export async function runRow<O extends MethodOptions>(r: Row<O>): Promise<QuantizeReport> {
  try {
    return await runQuantization({
      ...planFromFlags(r.method, r.flags, r.out),
      model: r.model,
      out: r.out,
      calib: {
        file: fixtureText("tinystories_train_sample.txt"),
        nsamples: r.nsamples ?? 128,
        seed: 0,
      },
      eval: { files: [fixtureText(VAL)], windows: 256 },
      quiet: true,
      cache: r.cache,
    });
  } finally {
    await Deno.remove(r.out, { recursive: true }).catch(() => {});
    await Deno.remove(`${r.out}.ckpt`, { recursive: true }).catch(() => {});
  }
}

/** A markdown table; numbers right-aligned where `right[i]` says so. */
export function markdownTable(head: string[], rows: string[][], right: boolean[] = []): string {
  const rule = head.map((_, i) => (right[i] ? "---:" : "---"));
  return [head, rule, ...rows].map((r) => `| ${r.join(" | ")} |`).join("\n");
}
