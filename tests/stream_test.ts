/**
 * The order of events in the block stream: block i+1's weights are read while block i is in
 * its later stages (after the first stage, before the sink), never during block i's first
 * stage, and no block starts before the previous block's outputs reached the sink.
 */
import assert from "node:assert/strict";
import { fixtureModel } from "../fixtures/paths.ts";
import { Runtime } from "../kernels/session.ts";
import { openModel } from "../formats/open.ts";
import { ModelWriter } from "../formats/writer.ts";
import { type RunContext, stage } from "../stages/job.ts";
import { blockSink, blockSource, ChainLink, runStream } from "../stages/stream.ts";

Deno.test("block i+1 is read during block i's later stages, not its first", async () => {
  const model = await openModel(fixtureModel("stories260k"));
  const events: string[] = [];
  const source = {
    ...model,
    path: model.path,
    format: model.format,
    config: model.config,
    block: (i: number) => {
      events.push(`read ${i}`);
      return model.block(i);
    },
  };
  const rt = new Runtime();
  const ctx: RunContext = { rt, config: model.config, seqlen: 8, abits: 16, log: () => {} };
  const tmp = await Deno.makeTempDir();
  try {
    const writer = await ModelWriter.create(`${tmp}/out`, model.config);
    const link = new ChainLink();
    const first = stage("first", async (job) => {
      events.push(`first ${job.index}`);
      await new Promise((r) => setTimeout(r, 20));
      events.push(`first done ${job.index}`);
    });
    const last = stage("last", async (job) => {
      events.push(`last ${job.index}`);
      await new Promise((r) => setTimeout(r, 20));
      job.qOut = job.qIn;
      events.push(`last done ${job.index}`);
    });
    const d = model.config.hidden;
    const x = { data: new Float32Array(2 * 8 * d), shape: [2, 8, d] };
    await runStream(
      blockSource({ model: source, ctx, input: x, teacher: false, link }),
      [first, last],
      blockSink(writer, link, { reports: [], storage: {}, extraTensors: {} }),
    );
    await writer.abort();
    const layers = model.config.layers;
    for (let i = 0; i + 1 < layers; i++) {
      const at = (e: string) => {
        const k = events.indexOf(e);
        assert.ok(k >= 0, `${e} happened: ${events.join(", ")}`);
        return k;
      };
      assert.ok(at(`first done ${i}`) < at(`read ${i + 1}`), `block ${i + 1} read after first`);
      assert.ok(at(`read ${i + 1}`) < at(`last done ${i}`), `block ${i + 1} read during last`);
      assert.ok(at(`last done ${i}`) < at(`first ${i + 1}`), "blocks do not overlap");
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
    model.close();
    await rt.release();
  }
});
