/**
 * QLLM ablation: RTN, channel reassembly only (`--no-lora`), low-rank compensation only
 * (`--no-reassembly`), both (QLLM), and OmniQuant (`--lwc --let`), at W4A4, W4A8 and W6A6
 * (weights per output channel, activations per token), on tinystories-656k and its
 * outlier-injected variant (s = 50 on 2 % of channels); PROTOCOL.md calibration (128 × 256,
 * seed 0) and evaluation (first 256 validation windows). Each cell is the method's command with
 * those flags. Writes the table into README.md. Epochs per block: `BENCH_EPOCHS` (default 5).
 * @module
 */
import type { Method } from "../methods/method.ts";
import { OMNIQUANT } from "../methods/omniquant.ts";
import { QLLM } from "../methods/qllm.ts";
import { RTN } from "../methods/rtn.ts";
import { RunCache } from "../run/quantize.ts";
import { fixtureAndOutliers } from "./models.ts";
import { writeReadmeSection } from "./readme.ts";
import { markdownTable, runRow, VAL } from "./rows.ts";
import type { BenchContext, BenchRecord } from "./types.ts";

const CONFIGS: [number, number][] = [[4, 4], [4, 8], [6, 6]];
/** Variant, method, its flags, and whether it trains (takes `--epochs`). */
const VARIANTS: [string, Method, string[], boolean][] = [
  ["rtn", RTN, [], false],
  ["reassembly", QLLM, ["--no-lora"], false],
  ["lora", QLLM, ["--no-reassembly"], true],
  ["qllm", QLLM, [], true],
  ["omniquant", OMNIQUANT, ["--lwc", "--let"], true],
];

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
        for (const [v, method, extra, trains] of VARIANTS) {
          ctx.log(`${label}: ${v} w${wbits}a${abits}`);
          const flags = ["--wbits", String(wbits), "--abits", String(abits), ...extra];
          if (trains) flags.push("--epochs", String(epochs));
          const r = await runRow({ model: path, method, flags, out: `${tmp}/${v}`, cache });
          rows.push({
            model: label,
            variant: v,
            wbits,
            abits,
            flags,
            fp: r.eval[VAL].fp,
            ppl: r.eval[VAL].quant,
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
  const cell = (m: string, v: string, w: number, a: number) => {
    const r = rows.find((r) => r.model === m && r.variant === v && r.wbits === w && r.abits === a);
    return r ? (r.ppl as number).toFixed(3) : "";
  };
  return [
    `Perplexity on tinystories_val.txt (first 256 windows of 256); weights per channel, ` +
    `activations per token; ${epochs} epochs per block for the learned variants, 128 × 256 ` +
    `calibration, channel ratio 0.2, LoRA rank 4. Each cell is ` +
    `\`deno run -A pipelines/METHOD.ts --wbits W --abits A\` with: ` +
    VARIANTS.map(([v, m, f, trains]) =>
      `${v} \`${m.name}${f.length ? " " + f.join(" ") : ""}${trains ? ` --epochs ${epochs}` : ""}\``
    ).join(", ") + ".",
    "",
    markdownTable(
      ["model", "config", ...VARIANTS.map(([v]) => v)],
      models.flatMap((m) =>
        CONFIGS.map(([w, a]) => [m, `W${w}A${a}`, ...VARIANTS.map(([v]) => cell(m, v, w, a))])
      ),
    ),
  ].join("\n");
}
