/**
 * Perplexity, exactly as PROTOCOL.md §3 defines it, streaming block by block: every window's
 * hidden states advance through one decoder block at a time, so only one block's weights are in
 * memory. Hidden states above {@linkcode EVAL_OFFLOAD_BYTES} live in a file in a scratch
 * directory (read and written a batch at a time, results identical), each pass releases its
 * graph's session, and the head scores a few windows at a time: the evaluation's memory does not
 * grow with the number of windows.
 * @module
 */
import type { Runtime } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { ActivationFile } from "../models/activation_file.ts";
import { checkSeqlen } from "../models/config.ts";
import { embed, runBlock, windowNll } from "../models/forward.ts";
import type { ModelSource } from "../models/source.ts";

/** Hidden states of the evaluated windows above this size go to a file (with a scratch dir). */
export const EVAL_OFFLOAD_BYTES = 64 * 2 ** 20;

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
  /** Receives a progress line per block (none by default). */
  log?: (msg: string) => void;
  /** @deprecated Use `log`: `{ log: (m) => progress.log(m) }`. */
  progress?: { log(msg: string): void };
  /**
   * A directory for the hidden states when they exceed {@linkcode EVAL_OFFLOAD_BYTES} (the file
   * is removed afterwards); without it they stay in memory.
   */
  scratch?: string;
  /** Hidden states above this many bytes go to `scratch` (default {@linkcode EVAL_OFFLOAD_BYTES}). */
  offloadBytes?: number;
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
  const windowIds = ids.subarray(0, W * T);
  const d = c.hidden;
  const file = o.scratch !== undefined && W * T * d * 4 > (o.offloadBytes ?? EVAL_OFFLOAD_BYTES)
    ? ActivationFile.create(
      `${o.scratch}/eval-activations-${crypto.randomUUID().slice(0, 8)}.tmp`,
      [W, T, d],
    )
    : null;
  let nlls: Float64Array;
  try {
    let x: Tensor | ActivationFile;
    {
      const table = await model.embedding();
      if (file) {
        const buf = new Float32Array(T * d);
        for (let w = 0; w < W; w++) {
          file.write(w, embed(table, windowIds.subarray(w * T, (w + 1) * T), T, buf).data);
        }
        x = file;
      } else x = embed(table, windowIds, T);
    }
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
        transient: true,
        abits: o.abits ?? c.activationBits,
        kvBits: o.kvBits ?? c.kvBits,
      });
    }
    const norm = await model.finalNorm(), head = await model.head();
    if (x instanceof ActivationFile) {
      // A few windows of hidden states at a time (~16 MiB) through the head.
      const per = Math.max(1, Math.floor(2 ** 24 / (T * d * 4)));
      nlls = new Float64Array(W);
      const buf = new Float32Array(per * T * d);
      for (let w0 = 0; w0 < W; w0 += per) {
        const b = Math.min(per, W - w0);
        const xb = { data: x.read(w0, b, buf), shape: [b, T, d] };
        const ib = windowIds.subarray(w0 * T, (w0 + b) * T);
        nlls.set(await windowNll(rt, c, norm, head, xb, ib), w0);
      }
    } else nlls = await windowNll(rt, c, norm, head, x, windowIds);
  } finally {
    file?.close();
  }
  let sum = 0;
  for (const v of nlls) sum += v;
  const nll = sum / W;
  return {
    ppl: Math.exp(nll),
    nll,
    windows: W,
    tokens: W * T,
    tokensScored: W * (T - 1),
    perWindowNll: nlls,
    seconds: (performance.now() - t0) / 1000,
  };
}
