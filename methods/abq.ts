/**
 * ABQ-LLM (Zeng et al., 2024): OmniQuant's LWC and LET plus ABQ's up→down LET pair, rank-1
 * distribution compensation on `down_proj` in the first and last blocks, its attention-aware
 * loss (attention KL + MSE + cosine, against the teacher on both inputs) and, with
 * `--bit-balance`, 2-bit weights with 5 levels (reported as log2 5 ≈ 2.32 bits, not 2).
 * @module
 */
import { ABQ_POINTS } from "../algorithms/let.ts";
import { UsageError } from "../cli/flags.ts";
import type { Graph, Value } from "../kernels/graph.ts";
import {
  type LossInputs,
  mse,
  reconstruct,
  type ReconstructionMethod,
} from "../stages/reconstruct.ts";
import { checkBatch, checkGroups } from "./flags.ts";
import type { Method } from "./method.ts";
import {
  FIRST_AND_LAST,
  LEARNED_FLAGS,
  LEARNED_USAGE,
  type LearnedOptions,
  learnedOptions,
  omniquantMethod,
  type OmniQuantOptions,
} from "./omniquant.ts";

/** −log|mean over tokens of cos(a_t, b_t)| over the hidden axis. */
function negLogCos(g: Graph, a: Value, b: Value): Value {
  const dot = g.reduceSum(g.mul(a, b), [2]);
  const na = g.op("Sqrt", [g.reduceSum(g.mul(a, a), [2])]);
  const nb = g.op("Sqrt", [g.reduceSum(g.mul(b, b), [2])]);
  const cos = g.reduceMean(g.div(dot, g.add(g.mul(na, nb), g.scalar(1e-12))), [0, 1], 0);
  return g.op("Neg", [g.op("Log", [g.op("Abs", [cos])])]);
}

/** Σ P log(P/Q) per attention row, averaged over rows (P, Q head-averaged maps [B, T, T]). */
function kl(g: Graph, p: Value, q: Value): Value {
  const eps = g.scalar(1e-10);
  const lr = g.sub(g.op("Log", [g.add(p, eps)]), g.op("Log", [g.add(q, eps)]));
  return g.reduceMean(g.reduceSum(g.mul(p, lr), [2], 0), [0, 1], 0);
}

/**
 * ABQ-LLM's loss: symmetric KL between the head-averaged attention maps of the student and of
 * the teacher on the full-precision input, plus MSE and −log|cos| terms against both the teacher
 * on the full-precision input (the target) and the teacher on the student's input. The attention
 * maps are probabilities already, so the KL terms use them as they are (the reference applies
 * softmax a second time).
 */
export function abqLoss(t: LossInputs): Value {
  const { g, student, target } = t;
  const teacherFp = t.teacherOnFpInput();
  const yq = t.teacherOnStudentInput().y;
  const pq = g.reduceMean(student.probs, [1, 2], 0);
  const pf = g.reduceMean(teacherFp.probs, [1, 2], 0);
  const terms = [
    kl(g, pf, pq),
    kl(g, pq, pf),
    mse(g, student.y, target),
    mse(g, student.y, yq),
    negLogCos(g, student.y, target),
    negLogCos(g, student.y, yq),
  ];
  return terms.reduce((a, b) => g.add(a, b));
}

/** The ABQ-LLM reconstruction method: OmniQuant's weight side with ABQ's loss. */
export function abqMethod(o: OmniQuantOptions): ReconstructionMethod {
  return { ...omniquantMethod(o, "abq"), loss: abqLoss };
}

/** ABQ-LLM's options. */
export interface AbqMethodOptions extends LearnedOptions {
  /** Rank-1 compensation on down_proj in the first and last blocks. */
  compensation: boolean;
}

/** ABQ-LLM's command line. */
export const ABQ: Method<AbqMethodOptions> = {
  name: "abq",
  synopsis: "[--wbits 4] [--abits 16] [--lwc] [--let] [--bit-balance] [--no-compensation]",
  flags: {
    ...LEARNED_FLAGS,
    "bit-balance": { type: "boolean" },
    "no-compensation": { type: "boolean" },
  },
  usage: `${LEARNED_USAGE}
  --bit-balance        2^b + 1 levels for b ≤ 2 bits (ABQ's W2*)
  --no-compensation    no rank-1 compensation on down_proj`,
  layerwise: false,
  options(f) {
    // With a rotated model, down_proj's input is rotated online, so a scale between up_proj's
    // rows and down_proj's columns (the up→down pair) no longer folds: it is left out.
    const o = learnedOptions(f, f.rotate ? ABQ_POINTS.filter((p) => p !== "fc2") : ABQ_POINTS);
    if (f["bit-balance"] && o.omni.wbits > 2) {
      throw new UsageError(`--bit-balance applies to 2-bit weights (got --wbits ${o.omni.wbits})`);
    }
    o.omni.bitBalance = !!f["bit-balance"];
    o.omni.compensationBlocks = f["no-compensation"] ? undefined : FIRST_AND_LAST;
    return { ...o, compensation: !f["no-compensation"] };
  },
  plan: ({ omni, train, activations, compensation }, out) => {
    const t = { ...train, checkpointDir: `${out}.ckpt` };
    return {
      method: "abq",
      // Bit-balanced weights have 2^b + 1 levels: log2(5) ≈ 2.32 bits of information, not 2.
      wbits: omni.bitBalance ? Math.log2(2 ** omni.wbits + 1) : omni.wbits,
      quantConfig: omni.bitBalance ? { levels: 2 ** omni.wbits + 1, bit_balance: true } : undefined,
      abits: activations.abits,
      kvBits: activations.kvBits,
      groupSize: omni.groupSize,
      teacher: true,
      settings: { ...omni, compensation, ...t },
      stages: () => [reconstruct(abqMethod(omni), t)],
      check: (c, calib) => {
        checkGroups(c, omni.groupSize);
        checkBatch(t.batch ?? 1, calib.nsamples);
      },
    };
  },
};
