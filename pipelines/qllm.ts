/**
 * QLLM (Liu et al., 2024) as a pipeline: capture the teacher outputs, adaptive channel
 * reassembly of the linear inputs (`stages/reassemble.ts`), low-rank error compensation learned
 * block by block (`stages/lora.ts`, merged before quantization so the deployed block is the
 * trained one), propagate.
 * `deno run -A pipelines/qllm.ts --wbits 4 --abits 4 [--epochs 10] [--lora-rank 4] …`
 * @module
 */
import { linearDecay } from "../kernels/optim.ts";
import { loraMethod, type LoraOptions } from "../stages/lora.ts";
import { capture, propagate } from "../stages/propagate.ts";
import { reassemble } from "../stages/reassemble.ts";
import { reconstruct, type TrainOptions } from "../stages/reconstruct.ts";
import { reconstructGroups } from "../stages/reconstruct_group.ts";
import { rtn } from "../stages/weight_quant.ts";
import { intFlag, numFlag, parseFlags, runMain, UsageError } from "./cli.ts";
import {
  COMMON_FLAGS,
  COMMON_USAGE,
  commonRun,
  printReport,
  type QuantizeReport,
  runQuantization,
} from "./quantize.ts";

/** The flags of the QLLM pipeline. */
export const QLLM_FLAGS = {
  ...COMMON_FLAGS,
  wbits: { type: "string" },
  abits: { type: "string" },
  "group-size": { type: "string" },
  epochs: { type: "string" },
  lr: { type: "string" },
  "lora-rank": { type: "string" },
  "channel-ratio": { type: "string" },
  "num-layer": { type: "string" },
  resume: { type: "string" },
  lwc: { type: "boolean" },
  "lwc-lr": { type: "string" },
  "no-reassembly": { type: "boolean" },
  "no-lora": { type: "boolean" },
  "merge-score": { type: "string" },
} as const;

const USAGE = `usage: deno run -A pipelines/qllm.ts [--wbits 4] [--abits 16] [--epochs 10] …
  --wbits B            weight bits (4; 2 to 16, 16 = none)   --abits B   activation bits (16 = none)
  --group-size N       weight group size (0 = per output channel)
  --epochs N           epochs over the calibration set per block (10)
  --lr X               learning rate of the LoRA factors and norms (5e-4, linear decay to 0)
  --lora-rank R        rank of the low-rank compensation (4)
  --channel-ratio X    extra channels of the reassembly, as a fraction of the width (0.2)
  --num-layer N        decoder blocks reconstructed jointly (1)
  --lwc                also learn weight clipping        --lwc-lr X (1e-2)
  --no-reassembly      skip the channel reassembly
  --merge-score S      reference (QLLM's, default) or error (‖W_a − W_b‖²·‖x_a − x_b‖², the
                       bound on what a merge changes)
  --no-lora            no learned compensation: round-to-nearest weights
  --resume DIR         a previous run's checkpoint directory (<out>.ckpt): the blocks saved
                       there are folded without training, the others are trained
${COMMON_USAGE}`;

/** The QLLM settings read from the flags. */
export interface QllmOptions {
  lora: LoraOptions;
  abits: number;
  train: TrainOptions;
  channelRatio: number;
  /** Decoder blocks trained jointly (1: one block at a time). */
  numLayer: number;
  reassembly: boolean;
  mergeScore: "reference" | "error";
  useLora: boolean;
}

function mergeScoreFlag(v: unknown): "reference" | "error" {
  if (v === undefined || v === "reference" || v === "error") {
    return (v ?? "reference") as "reference" | "error";
  }
  throw new UsageError(`--merge-score ${v}: expected reference or error`);
}

/** Reads and validates the QLLM flags. */
export function qllmOptions(f: Record<string, unknown>): QllmOptions {
  const wbits = intFlag(f.wbits, "--wbits", 4, 2);
  if (wbits > 16) throw new UsageError(`--wbits ${wbits}: expected 2 to 16 (16: not quantized)`);
  const numLayer = intFlag(f["num-layer"], "--num-layer", 1);
  if (numLayer > 1 && f.resume !== undefined) {
    throw new UsageError("--resume is not supported with --num-layer above 1 yet");
  }
  const lr = numFlag(f.lr, "--lr", 5e-4, 0);
  return {
    lora: {
      wbits,
      groupSize: intFlag(f["group-size"], "--group-size", 0, 0),
      rank: intFlag(f["lora-rank"], "--lora-rank", 4),
      lr,
      lwc: !!f.lwc,
      lwcLr: numFlag(f["lwc-lr"], "--lwc-lr", 1e-2, 0),
    },
    abits: intFlag(f.abits, "--abits", 16, 2),
    train: {
      epochs: intFlag(f.epochs, "--epochs", 10, 0),
      schedule: linearDecay(),
      resume: f.resume as string | undefined,
    },
    channelRatio: numFlag(f["channel-ratio"], "--channel-ratio", 0.2, 0, 1),
    numLayer,
    reassembly: !f["no-reassembly"],
    mergeScore: mergeScoreFlag(f["merge-score"]),
    useLora: !f["no-lora"],
  };
}

/** Runs QLLM from command-line flags. */
export async function qllmMain(argv: string[]): Promise<QuantizeReport | undefined> {
  const f = parseFlags(argv, QLLM_FLAGS, USAGE);
  if (f.help) {
    console.log(USAGE);
    return;
  }
  const o = qllmOptions(f);
  const common = commonRun(f, "qllm");
  o.train.checkpointDir = `${common.out}.ckpt`;
  const { wbits, groupSize } = o.lora;
  const report = await runQuantization({
    ...common,
    method: "qllm",
    wbits,
    abits: o.abits,
    groupSize,
    teacher: true,
    settings: {
      ...o.lora,
      epochs: o.train.epochs,
      schedule: "linear decay to 0",
      resume: o.train.resume,
      channel_ratio: o.reassembly ? o.channelRatio : null,
      reassembly: o.reassembly,
      merge_score: o.reassembly ? o.mergeScore : null,
      lora: o.useLora,
      num_layer: o.numLayer,
    },
    stages: () => [
      capture(),
      ...(o.reassembly
        ? [reassemble({
          channelRatio: o.channelRatio,
          wbits,
          abits: o.abits,
          groupSize,
          mergeScore: o.mergeScore,
        })]
        : []),
      !o.useLora
        ? rtn({ bits: wbits, groupSize })
        : o.numLayer > 1
        ? reconstructGroups(loraMethod(o.lora), o.train, o.numLayer)
        : reconstruct(loraMethod(o.lora), o.train),
      propagate(),
    ],
  });
  printReport(report, !!f.json);
  return report;
}

if (import.meta.main) await runMain(async (argv) => void await qllmMain(argv));
