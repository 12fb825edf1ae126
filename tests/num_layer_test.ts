/**
 * QLLM with `--num-layer 2`: consecutive blocks are trained jointly in groups ([0,1], [2,3], [4]
 * on the 5-block stories260k), every group's loss falls, the folded blocks compute the trained
 * group (fold error < 1e-5), the written model evaluates to a finite perplexity no worse than
 * RTN with the same calibration, and a run resumed from the groups' checkpoints writes the same
 * model without training.
 */
import assert from "node:assert/strict";
import { fixtureModel } from "../fixtures/paths.ts";
import { qllmMain } from "../pipelines/qllm.ts";

Deno.test("--num-layer 2 trains groups of two blocks jointly", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const common = [
      "--model",
      fixtureModel("stories260k"),
      "--wbits",
      "4",
      "--abits",
      "4",
      "--nsamples",
      "16",
      "--eval-windows",
      "32",
      "--no-reassembly",
      "--quiet",
    ];
    const grouped = await qllmMain([
      ...common,
      "--num-layer",
      "2",
      "--epochs",
      "3",
      "--out",
      `${tmp}/g`,
    ]);
    const plain = await qllmMain([...common, "--no-lora", "--out", `${tmp}/rtn`]);
    assert.ok(grouped && plain);
    const lora = grouped.blocks.filter((b) => b.stage === "lora");
    assert.deepEqual(lora.map((b) => b.group), [[0, 1], [0, 1], [2, 3], [2, 3], [4]]);
    for (const b of lora.filter((b) => b.loss_curve)) {
      const c = b.loss_curve as number[];
      assert.equal(c.length, 3);
      assert.ok(c[2] < c[0], `group ending at ${b.block}: loss ${c}`);
      assert.ok((b.fold_rel_error as number) < 1e-5, `fold error ${b.fold_rel_error}`);
    }
    assert.equal(lora.filter((b) => b.loss_curve).length, 3);
    const q = grouped.eval["tinystories_val.txt"].quant,
      r = plain.eval["tinystories_val.txt"].quant;
    assert.ok(Number.isFinite(q) && q < r, `grouped ${q} vs RTN ${r}`);
    assert.equal(grouped.settings.num_layer, 2);

    // Resumed from the group's checkpoints: no training, the same model byte for byte.
    const resumed = await qllmMain([
      ...common,
      "--num-layer",
      "2",
      "--epochs",
      "3",
      "--resume",
      `${tmp}/g.ckpt`,
      "--out",
      `${tmp}/r`,
    ]);
    const trained = resumed!.blocks.filter((b) => b.stage === "lora" && b.loss_curve);
    assert.deepEqual(trained.map((b) => [b.resumed, b.steps]), [[true, 0], [true, 0], [true, 0]]);
    assert.deepEqual(
      await Deno.readFile(`${tmp}/r/model.safetensors`),
      await Deno.readFile(`${tmp}/g/model.safetensors`),
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
