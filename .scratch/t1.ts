import { Runtime } from "../kernels/session.ts";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import { openModel } from "../models/model.ts";
import { loadTokenizer } from "../models/tokenizer.ts";
import { readDataset } from "../models/text.ts";
import { perplexity, modelDir } from "../pipelines/eval.ts";
const rt = new Runtime();
for (const name of ["tinystories-656k", "stories260k"]) {
  const m = await openModel(fixtureModel(name));
  let t = performance.now();
  const tok = await loadTokenizer(await modelDir(fixtureModel(name)));
  const ids = await readDataset(fixtureText("tinystories_val.txt"), tok);
  console.log(name, "tok", ids.length, (performance.now() - t) / 1000);
  if (name === "tinystories-656k") { t = performance.now(); const w = await readDataset(fixtureText("wikitext2_test.txt"), tok); console.log("wiki tok", w.length, (performance.now()-t)/1000); }
  const r = await perplexity(rt, m, ids, {maxWindows: 256});
  console.log(r.ppl, r.seconds);
  const r2 = await perplexity(rt, m, ids, {});
  console.log(r2.ppl, r2.windows, r2.seconds);
  m.close();
}
await rt.release();
