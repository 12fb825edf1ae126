/**
 * What a benchmark is: a named async function of a {@linkcode BenchContext} returning a
 * JSON-able record with a few summary rows for the runner's table.
 * @module
 */
import type { Runtime } from "../kernels/session.ts";

/** One line of the printed table. */
export interface SummaryRow {
  /** What was measured, e.g. `2048³ ours`. */
  label: string;
  value: number | string;
  /** Unit of `value`, e.g. `GFLOP/s`. */
  unit?: string;
  /** A short comparison or remark, e.g. `raw 88.1, ratio 0.97`. */
  note?: string;
}

/** A benchmark's result: anything JSON-able, plus the rows the runner prints. */
export interface BenchRecord {
  summary: SummaryRow[];
  [key: string]: unknown;
}

/** What the runner hands every benchmark. */
export interface BenchContext {
  /** A CPU runtime shared by the benchmarks of one run (sessions are cached per graph). */
  rt: Runtime;
  /** A progress line on stderr. */
  log(msg: string): void;
}

/** A registered benchmark. */
export interface Benchmark {
  /** Name used by `--only` and as the key in the results file. */
  name: string;
  description: string;
  run(ctx: BenchContext): Promise<BenchRecord>;
}
