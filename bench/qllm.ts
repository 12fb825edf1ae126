/**
 * QLLM ablation: RTN, channel reassembly only (`--no-lora`), low-rank compensation only
 * (`--no-reassembly`), both (QLLM), and OmniQuant (`--lwc --let`), at W4A4, W4A8 and W6A6
 * (weights per output channel, activations per token), on tinystories-656k and its
 * outlier-injected variant (s = 50 on 2 % of channels); PROTOCOL.md calibration (128 × 256,
 * seed 0) and evaluation (first 256 validation windows). Each cell is the method's command with
 * those flags. Writes the table into README.md. Epochs per block: `BENCH_EPOCHS` (default 5).
 * @module
 */
import { OMNIQUANT } from "../methods/omniquant.ts";
import { QLLM } from "../methods/qllm.ts";
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

const CONFIGS: [number, number][] = [[4, 4], [4, 8], [6, 6]];
const VARIANTS: Variant[] = [
  { name: "rtn", method: RTN, flags: [], trains: false },
  { name: "reassembly", method: QLLM, flags: ["--no-lora"], trains: false },
  { name: "lora", method: QLLM, flags: ["--no-reassembly"], trains: true },
  { name: "qllm", method: QLLM, flags: [], trains: true },
  { name: "omniquant", method: OMNIQUANT, flags: ["--lwc", "--let"], trains: true },
];

/** Runs the ablation. */
export async function benchQllm(ctx: BenchContext): Promise<BenchRecord> {
  const epochs = Number(Deno.env.get("BENCH_EPOCHS") ?? 5);
  const grid = await runGrid(ctx.log, await fixtureAndOutliers(), CONFIGS, VARIANTS, epochs);
  const rows = grid.map(({ report, ...r }) => ({
    ...r,
    reassembly: report.blocks.filter((b) => b.stage === "reassemble").map((b) => b.points),
  }));
  const markdown = table(grid, epochs);
  await writeReadmeSection("qllm", markdown);
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
  return [
    `Perplexity on tinystories_val.txt (first 256 windows of 256); weights per channel, ` +
    `activations per token; ${epochs} epochs per block for the learned variants, 128 × 256 ` +
    `calibration, channel ratio 0.2, LoRA rank 4. Each cell is ` +
    `\`deno run -A pipelines/METHOD.ts --wbits W --abits A\` with: ` +
    `${variantCommands(VARIANTS, epochs)}.`,
    "",
    markdownTable(
      ["model", "config", ...VARIANTS.map((v) => v.name)],
      models.flatMap((m) =>
        CONFIGS.map((
          [w, a],
        ) => [m, `W${w}A${a}`, ...VARIANTS.map((v) => cell(rows, m, v.name, w, a))])
      ),
    ),
  ].join("\n");
}
