/**
 * QLLM as a command (the method is `methods/qllm.ts`):
 * `deno run -A pipelines/qllm.ts [flags]` (see `--help`).
 * @module
 */
import { runMain } from "../cli/flags.ts";
import type { Interrupts } from "../cli/signals.ts";
import { FIXTURE_DEFAULTS } from "../fixtures/paths.ts";
import { QLLM } from "../methods/qllm.ts";
import { methodMain } from "../run/main.ts";
import type { QuantizeReport } from "../run/report.ts";

/** Runs QLLM from command-line flags. */
export function qllmMain(
  argv: string[],
  interrupts?: Interrupts,
): Promise<QuantizeReport | undefined> {
  return methodMain(QLLM, argv, FIXTURE_DEFAULTS, interrupts);
}

if (import.meta.main) {
  await runMain(async (argv, interrupts) => void await qllmMain(argv, interrupts));
}
