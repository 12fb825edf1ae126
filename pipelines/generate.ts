/**
 * Greedy decoding from a prompt, for smoke checks of a model (original or quantized).
 * `deno run -A pipelines/generate.ts [--model DIR] [--prompt TEXT] [--tokens N] [--abits B]
 * [--device cpu]`.
 * @module
 */
import { greedy } from "../eval/generate.ts";
import { DEFAULT_MODEL } from "../fixtures/paths.ts";
import { modelDir, openModel } from "../formats/open.ts";
import { Runtime } from "../kernels/session.ts";
import { deviceFlag, intFlag, parseFlags, runMain } from "../cli/flags.ts";
import { loadTokenizer } from "../text/tokenizer.ts";

const USAGE = `usage: deno run -A pipelines/generate.ts [--model DIR] [--prompt TEXT] [--tokens N]
       [--abits B] [--device cpu|webgpu|cuda]`;

async function main(argv: string[]) {
  const f = parseFlags(argv, {
    model: { type: "string" },
    prompt: { type: "string" },
    tokens: { type: "string" },
    abits: { type: "string" },
    device: { type: "string" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) return console.log(USAGE);
  const path = (f.model as string | undefined) ?? DEFAULT_MODEL;
  const rt = new Runtime(deviceFlag(f.device));
  const model = await openModel(path);
  try {
    const tok = await loadTokenizer(await modelDir(path));
    const prompt = f.prompt === undefined
      ? [tok.bos ?? model.config.bos]
      : tok.encode(f.prompt as string);
    const ids = await greedy(rt, model, prompt, {
      tokens: intFlag(f.tokens, "--tokens", 64),
      abits: f.abits === undefined ? undefined : intFlag(f.abits, "--abits", 16, 2),
    });
    console.log(tok.decode(ids));
  } finally {
    model.close();
    await rt.release();
  }
}

if (import.meta.main) await runMain(main);
