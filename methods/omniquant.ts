/**
 * OmniQuant (Shao et al., 2024) as a {@linkcode ReconstructionMethod}: learnable weight clipping
 * per channel or group (LWC) and learnable equivalent transformations (LET) initialised
 * SmoothQuant-style, learned block by block against the full-precision block's outputs. The
 * learned scales are folded into the norms and weights, so the output is a plain LLaMA
 * checkpoint. ABQ-LLM (`abq.ts`) is this method with its own options and loss, so the weight side
 * of both lives here: ABQ-LLM's rank-1 distribution compensation on `down_proj` and bit balance.
 * @module
 */
import {
  applyLet,
  type LetPoint,
  letPointsFor,
  letSize,
  OMNIQUANT_POINTS,
  smoothScale,
} from "../algorithms/let.ts";
import { lwcGrid, lwcParams, type LwcSpec, lwcStoredBits } from "../algorithms/lwc.ts";
import { numFlag } from "../cli/flags.ts";
import type { Graph, Value } from "../kernels/graph.ts";
import type { Param } from "../kernels/optim.ts";
import { LINEAR_NAMES, linearShape, type ModelConfig } from "../models/config.ts";
import type { BlockJob } from "../stages/job.ts";
import {
  type ChannelStats,
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

/** OmniQuant / ABQ-LLM settings. */
export interface OmniQuantOptions {
  /** Weight bits. */
  wbits: number;
  /** Input columns per weight group; 0 = per output channel. */
  groupSize: number;
  /** Learn clipping factors (LWC). */
  lwc: boolean;
  /** LET pairs to learn (empty: none). */
  letPoints: readonly LetPoint[];
  /** SmoothQuant migration strength of the LET initialisation (0.5). */
  alpha?: number;
  /** Learning rate of the clipping factors (1e-2). */
  lwcLr?: number;
  /** Learning rate of the LET scales and shifts (5e-3). */
  letLr?: number;
  /** ABQ-LLM: rank-1 compensation W + a·b on down_proj in these blocks (lr 1e-2). */
  compensationBlocks?: (block: number, layers: number) => boolean;
  /** ABQ-LLM's bit balance: 2^b + 1 levels for b ≤ 2. */
  bitBalance?: boolean;
}

/** The reference's choice: the first and the last block. */
export const FIRST_AND_LAST = (b: number, layers: number): boolean => b === 0 || b === layers - 1;

function colMax(w: Float32Array, rows: number, cols: number, into: Float32Array): void {
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < cols; j++) {
      const v = Math.abs(w[r * cols + j]);
      if (v > into[j]) into[j] = v;
    }
  }
}

/** Reduces a per-query-head-channel vector [H·hd] to KV heads by max over each group. */
function perKvHead(c: ModelConfig, v: Float32Array): Float32Array {
  const G = c.heads / c.kvHeads, hd = c.headDim;
  const out = new Float32Array(c.kvHeads * hd);
  for (let h = 0; h < c.heads; h++) {
    const k = Math.floor(h / G);
    for (let i = 0; i < hd; i++) out[k * hd + i] = Math.max(out[k * hd + i], v[h * hd + i]);
  }
  return out;
}

/** SmoothQuant-initialised LET scales for one block. */
export function initLetScales(
  job: BlockJob,
  stats: ChannelStats,
  points: readonly LetPoint[],
  alpha: number,
): Record<LetPoint, Float32Array> {
  const c = job.ctx.config, w = job.weights;
  const out = {} as Record<LetPoint, Float32Array>;
  const maxOver = (names: string[], n: number) => {
    const m = new Float32Array(n);
    for (const name of names) colMax(w[name].data, w[name].shape[0], w[name].shape[1], m);
    return m;
  };
  for (const p of points) {
    switch (p) {
      case "qkv":
        out.qkv = smoothScale(
          stats.x_qkv,
          maxOver(["q", "k", "v"].map((x) => `self_attn.${x}_proj.weight`), c.hidden),
          alpha,
        );
        break;
      case "fc1":
        out.fc1 = smoothScale(
          stats.x_gateup,
          maxOver(["mlp.gate_proj.weight", "mlp.up_proj.weight"], c.hidden),
          alpha,
        );
        break;
      case "out":
        out.out = smoothScale(
          perKvHead(c, stats.x_o),
          perKvHead(c, maxOver(["self_attn.o_proj.weight"], c.heads * c.headDim)),
          alpha,
        );
        break;
      case "fc2":
        out.fc2 = smoothScale(
          stats.x_down,
          maxOver(["mlp.down_proj.weight"], c.intermediate),
          alpha,
        );
        break;
      case "qk":
        out.qk = new Float32Array(letSize(c, "qk")).fill(1);
        break;
    }
  }
  return out;
}

/** The OmniQuant (or ABQ-LLM, with its options) reconstruction method. */
export function omniquantMethod(o: OmniQuantOptions, name = "omniquant"): ReconstructionMethod {
  const spec: LwcSpec = { bits: o.wbits, groupSize: o.groupSize, bitBalance: o.bitBalance };
  const quantize = o.wbits < 16;
  return {
    name,
    init(job: BlockJob, stats: ChannelStats): Param[] {
      const c = job.ctx.config;
      const params: Param[] = [];
      const points = letPointsFor(c, o.letPoints);
      const scales = initLetScales(job, stats, points, o.alpha ?? 0.5);
      for (const p of points) {
        params.push({
          name: `let.${p}`,
          data: scales[p],
          shape: [scales[p].length],
          lr: o.letLr ?? 5e-3,
        });
      }
      if (quantize && o.lwc) {
        for (const l of LINEAR_NAMES) {
          const [rows, cols] = linearShape(c, l);
          params.push(...lwcParams(l, rows, cols, spec, o.lwcLr ?? 1e-2));
        }
      }
      if (quantize && o.compensationBlocks?.(job.index, c.layers)) {
        const [rows, cols] = linearShape(c, "mlp.down_proj");
        params.push({
          name: "mlp.down_proj.comp_a",
          data: new Float32Array(rows),
          shape: [rows, 1],
          lr: 1e-2,
        });
        params.push({
          name: "mlp.down_proj.comp_b",
          data: new Float32Array(cols).fill(1),
          shape: [1, cols],
          lr: 1e-2,
        });
      }
      return params;
    },
    student(g: Graph, c: ModelConfig, w: Record<string, Value>, p: Record<string, Value>) {
      const scales: Partial<Record<LetPoint, Value>> = {};
      for (const pt of o.letPoints) scales[pt] = p[`let.${pt}`];
      const out = applyLet(g, c, w, scales);
      if (!quantize) return out;
      for (const l of LINEAR_NAMES) {
        const [rows, cols] = linearShape(c, l);
        let wl = out[`${l}.weight`];
        if (p[`${l}.comp_a`]) wl = g.add(wl, g.matmul(p[`${l}.comp_a`], p[`${l}.comp_b`]));
        const q = lwcGrid(
          g,
          wl,
          p[`${l}.lwc_gamma`] ?? null,
          p[`${l}.lwc_beta`] ?? null,
          rows,
          cols,
          spec,
        );
        out[`${l}.weight`] = q.weight;
        out[learnedOutput(`${l}.scales`)] = q.scale;
        out[learnedOutput(`${l}.zeros`)] = q.zero;
      }
      return out;
    },
    storedBits: (_c, _tensor, rows, cols) =>
      quantize ? lwcStoredBits(spec, rows, cols) : rows * cols * 32,
  };
}

/** The flags OmniQuant and ABQ-LLM share. */
export const LEARNED_FLAGS = {
  ...WEIGHT_FLAGS,
  lwc: { type: "boolean" },
  let: { type: "boolean" },
  "lwc-lr": { type: "string" },
  "let-lr": { type: "string" },
  alpha: { type: "string" },
  ...TRAIN_FLAGS,
  ...ACTIVATION_FLAGS,
} as const;

/** Usage of {@linkcode LEARNED_FLAGS}. */
export const LEARNED_USAGE = `${WEIGHT_USAGE}
  --lwc                learn weight clipping        --lwc-lr X (1e-2)
  --let                learn equivalent transforms  --let-lr X (5e-3)   --alpha X (0.5)
${trainUsage(20)}
${ACTIVATION_USAGE}`;

/** The options OmniQuant and ABQ-LLM read from their flags. */
export interface LearnedOptions extends MethodOptions {
  /** The reconstruction method's settings. */
  omni: OmniQuantOptions;
  /** Training settings (the checkpoint directory is set from `--out`). */
  train: TrainOptions;
}

/** Reads {@linkcode LEARNED_FLAGS}, with the LET pairs `--let` enables. */
export function learnedOptions(
  f: Record<string, unknown>,
  points: readonly LetPoint[],
): LearnedOptions {
  const { wbits, groupSize } = weightFlags(f);
  return {
    omni: {
      wbits,
      groupSize,
      lwc: !!f.lwc,
      letPoints: f.let ? points : [],
      alpha: numFlag(f.alpha, "--alpha", 0.5, 0, 1),
      lwcLr: numFlag(f["lwc-lr"], "--lwc-lr", 1e-2, 0),
      letLr: numFlag(f["let-lr"], "--let-lr", 5e-3, 0),
    },
    train: trainFlags(f, 20),
    activations: activationFlags(f),
  };
}

/** OmniQuant's command line. */
export const OMNIQUANT: Method<LearnedOptions> = {
  name: "omniquant",
  synopsis: "[--wbits 4] [--abits 16] [--lwc] [--let] [--epochs 20]",
  flags: LEARNED_FLAGS,
  usage: LEARNED_USAGE,
  layerwise: false,
  options: (f) => learnedOptions(f, OMNIQUANT_POINTS),
  plan: ({ omni, train, activations }, out) => {
    const t = { ...train, checkpointDir: `${out}.ckpt` };
    return {
      method: "omniquant",
      wbits: omni.wbits,
      abits: activations.abits,
      kvBits: activations.kvBits,
      groupSize: omni.groupSize,
      teacher: true,
      settings: { ...omni, ...t },
      stages: () => [reconstruct(omniquantMethod(omni), t)],
      check: (c, calib) => {
        checkGroups(c, omni.groupSize);
        checkBatch(t.batch ?? 1, calib.nsamples);
      },
    };
  },
};
