/**
 * Round-to-nearest as a command (the method is `methods/rtn.ts`):
 * `deno run -A pipelines/rtn.ts [flags]` (see `--help`).
 * @module
 */
import { runMain } from "../cli/flags.ts";
import type { Interrupts } from "../cli/signals.ts";
import { FIXTURE_DEFAULTS } from "../fixtures/paths.ts";
import { RTN } from "../methods/rtn.ts";
import { methodMain } from "../run/main.ts";
import type { QuantizeReport } from "../run/report.ts";

/** Runs Round-to-nearest from command-line flags. */
export function rtnMain(
  argv: string[],
  interrupts?: Interrupts,
): Promise<QuantizeReport | undefined> {
  return methodMain(RTN, argv, FIXTURE_DEFAULTS, interrupts);
}

if (import.meta.main) {
  await runMain(async (argv, interrupts) => void await rtnMain(argv, interrupts));
}
