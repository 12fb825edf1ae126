/**
 * QLLM ablation (issue: QLLM acceptance): RTN, channel reassembly only, low-rank compensation
 * only, both (QLLM), and OmniQuant, at W4A4, W4A8 and W6A6 (weights per output channel,
 * activations per token), on tinystories-656k and its outlier-injected variant (s = 50 on 2 % of
 * channels); PROTOCOL.md calibration (128 × 256, seed 0) and evaluation (first 256 validation
 * windows). Writes the table into README.md. Epochs per block: `BENCH_EPOCHS` (default 5).
 * @module
 */
import { OMNIQUANT_POINTS } from "../algorithms/let.ts";
import { fixtureText } from "../fixtures/paths.ts";
import { linearDecay } from "../kernels/optim.ts";
import { RunCache, runQuantization } from "../pipelines/quantize.ts";
import type { Stage } from "../stages/job.ts";
import { loraMethod } from "../stages/lora.ts";
import { omniquantMethod } from "../stages/omniquant.ts";
import { capture, propagate } from "../stages/propagate.ts";
import { reassemble } from "../stages/reassemble.ts";
import { reconstruct } from "../stages/reconstruct.ts";
import { rtn } from "../stages/weight_quant.ts";
import { fixtureAndOutliers } from "./models.ts";
import { writeReadmeSection } from "./readme.ts";
import type { BenchContext, BenchRecord } from "./types.ts";

const CONFIGS: [number, number][] = [[4, 4], [4, 8], [6, 6]];
const VARIANTS = ["rtn", "reassembly", "lora", "qllm", "omniquant"] as const;
type Variant = (typeof VARIANTS)[number];

function stagesFor(v: Variant, wbits: number, abits: number, epochs: number): Stage[] {
  const rtnStage = () => rtn({ bits: wbits, groupSize: 0 });
  const lora = () =>
    reconstruct(loraMethod({ wbits, groupSize: 0 }), { epochs, schedule: linearDecay() });
  const re = () => reassemble({ channelRatio: 0.2, wbits, abits, groupSize: 0 });
  switch (v) {
    case "rtn":
      return [rtnStage(), propagate()];
    case "reassembly":
      return [capture(), re(), rtnStage(), propagate()];
    case "lora":
      return [capture(), lora(), propagate()];
    case "qllm":
      return [capture(), re(), lora(), propagate()];
    case "omniquant":
      return [
        capture(),
        reconstruct(
          omniquantMethod({ wbits, groupSize: 0, lwc: true, letPoints: OMNIQUANT_POINTS }),
          { epochs },
        ),
        propagate(),
      ];
  }
}

/** Runs the ablation. */
export async function benchQllm(ctx: BenchContext): Promise<BenchRecord> {
  const epochs = Number(Deno.env.get("BENCH_EPOCHS") ?? 5);
  const models = await fixtureAndOutliers();
  const tmp = await Deno.makeTempDir();
  const rows: Record<string, unknown>[] = [];
  try {
    for (const [label, path] of models) {
      const cache = new RunCache();
      for (const [wbits, abits] of CONFIGS) {
        for (const v of VARIANTS) {
          ctx.log(`${label}: ${v} w${wbits}a${abits}`);
          const r = await runQuantization({
            method: v,
            wbits,
            abits,
            groupSize: 0,
            model: path,
            out: `${tmp}/${v}`,
            teacher: v !== "rtn",
            calib: { file: fixtureText("tinystories_train_sample.txt"), nsamples: 128, seed: 0 },
            eval: { files: [fixtureText("tinystories_val.txt")], windows: 256 },
            stages: () => stagesFor(v, wbits, abits, epochs),
            quiet: true,
            cache,
          });
          const e = r.eval["tinystories_val.txt"];
          rows.push({
            model: label,
            variant: v,
            wbits,
            abits,
            fp: e.fp,
            ppl: e.quant,
            seconds: r.seconds,
            reassembly: r.blocks.filter((b) => b.stage === "reassemble").map((b) => b.points),
          });
        }
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  const markdown = table(rows, epochs);
  await writeReadmeSection("qllm", markdown);
  return {
    epochs,
    rows,
    markdown,
    summary: rows.map((r) => ({
      label: `${r.model} ${r.variant} w${r.wbits}a${r.abits}`,
      value: (r.ppl as number).toFixed(3),
      unit: "ppl",
    })),
  };
}

function table(rows: Record<string, unknown>[], epochs: number): string {
  const models = [...new Set(rows.map((r) => r.model as string))];
  const lines = [
    `Perplexity on tinystories_val.txt (first 256 windows of 256); weights per channel, ` +
    `activations per token; ${epochs} epochs per block for the learned variants, 128 × 256 ` +
    `calibration, channel ratio 0.2, LoRA rank 4.`,
    "",
    `| model | config | ${VARIANTS.join(" | ")} |`,
    `|---|---|${VARIANTS.map(() => "---").join("|")}|`,
  ];
  for (const m of models) {
    for (const [w, a] of CONFIGS) {
      const cells = VARIANTS.map((v) => {
        const r = rows.find((r) =>
          r.model === m && r.variant === v && r.wbits === w && r.abits === a
        );
        return r ? (r.ppl as number).toFixed(3) : "";
      });
      lines.push(`| ${m} | W${w}A${a} | ${cells.join(" | ")} |`);
    }
  }
  return lines.join("\n");
}
