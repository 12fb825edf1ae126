/**
 * Round-to-nearest, the baseline every method is compared against: min-max weights per channel
 * or group, and optional per-token activation quantization at run time.
 * `deno run -A pipelines/rtn.ts --wbits 4 [--abits 8] [--group-size 32] …` (see `--help`).
 * @module
 */
import { propagate } from "../stages/propagate.ts";
import { rtn } from "../stages/weight_quant.ts";
import { staticActivations } from "../stages/static_activations.ts";
import { actSchemeFlag, intFlag, parseFlags, runMain, UsageError } from "./cli.ts";
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

const USAGE = `usage: deno run -A pipelines/rtn.ts [--wbits 4] [--abits 16] [--group-size N] [--sym]
       [--mse] [--allow-partial-group] [--act-scheme token|static] [common flags]
  --act-scheme S       activation ranges: token (dynamic per token, default) or static
                       (one range per linear input, calibrated)
${COMMON_USAGE}
${OFFLOAD_USAGE}`;

/** Runs RTN from command-line flags. */
export async function rtnMain(argv: string[]): Promise<QuantizeReport | undefined> {
  const f = parseFlags(argv, {
    ...COMMON_FLAGS,
    ...OFFLOAD_FLAGS,
    wbits: { type: "string" },
    abits: { type: "string" },
    "group-size": { type: "string" },
    sym: { type: "boolean" },
    mse: { type: "boolean" },
    "allow-partial-group": { type: "boolean" },
    "act-scheme": { type: "string" },
  }, USAGE);
  if (f.help) {
    console.log(USAGE);
    return;
  }
  const bits = intFlag(f.wbits, "--wbits", 4, 2);
  const abits = intFlag(f.abits, "--abits", 16, 2);
  if (bits > 16) throw new UsageError(`--wbits ${bits}: expected 2 to 16 (16: not quantized)`);
  if (abits > 16) throw new UsageError(`--abits ${abits}: expected 2 to 16 (16: not quantized)`);
  const groupSize = intFlag(f["group-size"], "--group-size", 0, 0);
  const scheme = actSchemeFlag(f["act-scheme"], abits);
  const o = {
    bits,
    groupSize,
    sym: !!f.sym,
    mse: !!f.mse,
    allowPartialGroup: !!f["allow-partial-group"],
  };
  const report = await runQuantization({
    ...commonRun(f, "rtn"),
    offloadActivations: offloadFlag(f),
    method: "rtn",
    wbits: bits,
    abits,
    groupSize,
    settings: { ...o, act_scheme: scheme },
    stages: () => [rtn(o), ...(scheme === "static" ? [staticActivations()] : []), propagate()],
  });
  printReport(report, !!f.json);
  return report;
}

if (import.meta.main) await runMain(async (argv) => void await rtnMain(argv));
