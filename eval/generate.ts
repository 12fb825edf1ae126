/**
 * Greedy decoding, for smoke checks of a model (original or quantized): every step runs the
 * whole padded sequence through the block graphs (causal attention makes the padding inert),
 * so one compiled graph serves every step.
 * @module
 */
import type { Runtime } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { embed, logits, runBlock } from "../models/forward.ts";
import type { BlockWeights, ModelSource } from "../models/source.ts";

/** Options of {@linkcode greedy}. */
export interface GreedyOptions {
  /** New tokens to produce (stops early at EOS). */
  tokens: number;
  /** Activation bits; default: what the model's config asks for (as in evaluation). */
  abits?: number;
}

/** Greedy continuation of `prompt` (token ids, BOS included); returns prompt + new ids. */
export async function greedy(
  rt: Runtime,
  model: ModelSource,
  prompt: number[],
  o: GreedyOptions,
): Promise<number[]> {
  const c = model.config;
  const T = Math.min(c.maxSeq, prompt.length + o.tokens);
  const blocks: BlockWeights[] = [];
  for (let i = 0; i < c.layers; i++) blocks.push(await model.block(i));
  const [table, norm, head] = [
    await model.embedding(),
    await model.finalNorm(),
    await model.head(),
  ];
  const ids = [...prompt];
  while (ids.length < T) {
    const padded = Int32Array.from({ length: T }, (_, i) => ids[i] ?? 0);
    let x: Tensor = embed(table, padded, T);
    for (const w of blocks) {
      x = await runBlock(rt, c, w, x, {
        abits: o.abits ?? c.activationBits,
        kvBits: c.kvBits,
        batch: 1,
      });
    }
    const lg = await logits(rt, c, norm, head, x);
    const row = lg.data.subarray((ids.length - 1) * c.vocab, ids.length * c.vocab);
    let best = 0;
    for (let v = 1; v < c.vocab; v++) if (row[v] > row[best]) best = v;
    ids.push(best);
    if (best === c.eos) break;
  }
  return ids;
}
