/**
 * Example: putting your own stage into a pipeline. A stage is a
 * `TransformStream<BlockJob, BlockJob>`; `stage(name, fn)` makes one from an async function of a
 * job. Here `inputOutliers()` measures, before GPTQ runs, how far each block's input channels
 * stray (max |x| over the calibration tokens, against the median channel) and records the
 * worst channels in the run report — the statistic channel reassembly and LET act on.
 *
 * `deno run -A pipelines/custom_stage.ts [--model DIR] [--out DIR]`
 * @module
 */
import { parseFlags, runMain } from "../cli/flags.ts";
import type { Interrupts } from "../cli/signals.ts";
import { DEFAULT_MODEL, fixtureText } from "../fixtures/paths.ts";
import { gptqStage } from "../methods/gptq.ts";
import { runQuantization } from "../run/quantize.ts";
import { printReport } from "../run/report.ts";
import { inMemory, type Stage, stage } from "../stages/job.ts";
import { propagate } from "../stages/propagate.ts";

/** Per-channel max |x| of each block's (quantized-chain) input, and its worst channels. */
export function inputOutliers(top = 5): Stage {
  return stage("input-outliers", (job) => {
    const x = inMemory(job.qIn, "input-outliers");
    const d = x.shape[2];
    const max = new Float64Array(d);
    for (let i = 0; i < x.data.length; i++) {
      const c = i % d, v = Math.abs(x.data[i]);
      if (v > max[c]) max[c] = v;
    }
    const median = [...max].sort((a, b) => a - b)[d >> 1];
    const worst = [...max.keys()].sort((a, b) => max[b] - max[a]).slice(0, top);
    job.ctx.log(
      `block ${job.index + 1}: input channel max/median ${(max[worst[0]] / median).toFixed(1)}`,
    );
    return Promise.resolve({
      max_over_median: max[worst[0]] / median,
      worst_channels: worst.map((c) => ({ channel: c, max: max[c] })),
    });
  });
}

const USAGE = `usage: deno run -A pipelines/custom_stage.ts [--model DIR] [--out DIR]
  GPTQ W4 (act-order, true-sequential) with an input-outlier stage of our own before it;
  each block's worst input channels go into the report and onto stdout.
  --model DIR          Hugging Face or llama2.c model (default: the tinystories-656k fixture)
  --out DIR            output directory (default: out/custom-stage)`;

async function main(argv: string[], interrupts: Interrupts) {
  const f = parseFlags(argv, {
    model: { type: "string" },
    out: { type: "string" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) return console.log(USAGE);
  const gptq = { bits: 4, groupSize: 0, actOrder: true, staticGroups: false, trueSequential: true };
  const report = await runQuantization({
    interrupts,
    method: "gptq+input-outliers",
    wbits: 4,
    abits: 16,
    groupSize: 0,
    model: (f.model as string | undefined) ?? DEFAULT_MODEL,
    out: (f.out as string | undefined) ?? "out/custom-stage",
    calib: { file: fixtureText("tinystories_train_sample.txt"), nsamples: 128, seed: 0 },
    eval: { files: [fixtureText("tinystories_val.txt")], windows: 64 },
    // Ours, yours, ours: the stream runs them in this order for every block.
    stages: () => [inputOutliers(), gptqStage(gptq), propagate()],
  });
  printReport(report, false);
  for (const r of report.blocks.filter((b) => b.stage === "input-outliers")) {
    console.log(`  block ${r.block}: max/median ${(r.max_over_median as number).toFixed(2)}`);
  }
}

if (import.meta.main) await runMain(main);
