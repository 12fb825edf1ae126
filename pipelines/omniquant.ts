/**
 * OmniQuant as a command (the method is `methods/omniquant.ts`):
 * `deno run -A pipelines/omniquant.ts [flags]` (see `--help`).
 * @module
 */
import { runMain } from "../cli/flags.ts";
import type { Interrupts } from "../cli/signals.ts";
import { FIXTURE_DEFAULTS } from "../fixtures/paths.ts";
import { OMNIQUANT } from "../methods/omniquant.ts";
import { methodMain } from "../run/main.ts";
import type { QuantizeReport } from "../run/report.ts";

/** Runs OmniQuant from command-line flags. */
export function omniquantMain(
  argv: string[],
  interrupts?: Interrupts,
): Promise<QuantizeReport | undefined> {
  return methodMain(OMNIQUANT, argv, FIXTURE_DEFAULTS, interrupts);
}

if (import.meta.main) {
  await runMain(async (argv, interrupts) => void await omniquantMain(argv, interrupts));
}
