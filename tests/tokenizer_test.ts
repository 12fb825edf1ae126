/**
 * Tokenizers and datasets against the reference figures (PROTOCOL §2,
 * reference/peer_results.json → models.*.tokens).
 */
import assert from "node:assert/strict";
import { fixtureModel, fixtureText, SHARED_FIXTURES } from "../fixtures/paths.ts";
import { loadHfTokenizer, loadTokenizer, type TextTokenizer } from "../text/tokenizer.ts";
import { renderChat } from "../text/chat.ts";
import { readDataset, windowIds, windows } from "../text/dataset.ts";

interface TokenRef {
  file: string;
  count: number;
  sha256_u32: string;
  first16: number[];
}

const peer = JSON.parse(
  await Deno.readTextFile(`${SHARED_FIXTURES}/../reference/peer_results.json`),
) as { models: Record<string, { tokens: Record<string, TokenRef> }> };

const assertEquals = <T>(actual: T, expected: T, msg?: string): void =>
  assert.deepStrictEqual(actual, expected, msg as string);

/** Asserts that `fn` rejects with an Error whose message contains `part`. */
async function assertRejects(
  fn: () => Promise<unknown>,
  _cls: ErrorConstructor,
  part: string,
): Promise<void> {
  await assert.rejects(fn, (e: Error) => {
    assert.ok(e.message.includes(part), `"${e.message}" should contain "${part}"`);
    return true;
  });
}

/** sha256 (hex) of ids written as little-endian uint32. */
async function sha256U32(ids: ArrayLike<number>): Promise<string> {
  const u32 = Uint32Array.from(ids);
  const view = new DataView(u32.buffer);
  for (let i = 0; i < u32.length; i++) view.setUint32(i * 4, u32[i], true);
  const digest = await crypto.subtle.digest("SHA-256", u32.buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

const tokenizers = new Map<string, Promise<TextTokenizer>>();
function tokenizerOf(model: string): Promise<TextTokenizer> {
  if (!tokenizers.has(model)) tokenizers.set(model, loadTokenizer(fixtureModel(model)));
  return tokenizers.get(model)!;
}

/** First ids from PROTOCOL §2's table. */
const FIRST_IDS: Record<string, Record<string, number[]>> = {
  "tinystories-656k": {
    val: [1, 80, 1030, 1063, 677, 1169, 237, 624],
    wikitext: [1, 80, 3, 3, 80, 0, 80, 43],
    train: [1, 80, 429, 598, 303, 489, 1148, 177],
  },
  "stories260k": {
    val: [1, 301, 427, 309, 426, 301, 427, 309],
    train: [1, 385, 328, 432, 261, 376, 298, 315],
  },
};

for (const [model, texts] of Object.entries(FIRST_IDS)) {
  for (const key of Object.keys(texts)) {
    Deno.test(`tokens ${model} ${key}: count, sha256, first ids match peer_results`, async () => {
      const ref = peer.models[model].tokens[key];
      const name = ref.file.split("/").pop()!;
      const tok = await tokenizerOf(model);
      const t0 = performance.now();
      const ids = await readDataset(fixtureText(name), tok);
      const ms = performance.now() - t0;
      console.log(`  ${model} ${name}: ${ids.length} ids in ${ms.toFixed(0)} ms`);
      assertEquals(ids.length, ref.count);
      assertEquals(Array.from(ids.subarray(0, 8)), texts[key]);
      assertEquals(Array.from(ids.subarray(0, 16)), ref.first16);
      assertEquals(await sha256U32(ids), ref.sha256_u32);
    });
  }
}

Deno.test("tokenizer metadata", async () => {
  const hf = await tokenizerOf("tinystories-656k");
  assertEquals([hf.bos, hf.eos, hf.vocabSize], [1, 2, 2048]);
  assertEquals(hf.bosToken, "<|start_story|>");
  assertEquals(hf.chatTemplate, undefined);
  const l2 = await tokenizerOf("stories260k");
  assertEquals([l2.bos, l2.eos, l2.vocabSize], [1, 2, 512]);
  assertEquals(l2.encode(""), [1]);
});

Deno.test("decode round trip of a short ASCII string (both tokenizers)", async () => {
  const s = "Once upon a time, there was a little girl named Lily. She liked cats!";
  for (const model of ["tinystories-656k", "stories260k"]) {
    const tok = await tokenizerOf(model);
    const ids = tok.encode(s);
    assertEquals(ids[0], 1);
    assertEquals(tok.decode(ids), s, model);
  }
  // llama2.c byte tokens: a character outside tok512's vocab goes through <0xNN> and back.
  const l2 = await tokenizerOf("stories260k");
  const ids = l2.encode("naïve €5");
  assert.ok(ids.some((id) => id >= 3 && id < 259), "expected byte-fallback ids");
  assertEquals(l2.decode(ids), "naïve €5");
});

Deno.test("windows: non-overlapping from the start, remainder dropped", () => {
  const ids = Int32Array.from({ length: 1000 }, (_, i) => i);
  const w = windows(ids, 256);
  assertEquals([w.count, w.starts], [3, [0, 256, 512]]);
  assertEquals(windows(ids, 256, 2).count, 2);
  assertEquals(Array.from(windowIds(ids, w, 2).subarray(0, 2)), [512, 513]);
  assertEquals(windows({ length: 193347 }, 256).count, 755);
  assertEquals(windows({ length: 393019 }, 256).count, 1535);
});

async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "tokenizer_test_" });
}

const CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n" +
  "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

Deno.test("chat JSONL: rendered through the chat template, one BOS per conversation", async () => {
  const dir = await tempDir();
  try {
    const hfDir = fixtureModel("tinystories-656k");
    await Deno.copyFile(`${hfDir}/tokenizer.json`, `${dir}/tokenizer.json`);
    const config = JSON.parse(await Deno.readTextFile(`${hfDir}/tokenizer_config.json`));
    config.chat_template = CHAT_TEMPLATE;
    await Deno.writeTextFile(`${dir}/tokenizer_config.json`, JSON.stringify(config));
    const tok = await loadTokenizer(dir);
    assertEquals(tok.chatTemplate, CHAT_TEMPLATE);

    const conv1 = [
      { role: "user", content: "Tell me a story." },
      { role: "assistant", content: "Once upon a time, there was a cat." },
    ];
    const conv2 = [{ role: "user", content: "Hi" }];
    const body1 = "user: Tell me a story.\nassistant: Once upon a time, there was a cat.\n";
    assertEquals(renderChat(CHAT_TEMPLATE, conv1, tok), `<|start_story|>${body1}`);

    const path = `${dir}/chat.jsonl`;
    await Deno.writeTextFile(
      path,
      [conv1, conv2].map((messages) => JSON.stringify({ messages })).join("\n") + "\n",
    );
    const ids = await readDataset(path, tok);
    // The template emits the BOS text and encode() adds a BOS too: one of the two is dropped.
    const enc1 = tok.encode(`<|start_story|>${body1}`);
    const enc2 = tok.encode("<|start_story|>user: Hi\n");
    assertEquals([enc1[0], enc1[1], enc2[0], enc2[1]], [1, 1, 1, 1]);
    assertEquals(Array.from(ids), [...enc1.slice(1), ...enc2.slice(1)]);
    assertEquals(ids.filter((id) => id === tok.bos).length, 2);
    assertEquals(tok.decode(enc1.slice(1)), body1);

    // Without a chat template: a clear error naming the file.
    const plain = await tokenizerOf("tinystories-656k");
    await assertRejects(() => readDataset(path, plain), Error, `${path}:1`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("text JSONL: documents encoded one by one, each with its BOS", async () => {
  const dir = await tempDir();
  try {
    const tok = await tokenizerOf("stories260k");
    const path = `${dir}/docs.jsonl`;
    await Deno.writeTextFile(path, '{"text": "Tom ran."}\n\n{"text": "Sue sat.", "url": "x"}\n');
    const ids = await readDataset(path, tok);
    assertEquals(Array.from(ids), [...tok.encode("Tom ran."), ...tok.encode("Sue sat.")]);

    await Deno.writeTextFile(path, '{"text": "ok"}\n{"text": broken}\n');
    await assertRejects(() => readDataset(path, tok), Error, `${path}:2: invalid JSON`);
    await Deno.writeTextFile(path, '{"title": "no text"}\n');
    await assertRejects(() => readDataset(path, tok), Error, `${path}:1`);
    await assertRejects(() => readDataset(`${dir}/data.csv`, tok), Error, "unsupported file type");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadTokenizer: llama2.c fallback and missing tokenizer", async () => {
  const dir = await tempDir();
  try {
    await assertRejects(() => loadTokenizer(dir), Error, dir);
    await Deno.writeFile(`${dir}/model.bin`, new Uint8Array(28));
    await assertRejects(() => loadTokenizer(dir), Error, "tok*.bin");
    const tok = await loadTokenizer(dir, {
      llama2cFallback: `${fixtureModel("stories260k")}/tok512.bin`,
    });
    assertEquals(tok.vocabSize, 512);
    assertEquals(
      tok.encode("Hello world"),
      (await tokenizerOf("stories260k")).encode("Hello world"),
    );
    await assertRejects(() => loadTokenizer(`${dir}/nope`), Error, `${dir}/nope`);
    const viaFile = await loadTokenizer(`${fixtureModel("stories260k")}/stories260K.bin`);
    assertEquals(viaFile.vocabSize, 512);
    const hf = await loadHfTokenizer(fixtureModel("tinystories-656k"));
    assertEquals(hf.decode([]), "");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
