/**
 * Perplexity, exactly as PROTOCOL.md §3 defines it, streaming block by block: every window's
 * hidden states advance through one decoder block at a time, so only one block's weights are in
 * memory.
 * @module
 */
import type { Runtime } from "../kernels/session.ts";
import { checkSeqlen } from "../models/config.ts";
import { embed, runBlock, windowNll } from "../models/forward.ts";
import type { ModelSource } from "../models/source.ts";

/** How to evaluate. */
export interface PerplexityOptions {
  /** Window length; default min(256, max_position_embeddings). */
  seqlen?: number;
  /** Use only the first N windows. */
  maxWindows?: number;
  /**
   * Per-token activation fake quantization of every linear input (bits); default: what the
   * model's config asks for (`quantization_config.activation_bits`), else none.
   */
  abits?: number;
  /** Per-token q/k/v fake quantization (bits); default: the model config's `kv_bits`. */
  kvBits?: number;
  /**
   * llama.cpp's `llama-perplexity` windows instead of PROTOCOL.md §3's: every window's first
   * token replaced by this id (its BOS) and only the predictions from position seqlen/2 on
   * scored (the second half of each window).
   */
  llamaCppBos?: number;
  /** Receives a progress line per block (none by default). */
  log?: (msg: string) => void;
  /** @deprecated Use `log`: `{ log: (m) => progress.log(m) }`. */
  progress?: { log(msg: string): void };
}

/** A perplexity measurement. */
export interface PerplexityResult {
  /** Perplexity: exp(nll). */
  ppl: number;
  /** Mean NLL over windows (nats per token). */
  nll: number;
  /** Windows evaluated. */
  windows: number;
  /** Tokens in the evaluated windows. */
  tokens: number;
  /** Tokens whose NLL was scored (seqlen − 1 per window). */
  tokensScored: number;
  /** Mean NLL of every window (nats per token). */
  perWindowNll: Float64Array;
  /** Wall-clock time of the evaluation. */
  seconds: number;
}

/** The default window length for a model: min(256, max positions). */
export function defaultSeqlen(model: ModelSource): number {
  return Math.min(256, model.config.maxSeq);
}

/** Perplexity of `model` on the token stream `ids`. */
export async function perplexity(
  rt: Runtime,
  model: ModelSource,
  ids: Int32Array,
  o: PerplexityOptions = {},
): Promise<PerplexityResult> {
  const t0 = performance.now();
  const c = model.config;
  const T = o.seqlen ?? defaultSeqlen(model);
  checkSeqlen(c, T);
  let W = Math.floor(ids.length / T);
  if (o.maxWindows !== undefined) W = Math.min(W, o.maxWindows);
  if (W === 0) throw new Error(`the data has ${ids.length} tokens: not one window of ${T}`);
  let windowIds = ids.subarray(0, W * T);
  if (o.llamaCppBos !== undefined) {
    windowIds = windowIds.slice();
    for (let w = 0; w < W; w++) windowIds[w * T] = o.llamaCppBos;
  }
  const from = o.llamaCppBos !== undefined ? T / 2 | 0 : 0;
  let x = embed(await model.embedding(), windowIds, T);
  for (let i = 0; i < c.layers; i++) {
    const log = o.log ?? (o.progress ? (m: string) => o.progress!.log(m) : undefined);
    if (log) {
      const left = i
        ? `, ~${(((performance.now() - t0) / i) * (c.layers - i) / 1000).toFixed(0)} s left`
        : "";
      log(`eval: block ${i + 1}/${c.layers} over ${W} windows${left}`);
    }
    x = await runBlock(rt, c, await model.block(i), x, {
      inPlace: true,
      abits: o.abits ?? c.activationBits,
      kvBits: o.kvBits ?? c.kvBits,
    });
  }
  const nlls = await windowNll(
    rt,
    c,
    await model.finalNorm(),
    await model.head(),
    x,
    windowIds,
    undefined,
    from,
  );
  let sum = 0;
  for (const v of nlls) sum += v;
  const nll = sum / W;
  return {
    ppl: Math.exp(nll),
    nll,
    windows: W,
    tokens: W * T,
    tokensScored: W * (T - 1 - from),
    perWindowNll: nlls,
    seconds: (performance.now() - t0) / 1000,
  };
}
