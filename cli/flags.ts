/**
 * Command-line plumbing shared by every command: flag parsing with `node:util`'s parseArgs
 * (JSR's @std/cli cannot be installed here), flag validation with errors that name the flag,
 * and the exit path for errors.
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

/** Parses argv against `options`, keeping positional arguments too. */
export function parseFlagsAndArgs<O extends Options>(argv: string[], options: O, usage: string) {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
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
