/**
 * Zero-shot scoring through the exported decoder (`eval/loglikelihood.ts` onnxLoglikelihood,
 * `eval.ts --onnx --tasks`): every choice's log-probability of the tiny task file equals our
 * block graph's within 1e-3 nats for the full-precision stories260k and its GPTQ W4 g32 export
 * (MatMulNBits), with the same greedy flags and accuracies.
 */
import assert from "node:assert/strict";
import { blockGraphLoglikelihood, onnxLoglikelihood } from "../eval/loglikelihood.ts";
import { readTask } from "../eval/tasks.ts";
import { scoreTasks, taskMetrics } from "../eval/zero_shot.ts";
import { fixtureModel, PROJECT_ROOT } from "../fixtures/paths.ts";
import { openModel, openTokenizer } from "../formats/open.ts";
import { Runtime } from "../kernels/session.ts";
import { gptqMain } from "../pipelines/gptq.ts";
import { exportModel } from "../run/export.ts";
import { OnnxDecoder } from "../serve/decoder.ts";

Deno.test("task scores through an exported decoder equal the block graph's", async (t) => {
  const tmp = await Deno.makeTempDir();
  const task = await readTask(`${PROJECT_ROOT}/fixtures/tasks/tiny_stories.jsonl`);
  const rt = new Runtime();
  try {
    await gptqMain([
      ...["--model", fixtureModel("stories260k"), "--wbits", "4", "--group-size", "32"],
      ...["--allow-partial-group", "--nsamples", "8", "--eval", "", "--quiet"],
      ...["--out", `${tmp}/gptq`],
    ]);
    for (const [name, model] of [["fp", fixtureModel("stories260k")], ["gptq", `${tmp}/gptq`]]) {
      await t.step(name, async () => {
        await exportModel({ model, out: `${tmp}/${name}-onnx`, quiet: true });
        const src = await openModel(model);
        const dec = await OnnxDecoder.open(`${tmp}/${name}-onnx`);
        try {
          const tok = await openTokenizer(model);
          const [ours] = await scoreTasks(blockGraphLoglikelihood(rt, src), tok, [task]);
          const [onnx] = await scoreTasks(onnxLoglikelihood(dec), dec.tokenizer, [task]);
          ours.choices.forEach((q, i) =>
            q.forEach((c, j) => {
              const o = onnx.choices[i][j];
              assert.ok(
                Math.abs(c.logprob - o.logprob) < 1e-3,
                `${i}/${j}: ${c.logprob} ${o.logprob}`,
              );
              assert.equal(o.greedy, c.greedy);
            })
          );
          assert.equal(taskMetrics(onnx).acc, taskMetrics(ours).acc);
          assert.equal(taskMetrics(onnx).acc_norm, taskMetrics(ours).acc_norm);
        } finally {
          src.close();
          await dec.release();
        }
      });
    }
  } finally {
    await rt.release();
    await Deno.remove(tmp, { recursive: true });
  }
});
