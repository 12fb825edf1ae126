/**
 * How a user checks calibration or evaluation data before a run: the token count, the ids (or
 * their sha256, as PROTOCOL.md §2 lists them) and, for chat JSON lines, the text each
 * conversation renders to through the model's chat template.
 * `deno run -A pipelines/tokenize.ts --tokenizer DIR|MODEL --data FILE [--ids] [--chats N] [--json]`
 * @module
 */
import { intFlag, parseFlags, runMain, UsageError } from "../cli/flags.ts";
import { idsSha256, readDataset } from "../text/dataset.ts";
import { loadTokenizer } from "../text/tokenizer.ts";

const USAGE = `usage: deno run -A pipelines/tokenize.ts --tokenizer DIR|MODEL --data FILE
       [--ids] [--chats N] [--json]
  --tokenizer P   a tokenizer directory (tokenizer.json), a model directory, or a llama2.c model
  --data FILE     .txt (one string), .jsonl with "text" (one document per line) or chat .jsonl
                  with "messages" (rendered through the tokenizer's chat template)
  --ids           print every id (default: the count, sha256 and the first 16)
  --chats N       print the rendered text of the first N conversations (3)
  --json          one JSON object on stdout`;

/** What `tokenize.ts` reports about a data file. */
export interface TokenizeSummary {
  /** The data file. */
  data: string;
  /** The tokenizer (or model) directory. */
  tokenizer: string;
  /** Number of token ids. */
  tokens: number;
  /** sha256 of the ids as little-endian uint32. */
  sha256_u32: string;
  /** The first 16 ids. */
  first_ids: number[];
  /** Every id (with `--ids`). */
  ids?: number[];
  /** Chat conversations: their line, token count and rendered text (the first `--chats`). */
  chats?: { line: number; tokens: number; text: string }[];
  /** Chat conversations in the file. */
  conversations?: number;
}

/** Tokenizes a data file as a quantization run would; prints and returns the summary. */
export async function tokenizeMain(argv: string[]): Promise<TokenizeSummary | undefined> {
  const f = parseFlags(argv, {
    tokenizer: { type: "string" },
    data: { type: "string" },
    ids: { type: "boolean" },
    chats: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean" },
  }, USAGE);
  if (f.help) {
    console.log(USAGE);
    return;
  }
  if (!f.tokenizer) throw new UsageError(`--tokenizer is required\n\n${USAGE}`);
  if (!f.data) throw new UsageError(`--data is required\n\n${USAGE}`);
  const maxChats = intFlag(f.chats, "--chats", 3, 0);
  const tokPath = f.tokenizer as string, data = f.data as string;
  const tok = await loadTokenizer(tokPath).catch((e) => {
    throw new Error(`--tokenizer ${tokPath}: ${(e as Error).message}`);
  });
  const chats: NonNullable<TokenizeSummary["chats"]> = [];
  let conversations = 0;
  const ids = await readDataset(data, tok, {
    onChat: (text, line, tokens) => {
      if (conversations++ < maxChats) chats.push({ line, tokens, text });
    },
  }).catch((e) => {
    throw new Error(`--data ${(e as Error).message}`);
  });
  const summary: TokenizeSummary = {
    data,
    tokenizer: tokPath,
    tokens: ids.length,
    sha256_u32: await idsSha256(ids),
    first_ids: Array.from(ids.subarray(0, 16)),
    ...(f.ids ? { ids: Array.from(ids) } : {}),
    ...(conversations ? { chats, conversations } : {}),
  };
  if (f.json) console.log(JSON.stringify(summary));
  else printSummary(summary);
  return summary;
}

function printSummary(s: TokenizeSummary): void {
  console.log(`${s.data}: ${s.tokens} tokens (tokenizer ${s.tokenizer})`);
  console.log(`sha256 of the ids as little-endian uint32: ${s.sha256_u32}`);
  console.log(s.ids ? `ids: ${s.ids.join(" ")}` : `first ids: ${s.first_ids.join(" ")}`);
  if (s.conversations) {
    console.log(`${s.conversations} chat conversations; the first ${s.chats!.length} rendered:`);
    for (const c of s.chats!) {
      console.log(`--- line ${c.line}, ${c.tokens} tokens ---`);
      console.log(c.text);
    }
  }
}

if (import.meta.main) await runMain(async (argv) => void await tokenizeMain(argv));
