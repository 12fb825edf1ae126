/**
 * The evaluation streams: with a scratch directory, the evaluated windows' hidden states live in
 * a file (read and written a batch at a time, the head fed a few windows at a time), and every
 * window's NLL is bit for bit the in-memory one; the file is gone afterwards.
 */
import assert from "node:assert/strict";
import { perplexity } from "../eval/perplexity.ts";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import { openModel } from "../formats/open.ts";
import { Runtime } from "../kernels/session.ts";
import { readDataset } from "../text/dataset.ts";
import { loadTokenizer } from "../text/tokenizer.ts";

Deno.test("perplexity through a file equals the in-memory one, window by window", async () => {
  const dir = fixtureModel("tinystories-656k");
  const model = await openModel(dir);
  const rt = new Runtime("cpu");
  const scratch = await Deno.makeTempDir({ prefix: "qllm-eval-stream-" });
  try {
    const ids = await readDataset(fixtureText("tinystories_val.txt"), await loadTokenizer(dir));
    const o = { seqlen: 256, maxWindows: 40 };
    const memory = await perplexity(rt, model, ids, o);
    const file = await perplexity(rt, model, ids, { ...o, scratch, offloadBytes: 0 });
    assert.equal(file.windows, 40);
    assert.deepEqual(Array.from(file.perWindowNll), Array.from(memory.perWindowNll));
    assert.equal(file.ppl, memory.ppl);
    assert.deepEqual(await Array.fromAsync(Deno.readDir(scratch)), []);
  } finally {
    model.close();
    await rt.release();
    await Deno.remove(scratch, { recursive: true });
  }
});
