/**
 * The run report as one self-contained HTML page (`<out>/report.html`): the settings, perplexity
 * and zero-shot accuracy before → after, bits per weight by layer, the per-layer reconstruction
 * error by block and linear as a heat map, the learned methods' per-block loss curves, and time
 * and peak memory by phase and stage. Charts are inline SVG (`run/svg.ts`); the page loads
 * nothing and runs no script.
 * @module
 */
import { LINEAR_NAMES } from "../models/config.ts";
import type { StageReport } from "../stages/job.ts";
import type { QuantizeReport } from "./report.ts";
import {
  columns,
  esc,
  fmt,
  type HBar,
  hbars,
  heatmap,
  legend,
  lines,
  MUTED,
  PALETTE,
  stacked,
  wantsLog,
} from "./svg.ts";

/** The page's style: one stylesheet shared by the run report and the comparison page. */
const STYLE = `
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f5f7; color: #1f2328;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 20px 48px; }
header h1 { font-size: 22px; margin: 0 0 4px; }
header p { margin: 0; color: #59636e; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 18px 0; }
.card { background: #fff; border: 1px solid #e1e4e8; border-radius: 8px; padding: 10px 14px;
  min-width: 150px; }
.card b { display: block; font-size: 20px; font-weight: 600; }
.card span { color: #59636e; font-size: 12px; }
section { background: #fff; border: 1px solid #e1e4e8; border-radius: 8px; padding: 14px 18px;
  margin: 16px 0; }
section h2 { font-size: 16px; margin: 0 0 8px; }
.caption { color: #59636e; font-size: 12.5px; margin: 6px 0 0; max-width: 900px; }
.row { display: flex; flex-wrap: wrap; gap: 8px 32px; align-items: flex-start; }
.row > div { min-width: 0; }
h3 { font-size: 13px; margin: 4px 0; color: #444; font-weight: 600; }
table { border-collapse: collapse; font-size: 13px; }
td, th { padding: 3px 12px 3px 0; text-align: left; vertical-align: top; }
th { color: #59636e; font-weight: 500; white-space: nowrap; }
table.grid td, table.grid th { border-bottom: 1px solid #eceef1; padding: 4px 12px 4px 4px; }
table.grid td.num { text-align: right; font-variant-numeric: tabular-nums; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12px; color: #444;
  margin: 4px 0; }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
  margin-right: 5px; vertical-align: -1px; }
.empty { color: #8a939c; font-style: italic; }
svg { max-width: 100%; height: auto; overflow: visible; }
svg rect[data-key]:hover, svg circle[data-key]:hover { opacity: .75; }
svg path[data-key]:hover { stroke-width: 3.5; }
code { font-size: 12px; background: #f0f2f4; padding: 1px 4px; border-radius: 3px; }
`;

/** The `generator` meta tag of our pages: how a command knows a page at its `--out` is ours. */
export const PAGE_GENERATOR = `<meta name="generator" content="qllm-deno">`;

/** A whole page around `body`. */
export function htmlPage(title: string, body: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
${PAGE_GENERATOR}
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>${esc(title)}</title>
<style>${STYLE}</style></head>
<body><main>
${body}
</main></body></html>
`;
}

/** A titled section with a caption. */
export function section(id: string, title: string, content: string, caption = ""): string {
  return `<section id="${esc(id)}"><h2>${esc(title)}</h2>${content}${
    caption ? `<p class="caption">${caption}</p>` : ""
  }</section>`;
}

/** `rtn W3A16`, `gptq W4A16 g128`, `qllm W4A8 kv8`. */
export function runLabel(r: QuantizeReport): string {
  const kv = (r.settings as { kvBits?: number }).kvBits;
  return `${r.method} W${+r.wbits.toFixed(2)}A${r.abits}${r.group_size ? ` g${r.group_size}` : ""}${
    kv !== undefined && kv < 16 ? ` kv${kv}` : ""
  }`;
}

/** Bytes as MiB. */
export function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(0)} MiB`;
}

/** Seconds, briefly. */
export function secs(s: number): string {
  return s >= 100 ? `${s.toFixed(0)} s` : s >= 1 ? `${s.toFixed(1)} s` : `${s.toFixed(2)} s`;
}

/** A fraction as a percentage. */
export function pct(v: number): string {
  return `${(100 * v).toFixed(1)} %`;
}

function summaryCards(r: QuantizeReport): string {
  const cards: [string, string][] = [
    [`${r.bits_per_weight.toFixed(3)}`, "stored bits per weight"],
  ];
  for (const [name, e] of Object.entries(r.eval)) {
    cards.push([`${fmt(e.fp)} → ${fmt(e.quant)}`, `perplexity, ${name}`]);
  }
  const tasks = Object.values(r.tasks ?? {});
  if (tasks.length) {
    const mean = (k: "fp" | "quant") => tasks.reduce((s, t) => s + t[k].acc, 0) / tasks.length;
    cards.push([
      `${pct(mean("fp"))} → ${pct(mean("quant"))}`,
      `mean acc, ${tasks.length} task${tasks.length > 1 ? "s" : ""}`,
    ]);
  }
  cards.push([secs(r.seconds), "whole run"], [mib(r.peak_rss_bytes), "peak RSS"]);
  return `<div class="cards">${
    cards.map(([v, l]) => `<div class="card"><b>${esc(v)}</b><span>${esc(l)}</span></div>`).join(
      "",
    )
  }</div>`;
}

function settingsTable(r: QuantizeReport): string {
  const rows: [string, string][] = [
    ["method", r.method],
    [
      "weights",
      `${+r.wbits.toFixed(3)} bits, ${r.group_size ? `groups of ${r.group_size}` : "per channel"}`,
    ],
    ["activations", r.abits >= 16 ? "not quantized" : `${r.abits} bits`],
    ["model", r.model],
    ["output", r.out],
    [
      "calibration",
      `${r.calibration.nsamples} × ${r.calibration.seqlen} tokens from ${r.calibration.file}, seed ${r.calibration.seed}`,
    ],
    ["calibration activations", r.activations === "file" ? "offloaded to a file" : "in memory"],
  ];
  for (const [k, v] of Object.entries(r.settings)) {
    if (v === undefined) continue;
    rows.push([k, typeof v === "object" ? JSON.stringify(v) : String(v)]);
  }
  return `<table data-chart="settings">${
    rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td data-key="${esc(k)}">${esc(v)}</td></tr>`)
      .join("")
  }</table>`;
}

function beforeAfter(r: QuantizeReport): string {
  const fpColor = MUTED, qColor = PALETTE[0];
  const ppl: HBar[] = Object.entries(r.eval).flatMap(([name, e]) => [
    { key: `${name} fp`, label: "full precision", value: e.fp, color: fpColor, group: name },
    { key: `${name} quant`, label: "quantized", value: e.quant, color: qColor, group: name },
  ]);
  const parts: string[] = [];
  if (ppl.length) {
    parts.push(
      `<div><h3>Perplexity (lower is better)</h3>${
        hbars({
          id: "ppl",
          title: "perplexity before and after",
          bars: ppl,
          log: wantsLog(ppl.map((b) => b.value)),
          width: 480,
        })
      }</div>`,
    );
  }
  const acc: HBar[] = [];
  for (const [name, t] of Object.entries(r.tasks ?? {})) {
    for (const m of t.fp.metrics) {
      for (
        const [side, res, color] of [["fp", t.fp, fpColor], ["quant", t.quant, qColor]] as const
      ) {
        acc.push({
          key: `${name} ${side} ${m}`,
          label: `${m}, ${side === "fp" ? "full precision" : "quantized"}`,
          value: res[m],
          err: res[`${m}_stderr`],
          color,
          group: `${name} (${t.fp.questions} questions)`,
        });
      }
    }
  }
  if (acc.length) {
    parts.push(
      `<div><h3>Zero-shot accuracy (higher is better)</h3>${
        hbars({
          id: "acc",
          title: "zero-shot accuracy before and after",
          bars: acc,
          max: 1,
          width: 480,
          format: pct,
        })
      }</div>`,
    );
  }
  if (!parts.length) return `<p class="empty">No evaluation was asked for (--eval, --tasks).</p>`;
  return `${
    legend([{ label: "full precision", color: fpColor }, { label: "quantized", color: qColor }])
  }<div class="row">${parts.join("")}</div>`;
}

/** Linear names in block order, as they appear in reports. */
const LINEARS: readonly string[] = LINEAR_NAMES;

/** `model.layers.3.self_attn.q_proj.weight` → [3, "self_attn.q_proj"]. */
function parseLayerKey(k: string): [number, string] | null {
  const m = k.match(/^model\.layers\.(\d+)\.(.+?)(\.weight)?$/);
  return m ? [Number(m[1]), m[2]] : null;
}

function bitsChart(r: QuantizeReport): string {
  const entries = Object.entries(r.bits_by_layer ?? {})
    .map(([k, v]) => ({ at: parseLayerKey(k), v }))
    .filter((e): e is { at: [number, string]; v: number } => e.at !== null)
    .sort((a, b) => a.at[0] - b.at[0] || LINEARS.indexOf(a.at[1]) - LINEARS.indexOf(b.at[1]));
  if (!entries.length) return `<p class="empty">This run stored no quantized weights.</p>`;
  const names = [...new Set(entries.map((e) => e.at[1]))];
  const color = (l: string) => PALETTE[Math.max(0, LINEARS.indexOf(l)) % PALETTE.length];
  return legend(names.map((n) => ({ label: n, color: color(n) }))) + columns({
    id: "bits",
    title: "bits per weight by layer",
    columns: entries.map((e) => ({
      key: `${e.at[0]}.${e.at[1]}`,
      value: e.v,
      color: color(e.at[1]),
      title: `block ${e.at[0]} · ${e.at[1]}`,
      group: String(e.at[0]),
    })),
    yLabel: "bits per weight",
    reference: { value: r.bits_per_weight, label: "whole model" },
  });
}

/** The heat map's columns: what the run's stage reports hold per block, and how to read it. */
interface ErrorColumn {
  name: string;
  value: (rep: StageReport) => number | undefined;
}

/** Per block and column, from whatever figures the stages reported. */
function errorColumns(blocks: StageReport[]): ErrorColumn[] {
  const cols: ErrorColumn[] = [];
  const add = (name: string, value: ErrorColumn["value"]) => {
    if (!cols.some((c) => c.name === name) && blocks.some((b) => value(b) !== undefined)) {
      cols.push({ name, value });
    }
  };
  const num = (v: unknown) => typeof v === "number" && Number.isFinite(v) ? v : undefined;
  const stages = [...new Set(blocks.map((b) => b.stage))];
  for (const st of stages) {
    const of = (b: StageReport) => b.stage === st ? b : undefined;
    const layerNames = new Set(
      blocks.flatMap((b) => b.stage === st ? Object.keys(b.layers ?? {}) : []),
    );
    for (const l of LINEARS.filter((l) => layerNames.has(l))) {
      add(l, (b) => num(of(b)?.layers?.[l]?.rel_output_error));
    }
    const points = new Set(
      blocks.flatMap((b) => b.stage === st ? Object.keys((b.points ?? {}) as object) : []),
    );
    for (const p of points) {
      add(
        `${st} ${p}`,
        (b) => num((of(b)?.points as Record<string, Record<string, unknown>>)?.[p]?.error_after),
      );
    }
    add(`${st} loss`, (b) => num(of(b)?.last_loss));
    add("block output", (b) => num(of(b)?.output_rel_mse));
  }
  return cols;
}

function errorMap(r: QuantizeReport): string {
  const cols = errorColumns(r.blocks);
  if (!cols.length) return `<p class="empty">The stages of this run report no error figures.</p>`;
  const blocks = [...new Set(r.blocks.map((b) => b.block))].sort((a, b) => a - b);
  const cells = blocks.map((i) =>
    cols.map((c) => {
      const v = r.blocks.filter((b) => b.block === i).map(c.value).find((v) => v !== undefined);
      return v ?? null;
    })
  );
  return heatmap({
    id: "error",
    title: "reconstruction error by block and linear",
    rows: blocks.map((i) => `block ${i}`),
    cols: cols.map((c) => c.name),
    cells,
    key: (row, col) => `${row} / ${col}`,
  });
}

const ERROR_CAPTION = `Each cell is one figure a stage reported for a block, on a log colour
scale. Linear columns (<code>q_proj</code> … <code>down_proj</code>): the layer-wise methods'
relative output error ‖(W−Ŵ)Xᵀ‖² / ‖WXᵀ‖² on the calibration inputs. <code>… loss</code>: the
learned methods' final reconstruction loss of the block (they report no per-linear error).
<code>reassemble …</code>: QLLM's reassembly error at each point after the threshold search.
<code>block output</code>: ‖ŷ − y‖² / ‖y‖² of the block's output on the calibration set, quantized
chain against the full-precision one (runs that keep a teacher chain).`;

function lossCurves(r: QuantizeReport): string {
  const curves = r.blocks.filter((b) =>
    Array.isArray(b.loss_curve) && (b.loss_curve as unknown[]).length
  );
  if (!curves.length) return "";
  const multi = new Set(curves.map((b) => b.stage)).size > 1;
  const series = curves.map((b, i) => ({
    key: `${multi ? `${b.stage} ` : ""}block ${b.block}`,
    label: `${multi ? `${b.stage} ` : ""}block ${b.block}`,
    color: PALETTE[i % PALETTE.length],
    values: b.loss_curve as number[],
  }));
  return section(
    "loss",
    "Loss curves per block",
    legend(series) + lines({
      id: "loss",
      title: "reconstruction loss per epoch",
      series,
      xLabel: "epoch",
      yLabel: "loss",
      log: series.every((s) => s.values.every((v) => v > 0)),
      width: 640,
    }),
    "Mean reconstruction loss over each epoch of the block's training (the point at a block's " +
      "last epoch is its final loss).",
  );
}

const PHASES: Record<string, string> = {
  eval_fp: "perplexity, full precision",
  tasks_fp: "zero-shot tasks, full precision",
  quantize: "quantization stream",
  eval_quant: "perplexity, quantized",
  tasks_quant: "zero-shot tasks, quantized",
};

function timeAndMemory(r: QuantizeReport): string {
  const stageNames = [...new Set(r.blocks.map((b) => b.stage))];
  const blocks = [...new Set(r.blocks.map((b) => b.block))].sort((a, b) => a - b);
  const color = (s: string) => PALETTE[stageNames.indexOf(s) % PALETTE.length];
  const perBlock = stacked({
    id: "time-blocks",
    title: "seconds per block and stage",
    categories: blocks.map((b) => `block ${b}`),
    series: stageNames.map((s) => ({
      label: s,
      color: color(s),
      values: blocks.map((b) => {
        const reps = r.blocks.filter((x) => x.block === b && x.stage === s);
        return reps.length ? reps.reduce((t, x) => t + x.seconds, 0) : undefined;
      }),
    })),
    yLabel: "seconds",
    format: (v) => fmt(v),
  });
  const group = (k: string) =>
    k in PHASES ? "phases" : k.startsWith("stage_") ? "stages (summed over blocks)" : "sub-steps";
  const label = (k: string) => PHASES[k] ?? k.replace(/^stage_/, "");
  const tint = (k: string) =>
    k.startsWith("stage_") ? color(k.slice(6)) : k in PHASES ? PALETTE[0] : MUTED;
  const order = (xs: [string, number][]) =>
    ["phases", "stages (summed over blocks)", "sub-steps"].flatMap((g) =>
      xs.filter(([k]) => group(k) === g)
    );
  const time = hbars({
    id: "time",
    title: "seconds by phase and stage",
    bars: order(Object.entries(r.timing)).map(([k, v]) => ({
      key: k,
      label: label(k),
      value: v,
      color: tint(k),
      group: group(k),
    })),
    format: secs,
  });
  const peaks = Object.entries(r.peak_rss_by_phase ?? {});
  const memory = peaks.length
    ? hbars({
      id: "memory",
      title: "peak RSS by phase and stage",
      bars: order(peaks).map(([k, v]) => ({
        key: k,
        label: label(k),
        value: v,
        color: tint(k),
        group: group(k).replace(" (summed over blocks)", " (highest block)"),
      })),
      format: mib,
      unit: 2 ** 20,
    })
    : `<p class="empty">Peak memory per phase was not measured (it needs Linux).</p>`;
  return `<div class="row"><div><h3>Seconds per block, by stage</h3>${
    legend(stageNames.map((s) => ({ label: s, color: color(s) })))
  }${perBlock}</div></div><div class="row"><div><h3>Seconds by phase and stage</h3>${time}</div><div><h3>Peak RSS by phase and stage</h3>${memory}</div></div>`;
}

/** The run report page. */
export function reportHtml(r: QuantizeReport): string {
  const title = `${runLabel(r)} — ${r.model.replace(/\/+$/, "").replace(/^.*\//, "")}`;
  const body = [
    `<header><h1>${esc(title)}</h1><p>qllm-deno run report · <code>${
      esc(r.out)
    }</code></p></header>`,
    summaryCards(r),
    section("settings", "Settings", settingsTable(r)),
    section(
      "before-after",
      "Before → after",
      beforeAfter(r),
      "Perplexity per evaluation text (PROTOCOL.md §3) and zero-shot accuracy per task " +
        "(lm-evaluation-harness's log-likelihood protocol; whiskers: ± one standard error).",
    ),
    section(
      "bits",
      "Bits per weight by layer",
      bitsChart(r),
      "Stored bits per weight of each linear layer, counting every index, scale, zero point, " +
        "<code>g_idx</code>, codebook and outlier; the dashed line is the whole model's figure.",
    ),
    section("error", "Reconstruction error by block", errorMap(r), ERROR_CAPTION),
    lossCurves(r),
    section(
      "time",
      "Time and memory",
      timeAndMemory(r),
      "Peak RSS of a phase or stage is the process's high-water mark while it ran (Linux " +
        "resets it at the start of each); a stage's figure is its highest over the blocks.",
    ),
  ];
  return htmlPage(title, body.join("\n"));
}
