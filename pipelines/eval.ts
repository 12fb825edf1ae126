/**
 * Perplexity of a model on a text file (PROTOCOL.md §3), streaming block by block — or of an
 * exported model through ONNX Runtime (`--onnx DIR`), on the same windows.
 * `deno run -A pipelines/eval.ts [--model DIR | --onnx DIR] --data FILE [--seqlen 256]
 * [--max-windows N] [--device cpu] [--json]`.
 * @module
 */
import { DEFAULT_MODEL, fixtureText } from "../fixtures/paths.ts";
import { modelDir, openModel } from "../formats/open.ts";
import { Runtime } from "../kernels/session.ts";
import { checkSeqlen } from "../models/config.ts";
import {
  defaultSeqlen,
  onnxPerplexity,
  perplexity,
  type PerplexityResult,
} from "../eval/perplexity.ts";
import { deviceFlag, intFlag, parseFlags, runMain, UsageError } from "../cli/flags.ts";
import { Progress } from "../cli/progress.ts";
import { readDataset } from "../text/dataset.ts";
import { loadTokenizer } from "../text/tokenizer.ts";
import { OnnxDecoder } from "../serve/decoder.ts";

const USAGE = `usage: deno run -A pipelines/eval.ts [--model DIR | --onnx DIR] [--data FILE]
       [--seqlen N] [--max-windows N] [--device cpu|webgpu|cuda] [--json]
  --onnx DIR    an exported model (pipelines/export.ts), run by ONNX Runtime with --file NAME
                picking the ONNX file under onnx/ (default: the export's own)`;

async function main(argv: string[]) {
  const f = parseFlags(argv, {
    model: { type: "string" },
    onnx: { type: "string" },
    file: { type: "string" },
    data: { type: "string" },
    seqlen: { type: "string" },
    "max-windows": { type: "string" },
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
  const dataPath = (f.data as string | undefined) ?? fixtureText("tinystories_val.txt");
  const progress = new Progress();
  const maxWindows = f["max-windows"] === undefined
    ? undefined
    : intFlag(f["max-windows"], "--max-windows");
  let r: PerplexityResult, seqlen: number;
  if (f.onnx !== undefined) {
    const dec = await OnnxDecoder.open(modelPath, {
      device: deviceFlag(f.device),
      file: f.file as string | undefined,
    });
    try {
      seqlen = intFlag(f.seqlen, "--seqlen", Math.min(256, dec.config.maxSeq), 2);
      const ids = await readDataset(dataPath, dec.tokenizer);
      progress.log(`${dataPath}: ${ids.length} tokens`);
      r = await onnxPerplexity(dec, ids, { seqlen, maxWindows, log: (m) => progress.log(m) });
    } finally {
      await dec.release();
    }
  } else {
    const rt = new Runtime(deviceFlag(f.device));
    const model = await openModel(modelPath);
    try {
      seqlen = intFlag(f.seqlen, "--seqlen", defaultSeqlen(model), 2);
      checkSeqlen(model.config, seqlen);
      const tok = await loadTokenizer(await modelDir(modelPath));
      const ids = await readDataset(dataPath, tok);
      progress.log(`${dataPath}: ${ids.length} tokens`);
      r = await perplexity(rt, model, ids, { seqlen, maxWindows, log: (m) => progress.log(m) });
    } finally {
      model.close();
      await rt.release();
    }
  }
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
}

if (import.meta.main) await runMain(main);
