/**
 * Our GGUF files against llama.cpp's own quantizer (`deno task bench --only formats`).
 *
 * (a) On tinystories-656k and stories260k, in one run: our F32 GGUF; llama.cpp's
 * `llama-quantize` Q4_0, Q4_1 and Q8_0 of it; our RTN and GPTQ (act-order, static groups,
 * true-sequential, MSE range search; 128 × 256 calibration windows of
 * tinystories_train_sample.txt, seed 0) written
 * as Q4_0 (symmetric 4-bit g32), Q4_1 (asymmetric) and Q8_0 (symmetric 8-bit), with fp16 scales
 * from the start and the embedding in Q8_0 as llama.cpp's files keep it, so each pair of files has
 * the same size. Every file is evaluated by `llama-perplexity` (windows of 256, BOS first, second
 * half scored, the first 256 windows) and by our evaluation reading the GGUF file (PROTOCOL.md §3:
 * the first 256 windows of 256), on the validation text without the characters tinystories-656k's
 * vocabulary lacks (llama.cpp aborts on them; 0.08 % of the text).
 *
 * (b) Decode speed, batch 1, 128 new tokens, on the generated 1024×8 LLaMA of the GPTQ
 * benchmark written as Q4_0 by our RTN: llama.cpp (`llama-cli -t 2`), our `eval/generate.ts`
 * (no KV cache), and our ONNX W4 g32 decoder of the same model (MatMulNBits, KV cache).
 * @module
 */
import { greedy } from "../eval/generate.ts";
import { perplexity } from "../eval/perplexity.ts";
import { ensureLlama } from "../fixtures/generate.ts";
import { coveredText, llamaPerplexity, runLlamaCpp } from "../fixtures/llama_cpp.ts";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import { readSpmVocab } from "../formats/gguf_llama.ts";
import { openModel, openTokenizer } from "../formats/open.ts";
import { GPTQ } from "../methods/gptq.ts";
import type { Method } from "../methods/method.ts";
import { RTN } from "../methods/rtn.ts";
import { exportModel } from "../run/export.ts";
import { planFromFlags } from "../run/main.ts";
import { packModel } from "../run/pack.ts";
import { RunCache, runQuantization } from "../run/quantize.ts";
import type { Runtime } from "../kernels/session.ts";
import { measure } from "./deploy.ts";
import { GPTQ_LLAMA } from "./gptq.ts";
import { writeReadmeSection } from "./readme.ts";
import { markdownTable } from "./rows.ts";
import type { BenchContext, BenchRecord, SummaryRow } from "./types.ts";

/** The fixtures measured. */
export const FORMAT_MODELS = ["tinystories-656k", "stories260k"] as const;

const TYPES = {
  Q4_0: ["--wbits", "4", "--group-size", "32", "--sym"],
  Q4_1: ["--wbits", "4", "--group-size", "32"],
  Q8_0: ["--wbits", "8", "--group-size", "32", "--sym"],
} as const;

type GgufType = keyof typeof TYPES;

/** One file of table (a). */
export interface FormatRow {
  model: string;
  /** `fp32`, `llama.cpp Q4_0`, `ours rtn Q4_0`, `ours gptq Q4_1`, … */
  config: string;
  bytes: number | null;
  ppl_llama_cpp: number | null;
  ppl_ours: number | null;
  /** Why there is no file (llama-quantize failed), when there is none. */
  error?: string;
}

const GPTQ_FLAGS = ["--act-order", "--static-groups", "--true-sequential", "--mse"];

/** Perplexity of a GGUF file by llama.cpp and by us, on the same text. */
async function evaluate(rt: Runtime, file: string, textFile: string): Promise<[number, number]> {
  const out = await runLlamaCpp("llama-perplexity", [
    "-m",
    file,
    "-f",
    textFile,
    "-c",
    "256",
    "-b",
    "256",
    "--chunks",
    "256",
    "-t",
    "2",
  ]);
  const m = await openModel(file), tok = await openTokenizer(file);
  try {
    const ids = Int32Array.from(tok.encode(await Deno.readTextFile(textFile)));
    const ours = (await perplexity(rt, m, ids, { seqlen: 256, maxWindows: 256 })).ppl;
    return [llamaPerplexity(out), ours];
  } finally {
    m.close();
  }
}

/** Our file of one method and type: the run, then the GGUF with a Q8_0 embedding. */
async function ours(
  model: string,
  method: Method,
  flags: string[],
  type: GgufType,
  tmp: string,
  cache: RunCache,
): Promise<string> {
  const out = `${tmp}/${model}-${method.name}-${type}`;
  const argv = [...TYPES[type], "--allow-partial-group", ...flags];
  await runQuantization({
    ...planFromFlags(method, argv, out, "gguf"),
    model: fixtureModel(model),
    out,
    calib: { file: fixtureText("tinystories_train_sample.txt"), nsamples: 128, seed: 0 },
    eval: { files: [] },
    quiet: true,
    cache,
  });
  const file = `${out}.gguf`;
  const p = await packModel(out, { format: "gguf", out: file, embeddingType: "Q8_0" });
  await Deno.remove(out, { recursive: true });
  if (p.gguf_type !== type) throw new Error(`${file}: ${p.gguf_type}, expected ${type}`);
  return file;
}

async function fixtureRows(ctx: BenchContext, model: string, tmp: string, text: string) {
  const rows: FormatRow[] = [];
  const add = async (config: string, make: () => Promise<string>) => {
    ctx.log(`formats: ${model} ${config}`);
    let file: string;
    try {
      file = await make();
    } catch (e) {
      const lines = (e as Error).message.split("\n").filter((l) => l.trim());
      const error = (lines.find((l) => /unsupported|error/i.test(l)) ?? lines[lines.length - 1])
        .replace(/^.*?: /, "").trim();
      rows.push({ model, config, bytes: null, ppl_llama_cpp: null, ppl_ours: null, error });
      return;
    }
    const [l, o] = await evaluate(ctx.rt, file, text);
    rows.push({
      model,
      config,
      bytes: (await Deno.stat(file)).size,
      ppl_llama_cpp: l,
      ppl_ours: o,
    });
  };
  const f32 = `${tmp}/${model}-F32.gguf`;
  await add(
    "fp32",
    async () => (await packModel(fixtureModel(model), { format: "gguf", out: f32 })).path,
  );
  for (const type of Object.keys(TYPES) as GgufType[]) {
    await add(`llama.cpp ${type}`, async () => {
      const file = `${tmp}/${model}-llama-${type}.gguf`;
      await runLlamaCpp("llama-quantize", [f32, file, type, "2"]);
      return file;
    });
  }
  const cache = new RunCache();
  for (const type of Object.keys(TYPES) as GgufType[]) {
    await add(`ours rtn ${type}`, () => ours(model, RTN as Method, [], type, tmp, cache));
    await add(
      `ours gptq ${type}`,
      () => ours(model, GPTQ as Method, GPTQ_FLAGS, type, tmp, cache),
    );
  }
  return rows;
}

/** Decode speed of (b). */
export interface DecodeSpeed {
  model: string;
  file: string;
  new_tokens: number;
  llama_cpp_tokens_per_s: number;
  generate_ts_tokens_per_s: number;
  /** Our ONNX W4 g32 export of the same model, batch 1 (`bench/deploy_child.ts`). */
  onnx_w4g32_tokens_per_s: number;
}

async function decodeSpeed(ctx: BenchContext, tmp: string): Promise<DecodeSpeed> {
  const dir = await ensureLlama(GPTQ_LLAMA, ctx.log);
  const out = `${tmp}/llama-rtn`;
  ctx.log("formats: RTN W4 g32 of the 1024×8 LLaMA as Q4_0");
  await runQuantization({
    ...planFromFlags(RTN as Method, [...TYPES.Q4_0], out, "gguf"),
    model: dir,
    out,
    calib: { file: fixtureText("tinystories_train_sample.txt"), nsamples: 1, seqlen: 32, seed: 0 },
    eval: { files: [] },
    quiet: true,
    pack: "gguf",
  });
  const file = `${out}/model-Q4_0.gguf`;
  const prompt = "Once upon a time";
  const n = 128;
  ctx.log("formats: llama-cli decode, 128 tokens");
  const l = await runLlamaCpp("llama-cli", [
    "-m",
    file,
    "-p",
    prompt,
    "-n",
    `${n}`,
    "-t",
    "2",
    "-c",
    "256",
    "--temp",
    "0",
    "--ignore-eos",
    "-no-cnv",
  ]);
  const m = /eval time =\s*[\d.]+ ms \/\s*(\d+) runs.*?([\d.]+) tokens per second/.exec(l);
  if (!m) throw new Error(`llama-cli printed no eval time:\n${l.slice(-1500)}`);
  ctx.log("formats: generate.ts decode, 128 tokens");
  const model = await openModel(file), tok = await openTokenizer(file);
  const t0 = performance.now();
  const ids = await greedy(ctx.rt, model, tok.encode(prompt), { tokens: n });
  const seconds = (performance.now() - t0) / 1000;
  model.close();
  ctx.log("formats: the ONNX W4 g32 decoder (MatMulNBits, KV cache), 128 tokens");
  await exportModel({ model: out, out: `${tmp}/llama-onnx`, quiet: true });
  const onnx = await measure(`${tmp}/llama-onnx`);
  return {
    model: "generated LLaMA 1024×8 (GPTQ benchmark), RTN W4 g32",
    file: "Q4_0",
    new_tokens: n,
    llama_cpp_tokens_per_s: Number(m[2]),
    generate_ts_tokens_per_s: (ids.length - tok.encode(prompt).length) / seconds,
    onnx_w4g32_tokens_per_s: onnx.decode_tokens_per_s,
  };
}

const fmt = (x: number | null, d = 3) => x === null ? "—" : x.toFixed(d);

/** The README section. */
export function formatsMarkdown(rows: FormatRow[], speed: DecodeSpeed): string {
  const table = markdownTable(
    ["model", "file", "size, KiB", "ppl llama-perplexity", "ppl ours (reading the GGUF)"],
    rows.map((r) => [
      r.model,
      r.config,
      r.bytes === null ? `— (${r.error})` : (r.bytes / 1024).toFixed(1),
      fmt(r.ppl_llama_cpp),
      fmt(r.ppl_ours),
    ]),
    [false, false, true, true, true],
  );
  const goals = goalLines(rows).map((g) => `- ${g}`).join("\n");
  return `${table}

Goal, our GPTQ Q4_0 / Q4_1 below llama.cpp's at the same size (by llama-perplexity):

${goals}

Decode, batch 1, ${speed.new_tokens} new tokens, ${speed.model} as ${speed.file}: llama.cpp ` +
    `(\`llama-cli -t 2\`) **${speed.llama_cpp_tokens_per_s.toFixed(1)} tokens/s**; our ` +
    `\`eval/generate.ts\` (no KV cache) ${speed.generate_ts_tokens_per_s.toFixed(2)} tokens/s; ` +
    `our ONNX W4 g32 decoder (\`pipelines/export.ts\`, MatMulNBits and a KV cache) ` +
    `**${speed.onnx_w4g32_tokens_per_s.toFixed(1)} tokens/s** ` +
    `(${(speed.onnx_w4g32_tokens_per_s / speed.llama_cpp_tokens_per_s).toFixed(2)}× llama.cpp).`;
}

function goalLines(rows: FormatRow[]): string[] {
  const out: string[] = [];
  for (const model of FORMAT_MODELS) {
    for (const type of ["Q4_0", "Q4_1"]) {
      const theirs = rows.find((r) => r.model === model && r.config === `llama.cpp ${type}`);
      const mine = rows.find((r) => r.model === model && r.config === `ours gptq ${type}`);
      if (!mine?.ppl_llama_cpp) continue;
      if (!theirs?.ppl_llama_cpp) {
        out.push(
          `${model} ${type}: llama-quantize writes no file (${theirs?.error}); ours loads ` +
            `in llama.cpp at ${fmt(mine.ppl_llama_cpp)} (its ffn_down, 172 columns, as F16)`,
        );
        continue;
      }
      // The files differ only in metadata (our producer's name): tensors are the same size.
      const sameSize = Math.abs(mine.bytes! - theirs.bytes!) < 1024;
      const met = mine.ppl_llama_cpp < theirs.ppl_llama_cpp && sameSize;
      out.push(
        `${model} ${type}: ${met ? "met" : "not met"} — ours ${fmt(mine.ppl_llama_cpp)} vs ` +
          `llama.cpp ${fmt(theirs.ppl_llama_cpp)} (ours ${fmt(mine.ppl_ours)} vs ` +
          `${fmt(theirs.ppl_ours)} by our evaluation), ${mine.bytes} vs ${theirs.bytes} bytes`,
      );
    }
  }
  return out;
}

/** Runs the formats benchmark. */
export async function benchFormats(ctx: BenchContext): Promise<BenchRecord> {
  const tmp = await Deno.makeTempDir({ prefix: "qllm-bench-formats-" });
  try {
    const vocab = await readSpmVocab(fixtureModel("tinystories-656k"));
    const text = `${tmp}/val.txt`;
    await Deno.writeTextFile(
      text,
      coveredText(await Deno.readTextFile(fixtureText("tinystories_val.txt")), vocab.tokens),
    );
    const rows: FormatRow[] = [];
    for (const m of FORMAT_MODELS) rows.push(...await fixtureRows(ctx, m, tmp, text));
    const speed = await decodeSpeed(ctx, tmp);
    const markdown = formatsMarkdown(rows, speed);
    await writeReadmeSection("formats", markdown);
    const summary: SummaryRow[] = [
      ...goalLines(rows).map((g) => ({ label: g.split(":")[0], value: g.split(": ")[1] })),
      {
        label: "decode 1024×8 Q4_0, llama.cpp",
        value: Number(speed.llama_cpp_tokens_per_s.toFixed(1)),
        unit: "tokens/s",
        note: `generate.ts ${speed.generate_ts_tokens_per_s.toFixed(2)}; ONNX W4 g32 ` +
          `${speed.onnx_w4g32_tokens_per_s.toFixed(1)}`,
      },
    ];
    return { rows, decode: speed, markdown, summary };
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}
