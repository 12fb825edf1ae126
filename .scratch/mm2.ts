import * as ort from "onnxruntime-node";
import { Runtime } from "../kernels/session.ts";
import { matmul } from "../kernels/matmul.ts";
import { Rng } from "../kernels/tensor.ts";
import { rawMatmulModel } from "../bench/matmul.ts";
import { timeInterleaved } from "../bench/timing.ts";
import { Graph } from "../kernels/graph.ts";
const n = Number(Deno.args[0] ?? 512);
const which = Deno.args[1];
const rng = new Rng(1);
const a = rng.normalTensor([n, n]), b = rng.normalTensor([n, n]);
const g = new Graph(); const x = g.input("a", ["m","k"]); const y = g.input("b", ["k","n"]); g.output(g.matmul(x, y), "c");
const opts = (spin: boolean) => ({ executionProviders: ["cpu"], intraOpNumThreads: 2, interOpNumThreads: 1, graphOptimizationLevel: "all", ...(spin ? {} : { extra: { session: { intra_op: { allow_spinning: "0" } } } }) }) as ort.InferenceSession.SessionOptions;
const feeds = () => ({ a: new ort.Tensor("float32", a.data, [n, n]), b: new ort.Tensor("float32", b.data, [n, n]) });
let fn: () => Promise<unknown>;
const rt = new Runtime();
if (which === "ours") fn = () => matmul(rt, a, b);
else if (which === "rtraw") { const bytes = rawMatmulModel(n); fn = () => rt.run(bytes, { a, b }); }
else if (which === "raw") { const s = await ort.InferenceSession.create(rawMatmulModel(n), opts(true)); fn = () => s.run(feeds()); }
else if (which === "sym") { const s = await ort.InferenceSession.create(g.toBytes(), opts(true)); fn = () => s.run(feeds()); }
else if (which === "symnospin") { const s = await ort.InferenceSession.create(g.toBytes(), opts(false)); fn = () => s.run(feeds()); }
else throw new Error(which);
const t = await timeInterleaved({ [which]: fn }, { warmup: 2, minReps: 10, minSeconds: 2, maxReps: 200 });
for (const [k, v] of Object.entries(t)) console.log(n, k, (v.median * 1000).toFixed(2), "ms", (2 * n ** 3 / v.median / 1e9).toFixed(1), "GFLOP/s", "min", (2*n**3/v.min/1e9).toFixed(1));
Deno.exit(0);
