/**
 * The outlier-injection fixture: the transformed model computes the same function (perplexity
 * unchanged to 1e-4) while its chosen linear-input channels grow exactly `s`-fold and the
 * per-channel max/median ratio of those inputs grows by about `s`.
 */
import assert from "node:assert/strict";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import { injectOutliers } from "../fixtures/outliers.ts";
import { Runtime } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import type { CapturePoint } from "../models/block_graph.ts";
import { calibrationWindows } from "../text/calibration.ts";
import { embed, runBlock } from "../models/forward.ts";
import type { ModelSource } from "../models/source.ts";
import { openModel } from "../formats/open.ts";
import { readDataset } from "../text/dataset.ts";
import { loadTokenizer } from "../text/tokenizer.ts";
import { perplexity } from "../eval/perplexity.ts";

/** Per-channel max |x| of block `i`'s linear inputs, on the given embedded windows. */
async function channelMax(rt: Runtime, m: ModelSource, x0: Tensor) {
  const result: Record<CapturePoint, Float64Array>[] = [];
  let x = x0;
  for (let i = 0; i < m.config.layers; i++) {
    const maxes = {} as Record<CapturePoint, Float64Array>;
    x = await runBlock(rt, m.config, await m.block(i), x, {
      onCapture: (cap) => {
        for (const [p, t] of Object.entries(cap) as [CapturePoint, Tensor][]) {
          const k = t.shape[1];
          const mx = maxes[p] ??= new Float64Array(k);
          for (let j = 0; j < t.data.length; j++) {
            const v = Math.abs(t.data[j]);
            if (v > mx[j % k]) mx[j % k] = v;
          }
        }
      },
    });
    result.push(maxes);
  }
  return result;
}

const ratio = (m: Float64Array) => Math.max(...m) / [...m].sort((a, b) => a - b)[m.length >> 1];

Deno.test("outlier injection preserves the function and plants s-fold channels", async () => {
  const tmp = await Deno.makeTempDir();
  const rt = new Runtime();
  const s = 50;
  try {
    const src = fixtureModel("tinystories-656k");
    const chosen = await injectOutliers(src, `${tmp}/ol`, { scale: s, fraction: 0.02, seed: 0 });
    const [a, b] = [await openModel(src), await openModel(`${tmp}/ol`)];
    try {
      const tok = await loadTokenizer(src);
      const val = await readDataset(fixtureText("tinystories_val.txt"), tok);
      const pa = await perplexity(rt, a, val, { maxWindows: 256 });
      const pb = await perplexity(rt, b, val, { maxWindows: 256 });
      assert.ok(Math.abs(pb.ppl - pa.ppl) / pa.ppl < 1e-4, `${pa.ppl} vs ${pb.ppl}`);

      const train = await readDataset(fixtureText("tinystories_train_sample.txt"), tok);
      const calib = calibrationWindows(train, 16, 256, 0);
      const x0 = embed(await a.embedding(), calib.data, 256);
      const [ma, mb] = [await channelMax(rt, a, x0), await channelMax(rt, b, x0)];
      for (let i = 0; i < a.config.layers; i++) {
        const points: [CapturePoint, number[]][] = [
          ["x_qkv", chosen[i].attn],
          ["x_gateup", chosen[i].mlp],
          ["x_down", chosen[i].down],
        ];
        for (const [p, channels] of points) {
          for (const c of channels) {
            const grow = mb[i][p][c] / ma[i][p][c];
            assert.ok(Math.abs(grow - s) / s < 1e-3, `block ${i} ${p} channel ${c}: ×${grow}`);
          }
          const g = ratio(mb[i][p]) / ratio(ma[i][p]);
          assert.ok(g > s / 5 && g < s * 1.01, `block ${i} ${p}: max/median grew ×${g}`);
          console.log(
            `block ${i} ${p}: max/median ${ratio(ma[i][p]).toFixed(1)} → ${
              ratio(mb[i][p]).toFixed(1)
            }`,
          );
        }
      }
    } finally {
      a.close();
      b.close();
    }
  } finally {
    await rt.release();
    await Deno.remove(tmp, { recursive: true });
  }
});
