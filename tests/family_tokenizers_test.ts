/**
 * The byte-level BPE tokenizers Llama 3 and Qwen ship (../shared/fixtures/tokenizers/{llama3,
 * qwen3}): every id of the validation and WikiText files through our loader (text/bpe.ts)
 * against npm `@huggingface/tokenizers`, their chat templates rendered through
 * `@huggingface/jinja` against the formats the families publish, and `pipelines/tokenize.ts`.
 */
import assert from "node:assert/strict";
import { Tokenizer } from "@huggingface/tokenizers";
import { fixtureText, SHARED_FIXTURES } from "../fixtures/paths.ts";
import { tokenizeMain } from "../pipelines/tokenize.ts";
import { BpeTokenizer } from "../text/bpe.ts";
import { encodeChat, renderChat } from "../text/chat.ts";
import { loadHfTokenizer, type TextTokenizer } from "../text/tokenizer.ts";

const FAMILIES = ["llama3", "qwen3"] as const;
type Family = (typeof FAMILIES)[number];
const dirOf = (f: Family) => `${SHARED_FIXTURES}/tokenizers/${f}`;
const TEXTS = ["tinystories_val.txt", "wikitext2_test.txt"];

async function json(path: string): Promise<Record<string, unknown>> {
  return JSON.parse(await Deno.readTextFile(path));
}

const refs = new Map<Family, Tokenizer>();
async function reference(f: Family): Promise<Tokenizer> {
  if (!refs.has(f)) {
    const dir = dirOf(f);
    refs.set(
      f,
      new Tokenizer(
        await json(`${dir}/tokenizer.json`),
        await json(`${dir}/tokenizer_config.json`),
      ),
    );
  }
  return refs.get(f)!;
}

const ours = new Map<Family, TextTokenizer>();
async function tokenizer(f: Family): Promise<TextTokenizer> {
  if (!ours.has(f)) ours.set(f, await loadHfTokenizer(dirOf(f)));
  return ours.get(f)!;
}

/** sha256 of ids as little-endian uint32, computed here independently of text/dataset.ts. */
async function sha256U32(ids: ArrayLike<number>): Promise<string> {
  const buf = new ArrayBuffer(ids.length * 4);
  const view = new DataView(buf);
  for (let i = 0; i < ids.length; i++) view.setUint32(4 * i, ids[i], true);
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", buf));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

const refIds = new Map<string, number[]>();
async function referenceIds(f: Family, text: string): Promise<number[]> {
  const key = `${f}/${text}`;
  if (!refIds.has(key)) {
    const s = await Deno.readTextFile(fixtureText(text));
    refIds.set(key, (await reference(f)).encode(s).ids);
  }
  return refIds.get(key)!;
}

for (const f of FAMILIES) {
  Deno.test(`${f}: the fast BPE path takes the tokenizer (no fall-back to the library)`, async () => {
    const dir = dirOf(f);
    const t = new BpeTokenizer(
      await json(`${dir}/tokenizer.json`),
      await json(`${dir}/tokenizer_config.json`),
    );
    assert.ok(t.encode("Hello world").length > 0);
  });

  for (const text of TEXTS) {
    Deno.test(`${f}: every id of ${text} equals @huggingface/tokenizers`, async () => {
      const tok = await tokenizer(f);
      const s = await Deno.readTextFile(fixtureText(text));
      const t0 = performance.now();
      const got = tok.encode(s);
      const seconds = (performance.now() - t0) / 1000;
      const want = await referenceIds(f, text);
      assert.equal(got.length, want.length, `${f} ${text}: token count`);
      const first = got.findIndex((id, i) => id !== want[i]);
      assert.equal(first, -1, `${f} ${text}: first differing id at ${first}`);
      // 1.3 MB of WikiText with 280k merges takes ~0.4 s here; the library ~0.8 s.
      assert.ok(seconds < 10, `${f} ${text}: ${seconds.toFixed(1)} s`);
    });
  }
}

const CONVERSATION = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "Hi there!" },
  { role: "assistant", content: "Hello." },
];

/**
 * The conversation in each family's published prompt format: Llama 3's header tokens (this
 * template always ends with the assistant header), Qwen's ChatML with Qwen3's empty think block
 * before the final assistant turn.
 */
const RENDERED: Record<Family, string> = {
  llama3:
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>" +
    "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>" +
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>" +
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
  qwen3: "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n" +
    "<|im_start|>assistant\n<think>\n\n</think>\n\nHello.<|im_end|>\n",
};

/** Special tokens of each format and their ids in the published vocabularies. */
const SPECIAL: Record<Family, Record<string, number>> = {
  llama3: {
    "<|begin_of_text|>": 128000,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eot_id|>": 128009,
  },
  qwen3: { "<|im_start|>": 151644, "<|im_end|>": 151645, "<think>": 151667, "</think>": 151668 },
};

for (const f of FAMILIES) {
  Deno.test(`${f}: the chat template renders the published format; ids as the library`, async () => {
    const tok = await tokenizer(f);
    assert.ok(tok.chatTemplate, `${f}: no chat template`);
    const rendered = renderChat(tok.chatTemplate!, CONVERSATION, tok);
    assert.equal(rendered, RENDERED[f]);
    const ids = encodeChat(rendered, tok);
    assert.deepEqual(ids, (await reference(f)).encode(rendered).ids);
    for (const [token, id] of Object.entries(SPECIAL[f])) {
      const count = rendered.split(token).length - 1;
      assert.equal(ids.filter((x) => x === id).length, count, `${f}: ${token} as id ${id}`);
    }
    // Llama 3 has a BOS (the template writes it, encode adds none); Qwen has none.
    assert.equal(tok.bos, f === "llama3" ? 128000 : undefined);
    assert.equal(ids.filter((x) => x === 128000).length, f === "llama3" ? 1 : 0);
  });
}

Deno.test("tokenize.ts: count and sha256 of a text file; rendered chats of a chat file", async () => {
  const log = console.log;
  console.log = () => {};
  const dir = await Deno.makeTempDir({ prefix: "qllm-tokenize-" });
  try {
    const val = await tokenizeMain([
      ...["--tokenizer", dirOf("llama3"), "--data", fixtureText("tinystories_val.txt"), "--json"],
    ]);
    const want = await referenceIds("llama3", "tinystories_val.txt");
    assert.equal(val!.tokens, want.length);
    assert.equal(val!.sha256_u32, await sha256U32(want));
    assert.deepEqual(val!.first_ids, want.slice(0, 16));

    const chat = `${dir}/chat.jsonl`;
    const line = JSON.stringify({ messages: CONVERSATION });
    await Deno.writeTextFile(chat, `${line}\n\n${line}\n`);
    const s = await tokenizeMain(["--tokenizer", dirOf("qwen3"), "--data", chat, "--ids"]);
    assert.equal(s!.conversations, 2);
    assert.deepEqual(s!.chats!.map((c) => [c.line, c.text]), [[1, RENDERED.qwen3], [
      3,
      RENDERED.qwen3,
    ]]);
    const one = (await reference("qwen3")).encode(RENDERED.qwen3).ids;
    assert.deepEqual(s!.ids, [...one, ...one]);
  } finally {
    console.log = log;
    await Deno.remove(dir, { recursive: true });
  }
});
