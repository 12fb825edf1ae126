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
import { RunCache, runQuantization } from "../run/quantize.ts";
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

/** A column of a method table: a method with its flags; `trains` adds `--epochs`. */
export interface Variant {
  name: string;
  method: Method;
  flags: string[];
  trains: boolean;
}

/** One cell of a method table. */
export interface GridRow {
  model: string;
  variant: string;
  wbits: number;
  abits: number;
  flags: string[];
  fp: number;
  ppl: number;
  seconds: number;
  report: QuantizeReport;
}

/**
 * Every variant at every `[wbits, abits]` on every `[label, path]` model, each row the method's
 * command with `--wbits W --abits A`, the variant's flags and `--epochs E` where it trains.
 */
export async function runGrid(
  log: (msg: string) => void,
  models: [string, string][],
  configs: [number, number][],
  variants: Variant[],
  epochs: number,
): Promise<GridRow[]> {
  const tmp = await Deno.makeTempDir();
  const rows: GridRow[] = [];
  try {
    for (const [label, path] of models) {
      const cache = new RunCache();
      for (const [wbits, abits] of configs) {
        for (const v of variants) {
          log(`${label}: ${v.name} w${wbits}a${abits}`);
          const flags = ["--wbits", String(wbits), "--abits", String(abits), ...v.flags];
          if (v.trains) flags.push("--epochs", String(epochs));
          const r = await runRow({
            model: path,
            method: v.method,
            flags,
            out: `${tmp}/row`,
            cache,
          });
          rows.push({
            model: label,
            variant: v.name,
            wbits,
            abits,
            flags,
            fp: r.eval[VAL].fp,
            ppl: r.eval[VAL].quant,
            seconds: r.seconds,
            report: r,
          });
        }
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  return rows;
}

/** The perplexity of one cell, to 3 decimals ("" when absent). */
export function cell(
  rows: GridRow[],
  model: string,
  variant: string,
  w: number,
  a: number,
): string {
  const r = rows.find((r) =>
    r.model === model && r.variant === variant && r.wbits === w && r.abits === a
  );
  return r ? r.ppl.toFixed(3) : "";
}

/** How a table's variants are run, for its caption. */
export function variantCommands(variants: Variant[], epochs: number): string {
  return variants.map((v) =>
    `${v.name} \`${v.method.name}${v.flags.length ? " " + v.flags.join(" ") : ""}${
      v.trains ? ` --epochs ${epochs}` : ""
    }\``
  ).join(", ");
}
