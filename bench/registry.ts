/**
 * Every benchmark `bench/run.ts` knows, in run order. Adding one is one entry here: a name, a
 * line of description and a function `(ctx: BenchContext) => Promise<BenchRecord>` (see
 * `types.ts`) in its own module under `bench/`.
 * @module
 */
import { benchEval } from "./eval.ts";
import { benchMatmul } from "./matmul.ts";
import type { Benchmark } from "./types.ts";

/** The registered benchmarks. */
export const BENCHMARKS: readonly Benchmark[] = [
  {
    name: "matmul",
    description: "MatMul GFLOP/s, kernels/matmul.ts vs a raw onnxruntime session",
    run: benchMatmul,
  },
  {
    name: "eval",
    description: "perplexity tokens/s on all val windows vs the reference",
    run: benchEval,
  },
];
