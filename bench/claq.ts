/**
 * CLAQ at fractional bits beside the uniform baselines, on both fixtures, from one run (same
 * calibration: 128 × 256 windows of tinystories_train_sample.txt, seed 0; perplexity on the first
 * 256 windows of tinystories_val.txt, PROTOCOL.md §8): CLAQ at 2.1 and 3.12 average bits
 * (`--target-bits 2.1 | 3.12`, base 2 bits as the reference), each without and with the dynamic outlier
 * reservation (`--outlier-ratio dynamic`); GPTQ W2/W3 per channel and g32, both with act-order;
 * RTN W2/W3 per channel and g32. Bits per weight are measured: every stored index, scale, zero
 * point, g_idx, codebook and outlier counted. The table is also written as markdown (field
 * `markdown`) for the README.
 * @module
 */
import { fixtureModel } from "../fixtures/paths.ts";
import { openModel } from "../formats/open.ts";
import { CLAQ } from "../methods/claq.ts";
import { GPTQ } from "../methods/gptq.ts";
import type { Method } from "../methods/method.ts";
import { RTN } from "../methods/rtn.ts";
import { type LinearName, linearShape, type ModelConfig } from "../models/config.ts";
import { RunCache } from "../run/quantize.ts";
import type { QuantizeReport } from "../run/report.ts";
import { writeReadmeSection } from "./readme.ts";
import { runRow, VAL } from "./rows.ts";
import type { BenchContext, BenchRecord, SummaryRow } from "./types.ts";

/** The fixtures measured. */
export const CLAQ_MODELS = ["tinystories-656k", "stories260k"] as const;

/** One configuration of the table: a method and its command-line flags. */
export interface ClaqConfig {
  /** Row label, e.g. `claq 2.1 dyn`, `gptq w2 g32 ao`. */
  name: string;
  method: Method;
  flags: string[];
}

function uniform(method: "rtn" | "gptq", bits: number, groupSize: number): ClaqConfig {
  const g = groupSize ? `g${groupSize}` : "pc";
  // stories260k's 172-wide down_proj takes a short last group of 32, as in the reference.
  const flags = ["--wbits", String(bits), "--allow-partial-group"];
  if (groupSize) flags.push("--group-size", String(groupSize));
  return method === "rtn"
    ? { name: `rtn w${bits} ${g}`, method: RTN, flags }
    : { name: `gptq w${bits} ${g} ao`, method: GPTQ, flags: [...flags, "--act-order"] };
}

function claqConfig(target: number, dynamic: boolean): ClaqConfig {
  return {
    name: `claq ${target}${dynamic ? " dyn" : ""}`,
    method: CLAQ,
    flags: ["--target-bits", String(target), ...(dynamic ? ["--outlier-ratio", "dynamic"] : [])],
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
    const r = await runRow({
      model: fixtureModel(model),
      method: c.method,
      flags: c.flags,
      out: `${tmp}/${model}-${c.name.replaceAll(" ", "_")}`,
      cache,
    });
    points.push({
      model,
      config: c.name,
      method: c.method.name,
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
      "groups of 32 columns, `ao` act-order, `dyn` dynamic outlier reservation. Each row is " +
      "the command `deno run -A pipelines/METHOD.ts FLAGS`:",
    "",
    ...claqConfigs().map((c) => `- ${c.name}: \`${c.method.name} ${c.flags.join(" ")}\``),
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
