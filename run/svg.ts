/**
 * Small charts as inline SVG strings, for the run report and the comparison page: horizontal
 * bars (grouped, with error whiskers), columns, stacked columns, lines and a heat map. Each
 * chart is an `<svg data-chart=ID>` whose marks carry `data-key` and the exact number they draw
 * (`data-value`, or `data-values` for a line), with a `<title>` a person sees on hover, so a
 * test can read every plotted number back from the page.
 * @module
 */

/** Escapes text for HTML and SVG content and attribute values. */
export function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Categorical colours (Tableau 10). */
export const PALETTE = [
  "#4e79a7",
  "#f28e2b",
  "#e15759",
  "#76b7b2",
  "#59a14f",
  "#edc948",
  "#b07aa1",
  "#ff9da7",
  "#9c755f",
  "#bab0ac",
];

/** Grey for "before" and reference marks. */
export const MUTED = "#b8bec6";

const FONT = `font-family="system-ui, -apple-system, 'Segoe UI', sans-serif"`;

/** A number with 4 significant digits, in exponent form when tiny or huge. */
export function fmt(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  return Number(v.toPrecision(4)).toLocaleString("en-US", { maximumFractionDigits: 4 });
}

/** A mark's data attributes: its key and exact value (numbers as JavaScript prints them). */
function data(key: string, value: number | readonly number[]): string {
  return Array.isArray(value)
    ? `data-key="${esc(key)}" data-values="${esc(JSON.stringify(value))}"`
    : `data-key="${esc(key)}" data-value="${value}"`;
}

/** A value axis: maps data to pixels, with tick values. */
interface Scale {
  at(v: number): number;
  ticks: number[];
}

/** "Nice" ticks covering [lo, hi] (1, 2, 5 × 10^k steps). */
function niceTicks(lo: number, hi: number, count: number): number[] {
  if (hi <= lo) hi = lo + 1;
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  const out: number[] = [];
  for (let v = Math.floor(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  if (out[out.length - 1] < hi) out.push(Number((out[out.length - 1] + step).toPrecision(12)));
  return out;
}

/** A linear scale from 0 (or the data's minimum) to a nice maximum, or a log10 scale. */
function scale(values: number[], from: number, to: number, log: boolean, zero = true): Scale {
  const finite = values.filter((v) => Number.isFinite(v) && (!log || v > 0));
  if (log) {
    const lo = Math.floor(Math.log10(Math.min(...finite, 1e300)));
    let hi = Math.ceil(Math.log10(Math.max(...finite, 1e-300)));
    if (hi <= lo) hi = lo + 1;
    const ticks = Array.from({ length: hi - lo + 1 }, (_, i) => 10 ** (lo + i));
    const at = (v: number) =>
      from + ((Math.log10(Math.max(v, 10 ** lo)) - lo) / (hi - lo)) * (to - from);
    return { at, ticks };
  }
  const min = zero ? Math.min(0, ...finite) : Math.min(...finite);
  const ticks = niceTicks(min, Math.max(...finite, min + 1e-12), 4);
  const lo = ticks[0], hi = ticks[ticks.length - 1];
  return { at: (v) => from + ((v - lo) / (hi - lo)) * (to - from), ticks };
}

/** Should a positive series be drawn on a log axis (it spans more than two decades)? */
export function wantsLog(values: number[]): boolean {
  const pos = values.filter((v) => v > 0 && Number.isFinite(v));
  return pos.length > 1 && Math.max(...pos) / Math.min(...pos) > 100;
}

/** Horizontal grid lines and their labels at a vertical scale's ticks. */
function yGrid(s: Scale, x0: number, x1: number, format: (v: number) => string): string {
  return s.ticks.map((t) =>
    `<line x1="${x0}" x2="${x1}" y1="${s.at(t)}" y2="${s.at(t)}" stroke="#eceef1"/>` +
    `<text x="${x0 - 6}" y="${s.at(t) + 4}" text-anchor="end" fill="#777" font-size="11">${
      esc(format(t))
    }</text>`
  ).join("");
}

/** A label under the plot, centred on x. */
function under(x: number, y: number, text: string, fill = "#555"): string {
  return `<text x="${x}" y="${y}" text-anchor="middle" fill="${fill}" font-size="11">${
    esc(text)
  }</text>`;
}

/** The vertical axis's title, rotated, left of a plot spanning [top, bottom]. */
function yTitle(text: string, top: number, bottom: number): string {
  const cy = (top + bottom) / 2;
  return `<text x="12" y="${cy}" transform="rotate(-90 12 ${cy})" text-anchor="middle" ` +
    `fill="#555" font-size="11">${esc(text)}</text>`;
}

function svgOpen(id: string, w: number, h: number, label: string): string {
  return `<svg data-chart="${esc(id)}" viewBox="0 0 ${w} ${h}" width="${w}" height="${h}" ` +
    `role="img" aria-label="${esc(label)}" ${FONT} font-size="12">`;
}

/** A legend of coloured swatches, as HTML. */
export function legend(items: { label: string; color: string }[]): string {
  return `<div class="legend">${
    items.map((i) => `<span><i style="background:${i.color}"></i>${esc(i.label)}</span>`).join("")
  }</div>`;
}

/** One horizontal bar. */
export interface HBar {
  /** Data key (unique within the chart). */
  key: string;
  /** Label left of the bar. */
  label: string;
  value: number;
  color?: string;
  /** Rows of one group are drawn together under the group's name. */
  group?: string;
  /** ± half-width of an error whisker. */
  err?: number | null;
}

/** Horizontal bars with their values at the ends; groups share a heading. */
export function hbars(o: {
  id: string;
  title: string;
  bars: HBar[];
  format?: (v: number) => string;
  width?: number;
  log?: boolean;
  /** A fixed axis maximum (e.g. 1 for accuracies). */
  max?: number;
  /** The axis's ticks are round in this unit (e.g. 2^20 for MiB); marks keep the raw values. */
  unit?: number;
}): string {
  const format = o.format ?? fmt;
  const W = o.width ?? 520, labelW = 150, valueW = 78, row = 20;
  const groups: string[] = [];
  for (const b of o.bars) {
    if (b.group !== undefined && !groups.includes(b.group)) groups.push(b.group);
  }
  const rows = o.bars.length + groups.length;
  const top = 6, H = top + rows * row + 24;
  const extent = o.bars.map((b) => b.value + (b.err ?? 0)).concat(
    o.max === undefined ? [] : [o.max],
  );
  const u = o.unit ?? 1;
  const inUnit = scale(extent.map((v) => v / u), labelW, W - valueW, !!o.log);
  const s: Scale = { at: (v) => inUnit.at(v / u), ticks: inUnit.ticks.map((t) => t * u) };
  let y = top;
  const parts: string[] = [];
  const drawBar = (b: HBar) => {
    const x0 = s.at(o.log ? s.ticks[0] : 0), x1 = s.at(b.value);
    const title = `${b.group ? `${b.group} · ` : ""}${b.label}: ${format(b.value)}${
      b.err ? ` ± ${format(b.err)}` : ""
    }`;
    parts.push(
      `<text x="${labelW - 8}" y="${y + 14}" text-anchor="end" fill="#333">${esc(b.label)}</text>`,
      `<rect ${data(b.key, b.value)} x="${Math.min(x0, x1)}" y="${y + 3}" width="${
        Math.max(1, Math.abs(x1 - x0))
      }" height="${row - 6}" rx="2" fill="${b.color ?? PALETTE[0]}"><title>${
        esc(title)
      }</title></rect>`,
    );
    if (b.err) {
      const ea = s.at(b.value - b.err), eb = s.at(b.value + b.err), cy = y + row / 2;
      parts.push(
        `<path d="M${ea} ${cy}H${eb}M${ea} ${cy - 4}v8M${eb} ${
          cy - 4
        }v8" stroke="#333" stroke-width="1"/>`,
      );
    }
    const tx = Math.max(x0, x1, b.err ? s.at(b.value + b.err) : 0) + 5;
    parts.push(`<text x="${tx}" y="${y + 14}" fill="#555">${esc(format(b.value))}</text>`);
    y += row;
  };
  for (const b of o.bars.filter((b) => b.group === undefined)) drawBar(b);
  for (const g of groups) {
    parts.push(`<text x="4" y="${y + 14}" font-weight="600" fill="#222">${esc(g)}</text>`);
    y += row;
    for (const b of o.bars.filter((b) => b.group === g)) drawBar(b);
  }
  const axisY = y + 4;
  const grid = s.ticks.map((t) =>
    `<line x1="${s.at(t)}" x2="${s.at(t)}" y1="${top}" y2="${axisY}" stroke="#eceef1"/>` +
    `<text x="${s.at(t)}" y="${axisY + 14}" text-anchor="middle" fill="#777" font-size="11">${
      esc(format(t))
    }</text>`
  ).join("");
  return `${svgOpen(o.id, W, H, o.title)}${grid}${parts.join("")}</svg>`;
}

/** One column of a column chart. */
export interface Column {
  key: string;
  value: number;
  color: string;
  /** Tooltip text (the value is appended). */
  title: string;
  /** Columns of one group sit together over the group's label. */
  group: string;
}

/** Vertical columns in groups (e.g. the linears of each block), with an optional reference line. */
export function columns(o: {
  id: string;
  title: string;
  columns: Column[];
  yLabel: string;
  format?: (v: number) => string;
  width?: number;
  reference?: { value: number; label: string };
}): string {
  const format = o.format ?? fmt;
  const groups = [...new Set(o.columns.map((c) => c.group))];
  // The reference line's label sits right of the plot.
  const left = 48, right = o.reference ? 100 : 12, top = 12, bottom = 34, gap = 10;
  const n = o.columns.length;
  const W = o.width ?? Math.max(420, Math.min(1040, left + right + n * 16 + groups.length * gap));
  const H = 220;
  const s = scale(
    o.columns.map((c) => c.value).concat(o.reference ? [o.reference.value] : []),
    H - bottom,
    top,
    false,
  );
  const colW = (W - left - right - gap * groups.length) / n;
  const parts: string[] = [yGrid(s, left, W - right, format)];
  let x = left + gap / 2;
  for (const g of groups) {
    const members = o.columns.filter((c) => c.group === g);
    const x0 = x;
    for (const c of members) {
      const y = s.at(c.value), y0 = s.at(0);
      parts.push(
        `<rect ${data(c.key, c.value)} x="${x + 0.5}" y="${Math.min(y, y0)}" width="${
          Math.max(1, colW - 1)
        }" height="${Math.max(1, Math.abs(y0 - y))}" fill="${c.color}"><title>${
          esc(`${c.title}: ${format(c.value)}`)
        }</title></rect>`,
      );
      x += colW;
    }
    parts.push(under((x0 + x) / 2, H - bottom + 15, g));
    x += gap;
  }
  if (o.reference) {
    const y = s.at(o.reference.value);
    parts.push(
      `<line x1="${left}" x2="${
        W - right
      }" y1="${y}" y2="${y}" stroke="#333" stroke-dasharray="4 3"/>`,
      `<text x="${W - right + 6}" y="${y - 3}" fill="#333" font-size="11">${
        esc(o.reference.label)
      }</text>`,
      `<text x="${W - right + 6}" y="${y + 11}" fill="#333" font-size="11" font-weight="600">${
        esc(format(o.reference.value))
      }</text>`,
    );
  }
  parts.push(yTitle(o.yLabel, top, H - bottom));
  return `${svgOpen(o.id, W, H, o.title)}${parts.join("")}</svg>`;
}

/** Stacked columns: one column per category, one coloured segment per series. */
export function stacked(o: {
  id: string;
  title: string;
  categories: string[];
  series: { label: string; color: string; values: (number | undefined)[] }[];
  yLabel: string;
  format?: (v: number) => string;
  width?: number;
}): string {
  const format = o.format ?? fmt;
  const left = 48, right = 12, top = 12, bottom = 34, H = 220;
  const W = o.width ?? Math.max(320, Math.min(1040, left + right + o.categories.length * 34));
  const totals = o.categories.map((_, i) =>
    o.series.reduce((sum, s) => sum + (s.values[i] ?? 0), 0)
  );
  const s = scale(totals, H - bottom, top, false);
  const step = (W - left - right) / o.categories.length;
  const colW = Math.min(40, step * 0.7);
  const parts: string[] = [yGrid(s, left, W - right, format)];
  o.categories.forEach((cat, i) => {
    const x = left + i * step + (step - colW) / 2;
    let acc = 0;
    for (const ser of o.series) {
      const v = ser.values[i];
      if (v === undefined) continue;
      const y1 = s.at(acc), y2 = s.at(acc + v);
      parts.push(
        `<rect ${data(`${cat} · ${ser.label}`, v)} x="${x}" y="${y2}" width="${colW}" height="${
          Math.max(0.5, y1 - y2)
        }" fill="${ser.color}"><title>${esc(`${cat} · ${ser.label}: ${format(v)}`)}</title></rect>`,
      );
      acc += v;
    }
    parts.push(under(x + colW / 2, H - bottom + 15, cat));
  });
  parts.push(yTitle(o.yLabel, top, H - bottom));
  return `${svgOpen(o.id, W, H, o.title)}${parts.join("")}</svg>`;
}

/** Lines over steps 0, 1, …: one per series, on a log axis when `log`. */
export function lines(o: {
  id: string;
  title: string;
  series: { key: string; label: string; color: string; values: number[] }[];
  xLabel: string;
  yLabel: string;
  log?: boolean;
  width?: number;
}): string {
  const W = o.width ?? 520, H = 240, left = 56, right = 12, top = 12, bottom = 38;
  const all = o.series.flatMap((s) => s.values);
  const n = Math.max(2, ...o.series.map((s) => s.values.length));
  const y = scale(all, H - bottom, top, !!o.log, false);
  const x = (i: number) => left + (i / (n - 1)) * (W - left - right);
  const parts: string[] = [yGrid(y, left, W - right, fmt)];
  for (const t of niceTicks(0, n - 1, Math.min(n - 1, 6)).filter((t) => t <= n - 1)) {
    parts.push(under(x(t), H - bottom + 15, String(t), "#777"));
  }
  for (const s of o.series) {
    const d = s.values.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)} ${y.at(v).toFixed(1)}`)
      .join("");
    parts.push(
      `<path ${
        data(s.key, s.values)
      } d="${d}" fill="none" stroke="${s.color}" stroke-width="1.8"><title>${
        esc(`${s.label}: ${s.values.map(fmt).join(" → ")}`)
      }</title></path>`,
    );
  }
  parts.push(under((left + W - right) / 2, H - 6, o.xLabel), yTitle(o.yLabel, top, H - bottom));
  return `${svgOpen(o.id, W, H, o.title)}${parts.join("")}</svg>`;
}

/** Viridis, sampled: the colour of t ∈ [0, 1]. */
function viridis(t: number): string {
  const stops = [
    [68, 1, 84],
    [59, 82, 139],
    [33, 145, 140],
    [94, 201, 98],
    [253, 231, 37],
  ];
  const u = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(u)), f = u - i;
  const c = stops[i].map((a, k) => Math.round(a + (stops[i + 1][k] - a) * f));
  return `rgb(${c.join(",")})`;
}

/** A heat map of rows × columns on a log colour scale; empty cells are left blank. */
export function heatmap(o: {
  id: string;
  title: string;
  rows: string[];
  cols: string[];
  /** `cells[r][c]`, null where there is no figure. */
  cells: (number | null)[][];
  /** Data key of a cell. */
  key: (row: string, col: string) => string;
}): string {
  const cellW = Math.max(56, Math.min(96, 640 / o.cols.length)), cellH = 26;
  const left = 74, top = 58, W = left + cellW * o.cols.length + 90;
  const H = Math.max(top + cellH * o.rows.length + 12, 180);
  const vals = o.cells.flat().filter((v): v is number => v !== null && v > 0);
  const lo = Math.log10(Math.min(...vals, 1)), hi = Math.log10(Math.max(...vals, 1e-12));
  const t = (v: number) => hi > lo ? (Math.log10(v) - lo) / (hi - lo) : 0.5;
  const parts: string[] = [];
  o.cols.forEach((c, j) => {
    const cx = left + cellW * (j + 0.5);
    parts.push(
      `<text x="${cx}" y="${top - 8}" text-anchor="start" transform="rotate(-30 ${cx} ${
        top - 8
      })" fill="#444" font-size="11">${esc(c)}</text>`,
    );
  });
  o.rows.forEach((r, i) => {
    const y = top + i * cellH;
    parts.push(
      `<text x="${left - 8}" y="${
        y + cellH / 2 + 4
      }" text-anchor="end" fill="#444" font-size="11">${esc(r)}</text>`,
    );
    o.cols.forEach((c, j) => {
      const v = o.cells[i][j];
      if (v === null) return;
      const fill = v > 0 ? viridis(t(v)) : "#f0f0f0";
      const ink = v > 0 && t(v) > 0.6 ? "#222" : "#fff";
      const x = left + j * cellW;
      parts.push(
        `<rect ${data(o.key(r, c), v)} x="${x + 1}" y="${y + 1}" width="${cellW - 2}" height="${
          cellH - 2
        }" rx="2" fill="${fill}"><title>${esc(`${r} · ${c}: ${fmt(v)}`)}</title></rect>`,
        `<text x="${x + cellW / 2}" y="${
          y + cellH / 2 + 4
        }" text-anchor="middle" fill="${ink}" font-size="10" pointer-events="none">${
          esc(fmt(v))
        }</text>`,
      );
    });
  });
  // colour bar
  const bx = left + cellW * o.cols.length + 24, by = top, bh = Math.max(90, cellH * o.rows.length);
  for (let k = 0; k < 20; k++) {
    parts.push(
      `<rect x="${bx}" y="${by + (bh * (19 - k)) / 20}" width="12" height="${
        bh / 20 + 0.5
      }" fill="${viridis(k / 19)}"/>`,
    );
  }
  if (vals.length) {
    parts.push(
      `<text x="${bx + 16}" y="${by + 8}" fill="#555" font-size="10">${esc(fmt(10 ** hi))}</text>`,
      `<text x="${bx + 16}" y="${by + bh}" fill="#555" font-size="10">${esc(fmt(10 ** lo))}</text>`,
      `<text x="${bx + 16}" y="${by + bh / 2 + 4}" fill="#999" font-size="10">log</text>`,
    );
  }
  return `${svgOpen(o.id, W, H, o.title)}${parts.join("")}</svg>`;
}

/** Points (x, y) with labels, on a log y axis when `logY`. */
export function scatter(o: {
  id: string;
  title: string;
  points: { key: string; label: string; x: number; y: number; color: string }[];
  xLabel: string;
  yLabel: string;
  logY?: boolean;
  width?: number;
}): string {
  const W = o.width ?? 520, H = 280, left = 56, right = 16, top = 14, bottom = 40;
  const xs = scale(o.points.map((p) => p.x), left, W - right, false, false);
  const ys = scale(o.points.map((p) => p.y), H - bottom, top, !!o.logY, false);
  const parts: string[] = [yGrid(ys, left, W - right, fmt)];
  for (const t of xs.ticks) parts.push(under(xs.at(t), H - bottom + 15, fmt(t), "#777"));
  const placed: { x: number; y: number }[] = [];
  for (const p of o.points) {
    const cx = xs.at(p.x), cy = ys.at(p.y);
    // Labels of points that (nearly) coincide go one under another.
    let ly = cy + 4;
    while (placed.some((q) => Math.abs(q.x - cx) < 60 && Math.abs(q.y - ly) < 12)) ly += 13;
    placed.push({ x: cx, y: ly });
    parts.push(
      `<circle data-key="${esc(p.key)}" data-x="${p.x}" data-y="${p.y}" cx="${cx}" cy="${cy}" ` +
        `r="5" fill="${p.color}" stroke="#fff"><title>${
          esc(`${p.label}: ${fmt(p.x)} bits/weight, ${fmt(p.y)}`)
        }</title></circle>`,
      `<text x="${cx + 8}" y="${ly}" fill="#333" font-size="11">${esc(p.label)}</text>`,
    );
  }
  parts.push(under((left + W - right) / 2, H - 6, o.xLabel), yTitle(o.yLabel, top, H - bottom));
  return `${svgOpen(o.id, W, H, o.title)}${parts.join("")}</svg>`;
}
