/**
 * Running a model piecewise: embedding lookup, one decoder block over many windows (batched
 * through the cached block graph), and the head (per-token NLL or logits).
 * @module
 */
import type { Runtime } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { ActivationFile } from "./activation_file.ts";
import {
  type BlockGraphOptions,
  buildBlockGraph,
  buildHeadGraph,
  CAPTURE_POINTS,
  type CapturePoint,
  captureWidth,
  gramName,
  gramParts,
} from "./block_graph.ts";
import { blockTensorShapes, type ModelConfig } from "./config.ts";
import type { BlockWeights } from "./source.ts";
import { ropeTables } from "./rope.ts";

export { ropeTables };

/**
 * Additive causal mask [T, T]: 0 on and below the diagonal, −1e30 above; with a sliding
 * `window` (Mistral's `sliding_window`), also −1e30 where query i would see key j ≤ i − window
 * (transformers' `kv_idx > q_idx − sliding_window`).
 */
export function causalMask(seqlen: number, window?: number): Tensor {
  const m = new Float32Array(seqlen * seqlen);
  for (let i = 0; i < seqlen; i++) {
    for (let j = 0; j < seqlen; j++) {
      if (j > i || (window !== undefined && j <= i - window)) m[i * seqlen + j] = -1e30;
    }
  }
  return { data: m, shape: [seqlen, seqlen] };
}

/**
 * Looks up token embeddings: ids of `windows × seqlen` tokens → [windows, seqlen, hidden]
 * (written into `into` when given).
 */
export function embed(
  table: Tensor,
  ids: ArrayLike<number>,
  seqlen: number,
  into?: Float32Array,
): Tensor {
  const d = table.shape[1], vocab = table.shape[0];
  const out = into ?? new Float32Array(ids.length * d);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!(id >= 0 && id < vocab)) {
      throw new Error(`token id ${id} is outside the vocabulary (${vocab})`);
    }
    out.set(table.data.subarray(id * d, (id + 1) * d), i * d);
  }
  return { data: out, shape: [ids.length / seqlen, seqlen, d] };
}

/** Embeds windows of `seqlen` tokens straight into an activation file, a window at a time. */
export function embedToFile(
  table: Tensor,
  ids: Int32Array,
  seqlen: number,
  path: string,
): ActivationFile {
  const windows = ids.length / seqlen, d = table.shape[1];
  const file = ActivationFile.create(path, [windows, seqlen, d]);
  const buf = new Float32Array(seqlen * d);
  for (let w = 0; w < windows; w++) {
    embed(table, ids.subarray(w * seqlen, (w + 1) * seqlen), seqlen, buf);
    file.write(w, buf);
  }
  return file;
}

/**
 * Calibration activations entering or leaving a block, `[windows, seqlen, hidden]`: in memory,
 * or offloaded to a file (read and written a batch at a time).
 */
export type Activations = Tensor | ActivationFile;

/** How a block is run over a set of windows. */
export interface BlockRunOptions {
  /** Per-token activation fake quantization of every linear input (bits; ≥ 16 or absent: off). */
  abits?: number;
  /**
   * Write the output over the input (x is consumed): each batch's output depends only on that
   * batch's input, so this halves the activation memory of a pass. Offloaded inputs are always
   * updated in place.
   */
  inPlace?: boolean;
  /** Per-token fake quantization of q/k/v (bits; absent: off). */
  kvBits?: number;
  /** Windows per graph run; default from a ~64 MB activation budget ({@linkcode defaultBatch}). */
  batch?: number;
  /**
   * A pass over a whole calibration set: when it is long enough ({@linkcode TRANSIENT_MIN_FLOP}),
   * release the block graph's session afterwards, and the memory its arena holds, so that the
   * arenas of the several block graphs of a stream never add up; an output pass then also runs
   * one window per graph run unless `batch` says otherwise (as fast here as 3 windows, with a
   * third of the arena).
   */
  transient?: boolean;
  /**
   * Receives each batch's linear inputs ([rows, in] for `x_qkv`, `x_o`, `x_gateup`, `x_down`)
   * when given; the block graph then also computes them.
   */
  onCapture?: (inputs: Record<CapturePoint, Tensor>, firstWindow: number) => void | Promise<void>;
}

/** A Gram matrix as its upper blocks: `blocks[a][b − a]` spans columns `bounds[a]…` × `bounds[b]…`. */
export interface GramBlocks {
  /** Column boundaries `[0, …, k]`. */
  bounds: number[];
  /** Row of blocks a, from the diagonal block on. */
  blocks: Tensor[][];
}

/** What {@linkcode captureBlock} gathers. */
export interface BlockCaptureOptions {
  /** Per-token activation fake quantization of every linear input (bits; ≥ 16 or absent: off). */
  abits?: number;
  /** Per-token fake quantization of q/k/v (bits; absent: off). */
  kvBits?: number;
  /** Windows per graph run (default {@linkcode defaultBatch}). */
  batch?: number;
  /** Release the graph's session after the pass ({@linkcode BlockRunOptions.transient}). */
  transient?: boolean;
  /** Points whose Gram matrices `xᵀx` ([in, in], this batch's rows) go to `onGrams`. */
  grams?: readonly CapturePoint[];
  /**
   * Receives each batch's Gram matrices, as the blocks on and above the diagonal between the
   * column boundaries of {@linkcode gramParts}: `blocks[a][b − a]` is block (a, b).
   */
  onGrams?: (grams: Map<CapturePoint, GramBlocks>, firstWindow: number) => void | Promise<void>;
  /** Receives each batch's linear inputs, as {@linkcode BlockRunOptions.onCapture}. */
  onCapture?: (inputs: Record<CapturePoint, Tensor>, firstWindow: number) => void | Promise<void>;
}

/**
 * Windows per block-graph run: each intermediate tensor is kept under ~16 MB, since every cached
 * session's memory arena keeps its own peak; larger batches were no faster on the CPU.
 */
export function defaultBatch(c: ModelConfig, seqlen: number): number {
  const largest = 4 * Math.max(
    c.heads * seqlen * seqlen,
    seqlen * Math.max(c.intermediate, c.hidden, c.heads * c.headDim),
  );
  return Math.max(1, Math.min(64, Math.floor(16e6 / largest)));
}

/** Runs one decoder block over x [W, T, d] and returns its output [W, T, d]. */
export function runBlock(
  rt: Runtime,
  c: ModelConfig,
  weights: BlockWeights,
  x: Tensor,
  o?: BlockRunOptions,
): Promise<Tensor>;
/** Runs one decoder block over x, writing the output over it; returns x. */
export function runBlock(
  rt: Runtime,
  c: ModelConfig,
  weights: BlockWeights,
  x: Activations,
  o: BlockRunOptions & { inPlace: true },
): Promise<Activations>;
export async function runBlock(
  rt: Runtime,
  c: ModelConfig,
  weights: BlockWeights,
  x: Activations,
  o: BlockRunOptions = {},
): Promise<Activations> {
  const [W, T, d] = x.shape;
  const file = x instanceof ActivationFile ? x : null;
  const out = file ? null : o.inPlace ? (x as Tensor).data : new Float32Array(W * T * d);
  await forEachBatch(rt, c, weights, x, o, { capture: !!o.onCapture }, async (r, w0, b) => {
    const y = r.y.data.subarray(0, b * T * d);
    if (file) file.write(w0, y);
    else out!.set(y, w0 * T * d);
    if (o.onCapture) await o.onCapture(capturedRows(r, b * T), w0);
  });
  return file ?? { data: out!, shape: [W, T, d] };
}

/**
 * Runs one decoder block over x for what its linear layers read (Gram matrices, raw inputs),
 * without computing the block's output.
 */
export async function captureBlock(
  rt: Runtime,
  c: ModelConfig,
  weights: BlockWeights,
  x: Activations,
  o: BlockCaptureOptions,
): Promise<void> {
  const T = x.shape[1];
  const grams = o.grams ?? [];
  await forEachBatch(rt, c, weights, x, o, {
    capture: !!o.onCapture,
    grams,
    output: false,
  }, async (r, w0, b) => {
    if (grams.length) {
      const m = new Map<CapturePoint, GramBlocks>();
      for (const p of grams) {
        const bounds = gramParts(captureWidth(c, p)), n = bounds.length - 1;
        const blocks = Array.from(
          { length: n },
          (_, a) => Array.from({ length: n - a }, (_, i) => r[gramName(p, a, a + i)]),
        );
        m.set(p, { bounds, blocks });
      }
      await o.onGrams?.(m, w0);
    }
    if (o.onCapture) await o.onCapture(capturedRows(r, b * T), w0);
  });
}

/** A batch's captured linear inputs, without its padding rows. */
function capturedRows(r: Record<string, Tensor>, rows: number): Record<CapturePoint, Tensor> {
  const cap = {} as Record<CapturePoint, Tensor>;
  for (const p of CAPTURE_POINTS) {
    const t = r[p];
    const k = t.shape[1];
    cap[p] = rows < t.shape[0] ? { data: t.data.subarray(0, rows * k), shape: [rows, k] } : t;
  }
  return cap;
}

/**
 * The least work (FLOP) of a pass whose session {@linkcode BlockRunOptions.transient} releases:
 * about a second here. Compiling the graph again and faulting its arena back in take ~0.1 s,
 * which would double the short passes of small models, whose arenas matter less anyway.
 */
export const TRANSIENT_MIN_FLOP = 2e11;

/** Multiply-adds ×2 of the block's weight matrices over `tokens` tokens. */
function passFlop(weights: BlockWeights, tokens: number): number {
  let params = 0;
  for (const t of Object.values(weights)) if (t.shape.length === 2) params += t.data.length;
  return 2 * params * tokens;
}

/** Runs the block graph batch by batch over x, handing each run's outputs to `each`. */
async function forEachBatch(
  rt: Runtime,
  c: ModelConfig,
  weights: BlockWeights,
  x: Activations,
  o: { abits?: number; kvBits?: number; batch?: number; inPlace?: boolean; transient?: boolean },
  outputs: Pick<BlockGraphOptions, "capture" | "grams" | "output">,
  each: (r: Record<string, Tensor>, firstWindow: number, windows: number) => Promise<void>,
): Promise<void> {
  const [W, T, d] = x.shape;
  const long = !!o.transient && passFlop(weights, W * T) >= TRANSIENT_MIN_FLOP;
  // A Hessian pass keeps its default batch: its Gram outputs cost the same per batch whatever
  // the batch's size.
  const lean = long && !outputs.grams?.length;
  const B = Math.min(W, o.batch ?? (lean ? 1 : defaultBatch(c, T)));
  const { cos, sin } = ropeTables(c, T);
  const mask = causalMask(T, c.slidingWindow);
  // The graph takes every tensor the block carries (reassembly maps, static scales, …).
  const standard = blockTensorShapes({ ...c, extraTensors: undefined });
  const extraTensors: Record<string, number[]> = {};
  for (const [name, t] of Object.entries(weights)) {
    if (!(name in standard)) extraTensors[name] = t.shape;
  }
  // One graph for every batch: a short last batch is padded (one cached session, one arena).
  const graph = buildBlockGraph({ ...c, extraTensors }, {
    batch: B,
    seqlen: T,
    abits: o.abits,
    kvBits: o.kvBits,
    ...outputs,
  });
  const file = x instanceof ActivationFile ? x : null;
  // One buffer for the batches that are not a plain view of x: read from a file, written over
  // in place, or padded.
  let staging: Float32Array | null = null;
  const stage = () => staging ??= new Float32Array(B * T * d);
  const valid = outputs.grams?.length ? new Float32Array(B * T) : null;
  for (let w0 = 0; w0 < W; w0 += B) {
    const b = Math.min(B, W - w0);
    let xb: Float32Array;
    if (file) {
      xb = file.read(w0, b, stage());
    } else {
      xb = (x as Tensor).data.subarray(w0 * T * d, (w0 + b) * T * d);
      if (o.inPlace || b < B) {
        stage().set(xb);
        xb = stage();
      }
    }
    if (b < B) {
      xb = stage();
      xb.fill(0, b * T * d);
    }
    const feeds: Record<string, Tensor> = { x: { data: xb, shape: [B, T, d] }, cos, sin, mask };
    for (const [name, t] of Object.entries(weights)) feeds[name] = t;
    if (valid) {
      valid.fill(1, 0, b * T).fill(0, b * T);
      feeds.valid = { data: valid, shape: [B * T, 1] };
    }
    await each(await rt.run(graph, feeds), w0, b);
  }
  if (long) await rt.releaseGraph(graph);
}

/** Per-position next-token figures of windows [W, T]: position t scores token t + 1. */
export interface NextTokenScores {
  /** −log p(token t+1 | tokens ≤ t), float32 from the head graph, [W, T−1]. */
  nll: Float32Array;
  /** 1 where token t+1 is the most likely next token (first on ties), else 0; [W, T−1]. */
  greedy?: Float32Array;
}

/**
 * Next-token NLL (and, with `greedy`, whether each next token is the argmax) at every position
 * of windows whose last hidden states are x [W, T, d] and whose tokens are `ids` [W·T].
 */
export async function nextTokenScores(
  rt: Runtime,
  c: ModelConfig,
  norm: Tensor,
  head: Tensor,
  x: Tensor,
  ids: ArrayLike<number>,
  o: {
    batch?: number;
    greedy?: boolean;
    /** A window's logits above this many bytes are scored in runs ({@linkcode HEAD_LOGIT_BYTES}). */
    logitBytes?: number;
  } = {},
): Promise<NextTokenScores> {
  const [W, T, d] = x.shape;
  const nll = new Float32Array(W * (T - 1));
  const greedy = o.greedy ? new Float32Array(W * (T - 1)) : undefined;
  const rowsFit = Math.floor((o.logitBytes ?? HEAD_LOGIT_BYTES) / (4 * c.vocab));
  if (o.batch === undefined && rowsFit < T) {
    await chunkedScores(rt, c, norm, head, x, ids, Math.max(2, rowsFit), nll, greedy);
    return { nll, greedy };
  }
  const batch = o.batch ?? Math.max(1, Math.min(64, Math.floor(16e6 / (4 * T * c.vocab))));
  for (let w0 = 0; w0 < W; w0 += batch) {
    const b = Math.min(batch, W - w0);
    const targets = new BigInt64Array(b * (T - 1));
    for (let i = 0; i < b; i++) {
      for (let t = 0; t < T - 1; t++) targets[i * (T - 1) + t] = BigInt(ids[(w0 + i) * T + t + 1]);
    }
    const graph = buildHeadGraph(c, { batch: b, seqlen: T, output: "nll", greedy: o.greedy });
    const r = await rt.run(graph, {
      x: { data: x.data.subarray(w0 * T * d, (w0 + b) * T * d), shape: [b, T, d] },
      norm,
      head,
      targets: { int64: targets, shape: [b, T - 1] },
    });
    nll.set(r.nll.data, w0 * (T - 1));
    greedy?.set(r.greedy.data, w0 * (T - 1));
  }
  return { nll, greedy };
}

/**
 * The most bytes of logits one head-graph run makes for a single window: a window whose logits
 * exceed it (a 128K vocabulary: 256 positions are 131 MB, 2048 are 1 GB) is scored in runs of
 * consecutive positions (124 at 128,256). Smaller windows are batched up to ~16 MB as before.
 * Each run repacks the head matrix, so runs much shorter than this cost time: at hidden 2048 and
 * vocabulary 128,256 a run of 31 positions took 250 ms, of 125 positions 570 ms, of 256 1 s.
 */
export const HEAD_LOGIT_BYTES = 64e6;

/**
 * Scores each window of x [W, T, d] in runs of `rows` − 1 positions, so that no run holds more
 * than `rows` × vocab logits: each run is the head graph of a window of `rows` tokens, which
 * scores its first `rows` − 1 positions (a short last run is padded with zeros).
 */
async function chunkedScores(
  rt: Runtime,
  c: ModelConfig,
  norm: Tensor,
  head: Tensor,
  x: Tensor,
  ids: ArrayLike<number>,
  rows: number,
  nll: Float32Array,
  greedy: Float32Array | undefined,
): Promise<void> {
  const [W, T, d] = x.shape;
  const step = rows - 1;
  const graph = buildHeadGraph(c, { batch: 1, seqlen: rows, output: "nll", greedy: !!greedy });
  const xb = new Float32Array(rows * d);
  const targets = new BigInt64Array(step);
  for (let w = 0; w < W; w++) {
    for (let t0 = 0; t0 < T - 1; t0 += step) {
      const n = Math.min(step, T - 1 - t0);
      const base = w * T + t0;
      xb.fill(0).set(x.data.subarray(base * d, (base + n) * d));
      targets.fill(0n);
      for (let t = 0; t < n; t++) targets[t] = BigInt(ids[base + t + 1]);
      const r = await rt.run(graph, {
        x: { data: xb, shape: [1, rows, d] },
        norm,
        head,
        targets: { int64: targets, shape: [1, step] },
      });
      nll.set(r.nll.data.subarray(0, n), w * (T - 1) + t0);
      greedy?.set(r.greedy.data.subarray(0, n), w * (T - 1) + t0);
    }
  }
}

/**
 * Mean next-token NLL of each window (positions 0..T−2 predict 1..T−1; with `from`, only
 * positions from..T−2, as llama.cpp's perplexity scores the second half of each window), the
 * per-token values computed in float32 by the head graph and averaged in float64
 * (PROTOCOL.md §3).
 */
export async function windowNll(
  rt: Runtime,
  c: ModelConfig,
  norm: Tensor,
  head: Tensor,
  x: Tensor,
  ids: ArrayLike<number>,
  batch?: number,
  from = 0,
): Promise<Float64Array> {
  const [W, T] = x.shape;
  const { nll } = await nextTokenScores(rt, c, norm, head, x, ids, { batch });
  const result = new Float64Array(W);
  for (let w = 0; w < W; w++) {
    let s = 0;
    for (let t = from; t < T - 1; t++) s += nll[w * (T - 1) + t];
    result[w] = s / (T - 1 - from);
  }
  return result;
}

/** Logits [B, T, V] of hidden states x [B, T, d]. */
export async function logits(
  rt: Runtime,
  c: ModelConfig,
  norm: Tensor,
  head: Tensor,
  x: Tensor,
): Promise<Tensor> {
  const [B, T] = x.shape;
  const graph = buildHeadGraph(c, { batch: B, seqlen: T, output: "logits" });
  return (await rt.run(graph, { x, norm, head })).logits;
}
