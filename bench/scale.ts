/**
 * Scale: GPTQ W4 g128 on a LLaMA-2-7B-shaped checkpoint (hidden 4096, intermediate 11008, 32
 * layers, 32 heads, bf16, sharded with an index, ~13 GB, made by `fixtures/generate.ts` and
 * cached under the git-ignored `fixtures/generated/`), with 16 × 512 calibration windows and the
 * evaluation on 16 windows of 512, streaming from disk, in a process of its own; then the same
 * run on the 2-layer model of the same width. Reported: wall time per block, peak RSS (goal
 * ≤ 4 GB, and ≤ 1.3× the 2-layer run's), GFLOP/s of the block passes beside the ORT MatMul peak
 * measured in this process, and the dtypes and size of the written model (bf16 where the values
 * are exact in it, else float32). The Llama-3.2-1B-shaped row (vocabulary 128,256, the real
 * Llama 3 tokenizer, the llama3 RoPE, tied embeddings) runs too; a model whose config
 * `refuseUnrunnable` refuses is skipped, saying why.
 * @module
 */
import {
  ensureLlama,
  LLAMA2_7B_SHAPE,
  LLAMA32_1B_SHAPE,
  llamaConfig,
  type LlamaSpec,
} from "../fixtures/generate.ts";
import { fixtureText, PROJECT_ROOT } from "../fixtures/paths.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import { matmul } from "../kernels/matmul.ts";
import { Rng } from "../kernels/tensor.ts";
import { LINEAR_NAMES, linearShape, type ModelConfig, refuseUnrunnable } from "../models/config.ts";
import { dirBytes, runPipelineProcess } from "./memory.ts";
import { writeReadmeSection } from "./readme.ts";
import type { BenchContext, BenchRecord, SummaryRow } from "./types.ts";

/** The scale runs' settings. */
export const SCALE_RUN = {
  wbits: 4,
  groupSize: 128,
  nsamples: 16,
  seqlen: 512,
  evalWindows: 16,
  calib: "tinystories_train_sample.txt",
  eval: "tinystories_val.txt",
} as const;

/** The goals: peak RSS with evaluation on, and its ratio to the 2-layer model of that width. */
export const SCALE_GOALS = { peakRssBytes: 4e9, depthRatio: 1.3 } as const;

/** The models measured. */
export const SCALE_MODELS: { name: string; spec: LlamaSpec }[] = [
  { name: "LLaMA-2-7B-shaped", spec: LLAMA2_7B_SHAPE },
  { name: "Llama-3.2-1B-shaped", spec: LLAMA32_1B_SHAPE },
];

const GiB = 2 ** 30, MiB = 2 ** 20;

/** The best of a few ORT MatMul runs at the block's shapes (m = tokens of a batch). */
async function matmulPeak(ctx: BenchContext, c: ModelConfig): Promise<Record<string, number>> {
  const rng = new Rng(4);
  const out: Record<string, number> = {};
  const shapes: [string, number, number, number][] = [
    ["2048³", 2048, 2048, 2048],
    [`512×${c.hidden}·${c.hidden}×${c.intermediate}`, 512, c.hidden, c.intermediate],
  ];
  for (const [label, m, k, n] of shapes) {
    const a = rng.normalTensor([m, k]), b = rng.normalTensor([k, n]);
    await matmul(ctx.rt, a, b);
    let best = Infinity;
    for (let r = 0; r < 5; r++) {
      const t = performance.now();
      await matmul(ctx.rt, a, b);
      best = Math.min(best, (performance.now() - t) / 1000);
    }
    out[label] = (2 * m * k * n) / best / 1e9;
    ctx.log(`scale: ORT MatMul ${label}: ${out[label].toFixed(1)} GFLOP/s`);
  }
  return out;
}

/** FLOP of one block's output pass over `tokens` tokens in windows of `seqlen`. */
function outputPassFlop(c: ModelConfig, tokens: number, seqlen: number): number {
  let linear = 0;
  for (const n of LINEAR_NAMES) {
    const [o, i] = linearShape(c, n);
    linear += 2 * o * i * tokens;
  }
  // q·kᵀ and p·v over the causal half, per head.
  return linear + 2 * 2 * (tokens * seqlen / 2) * c.heads * c.headDim;
}

/** FLOP of one block's Hessian pass: the forward up to down_proj's input, and the Gram blocks. */
function hessianPassFlop(c: ModelConfig, tokens: number, seqlen: number): number {
  const down = linearShape(c, "mlp.down_proj");
  const forward = outputPassFlop(c, tokens, seqlen) - 2 * down[0] * down[1] * tokens;
  const widths = [c.hidden, c.heads * c.headDim, c.hidden, c.intermediate];
  return forward + widths.reduce((s, w) => s + w * w * tokens, 0); // upper blocks ≈ half of 2·w²
}

/** Tensors and bytes per dtype of a written model. */
async function outputDtypes(
  dir: string,
): Promise<Record<string, { tensors: number; bytes: number }>> {
  const out: Record<string, { tensors: number; bytes: number }> = {};
  for await (const e of Deno.readDir(dir)) {
    if (!e.name.endsWith(".safetensors") || e.name === "learned.safetensors") continue;
    const r = await SafetensorsReader.open(`${dir}/${e.name}`);
    try {
      for (const n of r.names()) {
        const info = r.info(n);
        const d = out[info.dtype] ??= { tensors: 0, bytes: 0 };
        d.tensors++;
        d.bytes += info.byteLength;
      }
    } finally {
      r.close();
    }
  }
  return out;
}

/** One model's measurement (or why it was skipped). */
export interface ScalePoint {
  model: string;
  skipped?: string;
  config?: Record<string, number | boolean>;
  model_bytes?: number;
  peak_rss_bytes?: number;
  seconds?: number;
  /** Wall seconds per block (all its stages). */
  block_seconds?: number[];
  block_peak_rss_mib?: number[];
  /** The same run on 2 layers of the same width. */
  two_layers?: { peak_rss_bytes: number; seconds: number };
  depth_ratio?: number;
  gflops?: { output_passes: number; hessian_passes: number };
  timing?: Record<string, number>;
  eval?: Record<string, { fp: number; quant: number }>;
  output?: { bytes: number; dtypes: Record<string, { tensors: number; bytes: number }> };
  loadavg?: number[];
}

async function runOne(
  ctx: BenchContext,
  name: string,
  spec: LlamaSpec,
  tmp: string,
): Promise<ScalePoint> {
  const c = await llamaConfig(spec);
  try {
    refuseUnrunnable(c, `${name} config`);
  } catch (e) {
    return { model: name, skipped: (e as Error).message };
  }
  const s = SCALE_RUN;
  const args = (dir: string, out: string) => [
    ...["--model", dir, "--out", out, "--wbits", `${s.wbits}`, "--group-size", `${s.groupSize}`],
    ...["--nsamples", `${s.nsamples}`, "--seqlen", `${s.seqlen}`],
    ...["--calib", fixtureText(s.calib), "--eval", fixtureText(s.eval)],
    ...["--eval-windows", `${s.evalWindows}`],
  ];
  const twoDir = await ensureLlama({ ...spec, layers: 2 }, ctx.log);
  ctx.log(`scale: ${name}, 2 layers (own process)`);
  const two = await runPipelineProcess("gptq", args(twoDir, `${tmp}/two`), { log: ctx.log });
  await Deno.remove(`${tmp}/two`, { recursive: true });

  const dir = await ensureLlama(spec, ctx.log);
  ctx.log(`scale: ${name}, ${spec.layers} layers (own process)`);
  const load = Deno.loadavg();
  const run = await runPipelineProcess("gptq", args(dir, `${tmp}/full`), { log: ctx.log });
  const r = run.report;
  const output = {
    bytes: await dirBytes(`${tmp}/full`),
    dtypes: await outputDtypes(`${tmp}/full`),
  };
  await Deno.remove(`${tmp}/full`, { recursive: true });
  const blockSeconds = Array.from({ length: c.layers }, () => 0);
  for (const b of r.blocks) blockSeconds[b.block] += b.seconds;
  const tokens = s.nsamples * s.seqlen;
  const gflops = {
    output_passes: (c.layers * outputPassFlop(c, tokens, s.seqlen)) / r.timing.stage_propagate /
      1e9,
    hessian_passes: (c.layers * hessianPassFlop(c, tokens, s.seqlen)) / r.timing.hessian_seconds /
      1e9,
  };
  return {
    model: name,
    config: {
      hidden: c.hidden,
      intermediate: c.intermediate,
      layers: c.layers,
      heads: c.heads,
      kv_heads: c.kvHeads,
      vocab: c.vocab,
    },
    model_bytes: await dirBytes(dir),
    peak_rss_bytes: r.peak_rss_bytes,
    seconds: r.seconds,
    block_seconds: blockSeconds.map((v) => Number(v.toFixed(2))),
    block_peak_rss_mib: run.block_peak_rss.map((v) => Math.round(v / MiB)),
    two_layers: { peak_rss_bytes: two.report.peak_rss_bytes, seconds: two.report.seconds },
    depth_ratio: r.peak_rss_bytes / two.report.peak_rss_bytes,
    gflops,
    timing: r.timing,
    eval: r.eval,
    output,
    loadavg: load,
  };
}

function markdown(points: ScalePoint[], peak: Record<string, number>): string {
  const s = SCALE_RUN;
  const lines = [
    `GPTQ W${s.wbits} g${s.groupSize}, ${s.nsamples} × ${s.seqlen} calibration windows ` +
    `(${s.calib}), evaluation on ${s.evalWindows} windows of ${s.seqlen} (${s.eval}), streaming ` +
    "from disk, each run in a process of its own on this 2-core machine. ORT MatMul in the same " +
    `run: ${Object.entries(peak).map(([k, v]) => `${k} ${v.toFixed(0)} GFLOP/s`).join(", ")}.`,
    "",
    "| model | on disk | peak RSS | 2 layers | ratio | s / block | output / Hessian passes, GFLOP/s | total |",
    "|---|---:|---:|---:|---:|---:|---|---:|",
  ];
  const notes: string[] = [];
  for (const p of points) {
    if (p.skipped) {
      lines.push(`| ${p.model} | — | — | — | — | — | — | skipped |`);
      notes.push(`${p.model}: skipped — ${p.skipped}.`);
      continue;
    }
    const perBlock = p.block_seconds!.reduce((a, b) => a + b, 0) / p.block_seconds!.length;
    lines.push(
      `| ${p.model} | ${(p.model_bytes! / GiB).toFixed(1)} GiB | ` +
        `${(p.peak_rss_bytes! / GiB).toFixed(2)} GiB | ` +
        `${(p.two_layers!.peak_rss_bytes / GiB).toFixed(2)} GiB | ${p.depth_ratio!.toFixed(2)} | ` +
        `${perBlock.toFixed(1)} | ${p.gflops!.output_passes.toFixed(0)} / ` +
        `${p.gflops!.hessian_passes.toFixed(0)} | ${(p.seconds! / 60).toFixed(1)} min |`,
    );
    const d = p.output!.dtypes;
    const parts = Object.entries(d).map(([k, v]) =>
      `${v.tensors} tensors in ${k} (${(v.bytes / GiB).toFixed(2)} GiB)`
    );
    notes.push(
      `${p.model}: the output (${(p.output!.bytes / GiB).toFixed(1)} GiB, against ` +
        `${(p.model_bytes! / GiB).toFixed(1)} GiB of bf16 input) holds ${parts.join(", ")}: ` +
        "a tensor is written in bf16 only where every value is exactly a bf16 value (the " +
        "embedding, the norms); 4-bit grid values scale·(q − z) are not, with float32 scales, " +
        "so the quantized linears stay float32. Goals: peak RSS ≤ 4 GB " +
        `(${p.peak_rss_bytes! <= SCALE_GOALS.peakRssBytes ? "met" : "missed"}) and ≤ 1.3× the ` +
        `2-layer run (${p.depth_ratio! <= SCALE_GOALS.depthRatio ? "met" : "missed"}); load ` +
        `average ${p.loadavg![0].toFixed(1)} at the start.`,
    );
  }
  return [...lines, "", ...notes.map((n) => `- ${n}`)].join("\n");
}

/**
 * The measured points of the last results file, by model: a run limited to some models
 * (`QLLM_SCALE_MODELS=LLaMA-2-7B`, name prefixes) keeps the others' rows (each run takes hours).
 */
async function earlierPoints(): Promise<Map<string, ScalePoint>> {
  const out = new Map<string, ScalePoint>();
  try {
    const json = JSON.parse(await Deno.readTextFile(`${PROJECT_ROOT}/bench/results/scale.json`));
    for (const p of json.benchmarks?.scale?.result?.points ?? []) {
      if (!p.skipped) out.set(p.model, p);
    }
  } catch { /* no results yet */ }
  return out;
}

/** Runs the scale benchmark. */
export async function benchScale(ctx: BenchContext): Promise<BenchRecord> {
  const tmp = await Deno.makeTempDir({ prefix: "qllm-bench-scale-" });
  try {
    const peak = await matmulPeak(ctx, await llamaConfig(LLAMA2_7B_SHAPE));
    const only = Deno.env.get("QLLM_SCALE_MODELS")?.split(",").map((s) => s.trim());
    const earlier = await earlierPoints();
    const points: ScalePoint[] = [];
    for (const m of SCALE_MODELS) {
      const kept = earlier.get(m.name);
      if (!only || only.some((o) => m.name.startsWith(o))) {
        points.push(await runOne(ctx, m.name, m.spec, tmp));
      } else if (kept) {
        ctx.log(`scale: ${m.name}: kept from the results file (QLLM_SCALE_MODELS)`);
        points.push(kept);
      } else {
        points.push({ model: m.name, skipped: "not measured yet (QLLM_SCALE_MODELS left it out)" });
      }
    }
    await writeReadmeSection("scale", markdown(points, peak));
    const summary: SummaryRow[] = points.map((p) =>
      p.skipped ? { label: p.model, value: "skipped", note: p.skipped } : {
        label: `${p.model} GPTQ W4 g128 peak RSS`,
        value: Number((p.peak_rss_bytes! / GiB).toFixed(2)),
        unit: "GiB",
        note: `${(p.seconds! / 60).toFixed(1)} min; 2 layers ${
          (p.two_layers!.peak_rss_bytes / GiB).toFixed(2)
        } GiB (×${p.depth_ratio!.toFixed(2)}); passes ${
          p.gflops!.output_passes.toFixed(0)
        } GFLOP/s`,
      }
    );
    return { settings: SCALE_RUN, goals: SCALE_GOALS, matmul_gflops: peak, points, summary };
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}
