/**
 * Generated LLaMA models (`fixtures/generate.ts`): a tiny 2-layer model opens with `openModel`,
 * its tensors have the config's shapes, its weights are N(0, 0.02²) with unit norms, the same
 * seed gives the same weights, and its perplexity is close to the vocabulary size (random
 * weights predict nearly uniformly).
 */
import assert from "node:assert/strict";
import { fixtureText } from "../fixtures/paths.ts";
import { generateLlama, type LlamaSpec } from "../fixtures/generate.ts";
import { Runtime } from "../kernels/session.ts";
import { blockTensorShapes } from "../models/config.ts";
import { openModel } from "../formats/open.ts";
import { readDataset } from "../text/dataset.ts";
import { loadTokenizer } from "../text/tokenizer.ts";
import { perplexity } from "../eval/perplexity.ts";

const SPEC: LlamaSpec = {
  hidden: 64,
  intermediate: 176,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  vocab: 2048,
  seed: 3,
};

function stats(x: Float32Array): { mean: number; std: number } {
  let s = 0, s2 = 0;
  for (const v of x) {
    s += v;
    s2 += v * v;
  }
  const mean = s / x.length;
  return { mean, std: Math.sqrt(s2 / x.length - mean * mean) };
}

Deno.test("a generated 2-layer LLaMA opens, has its shapes and statistics, and evaluates", async () => {
  const tmp = await Deno.makeTempDir();
  const rt = new Runtime("cpu");
  try {
    const dir = await generateLlama(`${tmp}/tiny`, SPEC);
    const model = await openModel(dir);
    try {
      const c = model.config;
      assert.deepEqual(
        [c.modelType, c.hidden, c.intermediate, c.layers, c.heads, c.kvHeads, c.headDim, c.vocab],
        ["llama", 64, 176, 2, 4, 2, 16, 2048],
      );
      assert.equal(c.tiedEmbeddings, false);
      const emb = await model.embedding();
      assert.deepEqual(emb.shape, [2048, 64]);
      assert.deepEqual((await model.head()).shape, [2048, 64]);
      assert.ok((await model.finalNorm()).data.every((v) => v === 1));
      const shapes = blockTensorShapes(c);
      for (let i = 0; i < c.layers; i++) {
        const b = await model.block(i);
        assert.deepEqual(Object.keys(b).sort(), Object.keys(shapes).sort());
        for (const [name, t] of Object.entries(b)) {
          assert.deepEqual(t.shape, shapes[name], name);
          if (t.shape.length === 1) {
            assert.ok(t.data.every((v) => v === 1), `${name}: norms are 1`);
          } else {
            const { mean, std } = stats(t.data);
            assert.ok(Math.abs(std - 0.02) < 0.001, `${name}: std ${std}`);
            assert.ok(Math.abs(mean) < 0.001, `${name}: mean ${mean}`);
          }
        }
      }
      // Each tensor has its own stream: different tensors differ, the same seed repeats.
      const b0 = await model.block(0), b1 = await model.block(1);
      const q0 = b0["self_attn.q_proj.weight"].data, q1 = b1["self_attn.q_proj.weight"].data;
      assert.notDeepEqual(q0.slice(0, 16), q1.slice(0, 16));
      const again = await openModel(await generateLlama(`${tmp}/again`, SPEC));
      try {
        assert.deepEqual((await again.block(0))["self_attn.q_proj.weight"].data, q0);
      } finally {
        again.close();
      }

      const ids = await readDataset(fixtureText("tinystories_val.txt"), await loadTokenizer(dir));
      const r = await perplexity(rt, model, ids, { seqlen: 128, maxWindows: 8 });
      // Logits are nearly N(0, (0.02·√64)²): ppl ≈ vocab · exp(0.16²/2) ≈ 1.01 · vocab.
      assert.ok(Number.isFinite(r.ppl), `ppl ${r.ppl}`);
      assert.ok(r.ppl > 0.8 * c.vocab && r.ppl < 1.25 * c.vocab, `ppl ${r.ppl} vs ${c.vocab}`);
    } finally {
      model.close();
    }
  } finally {
    await rt.release();
    await Deno.remove(tmp, { recursive: true });
  }
});
