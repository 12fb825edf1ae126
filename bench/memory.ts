/**
 * Memory is bounded by one block, whatever the depth: GPTQ (W4, groups of 128, 32 × 256
 * calibration windows) on generated LLaMA models of the same width (hidden 512, intermediate
 * 1408, 8 heads, 4 KV heads, vocabulary 2048) with 2, 8 and 32 layers, each run in a process of
 * its own (`pipelines/gptq.ts … --json`), its peak RSS read from the report. The requirement is
 * peak(32 layers) / peak(2 layers) ≤ 1.3. Each process's RSS is also sampled from
 * `/proc/PID/status` and attributed to the block and stage it was working on (from its progress
 * lines), so a growth with depth shows where it happens.
 * @module
 */
import { ensureLlama, type LlamaSpec } from "../fixtures/generate.ts";
import { PROJECT_ROOT } from "../fixtures/paths.ts";
import type { QuantizeReport } from "../run/report.ts";
import { writeReadmeSection } from "./readme.ts";
import type { BenchContext, BenchRecord, SummaryRow } from "./types.ts";

/** The width shared by the three models. */
export const MEMORY_WIDTH: Omit<LlamaSpec, "layers"> = {
  hidden: 512,
  intermediate: 1408,
  heads: 8,
  kvHeads: 4,
  vocab: 2048,
  seed: 0,
};

/** Depths measured. */
export const MEMORY_DEPTHS = [2, 8, 32] as const;

/** The requirement on peak RSS(deepest) / peak RSS(shallowest). */
export const MAX_RATIO = 1.3;

/** One RSS sample of a child process. */
export interface RssSample {
  /** Seconds since the process started. */
  t: number;
  rss: number;
  /** What the process last reported doing (`block 3 gptq`, `calibration`, …). */
  phase: string;
}

/** A pipeline run in its own process. */
export interface ProcessRun {
  report: QuantizeReport;
  /** Wall time of the whole process (start-up, imports and compilation included). */
  wall_s: number;
  /** Largest sampled RSS per phase, in phase order. */
  phase_peak_rss: Record<string, number>;
  /** Largest sampled RSS of each block (all its stages). */
  block_peak_rss: number[];
  samples: number;
}

/** The phase a progress line announces: `block 3 gptq` for `block 3/8: gptq …`, else the line. */
export function phaseOf(line: string): string {
  const text = line.replace(/^\[[^\]]*\]\s*/, "");
  const m = text.match(/^block (\d+)\/\d+: (\w+)/);
  if (m) return `block ${m[1]} ${m[2]}`;
  return text.replace(/ on \/.*| from \/.*/, "").slice(0, 60);
}

function vmRss(pid: number): number | null {
  try {
    const m = Deno.readTextFileSync(`/proc/${pid}/status`).match(/VmRSS:\s+(\d+) kB/);
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/**
 * Runs `deno run -A pipelines/<pipeline>.ts <args> --json` in a new process, sampling its RSS
 * every `sampleMs` and attributing each sample to its current phase; returns its report.
 */
export async function runPipelineProcess(
  pipeline: string,
  args: string[],
  o: { sampleMs?: number; log?: (msg: string) => void } = {},
): Promise<ProcessRun> {
  const t0 = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${PROJECT_ROOT}/pipelines/${pipeline}.ts`, ...args, "--json"],
    cwd: PROJECT_ROOT,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let phase = "start-up";
  const samples: RssSample[] = [];
  const sample = () => {
    const rss = vmRss(child.pid);
    if (rss !== null) samples.push({ t: (performance.now() - t0) / 1000, rss, phase });
  };
  const timer = setInterval(sample, o.sampleMs ?? 100);
  const errTail: string[] = [];
  const readErr = (async () => {
    const lines = child.stderr.pipeThrough(new TextDecoderStream()).pipeThrough(lineSplitter());
    for await (const line of lines) {
      sample();
      phase = phaseOf(line);
      errTail.push(line);
      if (errTail.length > 20) errTail.shift();
      if (/^\[[^\]]*\] block \d+\/\d+: \w+$/.test(line)) o.log?.(`  ${line.trim()}`);
    }
  })();
  const stdout = new Response(child.stdout).text();
  const status = await child.status;
  clearInterval(timer);
  await readErr;
  const out = await stdout;
  if (!status.success) {
    throw new Error(`pipelines/${pipeline}.ts ${args.join(" ")} failed:\n${errTail.join("\n")}`);
  }
  const report = JSON.parse(out.trim().split("\n").at(-1)!) as QuantizeReport;
  const phasePeak: Record<string, number> = {};
  const blockPeak: number[] = [];
  for (const s of samples) {
    phasePeak[s.phase] = Math.max(phasePeak[s.phase] ?? 0, s.rss);
    const b = s.phase.match(/^block (\d+) /);
    if (b) blockPeak[Number(b[1]) - 1] = Math.max(blockPeak[Number(b[1]) - 1] ?? 0, s.rss);
  }
  return {
    report,
    wall_s: (performance.now() - t0) / 1000,
    phase_peak_rss: phasePeak,
    block_peak_rss: Array.from(blockPeak, (v) => v ?? 0),
    samples: samples.length,
  };
}

function lineSplitter(): TransformStream<string, string> {
  let buf = "";
  return new TransformStream({
    transform(chunk, controller) {
      buf += chunk;
      const lines = buf.split("\n");
      buf = lines.pop()!;
      for (const l of lines) controller.enqueue(l);
    },
    flush(controller) {
      if (buf) controller.enqueue(buf);
    },
  });
}

/** Bytes of the files in a directory. */
export async function dirBytes(dir: string): Promise<number> {
  let n = 0;
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile) n += (await Deno.stat(`${dir}/${e.name}`)).size;
  }
  return n;
}

const MiB = 2 ** 20;

/** The README table of the three depths and the ratio the requirement bounds. */
export function memoryMarkdown(points: MemoryPoint[]): string {
  const rows = points.map((p) =>
    `| ${p.layers} | ${Math.round(p.model_bytes / MiB)} | ${
      Math.round(p.peak_rss_bytes / MiB)
    } | ` +
    `${p.seconds.toFixed(1)} |`
  );
  const ratio = points.at(-1)!.peak_rss_bytes / points[0].peak_rss_bytes;
  return [
    "| layers | model on disk, MiB | peak RSS, MiB | seconds |",
    "|---:|---:|---:|---:|",
    ...rows,
    "",
    `Peak RSS at ${points.at(-1)!.layers} layers is **${ratio.toFixed(2)}×** that at ` +
    `${points[0].layers} (requirement ≤ ${MAX_RATIO}).`,
  ].join("\n");
}

/** One depth's measurement. */
export interface MemoryPoint {
  layers: number;
  model_bytes: number;
  peak_rss_bytes: number;
  seconds: number;
  quantize_s: number;
  /** Largest sampled RSS of each block, MiB. */
  block_peak_rss_mib: number[];
  phase_peak_rss_mib: Record<string, number>;
  loadavg: number[];
}

/** Runs the memory benchmark. */
export async function benchMemory(ctx: BenchContext): Promise<BenchRecord> {
  const points: MemoryPoint[] = [];
  const tmp = await Deno.makeTempDir({ prefix: "qllm-bench-memory-" });
  try {
    for (const layers of MEMORY_DEPTHS) {
      const dir = await ensureLlama({ ...MEMORY_WIDTH, layers }, ctx.log);
      ctx.log(`memory: GPTQ W4 g128 on ${layers} layers (own process)`);
      const run = await runPipelineProcess("gptq", [
        ...["--model", dir, "--out", `${tmp}/out-${layers}`],
        ...["--wbits", "4", "--group-size", "128", "--nsamples", "32", "--seqlen", "256"],
        ...["--eval", "val", "--eval-windows", "32"],
      ], { log: ctx.log });
      await Deno.remove(`${tmp}/out-${layers}`, { recursive: true }).catch(() => {});
      const mib = (v: number) => Math.round(v / MiB);
      points.push({
        layers,
        model_bytes: await dirBytes(dir),
        peak_rss_bytes: run.report.peak_rss_bytes,
        seconds: run.report.seconds,
        quantize_s: run.report.timing.quantize,
        block_peak_rss_mib: run.block_peak_rss.map(mib),
        phase_peak_rss_mib: Object.fromEntries(
          Object.entries(run.phase_peak_rss).map(([k, v]) => [k, mib(v)]),
        ),
        loadavg: Deno.loadavg(),
      });
      ctx.log(
        `memory: ${layers} layers: peak RSS ${mib(run.report.peak_rss_bytes)} MiB, ` +
          `${run.report.seconds.toFixed(1)} s`,
      );
    }
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
  const first = points[0], last = points.at(-1)!;
  const ratio = last.peak_rss_bytes / first.peak_rss_bytes;
  const summary: SummaryRow[] = points.map((p) => ({
    label: `GPTQ W4 g128, ${p.layers} layers`,
    value: Math.round(p.peak_rss_bytes / MiB),
    unit: "MiB",
    note: `model ${Math.round(p.model_bytes / MiB)} MiB on disk, ${p.seconds.toFixed(1)} s, ` +
      `load ${p.loadavg[0].toFixed(2)}`,
  }));
  summary.push({
    label: `peak RSS ${last.layers} / ${first.layers} layers`,
    value: Number(ratio.toFixed(3)),
    note: ratio <= MAX_RATIO ? `≤ ${MAX_RATIO}: bounded by one block` : `> ${MAX_RATIO}: FAILS`,
  });
  await writeReadmeSection("memory", memoryMarkdown(points));
  return {
    width: MEMORY_WIDTH,
    calibration: { nsamples: 32, seqlen: 256 },
    method: "gptq w4 g128",
    points,
    ratio,
    max_ratio: MAX_RATIO,
    pass: ratio <= MAX_RATIO,
    summary,
  };
}
