/**
 * ABQ-LLM as a command (the method is `methods/abq.ts`):
 * `deno run -A pipelines/abq.ts [flags]` (see `--help`).
 * @module
 */
import { runMain } from "../cli/flags.ts";
import type { Interrupts } from "../cli/signals.ts";
import { FIXTURE_DEFAULTS } from "../fixtures/paths.ts";
import { ABQ } from "../methods/abq.ts";
import { methodMain } from "../run/main.ts";
import type { QuantizeReport } from "../run/report.ts";

/** Runs ABQ-LLM from command-line flags. */
export function abqMain(
  argv: string[],
  interrupts?: Interrupts,
): Promise<QuantizeReport | undefined> {
  return methodMain(ABQ, argv, FIXTURE_DEFAULTS, interrupts);
}

if (import.meta.main) {
  await runMain(async (argv, interrupts) => void await abqMain(argv, interrupts));
}
