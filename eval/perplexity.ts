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
import type { OnnxDecoder } from "../serve/decoder.ts";

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
  let windowIds = ids.subarray(0, W * T);
  if (o.llamaCppBos !== undefined) {
    windowIds = windowIds.slice();
    for (let w = 0; w < W; w++) windowIds[w * T] = o.llamaCppBos;
  }
  const from = o.llamaCppBos !== undefined ? T / 2 | 0 : 0;
  const d = c.hidden;
  const file = o.scratch !== undefined && W * T * d * 4 > (o.offloadBytes ?? EVAL_OFFLOAD_BYTES)
    ? ActivationFile.create(
      `${o.scratch}/eval-activations-${crypto.randomUUID().slice(0, 8)}.tmp`,
      [W, T, d],
    )
    : null;
  let nlls: Float64Array;
  try {
    let x: Tensor | ActivationFile = await embedWindows(model, windowIds, T, file);
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
        nlls.set(await windowNll(rt, c, norm, head, xb, ib, undefined, from), w0);
      }
    } else nlls = await windowNll(rt, c, norm, head, x, windowIds, undefined, from);
  } finally {
    file?.close();
  }
  return resultOf(nlls, T, t0, from);
}

/**
 * The windows' embeddings, in `file` when given. A function of its own: a suspended async
 * function keeps its dead locals, and the table (1 GB at 128K × 2048) would stay resident through
 * every block pass and beside the head.
 */
async function embedWindows(
  model: ModelSource,
  ids: Int32Array,
  T: number,
  file: ActivationFile | null,
): Promise<Tensor | ActivationFile> {
  const table = await model.embedding();
  if (!file) return embed(table, ids, T);
  const buf = new Float32Array(T * table.shape[1]);
  for (let w = 0; w < ids.length / T; w++) {
    file.write(w, embed(table, ids.subarray(w * T, (w + 1) * T), T, buf).data);
  }
  return file;
}

/**
 * The perplexity of windows of length T from their mean NLLs (exp of their mean), each window
 * scored from position `from` on.
 */
function resultOf(
  perWindowNll: Float64Array,
  T: number,
  t0: number,
  from = 0,
): PerplexityResult {
  const W = perWindowNll.length;
  let sum = 0;
  for (const v of perWindowNll) sum += v;
  const nll = sum / W;
  return {
    ppl: Math.exp(nll),
    nll,
    windows: W,
    tokens: W * T,
    tokensScored: W * (T - 1 - from),
    perWindowNll,
    seconds: (performance.now() - t0) / 1000,
  };
}

/**
 * Perplexity through an exported decoder (`serve/decoder.ts`) on the same windows as
 * {@linkcode perplexity}: each batch of windows is one step with an empty cache; the NLL of
 * every position is computed here from the logits, in float64.
 */
export async function onnxPerplexity(
  dec: OnnxDecoder,
  ids: Int32Array,
  o: Pick<PerplexityOptions, "seqlen" | "maxWindows" | "log"> = {},
): Promise<PerplexityResult> {
  const t0 = performance.now();
  const c = dec.config;
  const T = o.seqlen ?? Math.min(256, c.maxSeq);
  checkSeqlen(c, T);
  let W = Math.floor(ids.length / T);
  if (o.maxWindows !== undefined) W = Math.min(W, o.maxWindows);
  if (W === 0) throw new Error(`the data has ${ids.length} tokens: not one window of ${T}`);
  const batch = Math.max(1, Math.min(W, Math.floor(64e6 / (4 * T * c.vocab))));
  const positions = Array.from({ length: batch * T }, (_, i) => i % T);
  const perWindowNll = new Float64Array(W);
  for (let w0 = 0; w0 < W; w0 += batch) {
    const b = Math.min(batch, W - w0);
    o.log?.(`eval: windows ${w0 + 1}–${w0 + b} of ${W} through ${dec.file}`);
    const win = ids.subarray(w0 * T, (w0 + b) * T);
    const { logits } = await dec.step(
      { ids: win, batch: b, mask: new Array(b * T).fill(1), positions: positions.slice(0, b * T) },
      dec.emptyCache(b),
    );
    for (let i = 0; i < b; i++) {
      let sum = 0;
      for (let t = 0; t < T - 1; t++) {
        const row = logits.subarray((i * T + t) * c.vocab, (i * T + t + 1) * c.vocab);
        let max = -Infinity;
        for (let v = 0; v < row.length; v++) if (row[v] > max) max = row[v];
        let z = 0;
        for (let v = 0; v < row.length; v++) z += Math.exp(row[v] - max);
        sum += max + Math.log(z) - row[win[i * T + t + 1]];
      }
      perWindowNll[w0 + i] = sum / (T - 1);
    }
  }
  return resultOf(perWindowNll, T, t0);
}
