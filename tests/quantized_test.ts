/**
 * The integer grid under our quantized models (formats/quantized.ts): every uniform method —
 * RTN, GPTQ with act-order (non-contiguous groups), OmniQuant and QLLM (learned clipping and
 * LET or low-rank updates, their scales saved by the fold), ABQ-LLM's bit-balanced 2-bit weights
 * — writes weights that dequantize bit for bit from the saved codes, scales and zero points;
 * CLAQ's codebooks are named as not uniform.
 */
import assert from "node:assert/strict";
import { fixtureModel } from "../fixtures/paths.ts";
import { openModel } from "../formats/open.ts";
import { gridOf, openQuantized } from "../formats/quantized.ts";
import { LINEAR_NAMES } from "../models/config.ts";
import { abqMain } from "../pipelines/abq.ts";
import { claqMain } from "../pipelines/claq.ts";
import { gptqMain } from "../pipelines/gptq.ts";
import { omniquantMain } from "../pipelines/omniquant.ts";
import { qllmMain } from "../pipelines/qllm.ts";
import { rtnMain } from "../pipelines/rtn.ts";

const TINY = ["--model", fixtureModel("stories260k"), "--nsamples", "4", "--eval", "", "--quiet"];

/** Dequantizes every linear of every block from its grid and compares with the weights. */
async function checkGrids(dir: string, maxq: number): Promise<number> {
  const model = await openModel(dir);
  const q = await openQuantized(dir);
  let checked = 0;
  try {
    assert.equal(q.notUniform, null);
    assert.equal(q.maxq, maxq);
    for (let i = 0; i < model.config.layers; i++) {
      const w = await model.block(i);
      const grids = await q.grids(i, w);
      for (const l of LINEAR_NAMES) {
        const g = grids[l], W = w[`${l}.weight`].data;
        const groups = g.scales.length / g.rows;
        for (let r = 0; r < g.rows; r++) {
          for (let c = 0; c < g.cols; c++) {
            const k = r * groups + g.gIdx[c], code = g.codes[r * g.cols + c];
            assert.ok(code <= maxq);
            // float64 product, rounded once to float32: the value the quantizer stored
            assert.equal(Math.fround(g.scales[k] * (code - g.zeros[k])), W[r * g.cols + c]);
            checked++;
          }
        }
      }
    }
  } finally {
    q.close();
    model.close();
  }
  return checked;
}

Deno.test("every uniform method's weights dequantize exactly from the saved grid", async (t) => {
  const tmp = await Deno.makeTempDir();
  try {
    const runs: [string, (a: string[]) => Promise<unknown>, string[], number][] = [
      ["rtn g32", rtnMain, ["--wbits", "4", "--group-size", "32", "--allow-partial-group"], 15],
      ["rtn w3 sym", rtnMain, ["--wbits", "3", "--sym"], 7],
      ["gptq g16 act-order", gptqMain, [
        "--wbits",
        "4",
        "--group-size",
        "16",
        "--act-order",
        "--allow-partial-group",
      ], 15],
      ["omniquant lwc let", omniquantMain, ["--wbits", "4", "--lwc", "--let", "--epochs", "1"], 15],
      ["qllm w4a8", qllmMain, ["--wbits", "4", "--abits", "8", "--lwc", "--epochs", "1"], 15],
      ["abq bit balance", abqMain, ["--wbits", "2", "--bit-balance", "--lwc", "--epochs", "1"], 4],
    ];
    for (const [name, main, flags, maxq] of runs) {
      await t.step(name, async () => {
        const out = `${tmp}/${name.replaceAll(" ", "_")}`;
        await main([...TINY, ...flags, "--out", out]);
        assert.ok(await checkGrids(out, maxq) > 0);
      });
    }
    await t.step("CLAQ's codebooks are not a uniform grid", async () => {
      const out = `${tmp}/claq`;
      await claqMain([...TINY, "--target-bits", "2.1", "--out", out]);
      const q = await openQuantized(out);
      assert.match(q.notUniform ?? "", /codebooks/);
      q.close();
    });
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("gridOf recovers hand-made codes and refuses weights off the grid", () => {
  // 2 rows × 4 columns, groups of 2, group index [0, 1, 1, 0] (act-order-like).
  const scales = { data: Float32Array.of(0.5, 0.25, 1, 2), shape: [2, 2] };
  const zeros = { data: Float32Array.of(8, 7, 0, 15), shape: [2, 2] };
  const gIdx = Int32Array.of(0, 1, 1, 0);
  const codes = [3, 15, 0, 8, 0, 15, 4, 1];
  const W = new Float32Array(8);
  for (let i = 0; i < 8; i++) {
    const r = i >> 2, k = r * 2 + gIdx[i % 4];
    W[i] = scales.data[k] * (codes[i] - zeros.data[k]);
  }
  const g = gridOf("w", { data: W, shape: [2, 4] }, scales, zeros, 15, 2, gIdx);
  assert.deepEqual([...g.codes], codes);
  assert.equal(g.contiguous, false);
  W[5] += 1e-3;
  assert.throws(
    () => gridOf("model.layers.0.x.weight", { data: W, shape: [2, 4] }, scales, zeros, 15, 2, gIdx),
    /model\.layers\.0\.x\.weight: 1 of 8 weights are not on the saved grid \(first at \[1, 1\]/,
  );
});
