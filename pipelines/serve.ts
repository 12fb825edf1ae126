/**
 * An OpenAI-compatible HTTP server for an exported model (`serve/server.ts`).
 * `deno run -A pipelines/serve.ts --onnx DIR [--port 8000] [--host 127.0.0.1]
 * [--max-concurrent 2] [--max-queue 64] [--chat-template FILE] [--model-id NAME]`
 * @module
 */
import { deviceFlag, intFlag, parseFlags, runMain, UsageError } from "../cli/flags.ts";
import { Progress } from "../cli/progress.ts";
import { OnnxDecoder } from "../serve/decoder.ts";
import { serveOpenAI } from "../serve/server.ts";

const USAGE = `usage: deno run -A pipelines/serve.ts --onnx DIR [--port N] [--host ADDR]
       [--max-concurrent N] [--max-queue N] [--chat-template FILE] [--model-id NAME]
       [--file NAME] [--device cpu|webgpu|cuda]
  --onnx DIR            an exported model (pipelines/export.ts)
  --port N              port (8000; 0 picks a free one)
  --host ADDR           interface (127.0.0.1: this machine only; say 0.0.0.0 to expose it)
  --max-concurrent N    generations at once (2); more requests wait in a queue
  --max-queue N         requests waiting at most (64); more get a 503
  --chat-template FILE  a Jinja chat template for /v1/chat/completions (default: the
                        tokenizer's chat_template)
  --model-id NAME       the model's name in the API (default: the directory's name)`;

async function main(argv: string[]) {
  const f = parseFlags(argv, {
    onnx: { type: "string" },
    port: { type: "string" },
    host: { type: "string" },
    "max-concurrent": { type: "string" },
    "max-queue": { type: "string" },
    "chat-template": { type: "string" },
    "model-id": { type: "string" },
    file: { type: "string" },
    device: { type: "string" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) return console.log(USAGE);
  if (!f.onnx) throw new UsageError(`--onnx is required\n${USAGE}`);
  const progress = new Progress();
  let chatTemplate: string | undefined;
  if (f["chat-template"] !== undefined) {
    try {
      chatTemplate = await Deno.readTextFile(f["chat-template"]);
    } catch (e) {
      throw new UsageError(`--chat-template ${f["chat-template"]}: ${(e as Error).message}`);
    }
  }
  const dec = await OnnxDecoder.open(f.onnx, { device: deviceFlag(f.device), file: f.file });
  const server = serveOpenAI(dec, {
    hostname: f.host ?? "127.0.0.1",
    port: intFlag(f.port, "--port", 8000, 0),
    maxConcurrent: intFlag(f["max-concurrent"], "--max-concurrent", 2),
    maxQueue: intFlag(f["max-queue"], "--max-queue", 64, 0),
    modelId: f["model-id"],
    chatTemplate,
    log: (m) => progress.log(m),
  });
  progress.log(`serving ${dec.dir}/${dec.file} at ${server.url}/v1`);
  const stop = () => server.shutdown();
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  await server.finished;
  await dec.release();
}

if (import.meta.main) await runMain(main);
