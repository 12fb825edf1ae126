/**
 * Full-precision evaluation of both fixture models against the reference run
 * (`reference/peer_results.json`, PROTOCOL.md §3 and §8): perplexity on the first 256 and on all
 * validation windows, per-window NLLs, WikiText-2, greedy decoding from BOS, and the eval CLI
 * (JSON output and its errors on bad input).
 */

import assert from "node:assert/strict";
import { fixtureModel, fixtureText, SHARED_FIXTURES } from "../fixtures/paths.ts";
import { type CommandResult, runPipeline } from "./command.ts";
import { Runtime } from "../kernels/session.ts";
import { openModel } from "../formats/open.ts";
import { readDataset } from "../text/dataset.ts";
import { loadTokenizer, type TextTokenizer } from "../text/tokenizer.ts";
import { modelDir } from "../formats/open.ts";
import { perplexity } from "../eval/perplexity.ts";
import { greedy } from "../eval/generate.ts";

interface EvalRef {
  ppl: number;
  nll: number;
  windows: number;
  tokens_scored: number;
  per_window_nll?: number[];
  eval_s: number;
}

interface ModelRef {
  fp32_full_val: EvalRef;
  checks: { greedy_from_bos: { ids: number[]; text: string } };
  runs: { name: string; eval: Record<string, EvalRef> }[];
}

const REFERENCE = JSON.parse(
  await Deno.readTextFile(`${SHARED_FIXTURES}/../reference/peer_results.json`),
) as { models: Record<string, ModelRef> };

const MODELS = ["tinystories-656k", "stories260k"] as const;
/** Relative tolerance on perplexity (0.05 %). */
const PPL_TOL = 5e-4;
/** Absolute tolerance on a window's mean NLL. */
const NLL_TOL = 1e-4;

/** The fp32 row of a model's reference runs. */
function fp32Run(name: string) {
  const run = REFERENCE.models[name].runs[0];
  assert.equal(run.name, "fp32", `${name}: runs[0] is not the fp32 run`);
  return run;
}

/**
 * Tokenizers and token streams, each loaded once per file (the HF tokenizer spends ~8 s on the
 * validation text). Scoped to this module's tests; nothing is shared with other files.
 */
const cache = new Map<string, Promise<unknown>>();
function once<T>(key: string, make: () => Promise<T>): Promise<T> {
  if (!cache.has(key)) cache.set(key, make());
  return cache.get(key) as Promise<T>;
}

function tokenizer(name: string): Promise<TextTokenizer> {
  return once(`tok:${name}`, async () => loadTokenizer(await modelDir(fixtureModel(name))));
}

function tokens(name: string, text: string): Promise<Int32Array> {
  return once(
    `ids:${name}:${text}`,
    async () => readDataset(fixtureText(text), await tokenizer(name)),
  );
}

function assertPpl(actual: number, expected: number, what: string) {
  const rel = Math.abs(actual / expected - 1);
  assert.ok(
    rel < PPL_TOL,
    `${what}: ppl ${actual} vs reference ${expected} (${(rel * 100).toFixed(4)} %)`,
  );
}

for (const name of MODELS) {
  Deno.test(`${name}: fp32 perplexity on tinystories_val, first 256 and all windows`, async () => {
    const ref = REFERENCE.models[name];
    const val = fp32Run(name).eval.val;
    const rt = new Runtime();
    const model = await openModel(fixtureModel(name));
    try {
      const ids = await tokens(name, "tinystories_val.txt");
      const first = await perplexity(rt, model, ids, { maxWindows: 256 });
      assert.equal(first.windows, 256);
      assert.equal(first.windows, val.windows);
      assert.equal(first.tokensScored, val.tokens_scored);
      assertPpl(first.ppl, val.ppl, `${name} val (256 windows)`);
      const perWindow = val.per_window_nll!;
      assert.equal(perWindow.length, 256);
      let worst = 0;
      for (let i = 0; i < 256; i++) {
        worst = Math.max(worst, Math.abs(first.perWindowNll[i] - perWindow[i]));
      }
      assert.ok(worst < NLL_TOL, `${name}: per-window NLL off by up to ${worst}`);

      const all = await perplexity(rt, model, ids);
      const full = ref.fp32_full_val;
      assert.equal(all.windows, full.windows);
      assert.equal(all.tokensScored, full.tokens_scored);
      assert.equal(all.windows, Math.floor(ids.length / 256));
      assertPpl(all.ppl, full.ppl, `${name} val (all windows)`);
      // the first 256 windows are the same whether or not the rest is evaluated
      for (let i = 0; i < 256; i++) {
        assert.ok(Math.abs(all.perWindowNll[i] - first.perWindowNll[i]) < 1e-6, `window ${i}`);
      }
      console.log(
        `${name}: val256 ppl ${first.ppl.toFixed(5)} (ref ${val.ppl.toFixed(5)}), ` +
          `max |ΔNLL| ${worst.toExponential(2)}, ${first.seconds.toFixed(2)} s; ` +
          `all ${all.windows} windows ppl ${all.ppl.toFixed(5)} (ref ${full.ppl.toFixed(5)}), ` +
          `${all.seconds.toFixed(2)} s (ref ${full.eval_s.toFixed(2)} s)`,
      );
    } finally {
      model.close();
      await rt.release();
    }
  });
}

Deno.test("tinystories-656k: fp32 perplexity on wikitext2_test, first 64 windows", async () => {
  const name = "tinystories-656k";
  const wiki = fp32Run(name).eval.wikitext;
  const rt = new Runtime();
  const model = await openModel(fixtureModel(name));
  try {
    const ids = await tokens(name, "wikitext2_test.txt");
    const r = await perplexity(rt, model, ids, { maxWindows: 64 });
    assert.equal(r.windows, 64);
    assert.equal(r.tokensScored, wiki.tokens_scored);
    assertPpl(r.ppl, wiki.ppl, `${name} wikitext (64 windows)`);
    if (wiki.per_window_nll) {
      for (let i = 0; i < 64; i++) {
        assert.ok(
          Math.abs(r.perWindowNll[i] - wiki.per_window_nll[i]) < NLL_TOL,
          `wikitext window ${i}: ${r.perWindowNll[i]} vs ${wiki.per_window_nll[i]}`,
        );
      }
    }
  } finally {
    model.close();
    await rt.release();
  }
});

/** The sentence SOURCES.md says each model's greedy decoding from BOS begins with. */
const SOURCES_PREFIX: Record<string, string> = {
  "tinystories-656k": "Once upon a time, there was a little girl named Lily.",
  "stories260k":
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
};

for (const name of MODELS) {
  Deno.test(`${name}: greedy decoding from BOS reproduces the reference`, async () => {
    const expected = REFERENCE.models[name].checks.greedy_from_bos;
    const sources = await Deno.readTextFile(`${SHARED_FIXTURES}/SOURCES.md`);
    assert.ok(
      sources.replace(/\s+/g, " ").includes(`begins "${SOURCES_PREFIX[name]}`),
      "SOURCES.md no longer states the prefix this test checks",
    );
    const rt = new Runtime();
    const model = await openModel(fixtureModel(name));
    try {
      const tok = await tokenizer(name);
      assert.equal(expected.ids[0], tok.bos);
      const ids = await greedy(rt, model, [tok.bos!], { tokens: expected.ids.length - 1 });
      assert.deepEqual(ids, expected.ids);
      const text = tok.decode(ids);
      assert.equal(text, expected.text);
      assert.ok(text.startsWith(SOURCES_PREFIX[name]), `${name}: ${JSON.stringify(text)}`);
    } finally {
      model.close();
      await rt.release();
    }
  });
}

// ---------------------------------------------------------------------------------------------
// the CLI

function evalCli(args: string[]): Promise<CommandResult> {
  return runPipeline("eval", args);
}

Deno.test("eval CLI prints one JSON object with --json", async () => {
  const name = "stories260k";
  const r = await evalCli([
    "--model",
    fixtureModel(name),
    "--data",
    fixtureText("tinystories_val.txt"),
    "--seqlen",
    "256",
    "--max-windows",
    "8",
    "--json",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n");
  assert.equal(lines.length, 1, `stdout: ${r.stdout}`);
  const obj = JSON.parse(lines[0]);
  assert.equal(typeof obj, "object");
  assert.equal(obj.windows, 8);
  assert.equal(obj.tokens, 8 * 256);
  assert.equal(obj.seqlen, 256);
  assert.ok(typeof obj.seconds === "number" && obj.seconds > 0, "seconds");
  // the first 8 reference windows give the expected perplexity
  const nll = fp32Run(name).eval.val.per_window_nll!.slice(0, 8);
  assertPpl(obj.ppl, Math.exp(nll.reduce((a, b) => a + b, 0) / 8), "CLI ppl (8 windows)");
});

Deno.test("eval CLI refuses bad input with a message naming the flag or file", async (t) => {
  const model = fixtureModel("stories260k");
  const tmp = await Deno.makeTempDir({ prefix: "eval_test_" });
  try {
    const gpt2 = `${tmp}/gpt2`;
    await Deno.mkdir(gpt2);
    await Deno.writeTextFile(
      `${gpt2}/config.json`,
      JSON.stringify({ model_type: "gpt2", n_embd: 64, n_layer: 2, n_head: 4, vocab_size: 512 }),
    );
    const missing = `${tmp}/no-such-model`;
    const cases: [string, string[], RegExp[]][] = [
      ["missing --model path", ["--model", missing], [/--model/, /no-such-model/]],
      ["unknown flag", ["--model", model, "--bogus-flag", "1"], [/bogus-flag/]],
      ["--seqlen 0", ["--model", model, "--seqlen", "0"], [/--seqlen/]],
      ["--seqlen beyond max_position_embeddings", ["--model", model, "--seqlen", "513"], [
        /--seqlen/,
        /513/,
        /512|max_position/,
      ]],
      ["model_type gpt2", ["--model", gpt2], [/config\.json/, /gpt2/]],
    ];
    const results = await Promise.all(cases.map(([, args]) => evalCli(args)));
    for (let i = 0; i < cases.length; i++) {
      const [what, , patterns] = cases[i];
      const r = results[i];
      await t.step(what, () => {
        assert.notEqual(r.code, 0, `${what}: exit code 0`);
        assert.equal(r.stdout.trim(), "", `${what}: stdout ${r.stdout}`);
        for (const p of patterns) assert.match(r.stderr, p, `${what}: stderr ${r.stderr}`);
        assert.doesNotMatch(r.stderr, /^\s+at /m, `${what}: stack trace in ${r.stderr}`);
      });
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
