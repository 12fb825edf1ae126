/**
 * llama.cpp (../shared/tools/llama.cpp, commit c392e50) as the judge of our GGUF files:
 *
 * - it loads our F32 GGUF of tinystories-656k and stories260k, and its greedy continuation of a
 *   prompt (`llama-simple`) equals our greedy decoding of the original models token for token
 *   (compared as text);
 * - for our Q4_0 and Q4_1 files, `llama-perplexity`'s perplexity divided by its perplexity of
 *   our F32 file equals the same ratio from our own evaluation (same windows: BOS first, second
 *   half scored) within 1 %;
 * - Q4_K and Q6_K files made by `llama-quantize` from our F32 GGUF read back within the error
 *   of their grids.
 *
 * tinystories-656k's vocabulary has no byte tokens and llama.cpp aborts on a character it does
 * not cover, so the text is the validation text without those characters (0.08 % of them).
 */
import assert from "node:assert/strict";
import { greedy } from "../eval/generate.ts";
import { perplexity } from "../eval/perplexity.ts";
import { ensureLlama } from "../fixtures/generate.ts";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import { coveredText, llamaPerplexity, runLlamaCpp } from "../fixtures/llama_cpp.ts";
import { GgufFile } from "../formats/gguf.ts";
import { readSpmVocab } from "../formats/gguf_llama.ts";
import { openModel, openTokenizer } from "../formats/open.ts";
import { Runtime } from "../kernels/session.ts";
import { rtnMain } from "../pipelines/rtn.ts";
import { packModel } from "../run/pack.ts";
import type { QuantizeReport } from "../run/report.ts";

const MODELS = ["tinystories-656k", "stories260k"];
const CTX = 128, CHUNKS = 24;
const llama = runLlamaCpp;

async function f32Gguf(tmp: string, model: string): Promise<string> {
  const p = await packModel(fixtureModel(model), { format: "gguf", out: `${tmp}/${model}.gguf` });
  assert.equal(p.gguf_type, "F32");
  return p.path;
}

Deno.test("llama.cpp loads our F32 GGUF files; its greedy output equals ours", async () => {
  const tmp = await Deno.makeTempDir();
  const rt = new Runtime("cpu");
  try {
    for (const model of MODELS) {
      const file = await f32Gguf(tmp, model);
      const out = await llama("llama-simple", ["-m", file, "-n", "48", "Once upon a time"]);
      const bosText = model === "stories260k" ? "<s>" : "<|start_story|>";
      const theirs = out.slice(out.indexOf(bosText) + bosText.length).split("\n\nmain:")[0];
      const src = await openModel(fixtureModel(model));
      const tok = await openTokenizer(fixtureModel(model));
      const ids = await greedy(rt, src, tok.encode("Once upon a time"), { tokens: 48 });
      src.close();
      const ours = tok.decode(ids);
      assert.ok(ours.length > 150, ours);
      assert.equal(theirs.trim().slice(0, ours.length), ours.trim(), model);
    }
  } finally {
    await rt.release();
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("llama-perplexity's Q4_0 and Q4_1 ratios to F32 equal ours within 1 %", async () => {
  const tmp = await Deno.makeTempDir();
  const rt = new Runtime("cpu");
  try {
    const vocab = await readSpmVocab(fixtureModel("tinystories-656k"));
    const raw = (await Deno.readTextFile(fixtureText("tinystories_val.txt"))).slice(0, 90_000);
    const text = coveredText(raw, vocab.tokens);
    await Deno.writeTextFile(`${tmp}/val.txt`, text);
    for (const model of MODELS) {
      const files: Record<string, string> = { F32: await f32Gguf(tmp, model) };
      for (const [type, sym] of [["Q4_0", ["--sym"]], ["Q4_1", []]] as const) {
        const r = await rtnMain([
          "--model",
          fixtureModel(model),
          "--wbits",
          "4",
          "--group-size",
          "32",
          "--allow-partial-group",
          ...sym,
          "--nsamples",
          "4",
          "--eval",
          "",
          "--format",
          "gguf",
          "--out",
          `${tmp}/${model}-${type}`,
          "--quiet",
        ]) as QuantizeReport;
        assert.equal(r.packed!.gguf_type, type);
        files[type] = r.packed!.path;
      }
      const ppl: Record<string, { theirs: number; ours: number }> = {};
      for (const [type, file] of Object.entries(files)) {
        const out = await llama("llama-perplexity", [
          "-m",
          file,
          "-f",
          `${tmp}/val.txt`,
          "-c",
          `${CTX}`,
          "-b",
          `${CTX}`,
          "--chunks",
          `${CHUNKS}`,
          "-t",
          "2",
        ]);
        const theirs = llamaPerplexity(out);
        const m = await openModel(file), tok = await openTokenizer(file);
        const ids = Int32Array.from(tok.encode(text));
        const ours = (await perplexity(rt, m, ids, {
          seqlen: CTX,
          maxWindows: CHUNKS,
          llamaCppBos: tok.bos,
        })).ppl;
        m.close();
        ppl[type] = { theirs, ours };
      }
      console.log(model, JSON.stringify(ppl));
      const f = ppl.F32;
      assert.ok(Math.abs(f.ours / f.theirs - 1) < 0.005, `${model} F32: ${JSON.stringify(f)}`);
      for (const type of ["Q4_0", "Q4_1"]) {
        const q = ppl[type];
        const ratio = (q.ours / f.ours) / (q.theirs / f.theirs);
        assert.ok(q.ours > f.ours, `${model} ${type} is worse than F32`);
        assert.ok(Math.abs(ratio - 1) < 0.01, `${model} ${type}: ${JSON.stringify(ppl)}`);
      }
    }
  } finally {
    await rt.release();
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("Q4_K and Q6_K files of llama-quantize read back within their grids' error", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    // K-quants need rows of 256: a generated LLaMA with the tinystories tokenizer.
    const dir = await ensureLlama({
      hidden: 256,
      intermediate: 512,
      layers: 1,
      heads: 4,
      kvHeads: 2,
      vocab: 2048,
    });
    const f32 = (await packModel(dir, { format: "gguf", out: `${tmp}/f32.gguf` })).path;
    const src = await openModel(f32);
    for (const [type, bound] of [["Q4_K", 0.12], ["Q6_K", 0.03]] as const) {
      const file = `${tmp}/${type}.gguf`;
      await llama("llama-quantize", ["--pure", f32, file, type, "2"]);
      const g = await GgufFile.open(file);
      assert.equal(g.tensors.get("blk.0.ffn_down.weight")!.type!.name, type);
      g.close();
      const m = await openModel(file);
      const a = await src.block(0), b = await m.block(0);
      for (const [name, t] of Object.entries(a)) {
        let err = 0, norm = 0;
        for (let i = 0; i < t.data.length; i++) {
          err += (t.data[i] - b[name].data[i]) ** 2;
          norm += t.data[i] ** 2;
        }
        const rel = Math.sqrt(err / norm);
        assert.ok(rel < bound, `${type} ${name}: relative error ${rel}`);
        if (t.shape.length === 2) assert.ok(rel > bound / 20, `${type} ${name} not quantized?`);
      }
      m.close();
    }
    src.close();
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
