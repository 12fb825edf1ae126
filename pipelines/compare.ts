/**
 * One page comparing several runs: `deno run -A pipelines/compare.ts RUN_DIR… [--out FILE]
 * [--title T]` reads each run's `report.json` and writes a self-contained HTML page (the method
 * tables, perplexity and accuracy by run, bits per weight against perplexity, time and memory).
 * @module
 */
import { parseFlagsAndArgs, runMain, UsageError } from "../cli/flags.ts";
import { compareHtml, readRuns } from "../run/compare.ts";
import { writeAtomically } from "../run/report.ts";
import { PAGE_GENERATOR } from "../run/report_html.ts";

const USAGE = `usage: deno run -A pipelines/compare.ts RUN_DIR… [--out FILE] [--title T]
  RUN_DIR              a quantization run's --out directory (it holds report.json)
  --out FILE           the page to write (default compare.html)
  --title T            the page's title (default "Comparing N runs")
  --overwrite          replace a file at --out that is not a page of ours`;

async function main(argv: string[]) {
  const { values: f, positionals: dirs } = parseFlagsAndArgs(argv, {
    out: { type: "string" },
    title: { type: "string" },
    overwrite: { type: "boolean" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) return console.log(USAGE);
  if (dirs.length === 0) throw new UsageError(`no RUN_DIR given\n\n${USAGE}`);
  const out = f.out ?? "compare.html";
  await checkPageOut(out, !!f.overwrite);
  const runs = await readRuns(dirs);
  await writeAtomically(out, compareHtml(runs, f.title));
  console.log(`${out}: ${runs.length} runs compared`);
}

/** `--out` may be missing or a page we wrote; anything else only with `--overwrite`. */
async function checkPageOut(out: string, overwrite: boolean): Promise<void> {
  const st = await Deno.lstat(out).catch(() => null);
  if (!st || overwrite) return;
  if (!st.isFile) throw new UsageError(`--out ${out}: exists and is not a file`);
  const head = new TextDecoder().decode((await Deno.readFile(out)).subarray(0, 512));
  if (!head.includes(PAGE_GENERATOR)) {
    throw new UsageError(
      `--out ${out}: exists and is not a page of qllm-deno; refusing to replace it ` +
        "(choose another path, or pass --overwrite)",
    );
  }
}

if (import.meta.main) await runMain(main);
