/**
 * GPTQ wall time.
 *
 * (a) Every GPTQ row of the reference run (`reference/peer_results.json`) on both fixtures,
 * in this process through `runQuantization` with one `RunCache` per model (tokenization and the
 * full-precision evaluation happen once): our stream time (`timing.quantize`: calibration
 * embedding aside, every Hessian pass, GPTQ, the output passes, the block writes) and our total
 * without evaluation (`seconds − eval_fp − eval_quant`: also tokenization on the first row,
 * calibration, opening and writing the model) beside the reference's `quant_s` (PROTOCOL.md §7:
 * embedding the calibration set, all Hessian passes, fasterquant, the output passes), plus the
 * perplexity beside the reference's as a sanity check.
 *
 * (b) GPTQ W4, groups of 128, 128 × 256 calibration windows on a generated LLaMA (hidden 1024,
 * intermediate 2816, 8 layers, 16 heads, 8 KV heads, vocabulary 2048, F32, std 0.02) in its own
 * process (`pipelines/gptq.ts --json`, no evaluation; its 128 MiB of activations go to a file
 * by default): wall time, peak RSS and the split into output passes, Hessian passes (the block
 * graph computes the Gram blocks itself) and the GPTQ column loop; then the same run with the
 * activations in memory (`--keep-activations`).
 * Reference: PyTorch GPTQ 253–263 s, 1.39 GB peak RSS on this machine; goal ≤ 130 s and
 * ≤ 0.5 GB.
 * @module
 */
import { ensureLlama, type LlamaSpec } from "../fixtures/generate.ts";
import { fixtureModel } from "../fixtures/paths.ts";
import { Runtime } from "../kernels/session.ts";
import { Rng } from "../kernels/tensor.ts";
import { CAPTURE_POINTS } from "../models/block_graph.ts";
import { captureBlock, runBlock } from "../models/forward.ts";
import { openModel } from "../formats/open.ts";
import { RunCache } from "../run/quantize.ts";
import { REFERENCE_MODELS, referenceFlags, referenceRuns } from "../fixtures/reference.ts";
import { GPTQ } from "../methods/gptq.ts";
import { runRow } from "./rows.ts";
import { runPipelineProcess } from "./memory.ts";
import { timeAlternating } from "./timing.ts";
import { writeReadmeSection } from "./readme.ts";
import type { BenchContext, BenchRecord, SummaryRow } from "./types.ts";

/** The fixtures of the reference run. */
export const GPTQ_MODELS = REFERENCE_MODELS;

/** One configuration of (a). */
export interface GptqPoint {
  model: string;
  config: string;
  /** Our stream time (`timing.quantize`). */
  quantize_s: number;
  /** Our wall time without evaluation. */
  total_s: number;
  ref_quant_s: number;
  /** ref_quant_s / total_s: above 1 is faster than the reference. */
  speedup_total: number;
  ppl: number;
  ref_ppl: number;
  loadavg_1m: number;
}

/** The generated model of (b). */
export const GPTQ_LLAMA: LlamaSpec = {
  hidden: 1024,
  intermediate: 2816,
  layers: 8,
  heads: 16,
  kvHeads: 8,
  vocab: 2048,
  std: 0.02,
  seed: 0,
};

/** (b)'s reference and goal. */
export const GPTQ_LLAMA_TARGET = {
  ref_s: [253, 263],
  ref_peak_rss_bytes: 1.39e9,
  goal_s: 130,
  goal_peak_rss_bytes: 0.5e9,
};

/** Runs (a) on one fixture. */
async function fixtureRuns(ctx: BenchContext, model: string, tmp: string): Promise<GptqPoint[]> {
  const cache = new RunCache();
  const points: GptqPoint[] = [];
  for (const ref of referenceRuns(model).filter((r) => r.method === "gptq")) {
    const r = await runRow({
      model: fixtureModel(model),
      method: GPTQ,
      flags: referenceFlags(ref),
      out: `${tmp}/${model}-${ref.name.replaceAll(" ", "_")}`,
      cache,
    });
    const total = r.seconds - (r.timing.eval_fp ?? 0) - (r.timing.eval_quant ?? 0);
    points.push({
      model,
      config: ref.name,
      quantize_s: r.timing.quantize,
      total_s: total,
      ref_quant_s: ref.quant_s!,
      speedup_total: ref.quant_s! / total,
      ppl: r.eval["tinystories_val.txt"].quant,
      ref_ppl: ref.eval.val.ppl,
      loadavg_1m: Deno.loadavg()[0],
    });
    ctx.log(
      `gptq: ${model} ${ref.name}: stream ${r.timing.quantize.toFixed(2)} s, total ` +
        `${total.toFixed(2)} s, ref ${ref.quant_s!.toFixed(2)} s`,
    );
  }
  return points;
}

/**
 * A Hessian pass (the block graph up to down_proj's input, with the Gram blocks of all four
 * linear inputs and no output) against a plain forward (an output pass), timed alternately on
 * the same windows (min of `rounds`), so that their ratio holds whatever the machine's load.
 */
async function hessianPassRatio(dir: string, windows: number, seqlen: number, rounds = 2) {
  const model = await openModel(dir);
  const rt = new Runtime("cpu");
  try {
    const c = model.config;
    const w = await model.block(0);
    const x = new Rng(1).normalTensor([windows, seqlen, c.hidden], 0.02);
    const timing = await timeAlternating({
      plain: () => runBlock(rt, c, w, x),
      hessian: () => captureBlock(rt, c, w, x, { grams: CAPTURE_POINTS, onGrams: () => {} }),
    }, { rounds, warmup: 1, minReps: 1, minSeconds: 0, maxReps: 1 });
    const plain = timing.plain.min, hessian = timing.hessian.min;
    return { windows, plain_s: plain, hessian_s: hessian, ratio: hessian / plain };
  } finally {
    await rt.release();
    model.close();
  }
}

/**
 * One run of (b) in its own process: by default (activations offloaded), or in memory; without
 * evaluation, or with the default one (`evaluate`: every validation window, before and after).
 */
async function generatedProcess(
  ctx: BenchContext,
  dir: string,
  tmp: string,
  offload: boolean,
  evaluate = false,
) {
  ctx.log(
    `gptq: W4 g128, 128 × 256 on ${dir} (own process${offload ? ", offloaded" : ""}` +
      `${evaluate ? ", evaluation on" : ""})`,
  );
  const load_before = Deno.loadavg();
  const run = await runPipelineProcess("gptq", [
    ...["--model", dir, "--out", `${tmp}/llama`],
    ...["--wbits", "4", "--group-size", "128", "--nsamples", "128", "--seqlen", "256"],
    ...(evaluate ? [] : ["--eval", ""]),
    ...(offload ? [] : ["--keep-activations"]),
  ], { log: ctx.log });
  const where = offload ? "file" : "memory";
  if (run.report.activations !== where) {
    throw new Error(`gptq bench: the activations were in ${run.report.activations}, not ${where}`);
  }
  await Deno.remove(`${tmp}/llama`, { recursive: true }).catch(() => {});
  return { run, load_before, load_after: Deno.loadavg() };
}

/** Runs (b): offloaded activations (the goal's run), then the in-memory chain for comparison. */
async function generatedRun(ctx: BenchContext, tmp: string) {
  const dir = await ensureLlama(GPTQ_LLAMA, ctx.log);
  const { run, load_before, load_after } = await generatedProcess(ctx, dir, tmp, true);
  const inMemory = await generatedProcess(ctx, dir, tmp, false);
  const withEval = await generatedProcess(ctx, dir, tmp, true, true);
  const r = run.report;
  ctx.log("gptq: timing a Hessian pass against a plain forward");
  const pass = await hessianPassRatio(dir, 32, 256);
  const t = r.timing;
  const split = {
    /** The output passes (propagate stage): the quantized block's forward, written in place. */
    block_passes_s: t.stage_propagate,
    /** The Hessian passes: the block graph up to down_proj's input with the in-graph Gram blocks, and their float64 sums. */
    hessians_s: t.hessian_seconds,
    /** fasterquant (damping, Cholesky inverse, column loop, lazy updates) + relative errors. */
    gptq_s: t.quantize_seconds,
    /** In the stream but in no stage: weight reads not hidden by prefetch, block writes. */
    stream_other_s: t.quantize - t.stage_gptq - t.stage_propagate,
    /** Outside the stream: tokenization, calibration, embedding, final write. */
    outside_stream_s: r.seconds - t.quantize,
  };
  const perBlock = r.blocks.map((b) => ({
    block: b.block,
    stage: b.stage,
    seconds: b.seconds,
    ...(typeof b.hessian_seconds === "number" ? { hessian_s: b.hessian_seconds } : {}),
    ...(typeof b.quantize_seconds === "number" ? { gptq_s: b.quantize_seconds } : {}),
  }));
  const MiB = 2 ** 20;
  return {
    model: dir,
    spec: GPTQ_LLAMA,
    settings: {
      wbits: 4,
      group_size: 128,
      nsamples: 128,
      seqlen: 256,
      eval: "none",
      offload_activations: true,
    },
    seconds: r.seconds,
    process_wall_s: run.wall_s,
    peak_rss_bytes: r.peak_rss_bytes,
    bits_per_weight: r.bits_per_weight,
    timing: r.timing,
    split,
    /** Block 0: a Hessian pass against a plain forward (32 windows), timed in the bench process. */
    hessian_pass: pass,
    per_block: perBlock,
    block_peak_rss_mib: run.block_peak_rss.map((v) => Math.round(v / MiB)),
    phase_peak_rss_mib: Object.fromEntries(
      Object.entries(run.phase_peak_rss).map(([k, v]) => [k, Math.round(v / MiB)]),
    ),
    loadavg_before: load_before,
    loadavg_after: load_after,
    /** The same run with the activation chain in memory (`--keep-activations`). */
    in_memory: {
      seconds: inMemory.run.report.seconds,
      peak_rss_bytes: inMemory.run.report.peak_rss_bytes,
      block_peak_rss_mib: inMemory.run.block_peak_rss.map((v) => Math.round(v / MiB)),
      loadavg_before: inMemory.load_before,
      loadavg_after: inMemory.load_after,
    },
    /** The same run with the default evaluation (every validation window, before and after). */
    with_eval: {
      seconds: withEval.run.report.seconds,
      peak_rss_bytes: withEval.run.report.peak_rss_bytes,
      eval: withEval.run.report.eval,
      phase_peak_rss_mib: Object.fromEntries(
        Object.entries(withEval.run.phase_peak_rss).map(([k, v]) => [k, Math.round(v / MiB)]),
      ),
    },
    target: GPTQ_LLAMA_TARGET,
    meets_time_goal: r.seconds <= GPTQ_LLAMA_TARGET.goal_s,
    meets_rss_goal: r.peak_rss_bytes <= GPTQ_LLAMA_TARGET.goal_peak_rss_bytes,
    meets_rss_goal_with_eval:
      withEval.run.report.peak_rss_bytes <= GPTQ_LLAMA_TARGET.goal_peak_rss_bytes,
  };
}

function markdown(points: GptqPoint[]): string {
  const lines = [
    "| model | config | ours: stream, s | ours: total, s | reference quant_s | ref / ours | ppl (ours / ref) |",
    "|---|---|---:|---:|---:|---:|---|",
  ];
  for (const p of points) {
    lines.push(
      `| ${p.model} | ${p.config} | ${p.quantize_s.toFixed(2)} | ${p.total_s.toFixed(2)} | ` +
        `${p.ref_quant_s.toFixed(2)} | ${p.speedup_total.toFixed(2)} | ` +
        `${p.ppl.toFixed(3)} / ${p.ref_ppl.toFixed(3)} |`,
    );
  }
  return lines.join("\n");
}

function sum(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0);
}

/** Runs the GPTQ benchmark. */
export async function benchGptq(ctx: BenchContext): Promise<BenchRecord> {
  const tmp = await Deno.makeTempDir({ prefix: "qllm-bench-gptq-" });
  try {
    const loadavg_start = Deno.loadavg();
    const points: GptqPoint[] = [];
    for (const m of GPTQ_MODELS) points.push(...await fixtureRuns(ctx, m, tmp));
    const llama = await generatedRun(ctx, tmp);
    const summary: SummaryRow[] = GPTQ_MODELS.map((m) => {
      const ps = points.filter((p) => p.model === m);
      const ours = sum(ps.map((p) => p.total_s)), ref = sum(ps.map((p) => p.ref_quant_s));
      return {
        label: `${m}: ${ps.length} GPTQ rows, total`,
        value: Number(ours.toFixed(1)),
        unit: "s",
        note: `stream ${sum(ps.map((p) => p.quantize_s)).toFixed(1)} s; reference ` +
          `${ref.toFixed(1)} s (×${(ref / ours).toFixed(2)})`,
      };
    });
    const s = llama.split;
    summary.push(
      {
        label: "LLaMA 1024×8 W4 g128 (128×256)",
        value: Number(llama.seconds.toFixed(1)),
        unit: "s",
        note: `ref 253–263 s, goal ≤ 130 s; load ${llama.loadavg_before[0].toFixed(2)}` +
          `→${llama.loadavg_after[0].toFixed(2)}`,
      },
      {
        label: "LLaMA 1024×8 peak RSS",
        value: Math.round(llama.peak_rss_bytes / 2 ** 20),
        unit: "MiB",
        note: `activations offloaded (default); in memory ${
          Math.round(llama.in_memory.peak_rss_bytes / 2 ** 20)
        } MiB (${llama.in_memory.seconds.toFixed(0)} s); ref 1.39 GB, goal ≤ 0.5 GB`,
      },
      {
        label: "LLaMA 1024×8 peak RSS, evaluation on",
        value: Math.round(llama.with_eval.peak_rss_bytes / 2 ** 20),
        unit: "MiB",
        note: `every validation window before and after (${
          llama.with_eval.seconds.toFixed(0)
        } s); goal ≤ 0.5 GB`,
      },
      {
        label: "LLaMA 1024×8 split",
        value: `${s.block_passes_s.toFixed(0)}/${s.hessians_s.toFixed(0)}/${s.gptq_s.toFixed(0)}`,
        unit: "s",
        note: "block passes / Hessians / GPTQ; " +
          `other ${(s.stream_other_s + s.outside_stream_s).toFixed(0)} s`,
      },
    );
    const load = Deno.loadavg()[0];
    await writeReadmeSection(
      "gptq",
      `${
        markdown(points)
      }\n\nGenerated LLaMA (hidden 1024, intermediate 2816, 8 layers, 16 heads, ` +
        `8 KV heads, vocab 2048, std 0.02), GPTQ W4 g128 with 128 × 256 calibration and ` +
        `the activations offloaded (the default at this size): **${
          llama.seconds.toFixed(1)
        } s, peak RSS ${(llama.peak_rss_bytes / 2 ** 20).toFixed(0)} MiB** (${
          (llama.peak_rss_bytes / 1e9).toFixed(2)
        } GB; ` +
        `output passes ${s.block_passes_s.toFixed(0)} s, Hessian passes ${
          s.hessians_s.toFixed(0)
        } s, GPTQ column loop ${s.gptq_s.toFixed(0)} s; load average ${load.toFixed(1)}). ` +
        `With the activations in memory (\`--keep-activations\`): ${
          llama.in_memory.seconds.toFixed(1)
        } s, peak RSS ${
          (llama.in_memory.peak_rss_bytes / 2 ** 20).toFixed(0)
        } MiB. With the default evaluation on (every validation window, before and after): ${
          llama.with_eval.seconds.toFixed(1)
        } s, peak RSS ${
          (llama.with_eval.peak_rss_bytes / 2 ** 20).toFixed(0)
        } MiB. The reference PyTorch GPTQ took 253–263 s and 1.39 GB on this machine.`,
    );
    return {
      loadavg_start,
      loadavg_end: Deno.loadavg(),
      fixtures: points,
      generated: llama,
      markdown: markdown(points),
      summary,
    };
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}
