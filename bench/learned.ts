/**
 * The learned methods against RTN: W4A16, W3A16, W4A8, W6A6 and W4A4 (weights per output
 * channel, activations per token) for RTN, OmniQuant (`--lwc --let`) and ABQ-LLM (`--lwc --let`,
 * with its up→down pair, compensation and loss), on tinystories-656k and its outlier-injected
 * variant (s = 50 on 2 % of channels), with PROTOCOL.md's calibration and evaluation. Each cell is
 * the method's command with those flags. Writes the table into README.md.
 * Epochs per block: `BENCH_EPOCHS` (default 5, the README table's; the papers' scripts use 20).
 * @module
 */
import { ABQ } from "../methods/abq.ts";
import { OMNIQUANT } from "../methods/omniquant.ts";
import { RTN } from "../methods/rtn.ts";
import { fixtureAndOutliers } from "./models.ts";
import { writeReadmeSection } from "./readme.ts";
import {
  cell,
  type GridRow,
  markdownTable,
  runGrid,
  type Variant,
  variantCommands,
} from "./rows.ts";
import type { BenchContext, BenchRecord } from "./types.ts";

const CONFIGS: [number, number][] = [[4, 16], [3, 16], [4, 8], [6, 6], [4, 4]];
const VARIANTS: Variant[] = [
  { name: "rtn", method: RTN, flags: [], trains: false },
  { name: "omniquant", method: OMNIQUANT, flags: ["--lwc", "--let"], trains: true },
  { name: "abq", method: ABQ, flags: ["--lwc", "--let"], trains: true },
];

/** Runs the table. */
export async function benchLearned(ctx: BenchContext): Promise<BenchRecord> {
  const epochs = Number(Deno.env.get("BENCH_EPOCHS") ?? 5);
  const grid = await runGrid(ctx.log, await fixtureAndOutliers(), CONFIGS, VARIANTS, epochs);
  const rows = grid.map(({ report, ...r }) => {
    const train = report.blocks.filter((b) => b.stage === r.variant);
    return {
      ...r,
      train_seconds_per_block: train.map((b) => b.train_seconds),
      loss_first_last: train.map((b) => [b.first_loss, b.last_loss]),
    };
  });
  const markdown = table(grid, epochs);
  await writeReadmeSection("learned", markdown);
  return {
    epochs,
    rows,
    markdown,
    summary: rows.map((r) => ({
      label: `${r.model} ${r.variant} w${r.wbits}a${r.abits}`,
      value: r.ppl.toFixed(3),
      unit: "ppl",
    })),
  };
}

function table(rows: GridRow[], epochs: number): string {
  const models = [...new Set(rows.map((r) => r.model))];
  const fp = models.map((m) => `${m} ${rows.find((r) => r.model === m)!.fp.toFixed(3)}`);
  return [
    `Perplexity on tinystories_val.txt (first 256 windows of 256), weights per channel, ` +
    `activations per token; ${epochs} epochs per block, 128 × 256 calibration. ` +
    `Full precision: ${fp.join(", ")}. Each cell is ` +
    `\`deno run -A pipelines/METHOD.ts --wbits W --abits A\` with: ` +
    `${variantCommands(VARIANTS, epochs)}.`,
    "",
    markdownTable(
      ["config", ...models.flatMap((m) => VARIANTS.map((v) => `${m}: ${v.name}`))],
      CONFIGS.map(([w, a]) => [
        `W${w}A${a}`,
        ...models.flatMap((m) => VARIANTS.map((v) => cell(rows, m, v.name, w, a))),
      ]),
    ),
  ].join("\n");
}
