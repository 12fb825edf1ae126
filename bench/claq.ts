/**
 * CLAQ at fractional bits beside the uniform baselines, on both fixtures, from one run (same
 * calibration: 128 × 256 windows of tinystories_train_sample.txt, seed 0; perplexity on the first
 * 256 windows of tinystories_val.txt, PROTOCOL.md §8): CLAQ with base 2 bits at 2.1 and 3.12
 * average bits (`--wbits 2 --target-bits 2.1 | 3.12`), each without and with the dynamic outlier
 * reservation (`--outlier-ratio dynamic`); GPTQ W2/W3 per channel and g32, both with act-order;
 * RTN W2/W3 per channel and g32. Bits per weight are measured: every stored index, scale, zero
 * point, g_idx, codebook and outlier counted. The table is also written as markdown (field
 * `markdown`) for the README.
 * @module
 */
import { CLAQ_DYNAMIC_OUTLIERS } from "../algorithms/claq.ts";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import { type LinearName, linearShape, type ModelConfig } from "../models/config.ts";
import { openModel } from "../models/model.ts";
import { writeReadmeSection } from "./readme.ts";
import type { QuantizeReport } from "../pipelines/quantize.ts";
import { type QuantizeRun, RunCache, runQuantization } from "../pipelines/quantize.ts";
import type { Stage } from "../stages/job.ts";
import { propagate } from "../stages/propagate.ts";
import { claqStage, gptqStage, rtn } from "../stages/weight_quant.ts";
import type { BenchContext, BenchRecord, SummaryRow } from "./types.ts";

/** The fixtures measured. */
export const CLAQ_MODELS = ["tinystories-656k", "stories260k"] as const;

/** One configuration of the table. */
export interface ClaqConfig {
  method: "rtn" | "gptq" | "claq";
  /** Row label, e.g. `claq 2.1 dyn`, `gptq w2 g32 ao`. */
  name: string;
  /** Nominal bits for the report (CLAQ: the target average). */
  wbits: number;
  groupSize: number;
  stages: () => Stage[];
}

function uniform(method: "rtn" | "gptq", bits: number, groupSize: number): ClaqConfig {
  const g = groupSize ? `g${groupSize}` : "pc";
  const o = { bits, groupSize, allowPartialGroup: true };
  return method === "rtn"
    ? {
      method,
      name: `rtn w${bits} ${g}`,
      wbits: bits,
      groupSize,
      stages: () => [rtn(o), propagate()],
    }
    : {
      method,
      name: `gptq w${bits} ${g} ao`,
      wbits: bits,
      groupSize,
      stages: () => [
        gptqStage({ ...o, actOrder: true, staticGroups: false, trueSequential: false }),
        propagate(),
      ],
    };
}

function claqConfig(target: number, dynamic: boolean): ClaqConfig {
  const o = {
    bits: 2,
    targetBits: target,
    outlierRatio: dynamic ? CLAQ_DYNAMIC_OUTLIERS : 0,
    actOrder: false,
    trueSequential: false,
  };
  return {
    method: "claq",
    name: `claq ${target}${dynamic ? " dyn" : ""}`,
    wbits: target,
    groupSize: 0,
    stages: () => [claqStage(o), propagate()],
  };
}

/** The rows of the table, in order. */
export function claqConfigs(): ClaqConfig[] {
  return [
    uniform("rtn", 2, 0),
    uniform("rtn", 2, 32),
    uniform("gptq", 2, 0),
    uniform("gptq", 2, 32),
    claqConfig(2.1, false),
    claqConfig(2.1, true),
    uniform("rtn", 3, 0),
    uniform("rtn", 3, 32),
    uniform("gptq", 3, 0),
    uniform("gptq", 3, 32),
    claqConfig(3.12, false),
    claqConfig(3.12, true),
  ];
}

/** One measured cell. */
export interface ClaqPoint {
  model: string;
  config: string;
  method: string;
  bits_per_weight: number;
  /** Mean index bits per weight (CLAQ: per-column bits, the reference's 2.1 / 3.12 figure). */
  index_bits: number;
  ppl: number;
  fp_ppl: number;
  seconds: number;
  quantize_s: number;
  loadavg_1m: number;
}

const VAL = "tinystories_val.txt";

/** Weight-weighted mean of CLAQ's per-layer `average_bits` (index bits, codebooks aside). */
export function indexBits(r: QuantizeReport, c: ModelConfig): number {
  let bits = 0, weights = 0;
  for (const b of r.blocks) {
    for (const [layer, fig] of Object.entries(b.layers ?? {})) {
      if (typeof fig.average_bits !== "number") continue;
      const [rows, cols] = linearShape(c, layer as LinearName);
      bits += fig.average_bits * rows * cols;
      weights += rows * cols;
    }
  }
  return weights ? bits / weights : r.wbits;
}

async function runModel(ctx: BenchContext, model: string, tmp: string): Promise<ClaqPoint[]> {
  const cache = new RunCache();
  const opened = await openModel(fixtureModel(model));
  const config = opened.config;
  opened.close();
  const points: ClaqPoint[] = [];
  for (const c of claqConfigs()) {
    const out = `${tmp}/${model}-${c.name.replaceAll(" ", "_")}`;
    const run: QuantizeRun = {
      method: c.method,
      wbits: c.wbits,
      abits: 16,
      groupSize: c.groupSize,
      model: fixtureModel(model),
      out,
      calib: { file: fixtureText("tinystories_train_sample.txt"), nsamples: 128, seed: 0 },
      eval: { files: [fixtureText(VAL)], windows: 256 },
      stages: () => c.stages(),
      quiet: true,
      cache,
    };
    const r = await runQuantization(run);
    await Deno.remove(out, { recursive: true }).catch(() => {});
    points.push({
      model,
      config: c.name,
      method: c.method,
      bits_per_weight: r.bits_per_weight,
      index_bits: indexBits(r, config),
      ppl: r.eval[VAL].quant,
      fp_ppl: r.eval[VAL].fp,
      seconds: r.seconds,
      quantize_s: r.timing.quantize,
      loadavg_1m: Deno.loadavg()[0],
    });
    ctx.log(
      `claq: ${model} ${c.name}: ${r.bits_per_weight.toFixed(3)} bits/weight ` +
        `(index ${indexBits(r, config).toFixed(3)}), ppl ` +
        `${r.eval[VAL].quant.toFixed(3)} (${r.timing.quantize.toFixed(1)} s)`,
    );
  }
  return points;
}

/**
 * The README table: one row per configuration, bits/weight (all storage counted; the index bits
 * alone in parentheses where they differ) and perplexity per model.
 */
export function claqMarkdown(points: ClaqPoint[]): string {
  const models = [...new Set(points.map((p) => p.model))];
  const header = ["config", ...models.flatMap((m) => [`${m} bits/weight`, `${m} ppl`])];
  const lines = [
    `| ${header.join(" | ")} |`,
    `|---|${models.map(() => "---:|---:|").join("")}`,
    `| fp32 | ${
      models.map((m) => `32 | ${points.find((p) => p.model === m)!.fp_ppl.toFixed(3)}`).join(" | ")
    } |`,
  ];
  for (const config of [...new Set(points.map((p) => p.config))]) {
    const cells = models.map((m) => {
      const p = points.find((q) => q.model === m && q.config === config);
      if (!p) return "– | –";
      const index = p.index_bits === p.bits_per_weight || p.method !== "claq"
        ? ""
        : ` (${p.index_bits.toFixed(2)})`;
      return `${p.bits_per_weight.toFixed(3)}${index} | ${p.ppl.toFixed(3)}`;
    });
    lines.push(`| ${config} | ${cells.join(" | ")} |`);
  }
  lines.push(
    "",
    "Perplexity on the first 256 windows of 256 tokens of tinystories_val.txt; calibration " +
      "128 × 256 from tinystories_train_sample.txt, seed 0. Bits per weight count every stored " +
      "index, fp16 scale, zero point, g_idx (act-order with groups), fp16 codebook and outlier " +
      "(value and row); CLAQ's mean index bits in parentheses. `pc` per output channel, `g32` " +
      "groups of 32 columns, `ao` act-order, `dyn` dynamic outlier reservation.",
  );
  return lines.join("\n");
}

/** Runs the CLAQ benchmark. */
export async function benchClaq(ctx: BenchContext): Promise<BenchRecord> {
  const tmp = await Deno.makeTempDir({ prefix: "qllm-bench-claq-" });
  try {
    const loadavg_start = Deno.loadavg();
    const points: ClaqPoint[] = [];
    for (const m of CLAQ_MODELS) points.push(...await runModel(ctx, m, tmp));
    const summary: SummaryRow[] = points.filter((p) => p.method === "claq").map((p) => ({
      label: `${p.model} ${p.config}`,
      value: Number(p.ppl.toFixed(3)),
      unit: "ppl",
      note: `${p.bits_per_weight.toFixed(3)} bits/weight (index ${p.index_bits.toFixed(2)}), ` +
        `${p.quantize_s.toFixed(1)} s`,
    }));
    await writeReadmeSection("claq", claqMarkdown(points));
    return {
      calibration: { nsamples: 128, seqlen: 256, seed: 0 },
      eval: { file: VAL, windows: 256 },
      loadavg_start,
      loadavg_end: Deno.loadavg(),
      points,
      markdown: claqMarkdown(points),
      summary,
    };
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}
