/**
 * QLLM's acceptance on the outlier-injected tinystories-656k (s = 50 on 2 % of channels) at
 * W4A4 per channel: both parts together (channel reassembly + low-rank compensation) beat RTN,
 * reassembly alone and compensation alone, with a reduced budget (32 calibration samples,
 * 2 epochs per block, first 64 validation windows); the folded model computes the trained
 * function, and the report carries θ and the channels split/merged per layer.
 */
import assert from "node:assert/strict";
import { injectOutliers } from "../fixtures/outliers.ts";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import { linearDecay } from "../kernels/optim.ts";
import { RunCache, runQuantization } from "../run/quantize.ts";
import type { Stage } from "../stages/job.ts";
import { loraMethod } from "../methods/qllm.ts";
import { capture, propagate } from "../stages/propagate.ts";
import { reassemble } from "../stages/reassemble.ts";
import { reconstruct } from "../stages/reconstruct.ts";
import { rtn } from "../methods/rtn.ts";

Deno.test("QLLM beats RTN and each of its parts at W4A4 on the outlier-injected model", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const model = `${tmp}/outliers`;
    await injectOutliers(fixtureModel("tinystories-656k"), model, { scale: 50, fraction: 0.02 });
    const cache = new RunCache();
    const [wbits, abits] = [4, 4];
    const lora = () =>
      reconstruct(loraMethod({ wbits, groupSize: 0 }), { epochs: 2, schedule: linearDecay() });
    const re = () => reassemble({ channelRatio: 0.2, wbits, abits, groupSize: 0 });
    const variants: Record<string, () => Stage[]> = {
      rtn: () => [rtn({ bits: wbits, groupSize: 0 }), propagate()],
      reassembly: () => [capture(), re(), rtn({ bits: wbits, groupSize: 0 }), propagate()],
      lora: () => [capture(), lora(), propagate()],
      qllm: () => [capture(), re(), lora(), propagate()],
    };
    const ppl: Record<string, number> = {};
    for (const [name, stages] of Object.entries(variants)) {
      const r = await runQuantization({
        method: name,
        wbits,
        abits,
        groupSize: 0,
        model,
        out: `${tmp}/${name}`,
        teacher: name !== "rtn",
        calib: { file: fixtureText("tinystories_train_sample.txt"), nsamples: 32, seed: 0 },
        eval: { files: [fixtureText("tinystories_val.txt")], windows: 64 },
        stages,
        quiet: true,
        cache,
      });
      ppl[name] = r.eval["tinystories_val.txt"].quant;
      for (const b of r.blocks) {
        if (b.stage === "lora") {
          assert.ok((b.fold_rel_error as number) < 1e-5, `fold error ${b.fold_rel_error}`);
          const c = b.loss_curve as number[];
          assert.ok(c[c.length - 1] < c[0], `loss did not fall: ${c}`);
        }
        if (b.stage === "reassemble") {
          const points = b.points as Record<string, { theta: number | null; split: number }>;
          assert.equal(Object.keys(points).length, 3);
        }
      }
    }
    console.log(ppl);
    assert.ok(ppl.qllm < ppl.rtn, `qllm ${ppl.qllm} vs rtn ${ppl.rtn}`);
    assert.ok(ppl.qllm < ppl.reassembly, `qllm ${ppl.qllm} vs reassembly ${ppl.reassembly}`);
    assert.ok(ppl.qllm < ppl.lora, `qllm ${ppl.qllm} vs lora ${ppl.lora}`);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
