/**
 * Perplexity of a model on a text file (PROTOCOL.md §3) and zero-shot multiple-choice accuracy
 * on task files (lm-evaluation-harness's log-likelihood protocol), streaming block by block —
 * or through an exported model run by ONNX Runtime (`--onnx DIR`), on the same windows.
 * `deno run -A pipelines/eval.ts [--model DIR | --onnx DIR] [--data FILE] [--seqlen 256]
 * [--max-windows N] [--tasks FILE[,FILE…]] [--task-limit N] [--device cpu] [--json]`.
 * @module
 */
import { deviceFlag, intFlag, parseFlags, runMain, UsageError } from "../cli/flags.ts";
import { Progress } from "../cli/progress.ts";
import {
  blockGraphLoglikelihood,
  type LogLikelihood,
  onnxLoglikelihood,
} from "../eval/loglikelihood.ts";
import {
  defaultSeqlen,
  onnxPerplexity,
  perplexity,
  type PerplexityResult,
} from "../eval/perplexity.ts";
import { evaluateTasks, formatTaskResult } from "../eval/zero_shot.ts";
import { DEFAULT_MODEL, fixtureText } from "../fixtures/paths.ts";
import { openModel, openTokenizer } from "../formats/open.ts";
import { Runtime } from "../kernels/session.ts";
import { checkSeqlen } from "../models/config.ts";
import { OnnxDecoder } from "../serve/decoder.ts";
import { Interrupts } from "../cli/signals.ts";
import { readDataset } from "../text/dataset.ts";
import type { TextTokenizer } from "../text/tokenizer.ts";

const USAGE = `usage: deno run -A pipelines/eval.ts [--model DIR | --onnx DIR] [--data FILE]
       [--seqlen N] [--max-windows N] [--tasks FILE[,FILE…]] [--task-limit N]
       [--device cpu|webgpu|cuda] [--json]
  --onnx DIR           an exported model (pipelines/export.ts), run by ONNX Runtime; --file NAME
                       picks the ONNX file under onnx/ (default: the export's own)
  --data FILE          perplexity on this text (.txt, .jsonl); default the TinyStories
                       validation text, unless --tasks is given alone
  --tasks A,B          zero-shot accuracy on these task files (JSON lines: {"context",
                       "choices", "gold"}, or PIQA, ARC, HellaSwag, WinoGrande, BoolQ as the
                       datasets publish them)
  --task-limit N       only the first N questions of each task`;

/** What the command measures on one model, whichever runtime it comes from. */
interface Backend {
  tokenizer: TextTokenizer;
  seqlen: number;
  perplexity(ids: Int32Array): Promise<PerplexityResult>;
  scorer(): LogLikelihood;
  close(): Promise<void>;
}

/** Measures perplexity from command-line flags and prints it. */
export async function evalMain(argv: string[], interrupts = new Interrupts()): Promise<void> {
  const f = parseFlags(argv, {
    model: { type: "string" },
    onnx: { type: "string" },
    file: { type: "string" },
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
  if (f.onnx !== undefined && f.model !== undefined) {
    throw new UsageError("--model and --onnx exclude each other");
  }
  const modelPath = (f.onnx as string | undefined) ?? (f.model as string | undefined) ??
    DEFAULT_MODEL;
  const taskFiles = ((f.tasks as string | undefined) ?? "").split(",").filter((s) => s);
  const dataPath = (f.data as string | undefined) ??
    (taskFiles.length ? undefined : fixtureText("tinystories_val.txt"));
  const taskLimit = f["task-limit"] === undefined
    ? undefined
    : intFlag(f["task-limit"], "--task-limit");
  const maxWindows = f["max-windows"] === undefined
    ? undefined
    : intFlag(f["max-windows"], "--max-windows");
  const progress = new Progress();
  const log = (m: string) => progress.log(m);
  const backend = f.onnx !== undefined
    ? await onnxBackend(modelPath, f, maxWindows, log)
    : await graphBackend(modelPath, f, maxWindows, log, interrupts);
  try {
    const out: Record<string, unknown> = { model: modelPath };
    if (dataPath !== undefined) {
      const ids = await readDataset(dataPath, backend.tokenizer).catch((e) => {
        throw new Error(`--data ${(e as Error).message}`);
      });
      if (ids.length < backend.seqlen) {
        throw new UsageError(
          `--data ${dataPath}: ${ids.length} tokens, not one window of ${backend.seqlen}`,
        );
      }
      progress.log(`${dataPath}: ${ids.length} tokens`);
      const r = await backend.perplexity(ids);
      Object.assign(out, {
        data: dataPath,
        seqlen: backend.seqlen,
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
          `perplexity ${r.ppl.toFixed(4)} on ${dataPath} (${r.windows} windows of ` +
            `${backend.seqlen}, ${r.tokensScored} tokens scored, ${r.seconds.toFixed(1)} s)`,
        );
      }
    }
    if (taskFiles.length) {
      const tasks = await evaluateTasks(backend.scorer(), backend.tokenizer, taskFiles, {
        limit: taskLimit,
        log,
      });
      out.tasks = tasks;
      if (!f.json) {
        for (const [name, r] of Object.entries(tasks)) console.log(formatTaskResult(name, r));
      }
    }
    if (f.json) console.log(JSON.stringify(out));
  } finally {
    await backend.close();
  }
}

/**
 * Our block graph over a checkpoint, one block at a time; hidden states too large for memory
 * stream through a scratch file, removed on every exit (signals included).
 */
async function graphBackend(
  path: string,
  f: Record<string, unknown>,
  maxWindows: number | undefined,
  log: (m: string) => void,
  interrupts: Interrupts,
): Promise<Backend> {
  const rt = new Runtime(deviceFlag(f.device));
  const model = await openModel(path);
  let scratch: string | null = null;
  const close = async () => {
    if (scratch) {
      await Deno.remove(scratch, { recursive: true }).catch(() => {});
      interrupts.release(scratch);
    }
    model.close();
    await rt.release();
  };
  try {
    const seqlen = intFlag(f.seqlen, "--seqlen", defaultSeqlen(model), 2);
    try {
      checkSeqlen(model.config, seqlen);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    const tokenizer = await openTokenizer(path);
    scratch = await Deno.makeTempDir({ prefix: "qllm-eval-" });
    interrupts.track(scratch);
    const dir = scratch;
    return {
      tokenizer,
      seqlen,
      perplexity: (ids) => perplexity(rt, model, ids, { seqlen, maxWindows, log, scratch: dir }),
      scorer: () => blockGraphLoglikelihood(rt, model),
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

/** An exported decoder run by ONNX Runtime. */
async function onnxBackend(
  dir: string,
  f: Record<string, unknown>,
  maxWindows: number | undefined,
  log: (m: string) => void,
): Promise<Backend> {
  const dec = await OnnxDecoder.open(dir, {
    device: deviceFlag(f.device),
    file: f.file as string | undefined,
  });
  const seqlen = intFlag(f.seqlen, "--seqlen", Math.min(256, dec.config.maxSeq), 2);
  return {
    tokenizer: dec.tokenizer,
    seqlen,
    perplexity: (ids) => onnxPerplexity(dec, ids, { seqlen, maxWindows, log }),
    scorer: () => onnxLoglikelihood(dec),
    close: () => dec.release(),
  };
}

if (import.meta.main) await runMain(evalMain);
