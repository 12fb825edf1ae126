/**
 * The learned methods against RTN (issue: OmniQuant / ABQ-LLM acceptance): W4A16, W3A16, W4A8,
 * W6A6 and W4A4 (weights per output channel, activations per token) for RTN, OmniQuant (LWC +
 * LET) and ABQ-LLM (LWC + LET + up→down + compensation + its loss), on tinystories-656k and its
 * outlier-injected variant (s = 50 on 2 % of channels), with PROTOCOL.md's calibration (128 × 256,
 * seed 0) and evaluation (first 256 validation windows). Writes the table into README.md.
 * Epochs per block: `BENCH_EPOCHS` (default 10; the papers' scripts use 20).
 * @module
 */
import { ABQ_POINTS, OMNIQUANT_POINTS } from "../algorithms/let.ts";
import { fixtureText } from "../fixtures/paths.ts";
import { RunCache, runQuantization } from "../pipelines/quantize.ts";
import { FIRST_AND_LAST, omniquantMethod } from "../stages/omniquant.ts";
import { capture, propagate } from "../stages/propagate.ts";
import { reconstruct } from "../stages/reconstruct.ts";
import { rtn } from "../stages/weight_quant.ts";
import { fixtureAndOutliers } from "./models.ts";
import { writeReadmeSection } from "./readme.ts";
import type { BenchContext, BenchRecord } from "./types.ts";

const CONFIGS: [number, number][] = [[4, 16], [3, 16], [4, 8], [6, 6], [4, 4]];
const METHODS = ["rtn", "omniquant", "abq"] as const;

/** Runs the table. */
export async function benchLearned(ctx: BenchContext): Promise<BenchRecord> {
  const epochs = Number(Deno.env.get("BENCH_EPOCHS") ?? 10);
  const models = await fixtureAndOutliers();
  const tmp = await Deno.makeTempDir();
  const rows: Record<string, unknown>[] = [];
  try {
    for (const [label, path] of models) {
      const cache = new RunCache();
      for (const [wbits, abits] of CONFIGS) {
        for (const method of METHODS) {
          ctx.log(`${label}: ${method} w${wbits}a${abits}`);
          const omni = {
            wbits,
            groupSize: 0,
            lwc: true,
            letPoints: method === "abq" ? ABQ_POINTS : OMNIQUANT_POINTS,
            compensationBlocks: method === "abq" ? FIRST_AND_LAST : undefined,
          };
          const learned = method === "rtn" ? null : {
            ...omniquantMethod(omni, method),
            loss: method === "abq" ? "abq" as const : "mse" as const,
          };
          const r = await runQuantization({
            method,
            wbits,
            abits,
            groupSize: 0,
            model: path,
            out: `${tmp}/${method}`,
            teacher: method !== "rtn",
            calib: { file: fixtureText("tinystories_train_sample.txt"), nsamples: 128, seed: 0 },
            eval: { files: [fixtureText("tinystories_val.txt")], windows: 256 },
            stages: () =>
              learned
                ? [capture(), reconstruct(learned, { epochs }), propagate()]
                : [rtn({ bits: wbits, groupSize: 0 }), propagate()],
            quiet: true,
            cache,
          });
          const e = r.eval["tinystories_val.txt"];
          const train = r.blocks.filter((b) => b.stage === method);
          rows.push({
            model: label,
            method,
            wbits,
            abits,
            fp: e.fp,
            ppl: e.quant,
            seconds: r.seconds,
            train_seconds_per_block: train.map((b) => b.train_seconds),
            loss_first_last: train.map((b) => [b.first_loss, b.last_loss]),
          });
        }
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  const markdown = table(rows, epochs);
  await writeReadmeSection("learned", markdown);
  return {
    epochs,
    rows,
    markdown,
    summary: rows.map((r) => ({
      label: `${r.model} ${r.method} w${r.wbits}a${r.abits}`,
      value: (r.ppl as number).toFixed(3),
      unit: "ppl",
    })),
  };
}

function table(rows: Record<string, unknown>[], epochs: number): string {
  const models = [...new Set(rows.map((r) => r.model as string))];
  const head = ["config", ...models.flatMap((m) => METHODS.map((x) => `${m}: ${x}`))];
  const lines = [
    `Perplexity on tinystories_val.txt (first 256 windows of 256), weights per channel, ` +
    `activations per token; ${epochs} epochs per block, 128 × 256 calibration. ` +
    `Full precision: ${
      models.map((m) => `${m} ${(rows.find((r) => r.model === m)!.fp as number).toFixed(3)}`).join(
        ", ",
      )
    }.`,
    "",
    `| ${head.join(" | ")} |`,
    `|${head.map(() => "---").join("|")}|`,
  ];
  for (const [w, a] of CONFIGS) {
    const cells = models.flatMap((m) =>
      METHODS.map((x) => {
        const r = rows.find((r) =>
          r.model === m && r.method === x && r.wbits === w && r.abits === a
        );
        return r ? (r.ppl as number).toFixed(3) : "";
      })
    );
    lines.push(`| W${w}A${a} | ${cells.join(" | ")} |`);
  }
  return lines.join("\n");
}
