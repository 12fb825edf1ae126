/**
 * MatMul throughput: `kernels/matmul.ts` (our graph builder, session cache and feed handling)
 * next to a bare onnxruntime-node session of the same MatMul, built straight with onnx-proto and
 * given the same thread count, at n × n × n for n = 512, 1024, 2048. The ratio shows the
 * toolkit's overhead (goal: ≥ 0.8 at 2048³).
 * @module
 */
import * as ort from "onnxruntime-node";
import onnxProto from "onnx-proto";
import { matmul } from "../kernels/matmul.ts";
import { Rng } from "../kernels/tensor.ts";
import { timeAlternating } from "./timing.ts";
import type { BenchContext, BenchRecord, SummaryRow } from "./types.ts";

// deno-lint-ignore no-explicit-any
const onnx: any = (onnxProto as any).onnx;

/** Matrix sizes measured. */
export const MATMUL_SIZES = [512, 1024, 2048] as const;
/** The ratio (ours / raw GFLOP/s) the toolkit aims for at the largest size. */
export const MATMUL_RATIO_GOAL = 0.8;

/** A one-node ONNX model c = a·b with fixed [n, n] inputs, written without our Graph builder. */
export function rawMatmulModel(n: number): Uint8Array {
  const FLOAT = 1;
  const info = (name: string) =>
    onnx.ValueInfoProto.create({
      name,
      type: { tensorType: { elemType: FLOAT, shape: { dim: [{ dimValue: n }, { dimValue: n }] } } },
    });
  const graph = onnx.GraphProto.create({
    name: "raw_matmul",
    node: [onnx.NodeProto.create({ opType: "MatMul", input: ["a", "b"], output: ["c"] })],
    input: [info("a"), info("b")],
    output: [info("c")],
  });
  const model = onnx.ModelProto.create({
    irVersion: 8,
    opsetImport: [{ domain: "", version: 18 }],
    producerName: "bench-raw",
    graph,
  });
  return onnx.ModelProto.encode(model).finish();
}

/** One size's measurement. */
export interface MatmulPoint {
  n: number;
  gflop: number;
  ours_s: number;
  raw_s: number;
  ours_gflops: number;
  raw_gflops: number;
  /** ours_gflops / raw_gflops, from the median times. */
  ratio: number;
  /** The same from the fastest call of each (less sensitive to other load on the machine). */
  ratio_best: number;
  reps: number;
  /** max |ours − raw| over the product (both should be bit-identical or nearly). */
  max_abs_diff: number;
}

/** Runs the MatMul benchmark. */
export async function benchMatmul(ctx: BenchContext): Promise<BenchRecord> {
  const threads = navigator.hardwareConcurrency ?? 2;
  const rng = new Rng(2048);
  const points: MatmulPoint[] = [];
  for (const n of MATMUL_SIZES) {
    ctx.log(`matmul: ${n}³`);
    const a = rng.normalTensor([n, n]), b = rng.normalTensor([n, n]);
    const raw = await ort.InferenceSession.create(rawMatmulModel(n), {
      executionProviders: ["cpu"],
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      graphOptimizationLevel: "all",
    });
    try {
      const runRaw = async () =>
        (await raw.run({
          a: new ort.Tensor("float32", a.data, [n, n]),
          b: new ort.Tensor("float32", b.data, [n, n]),
        })).c.data as Float32Array;
      const ours = (await matmul(ctx.rt, a, b)).data;
      const ref = await runRaw();
      let maxDiff = 0;
      for (let i = 0; i < ours.length; i++) maxDiff = Math.max(maxDiff, Math.abs(ours[i] - ref[i]));
      const t = await timeAlternating({
        ours: () => matmul(ctx.rt, a, b),
        raw: runRaw,
      }, { rounds: 3, warmup: 2, minReps: 3, minSeconds: n >= 2048 ? 1 : 0.4, maxReps: 500 });
      const gflop = (2 * n ** 3) / 1e9;
      const p: MatmulPoint = {
        n,
        gflop,
        ours_s: t.ours.median,
        raw_s: t.raw.median,
        ours_gflops: gflop / t.ours.median,
        raw_gflops: gflop / t.raw.median,
        ratio: t.raw.median / t.ours.median,
        ratio_best: t.raw.min / t.ours.min,
        reps: t.ours.samples.length,
        max_abs_diff: maxDiff,
      };
      points.push(p);
    } finally {
      await raw.release();
    }
  }
  const largest = points[points.length - 1];
  const summary: SummaryRow[] = points.map((p) => ({
    label: `${p.n}³ ours`,
    value: round(p.ours_gflops, 1),
    unit: "GFLOP/s",
    note: `raw ${round(p.raw_gflops, 1)}, ratio ${round(p.ratio, 3)} (best-of ${
      round(p.ratio_best, 3)
    })`,
  }));
  return {
    threads,
    ort_version: ort.env.versions.common,
    points,
    ratio_goal: MATMUL_RATIO_GOAL,
    goal_met: largest.ratio >= MATMUL_RATIO_GOAL,
    summary,
  };
}

function round(v: number, digits: number): number {
  return Number(v.toFixed(digits));
}
