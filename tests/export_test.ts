/**
 * ONNX export: the exported graph (token ids → logits), run by ONNX Runtime on its own, gives
 * the perplexity our streaming evaluation gives — for the full-precision fixture and for a QLLM
 * W4A4 model with channel reassembly, whose exported graph must carry the reassembly as Gather
 * ops and the per-token activation quantizers.
 */
import assert from "node:assert/strict";
import * as ort from "onnxruntime-node";
import onnxProto from "onnx-proto";
import { injectOutliers } from "../fixtures/outliers.ts";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import { Runtime } from "../kernels/session.ts";
import { linearDecay } from "../kernels/optim.ts";
import { openModel } from "../formats/open.ts";
import { readDataset } from "../text/dataset.ts";
import { loadTokenizer } from "../text/tokenizer.ts";
import { perplexity } from "../eval/perplexity.ts";
import { exportOnnx } from "../formats/onnx.ts";
import { runQuantization } from "../run/quantize.ts";
import { loraMethod } from "../methods/qllm.ts";
import { capture, propagate } from "../stages/propagate.ts";
import { reassemble } from "../stages/reassemble.ts";
import { reconstruct } from "../stages/reconstruct.ts";

const T = 256, W = 8;

/** Perplexity of the exported graph on the first W windows, computed here in float64. */
async function onnxPerplexity(bytes: Uint8Array, ids: Int32Array, vocab: number): Promise<number> {
  const s = await ort.InferenceSession.create(bytes);
  let sum = 0;
  try {
    for (let w = 0; w < W; w++) {
      const win = ids.subarray(w * T, (w + 1) * T);
      const out = await s.run({
        input_ids: new ort.Tensor("int64", BigInt64Array.from(win, (v) => BigInt(v)), [1, T]),
      });
      const lg = out.logits.data as Float32Array;
      let nll = 0;
      for (let t = 0; t < T - 1; t++) {
        const row = lg.subarray(t * vocab, (t + 1) * vocab);
        let max = -Infinity;
        for (const v of row) max = Math.max(max, v);
        let z = 0;
        for (const v of row) z += Math.exp(v - max);
        nll += max + Math.log(z) - row[win[t + 1]];
      }
      sum += nll / (T - 1);
    }
  } finally {
    await s.release();
  }
  return Math.exp(sum / W);
}

function opCounts(bytes: Uint8Array): Map<string, number> {
  // deno-lint-ignore no-explicit-any
  const m = (onnxProto as any).onnx.ModelProto.decode(bytes);
  const counts = new Map<string, number>();
  for (const n of m.graph.node) counts.set(n.opType, (counts.get(n.opType) ?? 0) + 1);
  return counts;
}

Deno.test("exported ONNX models reproduce our perplexity", async () => {
  const tmp = await Deno.makeTempDir();
  const rt = new Runtime();
  try {
    const src = fixtureModel("tinystories-656k");
    const ids = await readDataset(fixtureText("tinystories_val.txt"), await loadTokenizer(src));
    const fp = await openModel(src);
    try {
      const ours = (await perplexity(rt, fp, ids, { maxWindows: W })).ppl;
      const theirs = await onnxPerplexity(
        await exportOnnx(fp, { batch: 1, seqlen: T }),
        ids,
        fp.config.vocab,
      );
      assert.ok(Math.abs(theirs - ours) / ours < 1e-4, `fp: ${theirs} vs ${ours}`);
    } finally {
      fp.close();
    }

    const outliers = `${tmp}/outliers`;
    await injectOutliers(src, outliers, { scale: 50, fraction: 0.02 });
    await runQuantization({
      method: "qllm",
      wbits: 4,
      abits: 4,
      groupSize: 0,
      model: outliers,
      out: `${tmp}/qllm`,
      teacher: true,
      calib: { file: fixtureText("tinystories_train_sample.txt"), nsamples: 8, seed: 0 },
      eval: { files: [], windows: W },
      stages: () => [
        capture(),
        reassemble({ channelRatio: 0.2, wbits: 4, abits: 4, groupSize: 0 }),
        reconstruct(loraMethod({ wbits: 4, groupSize: 0 }), { epochs: 1, schedule: linearDecay() }),
        propagate(),
      ],
      quiet: true,
    });
    const q = await openModel(`${tmp}/qllm`);
    try {
      assert.equal(q.config.activationBits, 4);
      const ours = (await perplexity(rt, q, ids, { maxWindows: W })).ppl;
      const bytes = await exportOnnx(q, { batch: 1, seqlen: T });
      const ops = opCounts(bytes);
      // Embedding lookup + two gathers at each of the three reassembly points of every block.
      assert.equal(ops.get("Gather"), 1 + q.config.layers * 3 * 2);
      assert.ok((ops.get("Round") ?? 0) >= q.config.layers * 4 * 2, "activation quantizers");
      const theirs = await onnxPerplexity(bytes, ids, q.config.vocab);
      assert.ok(Math.abs(theirs - ours) / ours < 1e-3, `qllm: ${theirs} vs ${ours}`);
    } finally {
      q.close();
    }
  } finally {
    await rt.release();
    await Deno.remove(tmp, { recursive: true });
  }
});
