/**
 * One page comparing several runs: `deno run -A pipelines/compare.ts RUN_DIR… [--out FILE]
 * [--title T]` reads each run's `report.json` and writes a self-contained HTML page (the method
 * tables, perplexity and accuracy by run, bits per weight against perplexity, time and memory).
 * @module
 */
import { parseFlagsAndArgs, runMain, UsageError } from "../cli/flags.ts";
import { compareHtml, readRuns } from "../run/compare.ts";
import { writeAtomically } from "../run/report.ts";

const USAGE = `usage: deno run -A pipelines/compare.ts RUN_DIR… [--out FILE] [--title T]
  RUN_DIR              a quantization run's --out directory (it holds report.json)
  --out FILE           the page to write (default compare.html)
  --title T            the page's title (default "Comparing N runs")`;

async function main(argv: string[]) {
  const { values: f, positionals: dirs } = parseFlagsAndArgs(argv, {
    out: { type: "string" },
    title: { type: "string" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) return console.log(USAGE);
  if (dirs.length === 0) throw new UsageError(`no RUN_DIR given\n\n${USAGE}`);
  const runs = await readRuns(dirs);
  const out = f.out ?? "compare.html";
  await writeAtomically(out, compareHtml(runs, f.title));
  console.log(`${out}: ${runs.length} runs compared`);
}

if (import.meta.main) await runMain(main);
