/**
 * Several runs on one page (`pipelines/compare.ts RUN_DIR…`): each run's `report.json` read
 * back, then the method tables as the README shows them (perplexity and accuracy by
 * configuration and method), bits per weight against perplexity, and time and memory per run.
 * @module
 */
import type { QuantizeReport } from "./report.ts";
import { htmlPage, mib, pct, runLabel, secs, section } from "./report_html.ts";
import { esc, fmt, type HBar, hbars, legend, MUTED, PALETTE, scatter, wantsLog } from "./svg.ts";

/** One run's report and where it came from. */
export interface RunEntry {
  /** The run's output directory. */
  dir: string;
  /** Its short name on the page (the directory's name, or its path where names repeat). */
  name: string;
  /** Its `report.json`. */
  report: QuantizeReport;
}

/** Reads `DIR/report.json` of each run; errors name the directory or file. */
export async function readRuns(dirs: readonly string[]): Promise<RunEntry[]> {
  const out: RunEntry[] = [];
  for (const dir of dirs) {
    const path = `${dir.replace(/\/+$/, "")}/report.json`;
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch (e) {
      throw new Error(
        `${dir}: no readable report.json (${(e as Error).message}); is it a run's --out directory?`,
      );
    }
    let report: QuantizeReport;
    try {
      report = JSON.parse(text);
    } catch (e) {
      throw new Error(`${path}: invalid JSON (${(e as Error).message})`);
    }
    for (const k of ["method", "wbits", "abits", "bits_per_weight", "eval", "seconds"] as const) {
      if (report?.[k] === undefined) throw new Error(`${path}: not a run report (no "${k}")`);
    }
    out.push({ dir, name: dir.replace(/\/+$/, "").replace(/^.*\//, ""), report });
  }
  const names = out.map((r) => r.name);
  for (const r of out) if (names.filter((n) => n === r.name).length > 1) r.name = r.dir;
  return out;
}

/** A run's configuration without its method, as the README's tables name rows (`W4A16 g128`). */
function configOf(r: QuantizeReport): string {
  return runLabel(r).replace(/^\S+ /, "");
}

/** The model's name: its path's last part. */
function modelOf(r: QuantizeReport): string {
  return r.model.replace(/\/+$/, "").replace(/^.*\//, "");
}

/** Every key of a record field over all runs, in first-seen order. */
function keysOf(runs: RunEntry[], f: (r: QuantizeReport) => object | undefined): string[] {
  return [...new Set(runs.flatMap((r) => Object.keys(f(r.report) ?? {})))];
}

function cell(key: string, value: number | undefined, text?: string, title?: string): string {
  if (value === undefined) return `<td class="num">–</td>`;
  return `<td class="num" data-key="${esc(key)}" data-value="${value}"${
    title ? ` title="${esc(title)}"` : ""
  }>${esc(text ?? fmt(value))}</td>`;
}

function runTable(runs: RunEntry[]): string {
  const evals = keysOf(runs, (r) => r.eval), tasks = keysOf(runs, (r) => r.tasks);
  const head = ["run", "method", "model", "bits/weight", ...evals.map((e) => `ppl ${e}`)]
    .concat(tasks.map((t) => `acc ${t}`), ["seconds", "peak RSS"]);
  const rows = runs.map(({ name, report: r }) =>
    `<tr><td>${esc(name)}</td><td>${esc(runLabel(r))}</td><td>${esc(modelOf(r))}</td>${
      cell(`${name} / bits_per_weight`, r.bits_per_weight, r.bits_per_weight.toFixed(3))
    }${
      evals.map((e) => {
        const v = r.eval[e];
        return cell(`${name} / ppl ${e}`, v?.quant, undefined, v && `full precision ${fmt(v.fp)}`);
      }).join("")
    }${
      tasks.map((t) => {
        const v = r.tasks?.[t];
        return cell(
          `${name} / acc ${t}`,
          v?.quant.acc,
          v && pct(v.quant.acc),
          v && `full precision ${pct(v.fp.acc)}`,
        );
      }).join("")
    }${cell(`${name} / seconds`, r.seconds, secs(r.seconds))}${
      cell(`${name} / peak_rss_bytes`, r.peak_rss_bytes, mib(r.peak_rss_bytes))
    }</tr>`
  );
  return `<table class="grid" data-chart="runs"><tr>${
    head.map((h) => `<th>${esc(h)}</th>`).join("")
  }</tr>${rows.join("")}</table>`;
}

/**
 * The README's method table for one figure: a row per configuration, a column per model and
 * method, full precision first.
 */
function methodTable(
  id: string,
  runs: RunEntry[],
  value: (r: QuantizeReport) => { fp: number; quant: number } | undefined,
  format: (v: number) => string,
): string {
  const configs = [...new Set(runs.map((r) => configOf(r.report)))];
  const models = [...new Set(runs.map((r) => modelOf(r.report)))];
  const cols = models.flatMap((m) =>
    [...new Set(runs.filter((r) => modelOf(r.report) === m).map((r) => r.report.method))]
      .map((method) => ({ model: m, method }))
  );
  const label = (c: { model: string; method: string }) =>
    models.length > 1 ? `${c.model}: ${c.method}` : c.method;
  const fps = models.map((m) => {
    const v = runs.map((r) => modelOf(r.report) === m ? value(r.report)?.fp : undefined)
      .find((v) => v !== undefined);
    return { m, v };
  });
  const fpRow = `<tr><td>full precision</td>${
    cols.map((c) => {
      const v = fps.find((f) => f.m === c.model)?.v;
      return cell(`full precision / ${label(c)}`, v, v === undefined ? undefined : format(v));
    }).join("")
  }</tr>`;
  const rows = configs.map((cfg) =>
    `<tr><td>${esc(cfg)}</td>${
      cols.map((c) => {
        const run = runs.find((r) =>
          configOf(r.report) === cfg && modelOf(r.report) === c.model &&
          r.report.method === c.method
        );
        const v = run && value(run.report)?.quant;
        return cell(
          `${cfg} / ${label(c)}`,
          v,
          v === undefined ? undefined : format(v),
          run && `run ${run.name}`,
        );
      }).join("")
    }</tr>`
  );
  return `<table class="grid" data-chart="${esc(id)}"><tr><th>config</th>${
    cols.map((c) => `<th>${esc(label(c))}</th>`).join("")
  }</tr>${fpRow}${rows.join("")}</table>`;
}

/** The comparison page of several runs. */
export function compareHtml(
  runs: RunEntry[],
  title = `Comparing ${runs.length} run${runs.length === 1 ? "" : "s"}`,
): string {
  const color = (i: number) => PALETTE[i % PALETTE.length];
  const evals = keysOf(runs, (r) => r.eval), tasks = keysOf(runs, (r) => r.tasks);
  const body: string[] = [
    `<header><h1>${esc(title)}</h1><p>qllm-deno · ${
      runs.map((r) => `<code>${esc(r.dir)}</code>`).join(" ")
    }</p></header>`,
    section(
      "runs",
      "Runs",
      runTable(runs),
      "Quantized figures; hover a cell for the full-precision one.",
    ),
  ];
  for (const e of evals) {
    const ppl: HBar[] = runs.flatMap(({ name, report: r }, i) =>
      r.eval[e] ? [{ key: name, label: name, value: r.eval[e].quant, color: color(i) }] : []
    );
    const fp = runs.map((r) => r.report.eval[e]?.fp).find((v) => v !== undefined);
    if (fp !== undefined) {
      ppl.unshift({ key: "full precision", label: "full precision", value: fp, color: MUTED });
    }
    const points = runs.flatMap(({ name, report: r }, i) =>
      r.eval[e]
        ? [{ key: name, label: name, x: r.bits_per_weight, y: r.eval[e].quant, color: color(i) }]
        : []
    );
    body.push(section(
      `ppl-${e}`,
      `Perplexity on ${e}`,
      methodTable(`table-ppl-${e}`, runs, (r) => r.eval[e], (v) => v.toFixed(3)) +
        `<div class="row"><div><h3>By run (lower is better)</h3>${
          hbars({
            id: `ppl-${e}`,
            title: `perplexity on ${e}`,
            bars: ppl,
            log: wantsLog(ppl.map((b) => b.value)),
            width: 480,
          })
        }</div><div><h3>Bits per weight against perplexity</h3>${
          scatter({
            id: `tradeoff-${e}`,
            title: `bits per weight against perplexity on ${e}`,
            points,
            xLabel: "stored bits per weight",
            yLabel: "perplexity",
            logY: wantsLog(points.map((p) => p.y)),
            width: 480,
          })
        }</div></div>`,
      "Rows are configurations and columns methods, as in the README's tables; the scatter " +
        "shows what each run's bits bought.",
    ));
  }
  for (const t of tasks) {
    const bars: HBar[] = runs.flatMap(({ name, report: r }, i) => {
      const v = r.tasks?.[t];
      return v
        ? [{ key: name, label: name, value: v.quant.acc, err: v.quant.acc_stderr, color: color(i) }]
        : [];
    });
    const fp = runs.map((r) => r.report.tasks?.[t]?.fp).find((v) => v !== undefined);
    if (fp) {
      bars.unshift({
        key: "full precision",
        label: "full precision",
        value: fp.acc,
        err: fp.acc_stderr,
        color: MUTED,
      });
    }
    body.push(section(
      `acc-${t}`,
      `Zero-shot accuracy on ${t}`,
      methodTable(`table-acc-${t}`, runs, (r) => {
        const v = r.tasks?.[t];
        return v && { fp: v.fp.acc, quant: v.quant.acc };
      }, pct) +
        hbars({ id: `acc-${t}`, title: `accuracy on ${t}`, bars, max: 1, format: pct, width: 480 }),
      "acc (argmax of the summed log-likelihoods); whiskers: ± one standard error.",
    ));
  }
  const time = runs.map(({ name, report: r }, i) => ({
    key: name,
    label: name,
    value: r.seconds,
    color: color(i),
  }));
  const memory = runs.map(({ name, report: r }, i) => ({
    key: name,
    label: name,
    value: r.peak_rss_bytes,
    color: color(i),
  }));
  body.push(section(
    "cost",
    "Time and memory",
    legend(runs.map((r, i) => ({ label: `${r.name}: ${runLabel(r.report)}`, color: color(i) }))) +
      `<div class="row"><div><h3>Seconds, whole run</h3>${
        hbars({ id: "seconds", title: "seconds per run", bars: time, format: secs, width: 480 })
      }</div><div><h3>Peak RSS</h3>${
        hbars({
          id: "peak-rss",
          title: "peak RSS per run",
          bars: memory,
          format: mib,
          unit: 2 ** 20,
          width: 480,
        })
      }</div></div>`,
  ));
  return htmlPage(title, body.join("\n"));
}
