/**
 * Perplexity of a model on a text file (PROTOCOL.md §3) and zero-shot multiple-choice accuracy
 * on task files (lm-evaluation-harness's log-likelihood protocol), streaming block by block.
 * `deno run -A pipelines/eval.ts --model DIR [--data FILE] [--seqlen 256] [--max-windows N]
 * [--tasks FILE[,FILE…]] [--task-limit N] [--device cpu] [--json]`.
 * @module
 */
import { DEFAULT_MODEL, fixtureText } from "../fixtures/paths.ts";
import { openModel, openTokenizer } from "../formats/open.ts";
import { Runtime } from "../kernels/session.ts";
import { checkSeqlen } from "../models/config.ts";
import { defaultSeqlen, perplexity } from "../eval/perplexity.ts";
import { blockGraphLoglikelihood } from "../eval/loglikelihood.ts";
import { evaluateTasks, formatTaskResult } from "../eval/zero_shot.ts";
import { deviceFlag, intFlag, parseFlags, runMain } from "../cli/flags.ts";
import { Progress } from "../cli/progress.ts";
import { readDataset } from "../text/dataset.ts";

const USAGE = `usage: deno run -A pipelines/eval.ts [--model DIR] [--data FILE] [--seqlen N]
       [--max-windows N] [--tasks FILE[,FILE…]] [--task-limit N] [--device cpu|webgpu|cuda]
       [--json]
  --data FILE          perplexity on this text (.txt, .jsonl); default the TinyStories
                       validation text, unless --tasks is given alone
  --tasks A,B          zero-shot accuracy on these task files (JSON lines: {"context",
                       "choices", "gold"}, or PIQA, ARC, HellaSwag, WinoGrande, BoolQ as the
                       datasets publish them)
  --task-limit N       only the first N questions of each task`;

async function main(argv: string[]) {
  const f = parseFlags(argv, {
    model: { type: "string" },
    data: { type: "string" },
    seqlen: { type: "string" },
    "max-windows": { type: "string" },
    tasks: { type: "string" },
    "task-limit": { type: "string" },
    device: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) return console.log(USAGE);
  const modelPath = (f.model as string | undefined) ?? DEFAULT_MODEL;
  const taskFiles = ((f.tasks as string | undefined) ?? "").split(",").filter((s) => s);
  const dataPath = (f.data as string | undefined) ??
    (taskFiles.length ? undefined : fixtureText("tinystories_val.txt"));
  const taskLimit = f["task-limit"] === undefined
    ? undefined
    : intFlag(f["task-limit"], "--task-limit");
  const rt = new Runtime(deviceFlag(f.device));
  const progress = new Progress();
  const model = await openModel(modelPath);
  try {
    const seqlen = intFlag(f.seqlen, "--seqlen", defaultSeqlen(model), 2);
    checkSeqlen(model.config, seqlen);
    const maxWindows = f["max-windows"] === undefined
      ? undefined
      : intFlag(f["max-windows"], "--max-windows");
    const tok = await openTokenizer(modelPath);
    const out: Record<string, unknown> = { model: modelPath };
    if (dataPath !== undefined) {
      const ids = await readDataset(dataPath, tok);
      progress.log(`${dataPath}: ${ids.length} tokens`);
      const r = await perplexity(rt, model, ids, {
        seqlen,
        maxWindows,
        log: (m) => progress.log(m),
      });
      Object.assign(out, {
        data: dataPath,
        seqlen,
        ppl: r.ppl,
        nll: r.nll,
        windows: r.windows,
        tokens: r.tokens,
        tokens_scored: r.tokensScored,
        seconds: r.seconds,
        tokens_per_second: r.tokens / r.seconds,
      });
      if (!f.json) {
        console.log(
          `perplexity ${r.ppl.toFixed(4)} on ${dataPath} (${r.windows} windows of ${seqlen}, ` +
            `${r.tokensScored} tokens scored, ${r.seconds.toFixed(1)} s)`,
        );
      }
    }
    if (taskFiles.length) {
      const scorer = blockGraphLoglikelihood(rt, model);
      const tasks = await evaluateTasks(scorer, tok, taskFiles, {
        limit: taskLimit,
        log: (m) => progress.log(m),
      });
      out.tasks = tasks;
      if (!f.json) {
        for (const [name, r] of Object.entries(tasks)) console.log(formatTaskResult(name, r));
      }
    }
    if (f.json) console.log(JSON.stringify(out));
  } finally {
    model.close();
    await rt.release();
  }
}

if (import.meta.main) await runMain(main);
