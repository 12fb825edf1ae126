/**
 * Rotation (QuaRot's R1 + R2 + online R4, R3 with a quantized q/k/v) beside every method: on
 * tinystories-656k, its outlier-injected variant and stories260k, at W4A4, W4A4 with 4-bit
 * q/k/v, W4A8 and W4A16 (weights per output channel, activations per token), RTN, GPTQ
 * (act-order), OmniQuant and ABQ-LLM (`--lwc --let`) and QLLM, each without and with
 * `--rotate` over three rotation seeds (mean, and the spread min–max); then the compositions
 * for the issue's goals. PROTOCOL.md's calibration (128 × 256) and evaluation (first 256
 * validation windows). Writes the tables into README.md.
 * Epochs per block of the learned methods: `BENCH_EPOCHS` (5); seeds: `BENCH_SEEDS` (3).
 *
 * The benchmark takes hours, so every run is appended to `bench/results/rotation.runs.jsonl` as
 * it finishes and a later invocation reuses the runs recorded there (same model, flags, seed,
 * epochs) instead of repeating them; `BENCH_VERIFY` (2) of the reused runs, chosen at random, are
 * run again and must reproduce the recorded perplexity to 1e-3 relative, or the benchmark fails.
 * @module
 */
import { ABQ } from "../methods/abq.ts";
import { GPTQ } from "../methods/gptq.ts";
import type { Method } from "../methods/method.ts";
import { OMNIQUANT } from "../methods/omniquant.ts";
import { QLLM } from "../methods/qllm.ts";
import { RTN } from "../methods/rtn.ts";
import { fixtureModel, PROJECT_ROOT } from "../fixtures/paths.ts";
import { RunCache } from "../run/quantize.ts";
import { fixtureAndOutliers } from "./models.ts";
import { writeReadmeSection } from "./readme.ts";
import { markdownTable, runRow, VAL } from "./rows.ts";
import type { BenchContext, BenchRecord } from "./types.ts";

/** A column of the table: a method and its flags; `trains` adds `--epochs`. */
interface MethodColumn {
  name: string;
  method: Method;
  flags: string[];
  trains: boolean;
}

const METHODS: MethodColumn[] = [
  { name: "rtn", method: RTN, flags: [], trains: false },
  { name: "gptq", method: GPTQ, flags: ["--act-order"], trains: false },
  { name: "omniquant", method: OMNIQUANT, flags: ["--lwc", "--let"], trains: true },
  { name: "abq", method: ABQ, flags: ["--lwc", "--let"], trains: true },
  { name: "qllm", method: QLLM, flags: [], trains: true },
];

/** A row's configuration: its label and the activation flags. */
const CONFIGS: [string, string[]][] = [
  ["W4A4", ["--abits", "4"]],
  ["W4A4KV4", ["--abits", "4", "--kv-bits", "4"]],
  ["W4A8", ["--abits", "8"]],
  ["W4A16", []],
];

/** The compositions run for the issue's goals, each on every model with three seeds. */
const COMPOSITIONS: [string, Method, string[]][] = [
  ["gptq + rotate + clip 0.9", GPTQ, ["--act-order", "--rotate", "--act-clip", "0.9"]],
  ["qllm + rotate + clip 0.9", QLLM, ["--rotate", "--act-clip", "0.9"]],
  ["abq + rotate + clip 0.9", ABQ, ["--lwc", "--let", "--rotate", "--act-clip", "0.9"]],
];

/** One measured configuration. */
interface Cell {
  model: string;
  config: string;
  method: string;
  rotated: boolean;
  seeds: number[];
  ppl: number[];
  fp: number;
  flags: string[];
}

/** One run of the benchmark as recorded in {@linkcode RUNS_FILE}. */
interface RecordedRun {
  model: string;
  flags: string[];
  ppl: number;
  fp: number;
  /** Where the figure comes from, when not from a run of this file's own code path. */
  source?: string;
}

/** Every finished run, one JSON object per line. */
export const RUNS_FILE = `${PROJECT_ROOT}/bench/results/rotation.runs.jsonl`;

const runKey = (model: string, flags: string[]) => `${model}\0${flags.join(" ")}`;

async function recordedRuns(): Promise<Map<string, RecordedRun>> {
  const out = new Map<string, RecordedRun>();
  const text = await Deno.readTextFile(RUNS_FILE).catch(() => "");
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    const r = JSON.parse(line) as RecordedRun;
    out.set(runKey(r.model, r.flags), r);
  }
  return out;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

function show(c: Cell | undefined): string {
  if (!c) return "";
  const m = mean(c.ppl).toFixed(3);
  if (c.ppl.length < 2) return m;
  return `${m} (${Math.min(...c.ppl).toFixed(2)}–${Math.max(...c.ppl).toFixed(2)})`;
}

/** Runs the benchmark. */
export async function benchRotation(ctx: BenchContext): Promise<BenchRecord> {
  const epochs = Number(Deno.env.get("BENCH_EPOCHS") ?? 5);
  const seeds = Array.from({ length: Number(Deno.env.get("BENCH_SEEDS") ?? 3) }, (_, i) => i);
  const models: [string, string][] = [
    ...await fixtureAndOutliers(),
    ["stories260k", fixtureModel("stories260k")],
  ];
  const tmp = await Deno.makeTempDir({ prefix: "qllm-bench-rotation-" });
  const cells: Cell[] = [];
  const recorded = await recordedRuns();
  const reused: RecordedRun[] = [];
  let fresh = 0;
  let verified: Verified[] = [];
  const measure = async (
    label: string,
    path: string,
    cache: RunCache,
    config: string,
    name: string,
    method: Method,
    flags: string[],
    rotated: boolean,
  ) => {
    const cell: Cell = {
      model: label,
      config,
      method: name,
      rotated,
      seeds: [],
      ppl: [],
      fp: 0,
      flags,
    };
    for (const seed of rotated ? seeds : [0]) {
      const f = [method.name, ...(rotated ? [...flags, "--rotate-seed", String(seed)] : flags)];
      let run = recorded.get(runKey(label, f));
      if (run) reused.push(run);
      else {
        const r = await runRow({
          model: path,
          method,
          flags: f.slice(1),
          out: `${tmp}/row`,
          cache,
        });
        run = { model: label, flags: f, ppl: r.eval[VAL].quant, fp: r.eval[VAL].fp };
        await Deno.writeTextFile(RUNS_FILE, JSON.stringify(run) + "\n", { append: true });
        fresh++;
      }
      cell.seeds.push(seed);
      cell.ppl.push(run.ppl);
      cell.fp = run.fp;
      ctx.log(
        `rotation: ${label} ${config} ${name}${rotated ? ` seed ${seed}` : ""}: ` +
          `${run.ppl.toFixed(3)}${recorded.has(runKey(label, f)) ? " (recorded)" : ""}`,
      );
    }
    cells.push(cell);
  };
  try {
    for (const [label, path] of models) {
      const cache = new RunCache();
      for (const [config, act] of CONFIGS) {
        for (const m of METHODS) {
          const flags = ["--wbits", "4", ...act, ...m.flags];
          if (m.trains) flags.push("--epochs", String(epochs));
          await measure(label, path, cache, config, m.name, m.method, flags, false);
          const rotated = [...flags, "--rotate"];
          await measure(label, path, cache, config, m.name, m.method, rotated, true);
        }
      }
      for (const [name, method, extra] of COMPOSITIONS) {
        const flags = ["--wbits", "4", "--abits", "4", ...extra];
        if (method !== GPTQ) flags.push("--epochs", String(epochs));
        await measure(label, path, cache, "W4A4", name, method, flags, true);
      }
    }
    verified = await verifyReused(ctx, reused, models, tmp);
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
  let markdown = tables(cells, models.map(([l]) => l), epochs, seeds.length);
  if (reused.length) {
    const sources = [...new Set(reused.map((r) => r.source ?? "earlier invocations"))];
    markdown += `\n\n${reused.length} of ${reused.length + fresh} runs were recorded by ` +
      `${sources.join("; ")} (\`${RUNS_FILE.replace(`${PROJECT_ROOT}/`, "")}\`); ` +
      `${verified.length} of them, chosen at random, were run again and reproduced: ` +
      verified.map((v) => `${v.label} ${v.recorded.toFixed(3)} → ${v.now.toFixed(3)}`).join(", ") +
      ".";
  }
  await writeReadmeSection("rotation", markdown);
  return {
    epochs,
    seeds,
    fresh_runs: fresh,
    reused_runs: reused.length,
    verified,
    cells,
    markdown,
    summary: cells.filter((c) => c.config === "W4A4" && c.rotated).map((c) => ({
      label: `${c.model} W4A4 ${c.method} rotated`,
      value: mean(c.ppl).toFixed(3),
      unit: "ppl",
      note: `seeds ${c.ppl.map((p) => p.toFixed(2)).join(", ")}`,
    })),
  };
}

/** A reused run measured again. */
interface Verified {
  label: string;
  recorded: number;
  now: number;
}

/** Runs `BENCH_VERIFY` of the reused runs again; a figure that moved fails the benchmark. */
async function verifyReused(
  ctx: BenchContext,
  reused: RecordedRun[],
  models: [string, string][],
  tmp: string,
): Promise<Verified[]> {
  const n = Math.min(reused.length, Number(Deno.env.get("BENCH_VERIFY") ?? 2));
  const pool = [...reused];
  const out: Verified[] = [];
  for (let i = 0; i < n; i++) {
    const [r] = pool.splice(Math.floor(Math.random() * pool.length), 1);
    const path = models.find(([l]) => l === r.model)![1];
    const method = METHODS.find((m) => m.method.name === r.flags[0])!.method;
    const now = (await runRow({
      model: path,
      method,
      flags: r.flags.slice(1),
      out: `${tmp}/verify`,
      cache: new RunCache(),
    })).eval[VAL].quant;
    const label = `${r.model} ${r.flags.join(" ")}`;
    ctx.log(`rotation: verify ${label}: recorded ${r.ppl.toFixed(3)}, now ${now.toFixed(3)}`);
    if (Math.abs(now - r.ppl) > 1e-3 * r.ppl) {
      throw new Error(`${RUNS_FILE}: ${label} recorded ${r.ppl}, measured now ${now}`);
    }
    out.push({ label, recorded: r.ppl, now });
  }
  return out;
}

function tables(cells: Cell[], models: string[], epochs: number, seeds: number): string {
  const find = (m: string, config: string, method: string, rotated: boolean) =>
    cells.find((c) =>
      c.model === m && c.config === config && c.method === method && c.rotated === rotated
    );
  const lines = [
    `Perplexity on tinystories_val.txt (first 256 windows of 256); weights per output channel ` +
    `(4 bits), activations per token; 128 × 256 calibration; ${epochs} epochs per block for ` +
    `omniquant, abq and qllm. Each cell is \`deno run -A pipelines/METHOD.ts --wbits 4\` with ` +
    `the row's \`--abits 4|8\` / \`--kv-bits 4\` and the method's flags (gptq \`--act-order\`, ` +
    `omniquant and abq \`--lwc --let\`); "+ rot" adds \`--rotate\`: the mean over rotation ` +
    `seeds 0–${seeds - 1} (\`--rotate-seed\`), the lowest and highest in parentheses.`,
    "",
  ];
  for (const m of models) {
    const fp = cells.find((c) => c.model === m)!.fp;
    lines.push(`**${m}** (full precision ${fp.toFixed(3)})`, "");
    lines.push(markdownTable(
      ["config", ...METHODS.flatMap((x) => [x.name, `${x.name} + rot`])],
      CONFIGS.map(([config]) => [
        config,
        ...METHODS.flatMap((
          x,
        ) => [show(find(m, config, x.name, false)), show(find(m, config, x.name, true))]),
      ]),
    ));
    lines.push("");
  }
  lines.push(
    `Compositions at W4A4 (the rotated activations clipped at 0.9 of their range, ` +
      `\`--act-clip 0.9\`, QuaRot's default), mean over the same seeds:`,
    "",
    markdownTable(
      ["composition", "command", ...models],
      COMPOSITIONS.map(([name, method, extra]) => [
        name,
        `\`${method.name} --wbits 4 --abits 4 ${extra.join(" ")}\``,
        ...models.map((m) => show(find(m, "W4A4", name, true))),
      ]),
    ),
  );
  return lines.join("\n");
}
