/**
 * CLAQ as a command (the method is `methods/claq.ts`):
 * `deno run -A pipelines/claq.ts [flags]` (see `--help`).
 * @module
 */
import { runMain } from "../cli/flags.ts";
import type { Interrupts } from "../cli/signals.ts";
import { FIXTURE_DEFAULTS } from "../fixtures/paths.ts";
import { CLAQ } from "../methods/claq.ts";
import { methodMain } from "../run/main.ts";
import type { QuantizeReport } from "../run/report.ts";

/** Runs CLAQ from command-line flags. */
export function claqMain(
  argv: string[],
  interrupts?: Interrupts,
): Promise<QuantizeReport | undefined> {
  return methodMain(CLAQ, argv, FIXTURE_DEFAULTS, interrupts);
}

if (import.meta.main) {
  await runMain(async (argv, interrupts) => void await claqMain(argv, interrupts));
}
