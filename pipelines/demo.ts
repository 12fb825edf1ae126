/**
 * The first command on a fresh machine (`deno task demo`): quantizes the default model
 * (`../shared/fixtures/models/tinystories-656k`, or `--model DIR`) to 4-bit weights with GPTQ
 * (groups of 32, act-order, true-sequential), then prints perplexity before and after on the
 * TinyStories validation text (first 256 windows) and a greedy sample of each model.
 * @module
 */
import { Runtime } from "../kernels/session.ts";
import { DEFAULT_MODEL, fixtureText } from "../fixtures/paths.ts";
import { openModel } from "../formats/open.ts";
import { loadTokenizer } from "../text/tokenizer.ts";
import { propagate } from "../stages/propagate.ts";
import { gptqStage } from "../methods/gptq.ts";
import { deviceFlag, parseFlags, runMain } from "../cli/flags.ts";
import type { Interrupts } from "../cli/signals.ts";
import { modelDir } from "../formats/open.ts";
import { greedy } from "../eval/generate.ts";
import { runQuantization } from "../run/quantize.ts";

const USAGE = "usage: deno task demo [--model DIR] [--out DIR] [--device cpu|webgpu|cuda]";

async function main(argv: string[], interrupts: Interrupts) {
  const f = parseFlags(argv, {
    model: { type: "string" },
    out: { type: "string" },
    device: { type: "string" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) return console.log(USAGE);
  const path = (f.model as string | undefined) ?? DEFAULT_MODEL;
  const out = (f.out as string | undefined) ?? "out/demo-gptq-w4g32";
  const device = deviceFlag(f.device);
  const o = {
    bits: 4,
    groupSize: 32,
    actOrder: true,
    staticGroups: false,
    trueSequential: true,
    allowPartialGroup: true,
  };
  const report = await runQuantization({
    interrupts,
    method: "gptq",
    wbits: 4,
    abits: 16,
    groupSize: 32,
    model: path,
    out,
    calib: { file: fixtureText("tinystories_train_sample.txt"), nsamples: 128, seed: 0 },
    eval: { files: [fixtureText("tinystories_val.txt")], windows: 256 },
    device,
    settings: o,
    stages: () => [gptqStage(o), propagate()],
  });
  const e = report.eval["tinystories_val.txt"];
  console.log(`model: ${path}`);
  console.log(`GPTQ W4 g32 act-order true-sequential → ${out}`);
  console.log(
    `  ${report.bits_per_weight.toFixed(3)} bits per weight, ${report.seconds.toFixed(1)} s`,
  );
  console.log(
    `  perplexity (tinystories_val.txt, 256 windows): ${e.fp.toFixed(3)} → ${e.quant.toFixed(3)}`,
  );
  const rt = new Runtime(device);
  const tok = await loadTokenizer(await modelDir(path));
  for (const [name, p] of [["original", path], ["quantized", out]]) {
    const m = await openModel(p);
    try {
      const ids = await greedy(rt, m, [tok.bos ?? m.config.bos], { tokens: 40 });
      console.log(`  ${name}: ${tok.decode(ids).replaceAll("\n", " ")}`);
    } finally {
      m.close();
    }
  }
  await rt.release();
}

if (import.meta.main) await runMain(main);
