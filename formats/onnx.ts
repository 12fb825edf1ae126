/**
 * ONNX export: a whole model (ours or any checkpoint we read) as one ONNX graph from token ids
 * to logits, with its weights as initializers and everything the deployed function needs at run
 * time — per-token or static activation fake quantization, q/k/v quantization, and QLLM's channel
 * reassembly as Gather ops before the activation quantizer — built by the same code as our own
 * block graph, so the exported model computes exactly what we evaluated. Shapes are static
 * (`--batch`, `--seqlen`); one protobuf holds at most 2 GB of weights.
 * @module
 */
import { DType, Graph, type Value } from "../kernels/graph.ts";
import { addBlock, rmsNorm } from "../models/block_graph.ts";
import { checkSeqlen } from "../models/config.ts";
import { causalMask, ropeTables } from "../models/forward.ts";
import type { ModelSource } from "../models/source.ts";
import type { Tensor } from "../kernels/tensor.ts";

/** Export settings. */
export interface ExportOptions {
  /** Batch size (B) fixed in the exported graph. */
  batch: number;
  /** Sequence length (T) fixed in the exported graph. */
  seqlen: number;
}

const constantOf = (g: Graph, t: Tensor): Value => g.constant(t.data, t.shape);

/** Builds the ONNX model (input `input_ids` int64 [B, T], output `logits` [B, T, V]). */
export async function exportOnnx(model: ModelSource, o: ExportOptions): Promise<Uint8Array> {
  const c = model.config;
  checkSeqlen(c, o.seqlen);
  const { batch: B, seqlen: T } = o;
  const g = new Graph();
  const ids = g.input("input_ids", [B, T], DType.int64);
  let x = g.op("Gather", [constantOf(g, await model.embedding()), ids], { axis: 0 });
  const { cos, sin } = ropeTables(c, T);
  const rope = {
    cos: constantOf(g, cos),
    sin: constantOf(g, sin),
    mask: constantOf(g, causalMask(T)),
  };
  for (let i = 0; i < c.layers; i++) {
    const w: Record<string, Value> = {};
    for (const [name, t] of Object.entries(await model.block(i))) w[name] = constantOf(g, t);
    x = addBlock(g, c, { batch: B, seqlen: T, abits: c.activationBits, kvBits: c.kvBits }, {
      x,
      ...rope,
      w,
    }).y;
  }
  const h = rmsNorm(
    g,
    g.reshape(x, [B * T, c.hidden]),
    constantOf(g, await model.finalNorm()),
    c.rmsEps,
  );
  const logits = g.op("Gemm", [h, constantOf(g, await model.head())], { transB: 1 });
  g.output(g.reshape(logits, [B, T, c.vocab]), "logits");
  return g.toBytes();
}
