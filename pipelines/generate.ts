/**
 * Text from a prompt: greedy decoding through our block graphs (`--model`, smoke checks of a
 * model, original or quantized), or generation with an exported decoder and its KV cache
 * (`--onnx DIR`: greedy or sampled, stop strings, the text streamed to stdout as it comes).
 * `deno run -A pipelines/generate.ts [--model DIR | --onnx DIR] [--prompt TEXT] [--tokens N]
 * [--temperature T] [--top-k K] [--top-p P] [--seed N] [--stop S]… [--abits B] [--device cpu]`.
 * @module
 */
import { greedy } from "../eval/generate.ts";
import { DEFAULT_MODEL } from "../fixtures/paths.ts";
import { openModel, openTokenizer } from "../formats/open.ts";
import { Runtime } from "../kernels/session.ts";
import { deviceFlag, intFlag, numFlag, parseFlags, runMain, UsageError } from "../cli/flags.ts";
import { OnnxDecoder } from "../serve/decoder.ts";
import { generate } from "../serve/generate.ts";

const USAGE = `usage: deno run -A pipelines/generate.ts [--model DIR | --onnx DIR] [--prompt TEXT]
       [--tokens N] [--abits B] [--device cpu|webgpu|cuda]
  --onnx DIR           an exported model (pipelines/export.ts), run with its KV cache:
    --temperature T    0: greedy (default); above 0: sampling
    --top-k K          sample from the K most likely tokens
    --top-p P          sample from the nucleus of probability P
    --seed N           seed of the draws
    --stop S           end at the string S (repeatable)
    --file NAME        the ONNX file under onnx/ (default: the export's own)
    --json             print the result and timings as JSON instead of streaming`;

async function main(argv: string[]) {
  const f = parseFlags(argv, {
    model: { type: "string" },
    onnx: { type: "string" },
    prompt: { type: "string" },
    tokens: { type: "string" },
    abits: { type: "string" },
    temperature: { type: "string" },
    "top-k": { type: "string" },
    "top-p": { type: "string" },
    seed: { type: "string" },
    stop: { type: "string", multiple: true },
    file: { type: "string" },
    device: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) return console.log(USAGE);
  const tokens = intFlag(f.tokens, "--tokens", 64);
  if (f.onnx !== undefined) {
    if (f.model !== undefined || f.abits !== undefined) {
      throw new UsageError("--onnx runs the exported graph: --model and --abits do not apply");
    }
    return await onnxMain(f as Record<string, unknown>, tokens);
  }
  for (const k of ["temperature", "top-k", "top-p", "seed", "stop", "file", "json"] as const) {
    if (f[k] !== undefined) throw new UsageError(`--${k} needs --onnx DIR (an exported model)`);
  }
  const path = (f.model as string | undefined) ?? DEFAULT_MODEL;
  const rt = new Runtime(deviceFlag(f.device));
  const model = await openModel(path);
  try {
    const tok = await openTokenizer(path);
    const prompt = f.prompt === undefined
      ? [tok.bos ?? model.config.bos]
      : tok.encode(f.prompt as string);
    const ids = await greedy(rt, model, prompt, {
      tokens,
      abits: f.abits === undefined ? undefined : intFlag(f.abits, "--abits", 16, 2),
    });
    console.log(tok.decode(ids));
  } finally {
    model.close();
    await rt.release();
  }
}

async function onnxMain(f: Record<string, unknown>, tokens: number) {
  const dec = await OnnxDecoder.open(f.onnx as string, {
    device: deviceFlag(f.device),
    file: f.file as string | undefined,
  });
  try {
    const tok = dec.tokenizer;
    const prompt = f.prompt === undefined ? [tok.bos ?? tok.eos] : tok.encode(f.prompt as string);
    const out = new TextEncoder();
    const stream = !f.json;
    // The prompt's text first, once generation is under way.
    let head: string | null = tok.decode(prompt);
    const write = async (t: string) => {
      await Deno.stdout.write(out.encode((head ?? "") + t));
      head = null;
    };
    const { rows: [r], timings } = await generate(dec, [prompt], {
      maxNewTokens: tokens,
      temperature: numFlag(f.temperature, "--temperature", 0, 0),
      topK: intFlag(f["top-k"], "--top-k", 0, 0),
      topP: topP(f["top-p"]),
      seed: f.seed === undefined ? undefined : intFlag(f.seed, "--seed", 0, 0),
      stop: (f.stop as string[] | undefined) ?? [],
      onText: stream ? (_r, t) => write(t) : undefined,
    });
    if (stream) return await write("\n");
    console.log(JSON.stringify({
      onnx: f.onnx,
      file: dec.file,
      prompt_tokens: prompt.length,
      ids: r.ids,
      text: r.text,
      finish_reason: r.finishReason,
      prefill_seconds: timings.prefillSeconds,
      decode_seconds: timings.decodeSeconds,
      decode_tokens_per_second: timings.decodeSteps / timings.decodeSeconds,
    }));
  } finally {
    await dec.release();
  }
}

function topP(v: unknown): number {
  const p = numFlag(v, "--top-p", 1, 0, 1);
  if (p === 0) throw new UsageError("--top-p 0: expected a number in (0, 1]");
  return p;
}

if (import.meta.main) await runMain(main);
