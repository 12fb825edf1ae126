/**
 * GPTQ (Frantar et al., 2023) with the reference's options, as a {@linkcode LinearQuantizer} of
 * the layer-wise stage: each weight quantized column by column against the Hessian of its inputs
 * on the quantized chain (`algorithms/gptq.ts`).
 * @module
 */
import { gptq } from "../algorithms/gptq.ts";
import { numFlag } from "../cli/flags.ts";
import type { Stage } from "../stages/job.ts";
import { type LinearQuantizer, quantizeLinears } from "../stages/quantize_linears.ts";
import {
  ACTIVATION_FLAGS,
  ACTIVATION_USAGE,
  activationFlags,
  checkGroups,
  WEIGHT_FLAGS,
  WEIGHT_USAGE,
} from "./flags.ts";
import type { Method, MethodOptions } from "./method.ts";
import {
  checkUniformGroups,
  UNIFORM_FLAGS,
  UNIFORM_USAGE,
  uniformFlags,
  type UniformOptions,
  uniformPackRequest,
  uniformQuantConfig,
  uniformStoredBits,
} from "./rtn.ts";

/** GPTQ settings. */
export interface GptqStageOptions extends UniformOptions {
  /** Quantize columns in order of decreasing diag(H) (`--act-order`). */
  actOrder: boolean;
  /** Group parameters fixed up front from the original W (`--static-groups`). */
  staticGroups: boolean;
  /** Re-capture inputs after each group of layers (`--true-sequential`). */
  trueSequential: boolean;
  /** Damping as a fraction of mean(diag H) (0.01). */
  percdamp?: number;
  /** Columns per lazy-update block (128). */
  blockSize?: number;
}

/** GPTQ with the reference's options. */
export function gptqStage(o: GptqStageOptions): Stage {
  const q: LinearQuantizer = {
    name: "gptq",
    trueSequential: o.trueSequential,
    async quantize(ctx, layer, W, H, block) {
      const [rows, cols] = W.shape;
      checkUniformGroups(o, layer, cols, block);
      const r = await gptq(ctx.rt, W, H, {
        bits: o.bits,
        sym: o.sym,
        groupSize: o.groupSize,
        actOrder: o.actOrder,
        staticGroups: o.staticGroups,
        mse: o.mse,
        scaleFormat: o.scaleFormat,
        percdamp: o.percdamp,
        blockSize: o.blockSize,
      });
      if (r.warning) ctx.log(`block ${block + 1}: ${layer}: ${r.warning}`);
      const needsGIdx = o.actOrder && o.groupSize > 0 && !o.staticGroups;
      return {
        weight: r.weight,
        learned: {
          scales: { data: r.scale, shape: [rows, r.nGroups] },
          zeros: { data: r.zero, shape: [rows, r.nGroups] },
          g_idx: { int32: r.gIdx, shape: [cols] },
          ...(r.perm ? { perm: { int32: r.perm, shape: [cols] } } : {}),
        },
        report: { gptq_error: r.error, damp: r.damp, fell_back: r.fellBack },
        storedBits: uniformStoredBits(rows, cols, o.bits, r.nGroups, !!o.sym, needsGIdx),
      };
    },
  };
  return quantizeLinears(q);
}

/** GPTQ's options. */
export interface GptqMethodOptions extends MethodOptions {
  /** The GPTQ stage's settings. */
  gptq: GptqStageOptions;
}

/** GPTQ's command line. */
export const GPTQ: Method<GptqMethodOptions> = {
  name: "gptq",
  synopsis: "[--wbits 4] [--group-size N] [--act-order] [--static-groups] [--true-sequential]",
  flags: {
    ...WEIGHT_FLAGS,
    ...UNIFORM_FLAGS,
    "act-order": { type: "boolean" },
    "static-groups": { type: "boolean" },
    "true-sequential": { type: "boolean" },
    percdamp: { type: "string" },
    ...ACTIVATION_FLAGS,
  },
  usage: [
    WEIGHT_USAGE,
    UNIFORM_USAGE,
    `  --act-order          quantize columns in order of decreasing Hessian diagonal
  --static-groups      group parameters fixed from the whole weight before act-order
  --true-sequential    re-capture the inputs after each group of layers ([k,v,q] [o] [up,gate] [down])
  --percdamp X         damping, as a fraction of the mean Hessian diagonal (0.01)`,
    ACTIVATION_USAGE,
  ].join("\n"),
  layerwise: true,
  options: (f) => ({
    gptq: {
      ...uniformFlags(f, 15),
      actOrder: !!f["act-order"],
      staticGroups: !!f["static-groups"],
      trueSequential: !!f["true-sequential"],
      percdamp: numFlag(f.percdamp, "--percdamp", 0.01, 0, 1),
    },
    activations: activationFlags(f),
  }),
  plan: ({ gptq, activations, scaleFormat }) => ({
    method: "gptq",
    wbits: gptq.bits,
    abits: activations.abits,
    kvBits: activations.kvBits,
    groupSize: gptq.groupSize,
    settings: { ...gptq, ...(scaleFormat ? { scale_format: scaleFormat } : {}) },
    quantConfig: {
      ...uniformQuantConfig(gptq, scaleFormat),
      desc_act: gptq.actOrder,
      static_groups: gptq.staticGroups,
      true_sequential: gptq.trueSequential,
      damp_percent: gptq.percdamp ?? 0.01,
    },
    stages: () => [gptqStage({ ...gptq, scaleFormat })],
    check: (c) => checkGroups(c, gptq.groupSize, gptq.allowPartialGroup),
  }),
  packRequest: ({ gptq, activations }) => uniformPackRequest("gptq", gptq, activations),
};
