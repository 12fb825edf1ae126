import * as ort from "onnxruntime-node";
import { Runtime } from "../kernels/session.ts";
import { matmul } from "../kernels/matmul.ts";
import { Rng } from "../kernels/tensor.ts";
import { rawMatmulModel } from "../bench/matmul.ts";
import { timeAlternating } from "../bench/timing.ts";
import { Graph } from "../kernels/graph.ts";
const rt = new Runtime();
const n = Number(Deno.args[0] ?? 512);
const rng = new Rng(1);
const a = rng.normalTensor([n, n]), b = rng.normalTensor([n, n]);
const rawBytes = rawMatmulModel(n);
const raw = await ort.InferenceSession.create(rawBytes, { executionProviders: ["cpu"], intraOpNumThreads: 2, interOpNumThreads: 1, graphOptimizationLevel: "all" });
const g = new Graph(); const x = g.input("a", ["m","k"]); const y = g.input("b", ["k","n"]); g.output(g.matmul(x, y), "c");
const symBytes = g.toBytes();
const sym = await ort.InferenceSession.create(symBytes, { executionProviders: ["cpu"], intraOpNumThreads: 2, interOpNumThreads: 1, graphOptimizationLevel: "all" });
const feeds = () => ({ a: new ort.Tensor("float32", a.data, [n, n]), b: new ort.Tensor("float32", b.data, [n, n]) });
const t = await timeAlternating({
  ours: () => matmul(rt, a, b),
  rtRunRaw: () => rt.run(rawBytes, { a, b }),
  raw: () => raw.run(feeds()),
  symSession: () => sym.run(feeds()),
}, { rounds: 3, warmup: 2, minReps: 5, minSeconds: 0.5, maxReps: 500 });
for (const [k, v] of Object.entries(t)) console.log(k, (v.median * 1000).toFixed(2), "ms", (2 * n ** 3 / v.median / 1e9).toFixed(1), "GFLOP/s");
await rt.release(); await raw.release(); await sym.release();
