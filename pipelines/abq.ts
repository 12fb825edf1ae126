/**
 * ABQ-LLM (Zeng et al., 2024) as a pipeline: OmniQuant's LWC and LET plus ABQ's up→down LET
 * pair, rank-1 distribution compensation on `down_proj` in the first and last blocks, its
 * attention-aware loss (attention KL + MSE + cosine, against the teacher on both inputs) and,
 * with `--bit-balance`, 2-bit weights with 5 levels (reported as log2 5 ≈ 2.32 bits, not 2).
 * `deno run -A pipelines/abq.ts --wbits 4 --abits 4 --lwc --let [--epochs 20] …`
 * @module
 */
import { ABQ_POINTS } from "../algorithms/let.ts";
import { capture, propagate } from "../stages/propagate.ts";
import { FIRST_AND_LAST, omniquantMethod } from "../stages/omniquant.ts";
import { reconstruct } from "../stages/reconstruct.ts";
import { staticActivations } from "../stages/static_activations.ts";
import { parseFlags, runMain, UsageError } from "./cli.ts";
import { LEARNED_FLAGS, LEARNED_USAGE, learnedOptions } from "./omniquant.ts";
import {
  COMMON_USAGE,
  commonRun,
  printReport,
  type QuantizeReport,
  runQuantization,
} from "./quantize.ts";

const USAGE =
  `usage: deno run -A pipelines/abq.ts [--wbits 4] [--abits 16] [--lwc] [--let] [--bit-balance]
       [--no-compensation] …
${LEARNED_USAGE}
  --bit-balance        2^b + 1 levels for b ≤ 2 bits (ABQ's W2*)
  --no-compensation    no rank-1 compensation on down_proj
${COMMON_USAGE}`;

/** Runs ABQ-LLM from command-line flags. */
export async function abqMain(argv: string[]): Promise<QuantizeReport | undefined> {
  const f = parseFlags(argv, {
    ...LEARNED_FLAGS,
    "bit-balance": { type: "boolean" },
    "no-compensation": { type: "boolean" },
  }, USAGE);
  if (f.help) {
    console.log(USAGE);
    return;
  }
  const { omni, abits, kvBits, staticActs, train } = learnedOptions(f, ABQ_POINTS);
  if (f["bit-balance"] && omni.wbits > 2) {
    throw new UsageError(`--bit-balance applies to 2-bit weights (got --wbits ${omni.wbits})`);
  }
  omni.bitBalance = !!f["bit-balance"];
  omni.compensationBlocks = f["no-compensation"] ? undefined : FIRST_AND_LAST;
  const common = commonRun(f, "abq");
  train.checkpointDir = `${common.out}.ckpt`;
  const method = { ...omniquantMethod(omni, "abq"), loss: "abq" as const };
  const report = await runQuantization({
    ...common,
    method: "abq",
    // Bit-balanced weights have 2^b + 1 levels: log2(5) ≈ 2.32 bits of information, not 2.
    wbits: omni.bitBalance ? Math.log2(2 ** omni.wbits + 1) : omni.wbits,
    quantConfig: omni.bitBalance ? { levels: 2 ** omni.wbits + 1, bit_balance: true } : undefined,
    abits,
    kvBits,
    groupSize: omni.groupSize,
    teacher: true,
    settings: { ...omni, compensation: !f["no-compensation"], ...train },
    stages: () => [
      capture(),
      reconstruct(method, train),
      ...(staticActs ? [staticActivations()] : []),
      propagate(),
    ],
  });
  printReport(report, !!f.json);
  return report;
}

if (import.meta.main) await runMain(async (argv) => void await abqMain(argv));
