/**
 * Evaluation throughput: `perplexity` over every window of tinystories_val.txt for both fixture
 * models (tokenization excluded), next to the reference run's `fp32_full_val.eval_s`
 * (PyTorch 1.13 CPU, 2 threads; `reference/peer_results.json`).
 * @module
 */
import { fixtureModel, fixtureText, SHARED_FIXTURES } from "../fixtures/paths.ts";
import { openModel } from "../formats/open.ts";
import { readDataset } from "../text/dataset.ts";
import { loadTokenizer } from "../text/tokenizer.ts";
import { modelDir } from "../formats/open.ts";
import { perplexity } from "../eval/perplexity.ts";
import { timeOnce } from "./timing.ts";
import type { BenchContext, BenchRecord, SummaryRow } from "./types.ts";

/** The fixture models measured. */
export const EVAL_MODELS = ["tinystories-656k", "stories260k"] as const;

/** One model's measurement. */
export interface EvalPoint {
  model: string;
  windows: number;
  seqlen: number;
  tokens: number;
  ppl: number;
  tokenize_s: number;
  eval_s: number;
  tokens_per_s: number;
  ref_ppl: number;
  ref_eval_s: number;
  ref_tokens_per_s: number;
  /** ref_eval_s / eval_s: above 1 is faster than the reference. */
  speedup_vs_ref: number;
}

interface FullValRef {
  ppl: number;
  windows: number;
  eval_s: number;
}

/** The reference's full-validation fp32 figures of a model. */
async function referenceFullVal(name: string): Promise<FullValRef> {
  const json = JSON.parse(
    await Deno.readTextFile(`${SHARED_FIXTURES}/../reference/peer_results.json`),
  );
  const r = json.models?.[name]?.fp32_full_val;
  if (!r) throw new Error(`peer_results.json: no models.${name}.fp32_full_val`);
  return r as FullValRef;
}

/** Runs the evaluation benchmark. */
export async function benchEval(ctx: BenchContext): Promise<BenchRecord> {
  const points: EvalPoint[] = [];
  for (const name of EVAL_MODELS) {
    const dir = fixtureModel(name);
    const ref = await referenceFullVal(name);
    let ids: Int32Array = new Int32Array();
    const tokenizeS = await timeOnce(async () => {
      ids = await readDataset(
        fixtureText("tinystories_val.txt"),
        await loadTokenizer(await modelDir(dir)),
      );
    });
    ctx.log(`eval: ${name}, ${ids.length} tokens (tokenized in ${tokenizeS.toFixed(1)} s)`);
    const model = await openModel(dir);
    try {
      const r = await perplexity(ctx.rt, model, ids);
      const seqlen = r.tokens / r.windows;
      points.push({
        model: name,
        windows: r.windows,
        seqlen,
        tokens: r.tokens,
        ppl: r.ppl,
        tokenize_s: tokenizeS,
        eval_s: r.seconds,
        tokens_per_s: r.tokens / r.seconds,
        ref_ppl: ref.ppl,
        ref_eval_s: ref.eval_s,
        ref_tokens_per_s: (ref.windows * seqlen) / ref.eval_s,
        speedup_vs_ref: ref.eval_s / r.seconds,
      });
    } finally {
      model.close();
    }
  }
  const summary: SummaryRow[] = points.map((p) => ({
    label: `${p.model} val (${p.windows} win)`,
    value: Math.round(p.tokens_per_s),
    unit: "tok/s",
    note: `${p.eval_s.toFixed(2)} s, ref ${p.ref_eval_s.toFixed(2)} s ` +
      `(${Math.round(p.ref_tokens_per_s)} tok/s), ×${p.speedup_vs_ref.toFixed(2)}; ppl ${
        p.ppl.toFixed(4)
      }`,
  }));
  return { dataset: "tinystories_val.txt", points, summary };
}
