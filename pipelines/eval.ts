/**
 * Perplexity, exactly as PROTOCOL.md §3 defines it, streaming block by block: every window's
 * hidden states advance through one decoder block at a time, so only one block's weights are in
 * memory. `deno run -A pipelines/eval.ts --model DIR --data FILE [--seqlen 256]
 * [--max-windows N] [--device cpu] [--json]`.
 * @module
 */
import { Runtime } from "../kernels/session.ts";
import { DEFAULT_MODEL, fixtureText } from "../fixtures/paths.ts";
import { checkSeqlen } from "../models/config.ts";
import { embed, runBlock, windowNll } from "../models/forward.ts";
import { type ModelSource, openModel } from "../models/model.ts";
import { readDataset } from "../models/text.ts";
import { loadTokenizer } from "../models/tokenizer.ts";
import { deviceFlag, intFlag, parseFlags, Progress, runMain } from "./cli.ts";

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
  /** Per-block progress lines (none by default). */
  progress?: Progress;
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
  let x = embed(await model.embedding(), windowIds, T);
  for (let i = 0; i < c.layers; i++) {
    o.progress?.log(
      `eval: block ${i + 1}/${c.layers} over ${W} windows${o.progress.eta(i, c.layers)}`,
    );
    x = await runBlock(rt, c, await model.block(i), x, {
      inPlace: true,
      abits: o.abits ?? c.activationBits,
      kvBits: o.kvBits ?? c.kvBits,
    });
  }
  const nlls = await windowNll(rt, c, await model.finalNorm(), await model.head(), x, windowIds);
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

/** The directory holding a model's tokenizer (a llama2.c `.bin` path → its folder). */
export async function modelDir(path: string): Promise<string> {
  const st = await Deno.stat(path);
  return st.isFile ? path.replace(/\/[^/]*$/, "") || "." : path;
}

const USAGE = `usage: deno run -A pipelines/eval.ts [--model DIR] [--data FILE] [--seqlen N]
       [--max-windows N] [--device cpu|webgpu|cuda] [--json]`;

async function main(argv: string[]) {
  const f = parseFlags(argv, {
    model: { type: "string" },
    data: { type: "string" },
    seqlen: { type: "string" },
    "max-windows": { type: "string" },
    device: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) return console.log(USAGE);
  const modelPath = (f.model as string | undefined) ?? DEFAULT_MODEL;
  const dataPath = (f.data as string | undefined) ?? fixtureText("tinystories_val.txt");
  const rt = new Runtime(deviceFlag(f.device));
  const progress = new Progress();
  const model = await openModel(modelPath);
  try {
    const seqlen = intFlag(f.seqlen, "--seqlen", defaultSeqlen(model), 2);
    checkSeqlen(model.config, seqlen);
    const maxWindows = f["max-windows"] === undefined
      ? undefined
      : intFlag(f["max-windows"], "--max-windows");
    const tok = await loadTokenizer(await modelDir(modelPath));
    const ids = await readDataset(dataPath, tok);
    progress.log(`${dataPath}: ${ids.length} tokens`);
    const r = await perplexity(rt, model, ids, { seqlen, maxWindows, progress });
    if (f.json) {
      console.log(JSON.stringify({
        model: modelPath,
        data: dataPath,
        seqlen,
        ppl: r.ppl,
        nll: r.nll,
        windows: r.windows,
        tokens: r.tokens,
        tokens_scored: r.tokensScored,
        seconds: r.seconds,
        tokens_per_second: r.tokens / r.seconds,
      }));
    } else {
      console.log(
        `perplexity ${r.ppl.toFixed(4)} on ${dataPath} (${r.windows} windows of ${seqlen}, ` +
          `${r.tokensScored} tokens scored, ${r.seconds.toFixed(1)} s)`,
      );
    }
  } finally {
    model.close();
    await rt.release();
  }
}

if (import.meta.main) await runMain(main);
