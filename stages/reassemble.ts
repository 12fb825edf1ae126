/**
 * QLLM's adaptive channel reassembly as a stage of the block stream (the mathematics is in
 * `algorithms/reassembly.ts`): per block, statistics of the full-precision block on the teacher
 * chain, then per point the threshold with the lowest quantized-output error (or none), applied
 * as gather maps and rewritten next-layer weights, with the coefficients folded into the RMSNorm
 * weights and up_proj rows so that the run-time reassembly is only gathers and adds.
 *
 * `job.learned` receives per point `reassembly.{point}.split_counts` (T_c, int32 [C]),
 * `merge_src` / `merge_dst` (int32 [m]: A and B channel of each merged pair) and `theta`
 * ([1], 0 when the point is not reassembled).
 * @module
 */
import {
  applyPlan,
  choosePoint,
  foldPoint,
  type PointChoice,
  pointGraph,
  type PointReport,
  type PointStats,
  type ReassembleOptions,
  REASSEMBLY_POINTS,
  type ReassemblyPoint,
} from "../algorithms/reassembly.ts";
import { onlineRotationNames } from "../models/block_graph.ts";
import { captureBlock } from "../models/forward.ts";
import type { BlockWeights } from "../models/source.ts";
import { type BlockJob, type Stage, stage } from "./job.ts";

export { type ReassembleOptions, REASSEMBLY_POINTS, type ReassemblyPoint };

/** Per-point statistics of the full-precision block on the teacher inputs. */
export async function reassemblyStats(
  job: BlockJob,
): Promise<Record<ReassemblyPoint, PointStats>> {
  if (!job.fpIn) {
    throw new Error("reassemble(): needs the teacher chain (run with teacher: true)");
  }
  const T = job.fpIn.shape[1];
  const stats = {} as Record<ReassemblyPoint, PointStats>;
  await captureBlock(job.ctx.rt, job.ctx.config, job.fpWeights, job.fpIn, {
    onCapture: (cap, first) => {
      for (const p of REASSEMBLY_POINTS) {
        const t = cap[p], k = t.shape[1];
        const s = stats[p] ??= {
          xmax: new Float32Array(k),
          feat: { data: new Float32Array(0), shape: [0, k] },
        };
        if (first === 0) s.feat = { data: t.data.slice(0, T * k), shape: [T, k] };
        const m = s.xmax;
        for (let i = 0; i < t.data.length; i++) {
          const v = Math.abs(t.data[i]);
          if (v > m[i % k]) m[i % k] = v;
        }
      }
    },
  });
  return stats;
}

/** The learned state of one point. */
function learnedOf(point: ReassemblyPoint, ch: PointChoice): BlockJob["learned"] {
  const k = `reassembly.${point}`;
  return {
    [`${k}.split_counts`]: { int32: ch.plan.counts.slice(), shape: [ch.plan.counts.length] },
    [`${k}.merge_src`]: {
      int32: Int32Array.from(ch.plan.pairs, (p) => p[0]),
      shape: [ch.plan.pairs.length],
    },
    [`${k}.merge_dst`]: {
      int32: Int32Array.from(ch.plan.pairs, (p) => p[1]),
      shape: [ch.plan.pairs.length],
    },
    [`${k}.theta`]: { data: Float32Array.of(ch.theta ?? 0), shape: [1] },
  };
}

/**
 * QLLM's adaptive channel reassembly as a stage (see the module doc): per block and point, the
 * threshold with the lowest quantized-output error (or none), applied as gather maps and
 * rewritten next-layer weights, the coefficients folded into the RMSNorm weights and up_proj
 * rows so that the run-time reassembly is only gathers and adds. Needs the teacher chain.
 * Every block gets all 12 `reassembly.*` tensors (identity maps where nothing changed).
 */
export function reassemble(o: ReassembleOptions): Stage {
  if (!(o.channelRatio >= 0)) throw new Error(`reassemble: channelRatio ${o.channelRatio} < 0`);
  const graphs = new Map<string, Uint8Array>();
  return stage("reassemble", async (job) => {
    const c = job.ctx.config;
    const T = job.fpIn?.shape[1] ?? job.ctx.seqlen;
    const t0 = performance.now();
    const stats = await reassemblyStats(job);
    const statsSeconds = (performance.now() - t0) / 1000;
    const points = {} as Record<ReassemblyPoint, PointReport>;
    const out: BlockWeights = { ...job.weights };
    for (const p of REASSEMBLY_POINTS) {
      const graph = (abits: number, ref: boolean) => {
        const key = `${p}/${T}/${abits}/${ref}`;
        let g = graphs.get(key);
        if (!g) graphs.set(key, g = pointGraph(c, p, T, abits, ref));
        return g;
      };
      const tp = performance.now();
      const ch = await choosePoint(job.ctx.rt, c, out, p, stats[p], o, graph);
      Object.assign(out, applyPlan(out, p, ch.plan));
      // The coefficients at down_proj's input fold into up_proj's rows only while nothing mixes
      // the channels in between: with an online rotation there (R4) they stay at run time.
      const rotated = p === "x_down" && out[onlineRotationNames("x_down")[1]] !== undefined;
      if ((o.fold ?? true) && !rotated) Object.assign(out, foldPoint(out, p));
      Object.assign(job.learned, learnedOf(p, ch));
      points[p] = { ...ch.report, seconds: (performance.now() - tp) / 1000 };
      job.ctx.log(
        `block ${job.index + 1}: reassemble ${p} θ ${ch.theta?.toPrecision(4) ?? "none"}, ` +
          `${ch.report.channels_split} split, +${ch.report.extra_channels} channels, ` +
          `error ${ch.report.error_before.toExponential(3)} → ` +
          ch.report.error_after.toExponential(3),
      );
    }
    for (const [k, t] of Object.entries(out)) if (job.weights[k] !== t) job.weights[k] = t;
    return { points, stats_seconds: statsSeconds };
  });
}
