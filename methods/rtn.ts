/**
 * Round-to-nearest, the baseline every method is compared against: min-max (or MSE-searched)
 * weights per channel or group, as a {@linkcode LinearQuantizer} of the layer-wise stage.
 * @module
 */
import { checkGroupSize, rtnWeight } from "../algorithms/quantizer.ts";
import type { Stage } from "../stages/job.ts";
import { type LinearQuantizer, quantizeLinears } from "../stages/quantize_linears.ts";
import {
  ACTIVATION_FLAGS,
  ACTIVATION_USAGE,
  activationFlags,
  type ActivationOptions,
  checkGroups,
  WEIGHT_FLAGS,
  WEIGHT_USAGE,
  weightFlags,
} from "./flags.ts";
import type { Method, MethodOptions } from "./method.ts";
import type { PackRequest, ScaleFormat } from "../formats/packed.ts";

/** Uniform weight quantization settings shared by RTN and GPTQ. */
export interface UniformOptions {
  /** Weight bits, 2..16. */
  bits: number;
  /** Input columns per group; 0 = per output channel. */
  groupSize: number;
  /** Symmetric range, zero point fixed at (maxq+1)/2 (false). */
  sym?: boolean;
  /** GPTQ's MSE range search instead of min-max. */
  mse?: boolean;
  /** Scales rounded as a packed format stores them (fp16) from the start; absent: float32. */
  scaleFormat?: ScaleFormat;
  /**
   * Accept a group size that does not divide a layer's input width, the last group being
   * shorter (how the reference handles stories260k's 172-wide down_proj). Packed exports need
   * equal groups, so this is off unless asked for.
   */
  allowPartialGroup?: boolean;
}

/** Refuses a group size that does not divide a layer's width, unless partial groups are allowed. */
export function checkUniformGroups(
  o: UniformOptions,
  layer: string,
  cols: number,
  block: number,
): void {
  if (!o.allowPartialGroup) {
    checkGroupSize(cols, o.groupSize, `model.layers.${block}.${layer}.weight`);
  }
}

/** Bits of a packed uniform weight: indices, fp16 scales, zero points, and g_idx if needed. */
export function uniformStoredBits(
  rows: number,
  cols: number,
  bits: number,
  nGroups: number,
  sym: boolean,
  gIdx: boolean,
): number {
  return rows * cols * bits + rows * nGroups * (16 + (sym ? 0 : bits)) + (gIdx ? 32 * cols : 0);
}

/** Round-to-nearest (min-max per channel or group). */
export function rtn(o: UniformOptions): Stage {
  const q: LinearQuantizer = {
    name: "rtn",
    trueSequential: false,
    quantize(_ctx, layer, W, _H, block) {
      const [rows, cols] = W.shape;
      checkUniformGroups(o, layer, cols, block);
      const r = rtnWeight(W, {
        bits: o.bits,
        groupSize: o.groupSize,
        sym: !!o.sym,
        mse: o.mse,
        scaleFormat: o.scaleFormat,
      });
      return Promise.resolve({
        weight: r.weight,
        learned: {
          scales: { data: r.scale, shape: [rows, r.nGroups] },
          zeros: { data: r.zero, shape: [rows, r.nGroups] },
        },
        storedBits: uniformStoredBits(rows, cols, o.bits, r.nGroups, !!o.sym, false),
      });
    },
  };
  return quantizeLinears(q);
}

/** The flags RTN and GPTQ share beside the weight flags. */
export const UNIFORM_FLAGS = {
  sym: { type: "boolean" },
  mse: { type: "boolean" },
  "allow-partial-group": { type: "boolean" },
} as const;

/** Usage of {@linkcode UNIFORM_FLAGS}. */
export const UNIFORM_USAGE =
  `  --sym                symmetric range (zero point fixed at the middle)
  --mse                search the range for the least p=2.4 error (GPTQ's --mse)
  --allow-partial-group
                       accept a group size that does not divide a layer's width (the last
                       group shorter; packed exports refuse such models)`;

/** Reads {@linkcode WEIGHT_FLAGS} and {@linkcode UNIFORM_FLAGS}, `--wbits` up to `maxBits`. */
export function uniformFlags(f: Record<string, unknown>, maxBits: number): UniformOptions {
  const { wbits, groupSize } = weightFlags(f, { max: maxBits });
  return {
    bits: wbits,
    groupSize,
    sym: !!f.sym,
    mse: !!f.mse,
    allowPartialGroup: !!f["allow-partial-group"],
  };
}

/**
 * What a packed format must hold for a uniform run: `maxq`, groups, symmetry; act-order
 * without static groups scatters the groups.
 */
export function uniformPackRequest(
  method: string,
  u: UniformOptions & { actOrder?: boolean; staticGroups?: boolean },
  a: ActivationOptions,
): PackRequest {
  const extras = [
    ...(a.abits < 16 ? [`${a.abits}-bit activations`] : []),
    ...(a.kvBits !== undefined && a.kvBits < 16 ? [`${a.kvBits}-bit q/k/v`] : []),
    ...(a.staticActs ? ["static activation ranges"] : []),
  ];
  return {
    method,
    maxq: 2 ** u.bits - 1,
    groupSize: u.groupSize,
    sym: !!u.sym,
    scatteredGroups: !!u.actOrder && u.groupSize > 0 && !u.staticGroups,
    notUniform: u.bits >= 16 ? "it is not quantized (--wbits 16)" : null,
    runtimeExtras: extras.length ? extras.join(", ") : null,
  };
}

/** The `quantization_config` fields a uniform run adds (what packed exports need to know). */
export function uniformQuantConfig(
  u: UniformOptions,
  scaleFormat: ScaleFormat | undefined,
): Record<string, unknown> {
  return { sym: !!u.sym, scale_format: scaleFormat ?? "float32" };
}

/** RTN's options. */
export interface RtnMethodOptions extends MethodOptions {
  /** The weight quantizer. */
  uniform: UniformOptions;
}

/** RTN's command line. */
export const RTN: Method<RtnMethodOptions> = {
  name: "rtn",
  synopsis: "[--wbits 4] [--group-size N] [--abits 16] [--sym] [--mse]",
  flags: { ...WEIGHT_FLAGS, ...UNIFORM_FLAGS, ...ACTIVATION_FLAGS },
  usage: [WEIGHT_USAGE, UNIFORM_USAGE, ACTIVATION_USAGE].join("\n"),
  layerwise: true,
  options: (f) => ({ uniform: uniformFlags(f, 16), activations: activationFlags(f) }),
  plan: ({ uniform, activations, scaleFormat }) => ({
    method: "rtn",
    wbits: uniform.bits,
    abits: activations.abits,
    kvBits: activations.kvBits,
    groupSize: uniform.groupSize,
    settings: {
      ...uniform,
      act_scheme: activations.staticActs ? "static" : "token",
      ...(scaleFormat ? { scale_format: scaleFormat } : {}),
    },
    quantConfig: uniformQuantConfig(uniform, scaleFormat),
    stages: () => [rtn({ ...uniform, scaleFormat })],
    check: (c) => checkGroups(c, uniform.groupSize, uniform.allowPartialGroup),
  }),
  packRequest: ({ uniform, activations }) => uniformPackRequest("rtn", uniform, activations),
};
