/**
 * RTN through the whole block stream, against every RTN row of the reference run (PROTOCOL.md
 * §8): weight-only and weight-activation, per channel and groups of 32, on both fixtures; the
 * perplexity of the written model on the first 256 validation windows within 0.3 %.
 */
import assert from "node:assert/strict";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import { REFERENCE_MODELS, referenceFlags, referenceRuns } from "../fixtures/reference.ts";
import { openModel } from "../formats/open.ts";
import { RTN } from "../methods/rtn.ts";
import { LINEAR_NAMES, linearShape } from "../models/config.ts";
import { planFromFlags } from "../run/main.ts";
import { RunCache, runQuantization } from "../run/quantize.ts";

const TOL = 3e-3;

for (const name of REFERENCE_MODELS) {
  Deno.test(`RTN rows of the reference on ${name}`, async (t) => {
    const cache = new RunCache();
    const tmp = await Deno.makeTempDir();
    try {
      for (const ref of referenceRuns(name).filter((r) => r.method === "rtn")) {
        await t.step(ref.name, async () => {
          const groupSize = ref.groupsize > 0 ? ref.groupsize : 0;
          const out = `${tmp}/${ref.name.replaceAll(" ", "_")}`;
          const report = await runQuantization({
            ...planFromFlags(RTN, referenceFlags(ref), out),
            model: fixtureModel(name),
            out,
            calib: { file: fixtureText("tinystories_train_sample.txt"), nsamples: 16, seed: 0 },
            eval: { files: [fixtureText("tinystories_val.txt")], windows: 256 },
            quiet: true,
            cache,
          });
          const got = report.eval["tinystories_val.txt"];
          const want = ref.eval.val.ppl;
          const rel = Math.abs(got.quant - want) / want;
          assert.ok(rel < TOL, `${ref.name}: ppl ${got.quant} vs reference ${want} (${rel})`);
          assert.ok(Math.abs(got.fp - referenceRuns(name)[0].eval.val.ppl) < 1e-3 * got.fp);
          // Independent count: b bits per weight plus an fp16 scale and a b-bit zero per group.
          const m = await openModel(fixtureModel(name));
          const c = m.config;
          m.close();
          let bits = 0, n = 0;
          for (const l of LINEAR_NAMES) {
            const [rows, cols] = linearShape(c, l);
            const groups = groupSize ? Math.ceil(cols / groupSize) : 1;
            bits += rows * cols * ref.wbits + rows * groups * (16 + ref.wbits);
            n += rows * cols;
          }
          assert.ok(Math.abs(report.bits_per_weight - bits / n) < 1e-9);
        });
      }
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  });
}
