/**
 * CLAQ (Wang et al., 2024): GPTQ with per-column K-means codebooks, adaptive per-column
 * precision for a fractional average (`--target-bits 2.1`) and full-precision outlier
 * reservation (`--outlier-ratio 0.004`, or `dynamic` for the reference's by-rank ratios).
 * `deno run -A pipelines/claq.ts --wbits 2 --target-bits 2.1 …` (see `--help`).
 * @module
 */
import { CLAQ_DYNAMIC_OUTLIERS, type OutlierReservation } from "../algorithms/claq.ts";
import { propagate } from "../stages/propagate.ts";
import { claqStage } from "../stages/weight_quant.ts";
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

const USAGE =
  `usage: deno run -A pipelines/claq.ts [--wbits B] [--target-bits 2.1] [--outlier-ratio R|dynamic]
       [--act-order] [--true-sequential] [--percdamp 0.01] [common flags]
  --wbits B            base bits per column (default: floor of --target-bits, else 2)
  --target-bits X      fractional average bits: the columns with most outliers get B+2 bits
  --outlier-ratio R    fraction of each column's entries kept in fp16 at each tail, or
                       "dynamic" (1.4% for the 10% most outlier-rich columns, 0.4% for the rest)
${COMMON_USAGE}
${OFFLOAD_USAGE}`;

/** Runs CLAQ from command-line flags. */
export async function claqMain(argv: string[]): Promise<QuantizeReport | undefined> {
  const f = parseFlags(argv, {
    ...COMMON_FLAGS,
    ...OFFLOAD_FLAGS,
    wbits: { type: "string" },
    "target-bits": { type: "string" },
    "outlier-ratio": { type: "string" },
    "act-order": { type: "boolean" },
    "true-sequential": { type: "boolean" },
    percdamp: { type: "string" },
  }, USAGE);
  if (f.help) {
    console.log(USAGE);
    return;
  }
  const target = f["target-bits"] === undefined
    ? undefined
    : numFlag(f["target-bits"], "--target-bits", 0, 2, 8);
  const bits = intFlag(f.wbits, "--wbits", target === undefined ? 2 : Math.floor(target), 2);
  if (bits > 8) throw new UsageError(`--wbits ${bits}: CLAQ takes 2 to 8 bits`);
  if (target !== undefined && (target < bits || target > bits + 2)) {
    throw new UsageError(
      `--target-bits ${target}: must lie in [--wbits, --wbits + 2] = [${bits}, ${bits + 2}]`,
    );
  }
  let outlierRatio: number | OutlierReservation = 0;
  if (f["outlier-ratio"] === "dynamic") outlierRatio = CLAQ_DYNAMIC_OUTLIERS;
  else outlierRatio = numFlag(f["outlier-ratio"], "--outlier-ratio", 0, 0, 0.25);
  const o = {
    bits,
    targetBits: target,
    outlierRatio,
    actOrder: !!f["act-order"],
    trueSequential: !!f["true-sequential"],
    percdamp: numFlag(f.percdamp, "--percdamp", 0.01, 0, 1),
  };
  const report = await runQuantization({
    ...commonRun(f, "claq"),
    offloadActivations: offloadFlag(f),
    method: "claq",
    wbits: target ?? bits,
    quantConfig: { bits, average_bits: target ?? bits, codebook: "per-column k-means" },
    abits: 16,
    groupSize: 0,
    settings: o,
    stages: () => [claqStage(o), propagate()],
  });
  printReport(report, !!f.json);
  return report;
}

if (import.meta.main) await runMain(async (argv) => void await claqMain(argv));
