/**
 * Matrix products through ONNX Runtime. `matmul(rt, a, b)` computes a·b for 2-D (or batched)
 * float32 tensors; the graph is built once and its session cached by the runtime.
 * @module
 */
import { Graph } from "./graph.ts";
import type { Runtime } from "./session.ts";
import type { Tensor } from "./tensor.ts";

/** One large product per run: no arena to hold its buffers afterwards. */
const NO_ARENA = { arena: false } as const;

let mmGraph: Uint8Array | undefined;
let mmTGraph: Uint8Array | undefined;
let gramGraph: Uint8Array | undefined;

/** a·b. */
export async function matmul(rt: Runtime, a: Tensor, b: Tensor): Promise<Tensor> {
  mmGraph ??= (() => {
    const g = new Graph();
    const x = g.input("a", ["m", "k"]);
    const y = g.input("b", ["k", "n"]);
    g.output(g.matmul(x, y), "c");
    return g.toBytes();
  })();
  if (a.shape[1] !== b.shape[0]) {
    throw new Error(`matmul: inner sizes differ ([${a.shape}] · [${b.shape}])`);
  }
  return (await rt.run(mmGraph, { a, b }, NO_ARENA)).c;
}

/** a·bᵀ (b given as [n, k], the layout of a linear layer's weight). */
export async function matmulT(rt: Runtime, a: Tensor, b: Tensor): Promise<Tensor> {
  mmTGraph ??= (() => {
    const g = new Graph();
    const x = g.input("a", ["m", "k"]);
    const y = g.input("b", ["n", "k"]);
    g.output(g.op("Gemm", [x, y], { transB: 1 }), "c");
    return g.toBytes();
  })();
  if (a.shape[1] !== b.shape[1]) {
    throw new Error(`matmulT: inner sizes differ ([${a.shape}] · [${b.shape}]ᵀ)`);
  }
  return (await rt.run(mmTGraph, { a, b }, NO_ARENA)).c;
}

/** xᵀ·x for x of shape [m, k]: the k×k Gram matrix. */
export async function gram(rt: Runtime, x: Tensor): Promise<Tensor> {
  gramGraph ??= (() => {
    const g = new Graph();
    const v = g.input("x", ["m", "k"]);
    g.output(g.op("Gemm", [v, v], { transA: 1 }), "c");
    return g.toBytes();
  })();
  return (await rt.run(gramGraph, { x }, NO_ARENA)).c;
}
