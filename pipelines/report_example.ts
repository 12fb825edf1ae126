/**
 * The README's example report, made the way a user makes one: three small runs on the
 * stories260k fixture (RTN and GPTQ at 3 bits with groups of 32, QLLM at W4A8), each with the
 * hand-made zero-shot task, then headless Chromium's screenshots of GPTQ's `report.html` and of
 * the `compare.ts` page of all three. `deno task report-example [--out-dir docs]`.
 * @module
 */
import { Chromium } from "../cli/chromium.ts";
import { parseFlags, runMain } from "../cli/flags.ts";
import { Progress } from "../cli/progress.ts";
import { fixtureModel, fixtureText, PROJECT_ROOT, TINY_TASK } from "../fixtures/paths.ts";
import { GPTQ } from "../methods/gptq.ts";
import type { Method, MethodOptions } from "../methods/method.ts";
import { QLLM } from "../methods/qllm.ts";
import { RTN } from "../methods/rtn.ts";
import { compareHtml, readRuns } from "../run/compare.ts";
import { planFromFlags } from "../run/main.ts";
import { runQuantization } from "../run/quantize.ts";
import { writeAtomically } from "../run/report.ts";

const USAGE = `usage: deno run -A pipelines/report_example.ts [--out-dir DIR] [--runs DIR]
  --out-dir DIR        where the PNGs go (default docs/)
  --runs DIR           where the runs are written (default out/report-example)`;

// stories260k's down_proj has 172 inputs: its last group of 32 is partial.
const GROUPS = ["--wbits", "3", "--group-size", "32", "--allow-partial-group"];
const RUNS: [string, Method<MethodOptions>, string[]][] = [
  ["rtn-w3g32", RTN as Method<MethodOptions>, GROUPS],
  ["gptq-w3g32", GPTQ as Method<MethodOptions>, [...GROUPS, "--act-order"]],
  ["qllm-w4a8", QLLM as Method<MethodOptions>, ["--wbits", "4", "--abits", "8", "--epochs", "4"]],
];

async function main(argv: string[]) {
  const f = parseFlags(argv, {
    "out-dir": { type: "string" },
    runs: { type: "string" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) return console.log(USAGE);
  const outDir = f["out-dir"] ?? `${PROJECT_ROOT}/docs`;
  const runsDir = f.runs ?? `${PROJECT_ROOT}/out/report-example`;
  const progress = new Progress();
  const dirs: string[] = [];
  for (const [name, method, flags] of RUNS) {
    const out = `${runsDir}/${name}`;
    progress.log(`${name}: ${method.name} ${flags.join(" ")}`);
    await runQuantization({
      ...planFromFlags(method, flags, out),
      model: fixtureModel("stories260k"),
      out,
      calib: { file: fixtureText("tinystories_train_sample.txt"), nsamples: 32, seed: 0 },
      eval: { files: [fixtureText("tinystories_val.txt")], windows: 64, tasks: [TINY_TASK] },
      quiet: true,
    });
    dirs.push(out);
  }
  const compare = `${runsDir}/compare.html`;
  await writeAtomically(
    compare,
    compareHtml(await readRuns(dirs), "RTN, GPTQ and QLLM on stories260k"),
  );
  await Deno.mkdir(outDir, { recursive: true });
  const browser = await Chromium.launch();
  try {
    for (
      const [page, png] of [
        [`${dirs[1]}/report.html`, `${outDir}/report-example.png`],
        [compare, `${outDir}/compare-example.png`],
      ]
    ) {
      const p = await browser.open(`file://${await Deno.realPath(page)}`, { width: 1160 });
      if (p.errors.length) throw new Error(`${page}: ${p.errors.join("; ")}`);
      const bytes = await p.screenshot();
      await Deno.writeFile(`${png}.tmp`, bytes);
      await Deno.rename(`${png}.tmp`, png);
      progress.log(`${png}: ${(bytes.length / 1024).toFixed(0)} KiB (from ${page})`);
    }
  } finally {
    await browser.close();
  }
}

if (import.meta.main) await runMain(main);
