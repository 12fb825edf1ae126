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
import type { Method } from "../methods/method.ts";
import { OMNIQUANT } from "../methods/omniquant.ts";
import { RTN } from "../methods/rtn.ts";
import { RunCache } from "../run/quantize.ts";
import { fixtureAndOutliers } from "./models.ts";
import { writeReadmeSection } from "./readme.ts";
import { markdownTable, runRow, VAL } from "./rows.ts";
import type { BenchContext, BenchRecord } from "./types.ts";

const CONFIGS: [number, number][] = [[4, 16], [3, 16], [4, 8], [6, 6], [4, 4]];
const METHODS: [string, Method, string[]][] = [
  ["rtn", RTN, []],
  ["omniquant", OMNIQUANT, ["--lwc", "--let"]],
  ["abq", ABQ, ["--lwc", "--let"]],
];

/** Runs the table. */
export async function benchLearned(ctx: BenchContext): Promise<BenchRecord> {
  const epochs = Number(Deno.env.get("BENCH_EPOCHS") ?? 5);
  const models = await fixtureAndOutliers();
  const tmp = await Deno.makeTempDir();
  const rows: Record<string, unknown>[] = [];
  try {
    for (const [label, path] of models) {
      const cache = new RunCache();
      for (const [wbits, abits] of CONFIGS) {
        for (const [name, method, extra] of METHODS) {
          ctx.log(`${label}: ${name} w${wbits}a${abits}`);
          const flags = ["--wbits", String(wbits), "--abits", String(abits), ...extra];
          if (method !== RTN) flags.push("--epochs", String(epochs));
          const r = await runRow({ model: path, method, flags, out: `${tmp}/${name}`, cache });
          const train = r.blocks.filter((b) => b.stage === name);
          rows.push({
            model: label,
            method: name,
            wbits,
            abits,
            flags,
            fp: r.eval[VAL].fp,
            ppl: r.eval[VAL].quant,
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
  const fp = models.map((m) =>
    `${m} ${(rows.find((r) => r.model === m)!.fp as number).toFixed(3)}`
  );
  const cell = (m: string, x: string, w: number, a: number) => {
    const r = rows.find((r) => r.model === m && r.method === x && r.wbits === w && r.abits === a);
    return r ? (r.ppl as number).toFixed(3) : "";
  };
  return [
    `Perplexity on tinystories_val.txt (first 256 windows of 256), weights per channel, ` +
    `activations per token; ${epochs} epochs per block, 128 × 256 calibration. ` +
    `Full precision: ${fp.join(", ")}. Each cell is ` +
    `\`deno run -A pipelines/METHOD.ts --wbits W --abits A\`, plus ` +
    `\`--lwc --let --epochs ${epochs}\` for omniquant and abq.`,
    "",
    markdownTable(
      ["config", ...models.flatMap((m) => METHODS.map(([x]) => `${m}: ${x}`))],
      CONFIGS.map(([w, a]) => [
        `W${w}A${a}`,
        ...models.flatMap((m) => METHODS.map(([x]) => cell(m, x, w, a))),
      ]),
    ),
  ].join("\n");
}
