/**
 * GPTQ (Frantar et al., 2023) as a pipeline, with the reference's options.
 * `deno run -A pipelines/gptq.ts --wbits 4 [--group-size 128] [--act-order] [--static-groups]
 * [--true-sequential] …` (see `--help`).
 * @module
 */
import { gptqStage } from "../stages/weight_quant.ts";
import { propagate } from "../stages/propagate.ts";
import { intFlag, numFlag, parseFlags, runMain, UsageError } from "./cli.ts";
import {
  COMMON_FLAGS,
  COMMON_USAGE,
  commonRun,
  OFFLOAD_FLAGS,
  OFFLOAD_USAGE,
  offloadFlag,
  printReport,
  type QuantizeReport,
  runQuantization,
} from "./quantize.ts";

const USAGE = `usage: deno run -A pipelines/gptq.ts [--wbits 4] [--group-size N] [--act-order]
       [--static-groups] [--true-sequential] [--sym] [--mse] [--percdamp 0.01]
       [--allow-partial-group] [common flags]
${COMMON_USAGE}
${OFFLOAD_USAGE}`;

/** Runs GPTQ from command-line flags. */
export async function gptqMain(argv: string[]): Promise<QuantizeReport | undefined> {
  const f = parseFlags(argv, {
    ...COMMON_FLAGS,
    ...OFFLOAD_FLAGS,
    wbits: { type: "string" },
    "group-size": { type: "string" },
    "act-order": { type: "boolean" },
    "static-groups": { type: "boolean" },
    "true-sequential": { type: "boolean" },
    sym: { type: "boolean" },
    mse: { type: "boolean" },
    percdamp: { type: "string" },
    "allow-partial-group": { type: "boolean" },
  }, USAGE);
  if (f.help) {
    console.log(USAGE);
    return;
  }
  const bits = intFlag(f.wbits, "--wbits", 4, 2);
  if (bits > 15) throw new UsageError(`--wbits ${bits}: GPTQ takes 2 to 15 bits`);
  const groupSize = intFlag(f["group-size"], "--group-size", 0, 0);
  const o = {
    bits,
    groupSize,
    actOrder: !!f["act-order"],
    staticGroups: !!f["static-groups"],
    trueSequential: !!f["true-sequential"],
    sym: !!f.sym,
    mse: !!f.mse,
    percdamp: numFlag(f.percdamp, "--percdamp", 0.01, 0, 1),
    allowPartialGroup: !!f["allow-partial-group"],
  };
  const report = await runQuantization({
    ...commonRun(f, "gptq"),
    offloadActivations: offloadFlag(f),
    method: "gptq",
    wbits: bits,
    abits: 16,
    groupSize,
    settings: o,
    stages: () => [gptqStage(o), propagate()],
  });
  printReport(report, !!f.json);
  return report;
}

if (import.meta.main) await runMain(async (argv) => void await gptqMain(argv));
