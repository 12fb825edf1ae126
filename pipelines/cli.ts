/**
 * Command-line plumbing shared by every pipeline: flag parsing with `node:util`'s parseArgs
 * (JSR's @std/cli cannot be installed here), flag validation with errors that name the flag,
 * progress on stderr, and the exit path for errors.
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { type Device, DEVICES } from "../kernels/session.ts";

/** Option declarations as `node:util` parseArgs takes them. */
export type Options = NonNullable<ParseArgsConfig["options"]>;

/** Parses argv against `options`, refusing unknown flags by name. */
export function parseFlags<O extends Options>(argv: string[], options: O, usage: string) {
  try {
    return parseArgs({ args: argv, options, allowPositionals: false, strict: true }).values;
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\n\n${usage}`);
  }
}

/** An error in how the program was called: printed without a stack trace. */
export class UsageError extends Error {}

/** A positive integer flag value (or the fallback when absent). */
export function intFlag(v: unknown, flag: string, fallback?: number, min = 1): number {
  if (v === undefined) {
    if (fallback === undefined) throw new UsageError(`${flag} is required`);
    return fallback;
  }
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) {
    throw new UsageError(`${flag} ${v}: expected an integer ≥ ${min}`);
  }
  return n;
}

/** A number flag value within [min, max]. */
export function numFlag(
  v: unknown,
  flag: string,
  fallback: number,
  min = -Infinity,
  max = Infinity,
): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max) {
    throw new UsageError(`${flag} ${v}: expected a number in [${min}, ${max}]`);
  }
  return n;
}

/** The `--device` flag. */
export function deviceFlag(v: unknown): Device {
  const d = (v ?? "cpu") as Device;
  if (!DEVICES.includes(d)) {
    throw new UsageError(`--device ${v}: expected one of ${DEVICES.join(", ")}`);
  }
  return d;
}

/** The `--act-scheme` flag: dynamic per-token ranges (default) or static per-tensor ranges. */
export function actSchemeFlag(v: unknown, abits: number): "token" | "static" {
  const s = (v ?? "token") as string;
  if (s !== "token" && s !== "static") {
    throw new UsageError(`--act-scheme ${v}: expected token or static`);
  }
  if (s === "static" && abits >= 16) {
    throw new UsageError("--act-scheme static needs --abits below 16");
  }
  return s;
}

/** Progress lines on stderr, with elapsed time. */
export class Progress {
  #t0 = performance.now();
  #quiet: boolean;
  /** Starts the clock; `quiet` suppresses every line. */
  constructor(quiet = false) {
    this.#quiet = quiet;
  }
  /** Seconds since this progress started. */
  elapsed(): number {
    return (performance.now() - this.#t0) / 1000;
  }
  /** Prints one progress line. */
  log(msg: string): void {
    if (this.#quiet) return;
    const rss = (Deno.memoryUsage().rss / 2 ** 20).toFixed(0);
    console.error(`[${this.elapsed().toFixed(1).padStart(6)} s ${rss.padStart(5)} MiB] ${msg}`);
  }
  /** Estimated seconds left after `done` of `total` equal steps. */
  eta(done: number, total: number): string {
    if (done === 0) return "";
    const left = (this.elapsed() / done) * (total - done);
    return `, ~${left.toFixed(0)} s left`;
  }
}

/** Runs a CLI main, printing errors without stack traces for usage and input errors. */
export async function runMain(main: (argv: string[]) => Promise<void>): Promise<void> {
  try {
    await main(Deno.args);
  } catch (e) {
    const err = e as Error;
    console.error(`error: ${err.message}`);
    if (!(err instanceof UsageError) && Deno.env.get("QLLM_DEBUG")) console.error(err.stack);
    Deno.exit(err instanceof UsageError ? 2 : 1);
  }
}
