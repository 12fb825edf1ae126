/**
 * The rotation stage in the stream (`--rotate`, stages/rotate.ts): the rotated full-precision
 * model computes the original function — perplexity before and after rotation within 1e-5
 * relative — on tinystories-656k (GQA, MLP 384 = 12·32), stories260k (MLP 172 = 43·4, a random
 * orthogonal factor) and a generated GQA model of widths 192 = 12·16 and 320 = 5·64; every method
 * composes with it and writes a model whose online rotations evaluation applies (a fresh
 * evaluation of the written model equals the run's, and so does the exported ONNX decoder's, within
 * 0.1 %); rotated GPTQ beats plain GPTQ at W4A4; a
 * user's own stage graph can place the stage, and without the run's rotations it names --rotate.
 */
import assert from "node:assert/strict";
import { onnxPerplexity, perplexity } from "../eval/perplexity.ts";
import { ensureLlama } from "../fixtures/generate.ts";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import { openModel } from "../formats/open.ts";
import { Runtime } from "../kernels/session.ts";
import { abqMain } from "../pipelines/abq.ts";
import { gptqMain } from "../pipelines/gptq.ts";
import { omniquantMain } from "../pipelines/omniquant.ts";
import { qllmMain } from "../pipelines/qllm.ts";
import { rtnMain } from "../pipelines/rtn.ts";
import { exportModel } from "../run/export.ts";
import { runQuantization } from "../run/quantize.ts";
import { OnnxDecoder } from "../serve/decoder.ts";
import type { QuantizeReport } from "../run/report.ts";
import { propagate } from "../stages/propagate.ts";
import { rotate } from "../stages/rotate.ts";
import { readDataset } from "../text/dataset.ts";
import { loadTokenizer } from "../text/tokenizer.ts";

const VAL = "tinystories_val.txt";
const rel = (a: number, b: number) => Math.abs(a - b) / b;

Deno.test("a rotated full-precision model computes the original function", async (t) => {
  const tmp = await Deno.makeTempDir();
  const generated = await ensureLlama({
    hidden: 192,
    intermediate: 320,
    layers: 2,
    heads: 6,
    kvHeads: 2,
    vocab: 2048,
    std: 0.05,
  });
  try {
    for (
      const [name, model] of [
        ["tinystories-656k", fixtureModel("tinystories-656k")],
        ["stories260k", fixtureModel("stories260k")],
        ["generated 192/320 GQA", generated],
      ]
    ) {
      await t.step(name, async () => {
        const r = (await rtnMain([
          ...["--model", model, "--wbits", "16", "--rotate", "--nsamples", "2"],
          ...["--eval-windows", "32", "--out", `${tmp}/${name.replaceAll(" ", "_")}`, "--quiet"],
        ]))!;
        const e = r.eval[VAL];
        assert.ok(rel(e.quant, e.fp) < 1e-5, `${name}: ${e.fp} → ${e.quant}`);
        const rotation = r.blocks.find((b) => b.stage === "rotate")!;
        assert.match(String(rotation.residual), /hadamard/);
      });
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

/** Our evaluation of a written model, opened afresh, on the run's windows. */
async function evaluate(dir: string, windows: number): Promise<number> {
  const rt = new Runtime();
  const model = await openModel(dir);
  try {
    const ids = await readDataset(fixtureText(VAL), await loadTokenizer(dir));
    return (await perplexity(rt, model, ids, { maxWindows: windows })).ppl;
  } finally {
    model.close();
    await rt.release();
  }
}

Deno.test("every method composes with --rotate and writes what evaluation runs", async (t) => {
  const tmp = await Deno.makeTempDir();
  const common = [
    ...["--model", fixtureModel("stories260k"), "--wbits", "4", "--abits", "4"],
    ...["--nsamples", "16", "--eval-windows", "32", "--quiet"],
  ];
  const runs: [string, (a: string[]) => Promise<QuantizeReport | undefined>, string[]][] = [
    ["rtn", rtnMain, []],
    ["gptq", gptqMain, ["--act-order"]],
    ["omniquant", omniquantMain, ["--lwc", "--let", "--epochs", "1"]],
    ["abq", abqMain, ["--lwc", "--let", "--epochs", "1"]],
    ["qllm", qllmMain, ["--epochs", "1"]],
  ];
  try {
    for (const [name, main, flags] of runs) {
      await t.step(name, async () => {
        const out = `${tmp}/${name}`;
        const r = (await main([
          ...common,
          ...flags,
          "--rotate",
          "--act-clip",
          "0.9",
          "--kv-bits",
          "8",
          "--out",
          out,
        ]))!;
        const q = r.eval[VAL].quant;
        assert.ok(Number.isFinite(q) && q < 2 * r.eval[VAL].fp, `${name}: ${q}`);
        assert.ok(rel(await evaluate(out, 32), q) < 1e-6, `${name}: the written model's own ppl`);
        const config = JSON.parse(await Deno.readTextFile(`${out}/config.json`));
        const qc = config.quantization_config;
        assert.deepEqual(qc.rotation.online, ["x_down", "qk"]);
        for (const k of ["rotation.x_down.a", "rotation.qk.signs", "act_quant.clip"]) {
          assert.ok(qc.extra_block_tensors[k], `${name}: ${k}`);
        }
        assert.equal(config.tie_word_embeddings, false);
        if (name === "abq") assert.ok(!(r.settings.letPoints as string[]).includes("fc2"));
        if (name === "gptq") {
          // The deployable decoder applies the online rotations too: same perplexity.
          const dir = `${tmp}/gptq-onnx`;
          await exportModel({ model: out, out: dir, quiet: true });
          const dec = await OnnxDecoder.open(dir);
          try {
            const ids = await readDataset(fixtureText(VAL), dec.tokenizer);
            const onnx = (await onnxPerplexity(dec, ids, { maxWindows: 32 })).ppl;
            assert.ok(rel(onnx, q) < 1e-3, `exported ${onnx} vs ours ${q}`);
          } finally {
            await dec.release();
          }
        }
      });
    }
    await t.step("rotated GPTQ beats plain GPTQ at W4A4", async () => {
      const flags = [...common, "--act-order"];
      const plain = (await gptqMain([...flags, "--out", `${tmp}/plain`]))!.eval[VAL].quant;
      const rotated =
        (await gptqMain([...flags, "--rotate", "--out", `${tmp}/rot`]))!.eval[VAL].quant;
      assert.ok(rotated < plain, `rotated ${rotated} vs plain ${plain}`);
    });
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("a user's stage graph places the rotation stage; without the run's rotations it says so", async () => {
  const tmp = await Deno.makeTempDir();
  const run = {
    method: "custom",
    wbits: 16,
    abits: 16,
    groupSize: 0,
    model: fixtureModel("stories260k"),
    calib: { file: fixtureText("tinystories_train_sample.txt"), nsamples: 2, seed: 0 },
    eval: { files: [fixtureText(VAL)], windows: 16 },
    quiet: true,
  };
  try {
    const r = await runQuantization({
      ...run,
      out: `${tmp}/a`,
      rotation: { seed: 5, down: true, qk: false },
      stages: () => [rotate(), propagate()],
    });
    assert.ok(rel(r.eval[VAL].quant, r.eval[VAL].fp) < 1e-5);
    await assert.rejects(
      () => runQuantization({ ...run, out: `${tmp}/b`, stages: () => [rotate(), propagate()] }),
      /--rotate/,
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
