/**
 * Token choice (serve/sampling.ts) against distributions worked out by hand from
 * softmax(logits / T) with the top-k and top-p cuts, and draws whose frequencies match them;
 * seeds repeat draws; temperature 0 is argmax. And stop strings while streaming
 * (serve/generate.ts): the streamed pieces add up to the final text, never past a stop.
 */
import assert from "node:assert/strict";
import { fixtureModel } from "../fixtures/paths.ts";
import { exportModel } from "../run/export.ts";
import { OnnxDecoder } from "../serve/decoder.ts";
import { generate } from "../serve/generate.ts";
import { argmax, checkSampling, Sampler, samplingDistribution } from "../serve/sampling.ts";

const LOGITS = [1, 2, 0, -1];
const e = Math.exp;

function close(a: ArrayLike<number>, b: number[], tol = 1e-12) {
  assert.equal(a.length, b.length);
  for (let i = 0; i < b.length; i++) assert.ok(Math.abs(a[i] - b[i]) < tol, `${a[i]} vs ${b[i]}`);
}

Deno.test("sampling distributions: temperature, top-k, top-p", () => {
  const z = e(1) + e(2) + e(0) + e(-1);
  close(samplingDistribution(LOGITS, {}), [e(1) / z, e(2) / z, e(0) / z, e(-1) / z]);
  const z2 = e(2) + e(4) + e(0) + e(-2);
  close(samplingDistribution(LOGITS, { temperature: 0.5 }), [
    e(2) / z2,
    e(4) / z2,
    1 / z2,
    e(-2) / z2,
  ]);
  // top-k 2 keeps tokens 1 and 0.
  const zk = e(1) + e(2);
  close(samplingDistribution(LOGITS, { topK: 2 }), [e(1) / zk, e(2) / zk, 0, 0]);
  // top-p: p(1) = 0.644 < 0.8 ≤ p(1) + p(0) = 0.881, so the nucleus is {1, 0}; 0.5 keeps {1}.
  close(samplingDistribution(LOGITS, { topP: 0.8 }), [e(1) / zk, e(2) / zk, 0, 0]);
  close(samplingDistribution(LOGITS, { topP: 0.5 }), [0, 1, 0, 0]);
  // top-k first, then top-p over what it kept: top-3 {1, 0, 2}, then 0.95 of that keeps all 3.
  const z3 = e(1) + e(2) + e(0);
  close(samplingDistribution(LOGITS, { topK: 3, topP: 0.95 }), [e(1) / z3, e(2) / z3, 1 / z3, 0]);
});

Deno.test("draws follow the distribution, repeat with their seed, greedy at temperature 0", () => {
  const o = { temperature: 0.8, topP: 0.95, seed: 11 };
  const p = samplingDistribution(LOGITS, o);
  const s = new Sampler(o);
  const n = 40000, counts = [0, 0, 0, 0];
  const draws: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = s.pick(LOGITS);
    counts[t]++;
    if (i < 50) draws.push(t);
  }
  for (let i = 0; i < 4; i++) {
    // 4.5 standard deviations of a binomial count.
    const sd = Math.sqrt(n * p[i] * (1 - p[i]));
    assert.ok(Math.abs(counts[i] - n * p[i]) <= 4.5 * sd + 1e-9, `token ${i}: ${counts[i]}`);
  }
  const again = new Sampler(o);
  assert.deepEqual(Array.from({ length: 50 }, () => again.pick(LOGITS)), draws);
  assert.equal(new Sampler({ temperature: 0 }).pick(LOGITS), 1);
  assert.equal(argmax([3, 5, 5, 1]), 1);
  assert.throws(() => checkSampling({ topP: 0 }), /top_p 0/);
  assert.throws(() => checkSampling({ temperature: -1 }), /temperature -1/);
});

Deno.test("streamed text stops where the whole text stops", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    await exportModel({ model: fixtureModel("tinystories-656k"), out: `${tmp}/fp`, quiet: true });
    const dec = await OnnxDecoder.open(`${tmp}/fp`);
    try {
      const prompt = dec.tokenizer.encode("Once upon a time");
      const free = (await generate(dec, [prompt], { maxNewTokens: 60 })).rows[0].text;
      for (const stop of ["Lily", " a ", ".\n", "zzz"]) {
        const pieces: string[] = [];
        const { rows: [r] } = await generate(dec, [prompt], {
          maxNewTokens: 60,
          stop: [stop],
          onText: (_row, t) => void pieces.push(t),
        });
        const at = free.indexOf(stop);
        assert.equal(r.text, at >= 0 ? free.slice(0, at) : free, stop);
        assert.equal(r.finishReason, at >= 0 ? "stop" : "length");
        assert.equal(pieces.join(""), r.text);
      }
    } finally {
      await dec.release();
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
