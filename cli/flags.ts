/**
 * Command-line plumbing shared by every command: flag parsing with `node:util`'s parseArgs
 * (JSR's @std/cli cannot be installed here), flag validation with errors that name the flag,
 * and the exit path for errors.
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { type Device, DEVICES } from "../kernels/session.ts";
import { Interrupts } from "./signals.ts";

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

/** A command's entry point: its arguments, and where it registers its temporary paths. */
export type CommandMain = (argv: string[], interrupts: Interrupts) => Promise<void>;

/**
 * Runs a command's main and returns its exit code: 0, 2 for a usage error (a flag), 1 for any
 * other error; the error is printed as `error: …` through `print`, without a stack trace
 * (with one when QLLM_DEBUG is set).
 */
export async function runCommand(
  main: CommandMain,
  argv: string[],
  interrupts: Interrupts = new Interrupts(),
  print: (msg: string) => void = (m) => console.error(m),
): Promise<number> {
  try {
    await main(argv, interrupts);
    return 0;
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    print(`error: ${err.message}`);
    if (!(err instanceof UsageError) && Deno.env.get("QLLM_DEBUG")) print(err.stack ?? "");
    return err instanceof UsageError ? 2 : 1;
  } finally {
    interrupts.removeAll(); // whatever an error path left tracked
  }
}

/**
 * Runs a CLI main with the signal listeners installed ({@linkcode Interrupts}); exits with the
 * code of {@linkcode runCommand} on error.
 */
export async function runMain(main: CommandMain): Promise<void> {
  const interrupts = new Interrupts();
  const uninstall = interrupts.install();
  const code = await runCommand(main, Deno.args, interrupts);
  uninstall();
  if (code !== 0) Deno.exit(code);
}
