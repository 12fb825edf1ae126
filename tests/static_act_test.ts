/**
 * Static per-tensor activation quantization: the range formula against a float64 hand
 * computation, and a W8A8 static run whose written model reloads to the reported perplexity,
 * stays within 2 % of full precision, and carries one scale and zero per linear input.
 */
import assert from "node:assert/strict";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import { Runtime } from "../kernels/session.ts";
import { openModel } from "../formats/open.ts";
import { readDataset } from "../text/dataset.ts";
import { loadTokenizer } from "../text/tokenizer.ts";
import { perplexity } from "../eval/perplexity.ts";
import { runQuantization } from "../run/quantize.ts";
import { propagate } from "../stages/propagate.ts";
import { staticActivations, staticRange } from "../stages/static_activations.ts";
import { rtn } from "../methods/rtn.ts";

Deno.test("static range: min/max widened to 0, 2^b − 1 steps", () => {
  const r = staticRange(-1.5, 3, 8);
  assert.ok(Math.abs(r.scale - 4.5 / 255) < 1e-12);
  assert.equal(r.zero, Math.round(1.5 / (4.5 / 255)));
  const pos = staticRange(0.5, 2, 4);
  assert.ok(Math.abs(pos.scale - 2 / 15) < 1e-12);
  assert.equal(pos.zero, 0);
});

Deno.test("W8A8 with static per-tensor ranges", async () => {
  const tmp = await Deno.makeTempDir();
  const rt = new Runtime();
  try {
    const src = fixtureModel("tinystories-656k");
    const report = await runQuantization({
      method: "rtn",
      wbits: 8,
      abits: 8,
      groupSize: 0,
      model: src,
      out: `${tmp}/static`,
      calib: { file: fixtureText("tinystories_train_sample.txt"), nsamples: 16, seed: 0 },
      eval: { files: [fixtureText("tinystories_val.txt")], windows: 32 },
      stages: () => [rtn({ bits: 8, groupSize: 0 }), staticActivations(), propagate()],
      quiet: true,
    });
    const e = report.eval["tinystories_val.txt"];
    assert.ok(e.quant / e.fp < 1.02 && e.quant / e.fp > 0.98, `${e.fp} → ${e.quant}`);
    const m = await openModel(`${tmp}/static`);
    try {
      assert.equal(m.config.activationBits, 8);
      const extra = Object.keys(m.config.extraTensors ?? {});
      assert.equal(extra.filter((k) => k.startsWith("act_quant.")).length, 8);
      const w = await m.block(0);
      assert.ok(w["act_quant.x_qkv.scale"].data[0] > 0);
      const ids = await readDataset(fixtureText("tinystories_val.txt"), await loadTokenizer(src));
      const again = await perplexity(rt, m, ids, { maxWindows: 32 });
      assert.ok(Math.abs(again.ppl - e.quant) < 1e-9 * e.quant);
    } finally {
      m.close();
    }
  } finally {
    await rt.release();
    await Deno.remove(tmp, { recursive: true });
  }
});
