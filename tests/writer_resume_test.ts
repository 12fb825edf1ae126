/**
 * Writers resumed from a snapshot, as a killed run's successor does: what was written after the
 * snapshot is discarded, and the finished files are byte for byte those of an uninterrupted
 * writer — also when the kill came after a shard was finished (its data file gone) and when a
 * new shard had been started.
 */
import assert from "node:assert/strict";
import { CheckpointWriter } from "../formats/checkpoint.ts";
import { SafetensorsWriter } from "../formats/safetensors.ts";
import { ModelWriter } from "../formats/writer.ts";
import { fixtureModel } from "../fixtures/paths.ts";
import { openModel } from "../formats/open.ts";
import { Rng } from "../kernels/tensor.ts";

const rng = new Rng(5);
const t = (n: number) => rng.normalTensor([n]).data;
const [A, B, C] = [t(1000), t(2000), t(500)];

async function withDir(f: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "qllm-writer-resume-" });
  try {
    await f(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("safetensors: resumed after a snapshot, later writes dropped, bytes identical", async () => {
  await withDir(async (dir) => {
    const whole = await SafetensorsWriter.create(`${dir}/whole.safetensors`, { m: "1" });
    await whole.add("a", "F32", [1000], A);
    await whole.add("c", "F32", [500], C);
    await whole.finish();

    const killed = await SafetensorsWriter.create(`${dir}/r.safetensors`, { m: "1" });
    await killed.add("a", "F32", [1000], A);
    const snap = killed.snapshot();
    await killed.add("b", "F32", [2000], B); // after the snapshot: must vanish
    const resumed = await SafetensorsWriter.resume(snap);
    await resumed.add("c", "F32", [500], C);
    await resumed.finish();
    assert.deepEqual(
      await Deno.readFile(`${dir}/r.safetensors`),
      await Deno.readFile(`${dir}/whole.safetensors`),
    );
  });
});

Deno.test("safetensors: resumed after the file was finished past its snapshot", async () => {
  await withDir(async (dir) => {
    const whole = await SafetensorsWriter.create(`${dir}/whole.safetensors`);
    await whole.add("a", "F32", [1000], A);
    await whole.add("c", "F32", [500], C);
    await whole.finish();

    const killed = await SafetensorsWriter.create(`${dir}/r.safetensors`);
    await killed.add("a", "F32", [1000], A);
    const snap = killed.snapshot();
    await killed.add("b", "F32", [2000], B);
    await killed.finish(); // its data file is gone; the finished file holds a, b
    const resumed = await SafetensorsWriter.resume(snap);
    await resumed.add("c", "F32", [500], C);
    await resumed.finish();
    assert.deepEqual(
      await Deno.readFile(`${dir}/r.safetensors`),
      await Deno.readFile(`${dir}/whole.safetensors`),
    );
  });
});

Deno.test("checkpoint: resumed across a shard started after the snapshot", async () => {
  await withDir(async (dir) => {
    const write = async (d: string, killAfterA: boolean) => {
      await Deno.mkdir(d);
      let w = await CheckpointWriter.create(d, { maxShardBytes: 6000 });
      await w.add("a", "F32", [1000], A);
      if (killAfterA) {
        const snap = w.snapshot();
        await w.add("b", "F32", [2000], B); // rolls over into a second shard
        w = await CheckpointWriter.resume(snap);
      }
      await w.add("b", "F32", [2000], B);
      await w.add("c", "F32", [500], C);
      return await w.finish();
    };
    const files = await write(`${dir}/whole`, false);
    assert.deepEqual(await write(`${dir}/resumed`, true), files);
    for (const f of files) {
      assert.deepEqual(
        await Deno.readFile(`${dir}/resumed/${f}`),
        await Deno.readFile(`${dir}/whole/${f}`),
        f,
      );
    }
  });
});

Deno.test("model writer: resumed, its temporaries started after the snapshot removed", async () => {
  await withDir(async (dir) => {
    const m = await openModel(fixtureModel("tinystories-656k"));
    try {
      const write = async (out: string, kill: boolean) => {
        let w = await ModelWriter.create(out, m.config);
        await w.add("model.embed_tokens.weight", await m.embedding());
        await w.addBlock(0, await m.block(0));
        if (kill) {
          const snap = w.snapshot();
          await w.addBlock(1, await m.block(1));
          await w.addLearned("model.layers.1.x", { data: C, shape: [500] });
          w = await ModelWriter.resume(snap, m.config);
        }
        await w.addBlock(1, await m.block(1));
        await w.finish(await m.finalNorm(), null, fixtureModel("tinystories-656k"));
      };
      await write(`${dir}/whole`, false);
      await write(`${dir}/resumed`, true);
      const names = async (d: string) =>
        (await Array.fromAsync(Deno.readDir(d))).map((e) => e.name).sort();
      assert.deepEqual(await names(`${dir}/resumed`), await names(`${dir}/whole`));
      assert.deepEqual(
        await Deno.readFile(`${dir}/resumed/model.safetensors`),
        await Deno.readFile(`${dir}/whole/model.safetensors`),
      );
      assert.deepEqual((await names(dir)).sort(), ["resumed", "whole"]);
    } finally {
      m.close();
    }
  });
});
