/**
 * models/bpe.ts against the reference library (npm `@huggingface/tokenizers`): the fixture
 * tokenizer on the fixture texts and on generated strings, and small synthetic tokenizers
 * (Metaspace, ByteLevel with a Split regex, byte fallback, normalizers, added tokens).
 */
import assert from "node:assert/strict";
import { Tokenizer } from "@huggingface/tokenizers";
import { fixtureModel, fixtureText, SHARED_FIXTURES } from "../fixtures/paths.ts";
import { BpeTokenizer, translateOniguruma, UnsupportedTokenizerError } from "../text/bpe.ts";
import { loadHfTokenizer } from "../text/tokenizer.ts";

type Json = Record<string, unknown>;

const FIXTURE = fixtureModel("tinystories-656k");
const fixtureJson = JSON.parse(await Deno.readTextFile(`${FIXTURE}/tokenizer.json`)) as Json;
const fixtureConfig = JSON.parse(
  await Deno.readTextFile(`${FIXTURE}/tokenizer_config.json`),
) as Json;

/** A small deterministic PRNG (xorshift32), so failures reproduce. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 4294967296;
  };
}

/** `count` strings, each a concatenation of up to `maxParts` random fragments. */
function randomTexts(seed: number, fragments: string[], count: number, maxParts = 12): string[] {
  const rand = rng(seed);
  const pick = () => fragments[Math.floor(rand() * fragments.length)];
  return Array.from({ length: count }, () => {
    let s = "";
    const parts = Math.floor(rand() * maxParts);
    for (let i = 0; i < parts; i++) s += pick();
    return s;
  });
}

const FRAGMENTS = [
  "Once upon a time",
  " there was",
  " a little girl",
  " named Lily.",
  " She",
  " liked",
  " cats!",
  "The",
  " the",
  " ",
  "  ",
  "   ",
  "\n",
  "\n\n",
  "\t",
  " \n ",
  "aaaa",
  "aaaaaaa",
  "eeee",
  "...",
  ",",
  "?",
  '"Hello," said Tom.',
  "don't",
  "I'm",
  "1999",
  "3.14",
  "#@~^",
  "naïve",
  "café",
  "Ärger",
  "straße",
  "中文字",
  "日本語",
  "😀",
  "👍🏽",
  "👨‍👩‍👧",
  "\u00a0",
  "\u2581",
  "\u2581\u2581",
  "\ufeff",
  "\u0085",
  "\ud800",
  "Ａｂｃ",
  "ﬁ",
  "<|start_story|>",
  "<|end_story|>",
  "<unk>",
  " <unk>",
  "<|start_sto",
  "<|end_story|",
  "<s>",
  "</s>",
  "<|eot_id|>",
  "<0x41>",
];

function npmTokenizer(json: Json, config: Json = {}): Tokenizer {
  return new Tokenizer(json, config);
}

/** Asserts ids and decoded text agree with the reference on every text. */
function assertSameAsReference(json: Json, config: Json, texts: string[], label: string): void {
  const ref = npmTokenizer(json, config);
  const fast = new BpeTokenizer(json, config);
  for (const text of texts) {
    const expected = ref.encode(text).ids;
    const ids = fast.encode(text);
    assert.deepStrictEqual(ids, expected, `${label}: ids of ${JSON.stringify(text)}`);
    if (ids.length === 0) continue;
    for (const skip of [false, true]) {
      assert.strictEqual(
        fast.decode(ids, { skipSpecialTokens: skip }),
        ref.decode(ids, { skip_special_tokens: skip }),
        `${label}: decode (skip ${skip}) of ${JSON.stringify(text)}`,
      );
    }
  }
}

/** Learns `count` merges by pair frequency (ties: smallest pair) over words of symbols. */
function trainMerges(words: string[][], count: number): [string, string][] {
  const merges: [string, string][] = [];
  let ws = words.map((w) => [...w]);
  for (let k = 0; k < count; k++) {
    const freq = new Map<string, number>();
    for (const w of ws) {
      for (let i = 0; i + 1 < w.length; i++) {
        const key = `${w[i]}\u0000${w[i + 1]}`;
        freq.set(key, (freq.get(key) ?? 0) + 1);
      }
    }
    let best = "", bestCount = 1;
    for (const [key, n] of freq) {
      if (n > bestCount || (n === bestCount && key < best)) [best, bestCount] = [key, n];
    }
    if (best === "") break;
    const [a, b] = best.split("\u0000");
    merges.push([a, b]);
    ws = ws.map((w) => {
      const out: string[] = [];
      for (let i = 0; i < w.length; i++) {
        if (w[i] === a && w[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(w[i]);
      }
      return out;
    });
  }
  return merges;
}

/** Vocabulary: `specials`, then `base` symbols, then merge results (first occurrence). */
function buildVocab(specials: string[], base: string[], merges: [string, string][]): Json {
  const vocab: Record<string, number> = {};
  const add = (t: string) => {
    if (!(t in vocab)) vocab[t] = Object.keys(vocab).length;
  };
  for (const t of [...specials, ...base, ...merges.map(([a, b]) => a + b)]) add(t);
  return vocab;
}

const CORPUS = [
  "Once upon a time, there was a little girl named Lily. She liked to play outside.",
  "The cat sat on the mat. The dog ran to the park and played with a ball.",
  "One day, Tom and Sue went to the store to buy some apples and bananas.",
  "aaaa aaa aa a bbbb abab abba ee eee eeee the then there these those",
  "I'm happy. Don't worry! It's 1999 and 2024... \"Yes,\" she said.",
];

function addedToken(id: number, content: string, extra: Json = {}): Json {
  return {
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
    ...extra,
  };
}

const BYTE_TOKENS = Array.from(
  { length: 256 },
  (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`,
);

/** A Llama/Mistral-style tokenizer: Metaspace, byte fallback, `<s>` template. */
function metaspaceTokenizer(opts: {
  prependScheme: string;
  split: boolean;
  byteTokens: string[];
  fuseUnk: boolean;
  byteFallback: boolean;
  shuffleMerges?: boolean;
}): Json {
  const text = CORPUS.map((s) => "\u2581" + s.replaceAll(" ", "\u2581"));
  let merges = trainMerges(text.map((s) => Array.from(s)), 120);
  if (opts.shuffleMerges) {
    const rand = rng(7);
    merges = merges.map((m) => [rand(), m] as const).sort((x, y) => x[0] - y[0]).map((x) => x[1]);
  }
  const base = [...new Set(text.flatMap((s) => Array.from(s)))].sort();
  const vocab = buildVocab(["<unk>", "<s>", "</s>", ...opts.byteTokens], base, merges);
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [addedToken(0, "<unk>"), addedToken(1, "<s>"), addedToken(2, "</s>")],
    normalizer: null,
    pre_tokenizer: {
      type: "Metaspace",
      replacement: "\u2581",
      prepend_scheme: opts.prependScheme,
      split: opts.split,
    },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "\u2581" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: opts.fuseUnk,
      byte_fallback: opts.byteFallback,
      ignore_merges: false,
      vocab,
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
}

const LLAMA3_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|" +
  " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/** GPT-2 byte-level words of `text` (the GPT-2 split, then bytes as printable characters). */
function byteLevelWords(text: string): string[][] {
  const table = Array.from({ length: 256 }, (_, b) => b);
  const printable = (b: number) =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
  let extra = 0;
  const map = table.map((b) => String.fromCharCode(printable(b) ? b : 256 + extra++));
  const words = text.match(/'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+/gu)!;
  return words.map((w) => Array.from(new TextEncoder().encode(w), (b) => map[b]));
}

/** A GPT-2 / Llama-3 style byte-level tokenizer. */
function byteLevelTokenizer(opts: { splitRegex: boolean; ignoreMerges: boolean }): Json {
  const words = byteLevelWords(CORPUS.join(" "));
  const merges = trainMerges(words, 150);
  let extra = 0;
  const base = Array.from({ length: 256 }, (_, b) => {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    return String.fromCharCode(printable ? b : 256 + extra++);
  });
  const vocab = buildVocab([], base, merges);
  const n = Object.keys(vocab).length;
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [
      addedToken(n, "<|begin_of_text|>"),
      addedToken(n + 1, "<|eot_id|>", { rstrip: true }),
      addedToken(n + 2, "[tool]", { special: false, lstrip: true, normalized: true }),
    ],
    normalizer: opts.splitRegex ? { type: "NFC" } : null,
    pre_tokenizer: opts.splitRegex
      ? {
        type: "Sequence",
        pretokenizers: [
          { type: "Split", pattern: { Regex: LLAMA3_SPLIT }, behavior: "Isolated", invert: false },
          { ...byteLevel, use_regex: false },
        ],
      }
      : { ...byteLevel, use_regex: true, add_prefix_space: true },
    post_processor: opts.splitRegex
      ? {
        type: "Sequence",
        processors: [
          { ...byteLevel, use_regex: true },
          {
            type: "TemplateProcessing",
            single: [
              { SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } },
              { Sequence: { id: "A", type_id: 0 } },
            ],
            pair: [],
            special_tokens: {},
          },
        ],
      }
      : { ...byteLevel, use_regex: true },
    decoder: { ...byteLevel, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: opts.ignoreMerges,
      vocab,
      merges: opts.splitRegex ? merges : merges.map(([a, b]) => `${a} ${b}`),
    },
  };
}

/** Normalizers, Digits, Removed split, end-of-word suffix and lstrip/rstrip added tokens. */
function normalizingTokenizer(): Json {
  const words = CORPUS.join(" ").toLowerCase().split(/\s+/).map((w) => [
    ...Array.from(w).slice(0, -1),
    w.slice(-1) + "</w>",
  ]);
  const merges = trainMerges(words, 100);
  const base = [...new Set(words.flat())].sort();
  const vocab = buildVocab(["[UNK]", "[CLS]", "[SEP]", "[MASK]"], base, merges);
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [
      addedToken(0, "[UNK]"),
      addedToken(1, "[CLS]"),
      addedToken(2, "[SEP]"),
      addedToken(3, "[MASK]", { lstrip: true, rstrip: true, normalized: true }),
    ],
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "NFKC" },
        { type: "Lowercase" },
        { type: "Strip", strip_left: true, strip_right: true },
        { type: "Replace", pattern: { Regex: " {2,}" }, content: " " },
      ],
    },
    pre_tokenizer: {
      type: "Sequence",
      pretokenizers: [
        { type: "Split", pattern: { Regex: "\\s+" }, behavior: "Removed", invert: false },
        { type: "Digits", individual_digits: true },
      ],
    },
    post_processor: {
      type: "BertProcessing",
      sep: ["[SEP]", 2],
      cls: ["[CLS]", 1],
    },
    decoder: { type: "BPEDecoder", suffix: "</w>" },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "[UNK]",
      continuing_subword_prefix: null,
      end_of_word_suffix: "</w>",
      fuse_unk: true,
      byte_fallback: false,
      vocab,
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
}

const SYNTHETIC_FRAGMENTS = [
  ...FRAGMENTS,
  ...CORPUS,
  "[MASK]",
  " [MASK] ",
  "[tool]",
  " [tool]",
  "<|begin_of_text|>",
  "<|eot_id|> x",
  "'S",
  "'ll",
  "'LL",
  "12345678",
  "\r\n",
  "x\r\n\r\ny",
  "ab".repeat(20),
];

function withoutBytes(byteTokens: string[], drop: (b: number) => boolean): string[] {
  return byteTokens.filter((_, b) => !drop(b));
}

const SYNTHETIC: [string, () => Json, Json][] = [
  [
    "metaspace first, byte fallback",
    () =>
      metaspaceTokenizer({
        prependScheme: "first",
        split: false,
        byteTokens: BYTE_TOKENS,
        fuseUnk: true,
        byteFallback: true,
      }),
    {},
  ],
  [
    "metaspace always, split, shuffled merges",
    () =>
      metaspaceTokenizer({
        prependScheme: "always",
        split: true,
        byteTokens: BYTE_TOKENS,
        fuseUnk: true,
        byteFallback: true,
        shuffleMerges: true,
      }),
    { clean_up_tokenization_spaces: false },
  ],
  [
    "metaspace never, some byte tokens missing, fuse_unk",
    () =>
      metaspaceTokenizer({
        prependScheme: "never",
        split: true,
        byteTokens: withoutBytes(BYTE_TOKENS, (b) => b >= 0xe0),
        fuseUnk: true,
        byteFallback: true,
      }),
    {},
  ],
  [
    "metaspace, no byte fallback, unk not fused",
    () =>
      metaspaceTokenizer({
        prependScheme: "always",
        split: false,
        byteTokens: [],
        fuseUnk: false,
        byteFallback: false,
      }),
    { additional_special_tokens: ["</s>"] },
  ],
  [
    "byte level (GPT-2 regex)",
    () => byteLevelTokenizer({ splitRegex: false, ignoreMerges: false }),
    {},
  ],
  [
    "byte level (Llama-3 Split regex, array merges, ignore_merges)",
    () => byteLevelTokenizer({ splitRegex: true, ignoreMerges: true }),
    {},
  ],
  ["normalizers, Digits, Removed split, end_of_word_suffix", normalizingTokenizer, {}],
];

Deno.test("fixture tokenizer: train sample ids identical to the reference", async () => {
  const text = await Deno.readTextFile(fixtureText("tinystories_train_sample.txt"));
  const expected = npmTokenizer(fixtureJson, fixtureConfig).encode(text).ids;
  assert.deepStrictEqual(new BpeTokenizer(fixtureJson, fixtureConfig).encode(text), expected);
});

Deno.test("fixture tokenizer: val and wikitext (first 40k chars) identical to the reference", async () => {
  const ref = npmTokenizer(fixtureJson, fixtureConfig);
  const fast = new BpeTokenizer(fixtureJson, fixtureConfig);
  for (const name of ["tinystories_val.txt", "wikitext2_test.txt"]) {
    const text = (await Deno.readTextFile(fixtureText(name))).slice(0, 40_000);
    assert.deepStrictEqual(fast.encode(text), ref.encode(text).ids, name);
  }
});

Deno.test("fixture tokenizer: whole texts match peer_results counts and first ids", async () => {
  const peer = JSON.parse(
    await Deno.readTextFile(`${SHARED_FIXTURES}/../reference/peer_results.json`),
  ) as {
    models: Record<
      string,
      { tokens: Record<string, { file: string; count: number; first16: number[] }> }
    >;
  };
  const fast = new BpeTokenizer(fixtureJson, fixtureConfig);
  for (const ref of Object.values(peer.models["tinystories-656k"].tokens)) {
    const text = await Deno.readTextFile(fixtureText(ref.file.split("/").pop()!));
    const t0 = performance.now();
    const ids = fast.encode(text);
    console.log(`  ${ref.file}: ${ids.length} ids in ${(performance.now() - t0).toFixed(0)} ms`);
    assert.strictEqual(ids.length, ref.count, ref.file);
    assert.deepStrictEqual(ids.slice(0, 16), ref.first16, ref.file);
  }
});

Deno.test("fixture tokenizer: generated strings identical to the reference", () => {
  const texts = randomTexts(1, FRAGMENTS, 400);
  texts.push(
    "",
    " ",
    "\u2581",
    "<|start_story|>",
    " <|start_story|>",
    "<unk><unk>",
    "a".repeat(3000),
  );
  assertSameAsReference(fixtureJson, fixtureConfig, texts, "fixture");
});

for (const [label, build, config] of SYNTHETIC) {
  Deno.test(`synthetic tokenizer: ${label}`, () => {
    const json = build();
    const texts = randomTexts(label.length, SYNTHETIC_FRAGMENTS, 150);
    texts.push("", " ", "  x  ", ...randomTexts(99, SYNTHETIC_FRAGMENTS, 3, 400));
    assertSameAsReference(json, config, texts, label);
  });
}

Deno.test("synthetic tokenizer: decode of arbitrary ids matches the reference", () => {
  const json = byteLevelTokenizer({ splitRegex: true, ignoreMerges: false });
  const ref = npmTokenizer(json);
  const fast = new BpeTokenizer(json);
  const rand = rng(5);
  const size = Object.keys((json.model as Json).vocab as Json).length + 3;
  for (let k = 0; k < 100; k++) {
    const ids = Array.from(
      { length: 1 + Math.floor(rand() * 20) },
      () => Math.floor(rand() * size),
    );
    assert.strictEqual(fast.decode(ids), ref.decode(ids), JSON.stringify(ids));
  }
});

Deno.test("unsupported configurations are refused, and loadHfTokenizer falls back", async () => {
  const variants: Json[] = [
    { ...fixtureJson, pre_tokenizer: { type: "Whitespace" } },
    { ...fixtureJson, model: { ...(fixtureJson.model as Json), type: "WordPiece" } },
    { ...fixtureJson, normalizer: { type: "BertNormalizer" } },
    {
      ...fixtureJson,
      pre_tokenizer: { type: "Split", pattern: { String: " " }, behavior: "MergedWithPrevious" },
    },
    { ...fixtureJson, pre_tokenizer: { type: "Split", pattern: { Regex: "\\w+" } } },
  ];
  for (const json of variants) {
    assert.throws(() => new BpeTokenizer(json, fixtureConfig), UnsupportedTokenizerError);
  }
  const dir = await Deno.makeTempDir({ prefix: "bpe_test_" });
  try {
    await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(variants[0]));
    const tok = await loadHfTokenizer(dir);
    const text = "Once upon a time, there was a cat.";
    assert.deepStrictEqual(tok.encode(text), npmTokenizer(variants[0]).encode(text).ids);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("translateOniguruma: common patterns, Oniguruma meanings, refusals", () => {
  const llama3 = translateOniguruma(LLAMA3_SPLIT);
  assert.ok(llama3 !== null && !llama3.hasCaptures);
  const re = new RegExp(llama3.source, "gu");
  // \s is White_Space (U+0085 included), which JavaScript's own \s is not.
  assert.deepStrictEqual("I'LL go a\u0085\u0085b 12345".match(re), [
    "I",
    "'LL",
    " go",
    " a",
    "\u0085",
    "\u0085b",
    " ",
    "123",
    "45",
  ]);
  const dot = translateOniguruma("a.b$")!;
  assert.ok(new RegExp(dot.source, "u").test("a\rb\n"));
  assert.ok(translateOniguruma("(\\d)x")!.hasCaptures);
  assert.ok(new RegExp(translateOniguruma("\\p{Han}+")!.source, "u").test("中文"));
  for (const bad of ["\\w+", "a++", "(?>ab)", "[a[b]]", "\\1", "(?i)abc", "\\bx"]) {
    assert.strictEqual(translateOniguruma(bad), null, bad);
  }
});

Deno.test("long words: repetitive text identical to the reference; a million characters fast", () => {
  const ref = npmTokenizer(fixtureJson, fixtureConfig);
  const fast = new BpeTokenizer(fixtureJson, fixtureConfig);
  for (const unit of ["the cat ", "a", "aab", "e "]) {
    const text = unit.repeat(Math.ceil(20_000 / unit.length));
    assert.deepStrictEqual(fast.encode(text), ref.encode(text).ids, JSON.stringify(unit));
  }
  const text = "the cat ".repeat(125_000);
  const t0 = performance.now();
  const ids = fast.encode(text);
  const ms = performance.now() - t0;
  console.log(`  ${text.length} chars → ${ids.length} ids in ${ms.toFixed(0)} ms`);
  assert.strictEqual(fast.decode(ids, { skipSpecialTokens: true }), text);
  assert.ok(ms < 5000, `${ms} ms`);
});
