/**
 * Log-likelihood of continuations given contexts, as token ids: the one question zero-shot
 * scoring asks of a model. {@linkcode LogLikelihood} is the interface a backend implements;
 * {@linkcode blockGraphLoglikelihood} answers it by streaming the model block by block through
 * the block graph (every request's tokens as one right-padded window), with the run-time
 * activation quantizers and extra block tensors evaluation applies. An exported ONNX decoder
 * with a KV cache can implement the same interface and be scored by the same code.
 * @module
 */
import type { Runtime } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { ActivationFile } from "../models/activation_file.ts";
import {
  type Activations,
  embed,
  embedToFile,
  nextTokenScores,
  runBlock,
} from "../models/forward.ts";
import type { ModelSource } from "../models/source.ts";
import type { OnnxDecoder } from "../serve/decoder.ts";

/** One request: token ids of a context (the tokenizer's BOS first) and of its continuation. */
export interface LoglikelihoodRequest {
  /** Tokens conditioned on; at least one. */
  context: readonly number[];
  /** Tokens whose log-probabilities are summed. */
  continuation: readonly number[];
}

/** What a backend returns per request. */
export interface LoglikelihoodResult {
  /** Σ log p(continuation token | all tokens before it), in nats. */
  logprob: number;
  /** Whether every continuation token is the model's most likely next token. */
  greedy: boolean;
}

/** A model that scores continuations. */
export interface LogLikelihood {
  /** The longest input it takes; longer requests lose context tokens from the left. */
  readonly maxLength: number;
  /** Scores every request (in any order internally; results in request order). */
  loglikelihood(requests: readonly LoglikelihoodRequest[]): Promise<LoglikelihoodResult[]>;
}

/** The tokens a request puts through the model, and where its continuation starts in them. */
export interface ScoredSequence {
  /** Context and continuation, cut from the left to `maxLength + 1` tokens. */
  tokens: number[];
  /** Index in `tokens` of the first continuation token. */
  first: number;
}

/**
 * Context + continuation as the harness feeds them: at most `maxLength + 1` tokens, cut from the
 * left (the last one is only ever a target). An empty continuation scores 0 and counts as
 * greedy, as in the harness.
 */
export function scoredSequence(r: LoglikelihoodRequest, maxLength: number): ScoredSequence {
  if (r.context.length === 0) {
    throw new Error("a log-likelihood request needs at least one context token (the BOS)");
  }
  if (r.continuation.length > maxLength) {
    throw new Error(
      `a continuation of ${r.continuation.length} tokens is longer than the model's ` +
        `${maxLength} positions`,
    );
  }
  const tokens = [...r.context, ...r.continuation].slice(-(maxLength + 1));
  return { tokens, first: tokens.length - r.continuation.length };
}

/** Options of {@linkcode blockGraphLoglikelihood}. */
export interface BlockGraphScorerOptions {
  /** Per-token activation bits of every linear input; default the model config's. */
  abits?: number;
  /** Per-token q/k/v bits; default the model config's. */
  kvBits?: number;
  /** Longest input (default: the model's max positions, or its sliding window if shorter). */
  maxLength?: number;
  /**
   * Hidden states above this many bytes live in files in a temporary directory, read a batch
   * at a time (default 256 MiB), so that a large task set does not have to fit in memory.
   */
  memoryBytes?: number;
  /** Receives a progress line per block. */
  log?: (msg: string) => void;
}

/**
 * The window a sequence of `n` tokens is run in: a power of two from 16 (so that few block
 * graphs serve all requests), at most `cap`.
 */
export function windowLength(n: number, cap: number): number {
  let T = 16;
  while (T < n) T *= 2;
  return Math.min(T, cap);
}

/** Requests of one window length, run as one set of windows. */
interface Bucket {
  T: number;
  /** Indices of the requests, one window each. */
  members: number[];
  ids: Int32Array;
  x: Activations;
}

/**
 * The block-graph backend: embeds every request as one right-padded window (lengths bucketed to
 * powers of two), runs each decoder block once over all windows (one block's weights in memory,
 * as perplexity does), then the head. Causal attention makes the padding inert: no real
 * position attends to a later one.
 */
export function blockGraphLoglikelihood(
  rt: Runtime,
  model: ModelSource,
  o: BlockGraphScorerOptions = {},
): LogLikelihood {
  const c = model.config;
  const maxLength = o.maxLength ?? Math.min(c.maxSeq, c.slidingWindow ?? Infinity);
  return {
    maxLength,
    async loglikelihood(requests) {
      const seqs = requests.map((r) => scoredSequence(r, maxLength));
      const results: LoglikelihoodResult[] = seqs.map(() => ({ logprob: 0, greedy: true }));
      const byLength = new Map<number, number[]>();
      seqs.forEach((s, i) => {
        if (s.first >= s.tokens.length) return; // nothing to score
        const T = windowLength(s.tokens.length, maxLength + 1);
        const members = byLength.get(T);
        if (members) members.push(i);
        else byLength.set(T, [i]);
      });
      if (byLength.size === 0) return results;
      let bytes = 0;
      for (const [T, members] of byLength) bytes += members.length * T * c.hidden * 4;
      const offload = bytes > (o.memoryBytes ?? 256 * 2 ** 20);
      const dir = offload ? await Deno.makeTempDir({ prefix: "qllm-loglik-" }) : null;
      const buckets: Bucket[] = [];
      try {
        const table = await model.embedding();
        for (const [T, members] of [...byLength].sort((a, b) => a[0] - b[0])) {
          const ids = new Int32Array(members.length * T);
          members.forEach((m, w) => ids.set(seqs[m].tokens, w * T));
          const x = dir ? embedToFile(table, ids, T, `${dir}/${T}.f32`) : embed(table, ids, T);
          buckets.push({ T, members, ids, x });
        }
        const run = {
          inPlace: true as const,
          abits: o.abits ?? c.activationBits,
          kvBits: o.kvBits ?? c.kvBits,
        };
        const windows = buckets.reduce((n, b) => n + b.members.length, 0);
        for (let i = 0; i < c.layers; i++) {
          o.log?.(`tasks: block ${i + 1}/${c.layers} over ${windows} sequences`);
          const w = await model.block(i);
          for (const b of buckets) b.x = await runBlock(rt, c, w, b.x, run);
        }
        const norm = await model.finalNorm(), head = await model.head();
        for (const b of buckets) {
          await scoreBucket(
            b,
            async (x, ids) => await nextTokenScores(rt, c, norm, head, x, ids, { greedy: true }),
            (m, nll, greedy) => {
              const s = seqs[m];
              let logprob = 0, all = true;
              for (let t = s.first - 1; t < s.tokens.length - 1; t++) {
                logprob -= nll[t];
                if (greedy[t] !== 1) all = false;
              }
              results[m] = { logprob, greedy: all };
            },
          );
        }
      } finally {
        for (const b of buckets) if (b.x instanceof ActivationFile) b.x.close();
        if (dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
      }
      return results;
    },
  };
}

/** Runs the head over a bucket's windows (a batch at a time from a file) and hands each on. */
async function scoreBucket(
  b: Bucket,
  head: (x: Tensor, ids: Int32Array) => Promise<{ nll: Float32Array; greedy?: Float32Array }>,
  each: (request: number, nll: Float32Array, greedy: Float32Array) => void,
): Promise<void> {
  const { T } = b;
  const [W, , d] = b.x.shape;
  const step = b.x instanceof ActivationFile ? Math.max(1, Math.floor(2 ** 24 / (T * d))) : W;
  for (let w0 = 0; w0 < W; w0 += step) {
    const n = Math.min(step, W - w0);
    const data = b.x instanceof ActivationFile
      ? b.x.read(w0, n)
      : b.x.data.subarray(w0 * T * d, (w0 + n) * T * d);
    const r = await head({ data, shape: [n, T, d] }, b.ids.subarray(w0 * T, (w0 + n) * T));
    for (let k = 0; k < n; k++) {
      const from = k * (T - 1), to = from + T - 1;
      each(b.members[w0 + k], r.nll.subarray(from, to), r.greedy!.subarray(from, to));
    }
  }
}

/**
 * The {@linkcode LogLikelihood} of an exported decoder (`serve/decoder.ts`): each request one
 * step with an empty cache over its context and continuation, the log-softmax of the positions
 * before each continuation token computed here in float64.
 */
export function onnxLoglikelihood(dec: OnnxDecoder): LogLikelihood {
  const maxLength = dec.config.maxSeq;
  const V = dec.config.vocab;
  return {
    maxLength,
    async loglikelihood(requests) {
      const out: LoglikelihoodResult[] = [];
      for (const r of requests) {
        const { tokens, first } = scoredSequence(r, maxLength);
        const input = tokens.slice(0, -1);
        if (first === tokens.length) {
          out.push({ logprob: 0, greedy: true });
          continue;
        }
        const T = input.length;
        const { logits } = await dec.step({
          ids: input,
          batch: 1,
          mask: new Array(T).fill(1),
          positions: Array.from({ length: T }, (_, i) => i),
        }, dec.emptyCache(1));
        let logprob = 0, greedy = true;
        for (let t = first - 1; t < T; t++) {
          const row = logits.subarray(t * V, (t + 1) * V);
          let max = -Infinity, arg = 0;
          for (let v = 0; v < V; v++) if (row[v] > max) [max, arg] = [row[v], v];
          let z = 0;
          for (let v = 0; v < V; v++) z += Math.exp(row[v] - max);
          const target = tokens[t + 1];
          logprob += row[target] - max - Math.log(z);
          if (arg !== target) greedy = false;
        }
        out.push({ logprob, greedy });
      }
      return out;
    },
  };
}
