/**
 * The benchmark runner (`deno task bench`):
 * `deno run -A bench/run.ts [--only NAME,…] [--out FILE] [--list]`.
 * Runs the registered benchmarks (`registry.ts`) in order, writes each one's record to its own
 * results file, `bench/results/NAME.json` (or all of them to `--out FILE`), through a temporary
 * file and a rename so a crash never leaves half a file, and prints a short table on stdout;
 * progress goes to stderr. A benchmark that throws is recorded with its error and the run goes
 * on; the exit status is then 1.
 * @module
 */
import { dirname } from "node:path";
import * as ort from "onnxruntime-node";
import { PROJECT_ROOT } from "../fixtures/paths.ts";
import { Runtime } from "../kernels/session.ts";
import { parseFlags, runMain, UsageError } from "../cli/flags.ts";
import { Progress } from "../cli/progress.ts";
import { BENCHMARKS } from "./registry.ts";
import type { Benchmark, BenchRecord, SummaryRow } from "./types.ts";

/** A benchmark's own results file. */
export function resultsFile(name: string): string {
  return `${PROJECT_ROOT}/bench/results/${name}.json`;
}

/** One benchmark's entry in the results file. */
export type BenchOutcome =
  | { ok: true; description: string; seconds: number; result: BenchRecord }
  | { ok: false; description: string; seconds: number; error: string };

/** The results file. */
export interface BenchResults {
  created: string;
  host: Record<string, unknown>;
  benchmarks: Record<string, BenchOutcome>;
}

/** The benchmarks named by `--only` (comma-separated), in registry order; all when absent. */
export function selectBenchmarks(
  only: string | undefined,
  registry: readonly Benchmark[] = BENCHMARKS,
): Benchmark[] {
  if (only === undefined) return [...registry];
  const names = only.split(",").map((s) => s.trim()).filter((s) => s !== "");
  const known = new Set(registry.map((b) => b.name));
  const unknown = names.filter((n) => !known.has(n));
  if (unknown.length || names.length === 0) {
    throw new UsageError(
      `--only ${only}: unknown benchmark ${unknown.join(", ") || "(none named)"} ` +
        `(known: ${[...known].join(", ")})`,
    );
  }
  return registry.filter((b) => names.includes(b.name));
}

/** Runs benchmarks one after another; errors are recorded, not thrown. */
export async function runBenchmarks(
  benchmarks: readonly Benchmark[],
  rt: Runtime,
  progress: Progress,
): Promise<Record<string, BenchOutcome>> {
  const out: Record<string, BenchOutcome> = {};
  for (const b of benchmarks) {
    progress.log(`${b.name}: ${b.description}`);
    const t0 = performance.now();
    try {
      const result = await b.run({ rt, log: (m) => progress.log(m) });
      out[b.name] = { ok: true, description: b.description, seconds: since(t0), result };
    } catch (e) {
      const error = (e as Error).stack ?? String(e);
      progress.log(`${b.name}: FAILED: ${(e as Error).message}`);
      out[b.name] = { ok: false, description: b.description, seconds: since(t0), error };
    }
  }
  return out;
}

function since(t0: number): number {
  return (performance.now() - t0) / 1000;
}

/** Where and on what the benchmarks ran. */
export function hostInfo(): Record<string, unknown> {
  return {
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    os: Deno.build.os,
    arch: Deno.build.arch,
    cpus: navigator.hardwareConcurrency,
    onnxruntime: ort.env.versions.common,
    /** 1, 5 and 15 minute load averages: other work on the machine skews every timing. */
    loadavg: Deno.loadavg(),
  };
}

/** Writes JSON to `path` via `path.<pid>.tmp` and a rename, creating the directory. */
export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${Deno.pid}.tmp`;
  try {
    await Deno.writeTextFile(tmp, JSON.stringify(value, null, 2) + "\n");
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/** The summary table: one line per summary row of every benchmark. */
export function formatTable(benchmarks: Record<string, BenchOutcome>): string {
  const rows: string[][] = [["benchmark", "measure", "value", "note"]];
  for (const [name, o] of Object.entries(benchmarks)) {
    if (!o.ok) {
      rows.push([name, "FAILED", "", o.error.split("\n")[0]]);
      continue;
    }
    for (const r of o.result.summary as SummaryRow[]) {
      const v = typeof r.value === "number" ? String(r.value) : r.value;
      rows.push([name, r.label, r.unit ? `${v} ${r.unit}` : v, r.note ?? ""]);
    }
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) =>
    r.map((cell, c) => c === 2 ? cell.padStart(widths[c]) : cell.padEnd(widths[c])).join("  ")
      .trimEnd()
  ).join("\n");
}

const USAGE = `usage: deno run -A bench/run.ts [--only NAME,…] [--out FILE] [--list]
benchmarks: ${BENCHMARKS.map((b) => b.name).join(", ")}`;

async function main(argv: string[]) {
  const f = parseFlags(argv, {
    only: { type: "string" },
    out: { type: "string" },
    list: { type: "boolean" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) return console.log(USAGE);
  if (f.list) {
    for (const b of BENCHMARKS) console.log(`${b.name.padEnd(12)} ${b.description}`);
    return;
  }
  const selected = selectBenchmarks(f.only as string | undefined);
  const host = hostInfo();
  const rt = new Runtime("cpu");
  const progress = new Progress();
  let benchmarks: Record<string, BenchOutcome>;
  try {
    benchmarks = await runBenchmarks(selected, rt, progress);
  } finally {
    await rt.release();
  }
  const results = (b: Record<string, BenchOutcome>): BenchResults => ({
    created: new Date().toISOString(),
    host: { ...host, loadavg_after: Deno.loadavg() },
    benchmarks: b,
  });
  const written: string[] = [];
  if (f.out !== undefined) {
    await writeJsonAtomic(f.out as string, results(benchmarks));
    written.push(f.out as string);
  } else {
    for (const [name, o] of Object.entries(benchmarks)) {
      await writeJsonAtomic(resultsFile(name), results({ [name]: o }));
      written.push(resultsFile(name));
    }
  }
  console.log(formatTable(benchmarks));
  progress.log(`results written to ${written.join(", ")}`);
  if (Object.values(benchmarks).some((o) => !o.ok)) Deno.exit(1);
}

if (import.meta.main) await runMain(main);
