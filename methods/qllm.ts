/**
 * QLLM (Liu et al., 2024): adaptive channel reassembly of the linear inputs
 * (`stages/reassemble.ts`), then low-rank error compensation as a
 * {@linkcode ReconstructionMethod}: per linear layer a LoRA pair (A [rank, in], B [out, rank],
 * scaling α/rank) and, optionally, the two RMSNorm weights and OmniQuant-style clipping logits,
 * learned block by block (or `--num-layer` blocks at a time) against the full-precision
 * outputs.
 *
 * The low-rank update is merged into the weight *before* quantization, Ŵ = Q(W + s·B·A), both
 * in training (straight-through gradients through Q) and in the fold, so the deployed block is
 * exactly the function that was trained. (The reference trains Q(W) + s·B·A, with the LoRA in
 * full precision beside the quantized weight, and then deploys Q(W + s·B·A): the deployed
 * model is not the one whose loss it minimised.)
 * @module
 */
import { lwcGrid, lwcParams, type LwcSpec, lwcStoredBits } from "../algorithms/lwc.ts";
import type { Graph, Value } from "../kernels/graph.ts";
import type { Param } from "../kernels/optim.ts";
import { Rng } from "../kernels/tensor.ts";
import { LINEAR_NAMES, type ModelConfig } from "../models/config.ts";
import { intFlag, numFlag, UsageError } from "../cli/flags.ts";
import { linearDecay } from "../kernels/optim.ts";
import type { BlockJob } from "../stages/job.ts";
import { reassemble } from "../stages/reassemble.ts";
import {
  learnedOutput,
  reconstruct,
  type ReconstructionMethod,
  type TrainOptions,
} from "../stages/reconstruct.ts";
import {
  ACTIVATION_FLAGS,
  ACTIVATION_USAGE,
  activationFlags,
  checkBatch,
  checkGroups,
  TRAIN_FLAGS,
  trainFlags,
  trainUsage,
  WEIGHT_FLAGS,
  WEIGHT_USAGE,
  weightFlags,
} from "./flags.ts";
import type { Method, MethodOptions } from "./method.ts";
import { rtn } from "./rtn.ts";

/** QLLM low-rank compensation settings. */
export interface LoraOptions {
  /** Weight bits (16 = no quantization). */
  wbits: number;
  /** Input columns per weight group; 0 = per output channel. */
  groupSize: number;
  /** LoRA rank (4). */
  rank?: number;
  /** LoRA scaling numerator: ΔW = (alpha/rank)·B·A (1). */
  alpha?: number;
  /** Learning rate of the LoRA factors and the norm weights (5e-4). */
  lr?: number;
  /** Also learn the two RMSNorm weights of the block (true, as QLLM does). */
  trainNorms?: boolean;
  /** Also learn OmniQuant's clipping logits (LWC). */
  lwc?: boolean;
  /** Learning rate of the clipping logits (1e-2). */
  lwcLr?: number;
  /** ABQ-LLM's bit balance (2^b + 1 levels for b ≤ 2); off by default. */
  bitBalance?: boolean;
}

/** The norms whose weights QLLM trains. */
export const LORA_NORMS = ["input_layernorm", "post_attention_layernorm"] as const;

/** Name of the learned weight of a norm (`input_layernorm` → `input_layernorm.trained_weight`). */
export function normParamName(norm: (typeof LORA_NORMS)[number]): string {
  return `${norm}.trained_weight`;
}

/**
 * The seed of the LoRA `A` initialisation of one layer of one block, so a run is reproducible
 * and every layer of every block draws its own numbers.
 */
export function loraSeed(blockIndex: number, layerIndex: number): number {
  return (blockIndex + 1) * 1009 + layerIndex * 31 + 7;
}

/**
 * torch's `kaiming_uniform_(a=√5)` on a [rank, in] matrix: gain √(2/(1+a²)) = √(1/3), bound
 * √3·gain/√fan_in = 1/√in, uniform in ±bound.
 */
export function kaimingUniformA(rank: number, inFeatures: number, rng: Rng): Float32Array {
  const bound = 1 / Math.sqrt(inFeatures);
  const a = new Float32Array(rank * inFeatures);
  for (let i = 0; i < a.length; i++) a[i] = (2 * rng.uniform() - 1) * bound;
  return a;
}

/** The QLLM low-rank compensation method (reconstruction stage name `lora`). */
export function loraMethod(o: LoraOptions): ReconstructionMethod {
  const rank = o.rank ?? 4;
  const scaling = (o.alpha ?? 1) / rank;
  const lr = o.lr ?? 5e-4;
  const trainNorms = o.trainNorms ?? true;
  const spec: LwcSpec = { bits: o.wbits, groupSize: o.groupSize, bitBalance: !!o.bitBalance };
  const quantize = o.wbits < 16;
  if (!Number.isInteger(rank) || rank < 1) {
    throw new Error(`lora: rank ${rank}: expected an integer ≥ 1`);
  }
  return {
    name: "lora",
    init(job: BlockJob): Param[] {
      const params: Param[] = [];
      LINEAR_NAMES.forEach((l, li) => {
        // The block as earlier stages left it (e.g. reassembled: other input widths).
        const [rows, cols] = job.weights[`${l}.weight`].shape;
        const rng = new Rng(loraSeed(job.index, li));
        params.push({
          name: `${l}.lora_A`,
          data: kaimingUniformA(rank, cols, rng),
          shape: [rank, cols],
          lr,
        });
        params.push({
          name: `${l}.lora_B`,
          data: new Float32Array(rows * rank),
          shape: [rows, rank],
          lr,
        });
        if (quantize && o.lwc) params.push(...lwcParams(l, rows, cols, spec, o.lwcLr ?? 1e-2));
      });
      if (trainNorms) {
        for (const norm of LORA_NORMS) {
          const t = job.weights[`${norm}.weight`];
          params.push({ name: normParamName(norm), data: t.data.slice(), shape: [...t.shape], lr });
        }
      }
      return params;
    },
    student(g: Graph, _c: ModelConfig, w: Record<string, Value>, p: Record<string, Value>) {
      // Every tensor passes through unchanged unless replaced below (reassembly data included).
      const out: Record<string, Value> = { ...w };
      if (trainNorms) {
        for (const norm of LORA_NORMS) out[`${norm}.weight`] = p[normParamName(norm)];
      }
      for (const l of LINEAR_NAMES) {
        const name = `${l}.weight`;
        const [rows, cols] = g.shapeOf(w[name]) as number[];
        const delta = g.mul(g.matmul(p[`${l}.lora_B`], p[`${l}.lora_A`]), g.scalar(scaling));
        const merged = g.add(w[name], delta);
        if (!quantize) {
          out[name] = merged;
          continue;
        }
        const q = lwcGrid(
          g,
          merged,
          p[`${l}.lwc_gamma`] ?? null,
          p[`${l}.lwc_beta`] ?? null,
          rows,
          cols,
          spec,
        );
        out[name] = q.weight;
        out[learnedOutput(`${l}.scales`)] = q.scale;
        out[learnedOutput(`${l}.zeros`)] = q.zero;
      }
      return out;
    },
    storedBits: (_c, _tensor, rows, cols) =>
      quantize ? lwcStoredBits(spec, rows, cols) : rows * cols * 32,
  };
}

/** QLLM's options. */
export interface QllmMethodOptions extends MethodOptions {
  /** The low-rank compensation's settings. */
  lora: LoraOptions;
  /** Training settings (the checkpoint directory is set from `--out`). */
  train: TrainOptions;
  /** Extra channels of the reassembly, as a fraction of the width. */
  channelRatio: number;
  /** Reassemble the channels of the linear inputs. */
  reassembly: boolean;
  /** How merge pairs are scored. */
  mergeScore: "reference" | "error";
  /** Learn the low-rank compensation (else round-to-nearest weights). */
  useLora: boolean;
}

function mergeScoreFlag(v: unknown): "reference" | "error" {
  if (v === undefined || v === "reference" || v === "error") {
    return (v ?? "reference") as "reference" | "error";
  }
  throw new UsageError(`--merge-score ${v}: expected reference or error`);
}

/** QLLM's command line. */
export const QLLM: Method<QllmMethodOptions> = {
  name: "qllm",
  synopsis: "[--wbits 4] [--abits 16] [--epochs 10] [--lora-rank 4] [--num-layer 1]",
  flags: {
    ...WEIGHT_FLAGS,
    ...ACTIVATION_FLAGS,
    ...TRAIN_FLAGS,
    lr: { type: "string" },
    "lora-rank": { type: "string" },
    "channel-ratio": { type: "string" },
    "num-layer": { type: "string" },
    lwc: { type: "boolean" },
    "lwc-lr": { type: "string" },
    "no-reassembly": { type: "boolean" },
    "no-lora": { type: "boolean" },
    "merge-score": { type: "string" },
  },
  usage: `${WEIGHT_USAGE}
${trainUsage(10)}
  --lr X               learning rate of the LoRA factors and norms (5e-4, linear decay to 0)
  --lora-rank R        rank of the low-rank compensation (4)
  --num-layer N        decoder blocks reconstructed jointly (1)
  --lwc                also learn weight clipping        --lwc-lr X (1e-2)
  --channel-ratio X    extra channels of the reassembly, as a fraction of the width (0.2)
  --no-reassembly      skip the channel reassembly
  --merge-score S      reference (QLLM's, default) or error (‖W_a − W_b‖²·‖x_a − x_b‖², the
                       bound on what a merge changes)
  --no-lora            no learned compensation: round-to-nearest weights
${ACTIVATION_USAGE}`,
  layerwise: false,
  options(f) {
    const { wbits, groupSize } = weightFlags(f);
    return {
      lora: {
        wbits,
        groupSize,
        rank: intFlag(f["lora-rank"], "--lora-rank", 4),
        lr: numFlag(f.lr, "--lr", 5e-4, 0),
        lwc: !!f.lwc,
        lwcLr: numFlag(f["lwc-lr"], "--lwc-lr", 1e-2, 0),
      },
      train: {
        ...trainFlags(f, 10),
        schedule: linearDecay(),
        numLayer: intFlag(f["num-layer"], "--num-layer", 1),
      },
      channelRatio: numFlag(f["channel-ratio"], "--channel-ratio", 0.2, 0, 1),
      reassembly: !f["no-reassembly"],
      mergeScore: mergeScoreFlag(f["merge-score"]),
      useLora: !f["no-lora"],
      activations: activationFlags(f),
    };
  },
  plan: (o, out) => {
    const { wbits, groupSize } = o.lora;
    const train = { ...o.train, checkpointDir: `${out}.ckpt` };
    return {
      method: "qllm",
      wbits,
      abits: o.activations.abits,
      kvBits: o.activations.kvBits,
      groupSize,
      teacher: true,
      settings: {
        ...o.lora,
        epochs: train.epochs,
        batch: train.batch,
        schedule: "linear decay to 0",
        resume: train.resume,
        channel_ratio: o.reassembly ? o.channelRatio : null,
        reassembly: o.reassembly,
        merge_score: o.reassembly ? o.mergeScore : null,
        lora: o.useLora,
        num_layer: train.numLayer,
      },
      stages: () => [
        ...(o.reassembly
          ? [reassemble({
            channelRatio: o.channelRatio,
            wbits,
            abits: o.activations.abits,
            groupSize,
            mergeScore: o.mergeScore,
          })]
          : []),
        o.useLora ? reconstruct(loraMethod(o.lora), train) : rtn({ bits: wbits, groupSize }),
      ],
      check: (c, calib) => {
        checkGroups(c, groupSize);
        checkBatch(train.batch ?? 1, calib.nsamples);
      },
    };
  },
};
