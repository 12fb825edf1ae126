/**
 * Perplexity of a model on a text file (PROTOCOL.md §3), streaming block by block.
 * `deno run -A pipelines/eval.ts --model DIR --data FILE [--seqlen 256] [--max-windows N]
 * [--device cpu] [--json]`.
 * @module
 */
import { DEFAULT_MODEL, fixtureText } from "../fixtures/paths.ts";
import { modelDir, openModel } from "../formats/open.ts";
import { Runtime } from "../kernels/session.ts";
import { checkSeqlen } from "../models/config.ts";
import { defaultSeqlen, perplexity } from "../eval/perplexity.ts";
import { deviceFlag, intFlag, parseFlags, runMain, UsageError } from "../cli/flags.ts";
import { Interrupts } from "../cli/signals.ts";
import { Progress } from "../cli/progress.ts";
import { readDataset } from "../text/dataset.ts";
import { loadTokenizer } from "../text/tokenizer.ts";

const USAGE = `usage: deno run -A pipelines/eval.ts [--model DIR] [--data FILE] [--seqlen N]
       [--max-windows N] [--device cpu|webgpu|cuda] [--json]`;

/** Measures perplexity from command-line flags and prints it. */
export async function evalMain(argv: string[], interrupts = new Interrupts()): Promise<void> {
  const f = parseFlags(argv, {
    model: { type: "string" },
    data: { type: "string" },
    seqlen: { type: "string" },
    "max-windows": { type: "string" },
    device: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) return console.log(USAGE);
  const modelPath = (f.model as string | undefined) ?? DEFAULT_MODEL;
  const dataPath = (f.data as string | undefined) ?? fixtureText("tinystories_val.txt");
  const rt = new Runtime(deviceFlag(f.device));
  const progress = new Progress();
  const model = await openModel(modelPath);
  let scratch: string | null = null;
  try {
    const seqlen = intFlag(f.seqlen, "--seqlen", defaultSeqlen(model), 2);
    try {
      checkSeqlen(model.config, seqlen);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    const maxWindows = f["max-windows"] === undefined
      ? undefined
      : intFlag(f["max-windows"], "--max-windows");
    const tok = await loadTokenizer(await modelDir(modelPath));
    const ids = await readDataset(dataPath, tok).catch((e) => {
      throw new Error(`--data ${(e as Error).message}`);
    });
    if (ids.length < seqlen) {
      throw new UsageError(`--data ${dataPath}: ${ids.length} tokens, not one window of ${seqlen}`);
    }
    progress.log(`${dataPath}: ${ids.length} tokens`);
    scratch = await Deno.makeTempDir({ prefix: "qllm-eval-" });
    interrupts.track(scratch);
    const r = await perplexity(rt, model, ids, {
      seqlen,
      maxWindows,
      log: (m) => progress.log(m),
      scratch,
    });
    if (f.json) {
      console.log(JSON.stringify({
        model: modelPath,
        data: dataPath,
        seqlen,
        ppl: r.ppl,
        nll: r.nll,
        windows: r.windows,
        tokens: r.tokens,
        tokens_scored: r.tokensScored,
        seconds: r.seconds,
        tokens_per_second: r.tokens / r.seconds,
      }));
    } else {
      console.log(
        `perplexity ${r.ppl.toFixed(4)} on ${dataPath} (${r.windows} windows of ${seqlen}, ` +
          `${r.tokensScored} tokens scored, ${r.seconds.toFixed(1)} s)`,
      );
    }
  } finally {
    if (scratch) {
      await Deno.remove(scratch, { recursive: true }).catch(() => {});
      interrupts.release(scratch);
    }
    model.close();
    await rt.release();
  }
}

if (import.meta.main) await runMain(evalMain);
