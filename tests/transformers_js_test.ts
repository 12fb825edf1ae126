/**
 * A real client of our exports: `@huggingface/transformers` (transformers.js, run here under
 * Deno) loads the exported directory from local disk with remote loading off, tokenizes the
 * prompt itself, and its greedy generation of 48 tokens equals ours token for token — for the
 * full-precision tinystories-656k and for its GPTQ W4 g32 model (`model_q4.onnx`, picked by
 * transformers.js's `dtype: "q4"`), also with its weights as ONNX external data.
 */
import assert from "node:assert/strict";
import { AutoModelForCausalLM, AutoTokenizer, env } from "@huggingface/transformers";
import { fixtureModel } from "../fixtures/paths.ts";
import { gptqMain } from "../pipelines/gptq.ts";
import { exportModel } from "../run/export.ts";
import { OnnxDecoder } from "../serve/decoder.ts";
import { generate } from "../serve/generate.ts";

const PROMPT = "Once upon a time";
const TOKENS = 48;

/** transformers.js's greedy continuation (prompt ids, new ids) of PROMPT from `dir`. */
async function transformersJs(dir: string, dtype: "fp32" | "q4") {
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  env.localModelPath = dir.replace(/[^/]*$/, "");
  const name = dir.replace(/^.*\//, "");
  const tokenizer = await AutoTokenizer.from_pretrained(name);
  const model = await AutoModelForCausalLM.from_pretrained(name, { dtype });
  try {
    const inputs = tokenizer(PROMPT);
    const prompt = (inputs.input_ids.tolist() as bigint[][])[0].map(Number);
    const out = await model.generate({
      ...inputs,
      max_new_tokens: TOKENS,
      do_sample: false,
    }) as { tolist(): bigint[][] };
    const all = out.tolist()[0].map(Number);
    return { prompt, generated: all.slice(prompt.length) };
  } finally {
    await model.dispose();
  }
}

Deno.test("transformers.js generates what we generate from our exports", async (t) => {
  const tmp = await Deno.makeTempDir();
  try {
    await gptqMain([
      ...["--wbits", "4", "--group-size", "32", "--nsamples", "8", "--eval", "", "--quiet"],
      ...["--out", `${tmp}/g32`],
    ]);
    const models: [string, string, "fp32" | "q4", number | undefined][] = [
      ["full precision", fixtureModel("tinystories-656k"), "fp32", undefined],
      ["GPTQ W4 g32", `${tmp}/g32`, "q4", undefined],
      // The weights beside the model as ONNX external data, as past 2 GB.
      ["GPTQ W4 g32, external data", `${tmp}/g32`, "q4", 0],
    ];
    for (const [name, model, dtype, inlineLimit] of models) {
      await t.step(name, async () => {
        const dir = `${tmp}/export-${dtype}-${inlineLimit ?? "inline"}`;
        const report = await exportModel({ model, out: dir, inlineLimit, quiet: true });
        assert.equal(report.dtype, dtype);
        assert.equal(report.external_data, inlineLimit === 0);
        const dec = await OnnxDecoder.open(dir);
        let ours: number[], prompt: number[];
        try {
          prompt = dec.tokenizer.encode(PROMPT);
          const { rows: [r] } = await generate(dec, [prompt], { maxNewTokens: TOKENS });
          assert.equal(r.finishReason, "length");
          ours = r.ids;
        } finally {
          await dec.release();
        }
        const theirs = await transformersJs(dir, dtype);
        assert.deepEqual(theirs.prompt, prompt);
        assert.equal(ours.length, TOKENS);
        assert.deepEqual(theirs.generated, ours);
      });
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
