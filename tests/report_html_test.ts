/**
 * The HTML reports in a real browser: two tiny runs on stories260k (GPTQ, layer-wise; OmniQuant
 * with learned clipping, block-wise, at W3A8) with a zero-shot task, their `report.html`, and a
 * `pipelines/compare.ts` page of both, opened in headless Chromium over its DevTools protocol:
 * no console errors, every chart rendered, and each chart holds exactly report.json's numbers
 * (read back from the marks' data attributes).
 */
import assert from "node:assert/strict";
import { Chromium, type Page } from "../cli/chromium.ts";
import { fixtureModel, fixtureText, TINY_TASK } from "../fixtures/paths.ts";
import { GPTQ } from "../methods/gptq.ts";
import { OMNIQUANT } from "../methods/omniquant.ts";
import type { MethodRun } from "../methods/method.ts";
import { LINEAR_NAMES } from "../models/config.ts";
import { runPipeline } from "./command.ts";
import { planFromFlags } from "../run/main.ts";
import { runQuantization } from "../run/quantize.ts";
import type { QuantizeReport } from "../run/report.ts";

const MODEL = fixtureModel("stories260k");

/** Every chart's marks: chart id → data key → value (or values, for a line). */
type Marks = Record<string, Record<string, number | number[] | string>>;

/** Reads every mark of every `[data-chart]` element, and the rendered size of each chart. */
async function readMarks(page: Page): Promise<{ marks: Marks; sizes: Record<string, number[]> }> {
  return await page.evaluate(`(() => {
    const marks = {}, sizes = {};
    for (const chart of document.querySelectorAll("[data-chart]")) {
      const id = chart.getAttribute("data-chart");
      const r = chart.getBoundingClientRect();
      sizes[id] = [r.width, r.height];
      const m = marks[id] = {};
      for (const el of chart.querySelectorAll("[data-key]")) {
        const k = el.getAttribute("data-key");
        if (el.hasAttribute("data-value")) m[k] = Number(el.getAttribute("data-value"));
        else if (el.hasAttribute("data-values")) m[k] = JSON.parse(el.getAttribute("data-values"));
        else if (el.hasAttribute("data-x")) m[k] = [Number(el.getAttribute("data-x")), Number(el.getAttribute("data-y"))];
        else m[k] = el.textContent;
      }
    }
    return { marks, sizes };
  })()`);
}

/** Asserts that a chart's marks are exactly `expected` (same keys, same numbers). */
function assertChart(marks: Marks, id: string, expected: Record<string, number | number[]>) {
  assert.ok(marks[id], `no chart "${id}" on the page (charts: ${Object.keys(marks)})`);
  assert.deepEqual(marks[id], expected, `chart "${id}"`);
}

/** What each chart of a run's page must hold, derived from its report.json. */
function expectedCharts(r: QuantizeReport): Record<string, Record<string, number | number[]>> {
  const out: Record<string, Record<string, number | number[]>> = {};
  out.ppl = {};
  for (const [name, e] of Object.entries(r.eval)) {
    out.ppl[`${name} fp`] = e.fp;
    out.ppl[`${name} quant`] = e.quant;
  }
  out.acc = {};
  for (const [name, t] of Object.entries(r.tasks ?? {})) {
    for (const m of t.fp.metrics) {
      out.acc[`${name} fp ${m}`] = t.fp[m];
      out.acc[`${name} quant ${m}`] = t.quant[m];
    }
  }
  out.bits = {};
  for (const [k, v] of Object.entries(r.bits_by_layer ?? {})) {
    const [, i, layer] = k.match(/^model\.layers\.(\d+)\.(.+)\.weight$/)!;
    out.bits[`${i}.${layer}`] = v;
  }
  out.time = { ...r.timing };
  out.memory = { ...r.peak_rss_by_phase };
  out["time-blocks"] = {};
  for (const b of r.blocks) {
    const k = `block ${b.block} · ${b.stage}`;
    out["time-blocks"][k] = ((out["time-blocks"][k] as number | undefined) ?? 0) + b.seconds;
  }
  return out;
}

async function quantize(out: string, plan: MethodRun) {
  return await runQuantization({
    ...plan,
    model: MODEL,
    out,
    calib: { file: fixtureText("tinystories_train_sample.txt"), nsamples: 4, seqlen: 64, seed: 0 },
    eval: { files: [fixtureText("tinystories_val.txt")], windows: 4, tasks: [TINY_TASK] },
    quiet: true,
  });
}

Deno.test("run reports and the comparison page, in headless Chromium", async (t) => {
  const tmp = await Deno.makeTempDir({ prefix: "report_html_test_" });
  const browser = await Chromium.launch();
  try {
    const gptqFlags = ["--wbits", "3", "--group-size", "32", "--allow-partial-group"];
    const gptq = await quantize(`${tmp}/gptq`, planFromFlags(GPTQ, gptqFlags, `${tmp}/gptq`));
    const omni = await quantize(
      `${tmp}/omni`,
      planFromFlags(OMNIQUANT, [
        "--wbits",
        "3",
        "--abits",
        "8",
        "--lwc",
        "--epochs",
        "2",
      ], `${tmp}/omni`),
    );

    for (const [name, report] of [["gptq", gptq], ["omni", omni]] as const) {
      await t.step(`${name}: report.html beside report.json, nothing half-written`, async () => {
        const files = [...Deno.readDirSync(`${tmp}/${name}`)].map((e) => e.name).sort();
        assert.ok(files.includes("report.html") && files.includes("report.json"), `${files}`);
        assert.ok(!files.some((f) => f.endsWith(".tmp")), `${files}`);
        assert.deepEqual(
          JSON.parse(await Deno.readTextFile(`${tmp}/${name}/report.json`)),
          JSON.parse(JSON.stringify(report)),
        );
        const html = await Deno.readTextFile(`${tmp}/${name}/report.html`);
        assert.doesNotMatch(html, /<script|https?:\/\/|NaN|undefined/, "self-contained and whole");
      });

      await t.step(`${name}: every chart holds report.json's numbers`, async () => {
        const page = await browser.open(`file://${tmp}/${name}/report.html`);
        assert.deepEqual(page.errors, []);
        const { marks, sizes } = await readMarks(page);
        for (const [id, [w, h]] of Object.entries(sizes)) {
          assert.ok(w > 100 && h > 50, `chart ${id} rendered ${w} × ${h}`);
        }
        for (const [id, expected] of Object.entries(expectedCharts(report))) {
          assertChart(marks, id, expected);
        }
        assert.equal(marks.settings.method, report.method);
        assert.ok(Object.keys(marks.bits).length === 5 * 7, "35 linears in stories260k");
        // Stage peaks: each stage's highest over its blocks, and present for every stage.
        for (const b of report.blocks) {
          assert.ok(typeof b.peak_rss_bytes === "number", `${b.stage} block ${b.block} peak RSS`);
          assert.ok(report.peak_rss_by_phase![`stage_${b.stage}`] >= (b.peak_rss_bytes as number));
        }
        assert.ok(report.peak_rss_bytes >= Math.max(...Object.values(report.peak_rss_by_phase!)));
        if (name === "gptq") {
          // the heat map: every linear of every block, GPTQ's own reports
          const cells: Record<string, number> = {};
          for (const b of report.blocks.filter((b) => b.stage === "gptq")) {
            for (const l of LINEAR_NAMES) {
              cells[`block ${b.block} / ${l}`] = b.layers![l].rel_output_error as number;
            }
          }
          assertChart(marks, "error", cells);
          assert.equal(marks.loss, undefined, "no loss curves for a layer-wise method");
        } else {
          // learned: final loss and block output error per block; the loss curves
          const cells: Record<string, number> = {}, curves: Record<string, number[]> = {};
          for (const b of report.blocks) {
            if (b.stage === "omniquant") {
              cells[`block ${b.block} / omniquant loss`] = b.last_loss as number;
              curves[`block ${b.block}`] = b.loss_curve as number[];
              assert.equal((b.loss_curve as number[]).length, 2);
            }
            if (b.stage === "propagate") {
              cells[`block ${b.block} / block output`] = b.output_rel_mse as number;
            }
          }
          assertChart(marks, "error", cells);
          assertChart(marks, "loss", curves);
        }
      });
    }

    await t.step("compare.ts: one page of both runs", async () => {
      const out = `${tmp}/compare.html`;
      const cmd = await runPipeline("compare", [`${tmp}/gptq`, `${tmp}/omni`, "--out", out]);
      assert.equal(cmd.code, 0, cmd.stderr);
      const page = await browser.open(`file://${out}`);
      assert.deepEqual(page.errors, []);
      const { marks } = await readMarks(page);
      const val = "tinystories_val.txt";
      const runs = { gptq, omni };
      const table: Record<string, number> = {}, ppl: Record<string, number> = {};
      const tradeoff: Record<string, number[]> = {}, pivot: Record<string, number> = {};
      ppl["full precision"] = gptq.eval[val].fp;
      pivot["full precision / gptq"] = pivot["full precision / omniquant"] = gptq.eval[val].fp;
      for (const [name, r] of Object.entries(runs)) {
        table[`${name} / bits_per_weight`] = r.bits_per_weight;
        table[`${name} / ppl ${val}`] = r.eval[val].quant;
        table[`${name} / acc tiny_stories`] = r.tasks!.tiny_stories.quant.acc;
        table[`${name} / seconds`] = r.seconds;
        table[`${name} / peak_rss_bytes`] = r.peak_rss_bytes;
        ppl[name] = r.eval[val].quant;
        tradeoff[name] = [r.bits_per_weight, r.eval[val].quant];
      }
      pivot["W3A16 g32 / gptq"] = gptq.eval[val].quant;
      pivot["W3A8 / omniquant"] = omni.eval[val].quant;
      assertChart(marks, "runs", table);
      assertChart(marks, `ppl-${val}`, ppl);
      assertChart(marks, `tradeoff-${val}`, tradeoff);
      assertChart(marks, `table-ppl-${val}`, pivot);
    });

    await t.step("compare.ts replaces its own page, refuses a file of the user's", async () => {
      const ours = `${tmp}/compare.html`, mine = `${tmp}/mine.html`;
      const again = await runPipeline("compare", [`${tmp}/gptq`, "--out", ours]);
      assert.equal(again.code, 0, again.stderr);
      assert.match(await Deno.readTextFile(ours), /Comparing 1 run</);
      await Deno.writeTextFile(mine, "<p>my notes</p>\n");
      const refused = await runPipeline("compare", [`${tmp}/gptq`, "--out", mine]);
      assert.equal(refused.code, 2);
      assert.match(refused.stderr, new RegExp(`--out ${mine}: exists and is not a page`));
      assert.equal(await Deno.readTextFile(mine), "<p>my notes</p>\n");
    });

    await t.step("compare.ts names a directory without a report", async () => {
      const cmd = await runPipeline("compare", [tmp]);
      const err = cmd.stderr;
      assert.notEqual(cmd.code, 0);
      assert.match(err, new RegExp(`${tmp}.*report\\.json`));
      assert.doesNotMatch(err, /^\s+at /m);
    });
  } finally {
    await browser.close();
    await Deno.remove(tmp, { recursive: true });
  }
});
