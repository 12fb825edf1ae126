/**
 * OmniQuant (learnable weight clipping + learnable equivalent transformation, block-wise
 * reconstruction) as a pipeline: capture the teacher outputs, learn, fold, propagate.
 * `deno run -A pipelines/omniquant.ts --wbits 4 --abits 4 --lwc --let [--epochs 20] …`
 * @module
 */
import type { LetPoint } from "../algorithms/let.ts";
import { OMNIQUANT_POINTS } from "../algorithms/let.ts";
import { capture, propagate } from "../stages/propagate.ts";
import { omniquantMethod, type OmniQuantOptions } from "../stages/omniquant.ts";
import { reconstruct } from "../stages/reconstruct.ts";
import { staticActivations } from "../stages/static_activations.ts";
import { actSchemeFlag, intFlag, numFlag, parseFlags, runMain, UsageError } from "./cli.ts";
import {
  COMMON_FLAGS,
  COMMON_USAGE,
  commonRun,
  printReport,
  type QuantizeReport,
  runQuantization,
} from "./quantize.ts";

/** Flags shared by the learned-reconstruction pipelines (OmniQuant, ABQ-LLM). */
export const LEARNED_FLAGS = {
  ...COMMON_FLAGS,
  wbits: { type: "string" },
  abits: { type: "string" },
  "group-size": { type: "string" },
  lwc: { type: "boolean" },
  let: { type: "boolean" },
  "lwc-lr": { type: "string" },
  "let-lr": { type: "string" },
  alpha: { type: "string" },
  epochs: { type: "string" },
  batch: { type: "string" },
  resume: { type: "string" },
  "kv-bits": { type: "string" },
  "act-scheme": { type: "string" },
} as const;

/** Usage of {@linkcode LEARNED_FLAGS}. */
export const LEARNED_USAGE =
  `  --wbits B            weight bits (4)            --abits B   activation bits (16 = none)
  --group-size N       weight group size (0 = per output channel; must divide every width)
  --lwc                learn weight clipping      --lwc-lr X  (1e-2)
  --let                learn equivalent transforms --let-lr X (5e-3)   --alpha X (0.5)
  --epochs N           epochs over the calibration set per block (20)
  --batch N            calibration samples per step (1)
  --kv-bits B          also quantize q/k (after RoPE) and v per token and head (off)
  --act-scheme S       token (dynamic per-token ranges, default) or static (one calibrated
                       range per linear input, fixed after training)
  --resume DIR         a previous run's checkpoint directory (<out>.ckpt): the blocks saved
                       there are folded without training, the others are trained`;

/** Reads the learned-reconstruction flags. */
export function learnedOptions(f: Record<string, unknown>, points: readonly LetPoint[]) {
  const wbits = intFlag(f.wbits, "--wbits", 4, 2);
  const abits = intFlag(f.abits, "--abits", 16, 2);
  if (wbits > 16) throw new UsageError(`--wbits ${wbits}: expected 2 to 16`);
  const omni: OmniQuantOptions = {
    wbits,
    groupSize: intFlag(f["group-size"], "--group-size", 0, 0),
    lwc: !!f.lwc,
    letPoints: f.let ? points : [],
    alpha: numFlag(f.alpha, "--alpha", 0.5, 0, 1),
    lwcLr: numFlag(f["lwc-lr"], "--lwc-lr", 1e-2, 0),
    letLr: numFlag(f["let-lr"], "--let-lr", 5e-3, 0),
  };
  const kvBits = f["kv-bits"] === undefined ? undefined : intFlag(f["kv-bits"], "--kv-bits", 16, 2);
  return {
    omni,
    abits,
    kvBits,
    staticActs: actSchemeFlag(f["act-scheme"], abits) === "static",
    train: {
      epochs: intFlag(f.epochs, "--epochs", 20, 0),
      batch: intFlag(f.batch, "--batch", 1),
      resume: f.resume as string | undefined,
      checkpointDir: undefined as string | undefined,
    },
  };
}

const USAGE = `usage: deno run -A pipelines/omniquant.ts [--wbits 4] [--abits 16] [--lwc] [--let] …
${LEARNED_USAGE}
${COMMON_USAGE}`;

/** Runs OmniQuant from command-line flags. */
export async function omniquantMain(argv: string[]): Promise<QuantizeReport | undefined> {
  const f = parseFlags(argv, LEARNED_FLAGS, USAGE);
  if (f.help) {
    console.log(USAGE);
    return;
  }
  const { omni, abits, kvBits, staticActs, train } = learnedOptions(f, OMNIQUANT_POINTS);
  const common = commonRun(f, "omniquant");
  train.checkpointDir = `${common.out}.ckpt`;
  const report = await runQuantization({
    ...common,
    method: "omniquant",
    wbits: omni.wbits,
    abits,
    kvBits,
    groupSize: omni.groupSize,
    teacher: true,
    settings: { ...omni, ...train },
    stages: () => [
      capture(),
      reconstruct(omniquantMethod(omni), train),
      ...(staticActs ? [staticActivations()] : []),
      propagate(),
    ],
  });
  printReport(report, !!f.json);
  return report;
}

if (import.meta.main) await runMain(async (argv) => void await omniquantMain(argv));
