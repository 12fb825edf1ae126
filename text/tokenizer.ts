/**
 * Tokenizers for the two model formats (PROTOCOL §2):
 *
 * - Hugging Face `tokenizer.json`: BPE tokenizers through `bpe.ts`, which gives the ids of npm
 *   `@huggingface/tokenizers@0.2.0` exactly, fast (O(n log n) merges: the fixture tokenizer has no
 *   pre-tokenizer, so a whole text is one BPE word); anything `bpe.ts` does not implement through
 *   that library itself. Both run over the whole text (no splitting, which could change merges).
 * - llama2.c `tok*.bin`, with run.c's `encode()` reimplemented in O(n log n) (heap over adjacent
 *   pairs + doubly linked list + lazy invalidation) and run.c's `decode()`.
 * @module
 */

import { Tokenizer } from "@huggingface/tokenizers";
import { BpeTokenizer, UnsupportedTokenizerError } from "./bpe.ts";

/** What the rest of the toolkit needs from a tokenizer. */
export interface TextTokenizer {
  /** Token ids of `text`, with the leading BOS exactly as PROTOCOL §2 specifies. */
  encode(text: string): number[];
  /** Text of `ids` (special tokens skipped, leading dummy-prefix space removed). */
  decode(ids: number[]): string;
  /** Id of the beginning-of-sequence token (absent when the tokenizer has none, as Qwen's). */
  readonly bos?: number;
  /** Id of the end-of-sequence token. */
  readonly eos: number;
  /** Number of ids in the vocabulary. */
  readonly vocabSize: number;
  /** Jinja chat template (tokenizer_config.json `chat_template`), when the model has one. */
  readonly chatTemplate?: string;
  /** Text of the BOS token (passed to chat templates as `bos_token`). */
  readonly bosToken?: string;
  /** Text of the EOS token (passed to chat templates as `eos_token`). */
  readonly eosToken?: string;
}

/** A token given in tokenizer_config.json either as a string or as `{content: string}`. */
function tokenText(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") {
    return (v as { content: string }).content;
  }
  return undefined;
}

/** `chat_template` as a string, or the `default` entry of the list form. */
function pickChatTemplate(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (Array.isArray(v)) {
    const named = v as { name?: unknown; template?: unknown }[];
    const entry = named.find((t) => t?.name === "default") ?? named[0];
    if (entry && typeof entry.template === "string") return entry.template;
  }
  return undefined;
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  const text = await Deno.readTextFile(path);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: invalid JSON (${(e as Error).message})`);
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new Error(`${path}: expected a JSON object`);
  }
  return json as Record<string, unknown>;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** Encode, decode (special tokens skipped) and token lookup of a Hugging Face tokenizer. */
interface HfCore {
  encode(text: string): number[];
  decode(ids: number[]): string;
  token_to_id(token: string): number | undefined;
}

/** `bpe.ts` when it implements everything the tokenizer uses, else the npm library. */
function hfCore(tokenizerJson: Record<string, unknown>, config: Record<string, unknown>): HfCore {
  try {
    const fast = new BpeTokenizer(tokenizerJson, config);
    return {
      encode: (text) => fast.encode(text),
      decode: (ids) => fast.decode(ids, { skipSpecialTokens: true }),
      token_to_id: (token) => fast.tokenToId(token),
    };
  } catch (e) {
    if (!(e instanceof UnsupportedTokenizerError)) throw e;
  }
  const tok = new Tokenizer(tokenizerJson, config);
  return {
    encode: (text) => tok.encode(text).ids,
    decode: (ids) => tok.decode(ids, { skip_special_tokens: true }),
    token_to_id: (token) => tok.token_to_id(token),
  };
}

/**
 * Loads a Hugging Face tokenizer directory (`tokenizer.json`, optional `tokenizer_config.json`).
 * `encode` = `new Tokenizer(tokenizerJson, tokenizerConfig).encode(text).ids` of npm
 * `@huggingface/tokenizers` with the default `add_special_tokens` (the post-processor adds the
 * BOS), computed by `bpe.ts` when it supports the tokenizer.
 */
export async function loadHfTokenizer(dir: string): Promise<TextTokenizer> {
  const file = `${dir}/tokenizer.json`;
  const tokenizerJson = await readJson(file);
  const configPath = `${dir}/tokenizer_config.json`;
  const config = (await exists(configPath)) ? await readJson(configPath) : {};
  const m = tokenizerJson.model as Record<string, unknown> | undefined;
  if (!m || typeof m !== "object" || Array.isArray(m)) {
    throw new Error(`${file}: no "model" object (not a Hugging Face tokenizer.json)`);
  }
  if ((m.type ?? "BPE") === "BPE") {
    if (!m.vocab || typeof m.vocab !== "object" || Array.isArray(m.vocab)) {
      throw new Error(`${file}: model.vocab must be an object of token → id`);
    }
    if (!Array.isArray(m.merges)) throw new Error(`${file}: model.merges must be a list`);
  }
  let tok: HfCore;
  try {
    tok = hfCore(tokenizerJson, config);
  } catch (e) {
    throw new Error(`${file}: cannot build the tokenizer (${(e as Error).message})`);
  }

  const bosToken = tokenText(config.bos_token);
  const eosToken = tokenText(config.eos_token);
  const idOf = (t: string | undefined): number | undefined =>
    t === undefined ? undefined : tok.token_to_id(t);
  // A config that names no BOS (`"bos_token": null`, as Qwen's) has none; an older one without
  // the key keeps LLaMA's id 1.
  const bos = "bos_token" in config ? idOf(bosToken) : idOf(bosToken) ?? 1;
  const eos = idOf(eosToken) ?? 2;
  const model = tokenizerJson.model as { vocab?: Record<string, number> } | undefined;
  let vocabSize = 0;
  for (const id of Object.values(model?.vocab ?? {})) vocabSize = Math.max(vocabSize, id + 1);
  for (const added of (tokenizerJson.added_tokens ?? []) as { id: number }[]) {
    vocabSize = Math.max(vocabSize, added.id + 1);
  }
  const chatTemplate = pickChatTemplate(config.chat_template);

  return {
    encode: (text: string): number[] => {
      try {
        return tok.encode(text);
      } catch (e) {
        throw new Error(`${file}: encoding failed (${(e as Error).message})`);
      }
    },
    decode: (ids: number[]): string => ids.length === 0 ? "" : tok.decode(ids),
    ...(bos !== undefined ? { bos } : {}),
    eos,
    vocabSize,
    ...(chatTemplate !== undefined ? { chatTemplate } : {}),
    ...(bosToken !== undefined ? { bosToken } : {}),
    ...(eosToken !== undefined ? { eosToken } : {}),
  };
}

/** A parsed llama2.c tokenizer file. Strings are "binary strings": one char per byte. */
export interface Llama2cVocab {
  /** `max_token_length` from the header. */
  maxTokenLength: number;
  /** Token strings as binary strings (char code = byte). */
  pieces: string[];
  /** Merge scores (float32 values). */
  scores: Float32Array;
}

/** Parses llama2.c's `tok*.bin`: int32 max_token_length, then per token f32 score, i32 len, bytes. */
export function parseLlama2cVocab(bytes: Uint8Array, vocabSize?: number): Llama2cVocab {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const maxTokenLength = view.getInt32(0, true);
  const pieces: string[] = [];
  const scores: number[] = [];
  let off = 4;
  while (off < bytes.length && (vocabSize === undefined || pieces.length < vocabSize)) {
    if (off + 8 > bytes.length) throw new Error(`llama2.c tokenizer: truncated at byte ${off}`);
    scores.push(view.getFloat32(off, true));
    const len = view.getInt32(off + 4, true);
    off += 8;
    if (len < 0 || off + len > bytes.length) {
      throw new Error(`llama2.c tokenizer: bad token length ${len} at byte ${off - 4}`);
    }
    let s = "";
    for (let i = 0; i < len; i++) s += String.fromCharCode(bytes[off + i]);
    pieces.push(s);
    off += len;
  }
  if (vocabSize !== undefined && pieces.length !== vocabSize) {
    throw new Error(`llama2.c tokenizer: expected ${vocabSize} tokens, found ${pieces.length}`);
  }
  return { maxTokenLength, pieces, scores: Float32Array.from(scores) };
}

/**
 * A max-heap of pair entries ordered by (score desc, left position asc), stored in typed arrays.
 * Entries are never updated in place: stale ones are skipped when popped (lazy invalidation).
 */
class PairHeap {
  score: Float64Array;
  left: Int32Array;
  right: Int32Array;
  tokL: Int32Array;
  tokR: Int32Array;
  merged: Int32Array;
  heap: Int32Array;
  size = 0;
  count = 0;

  constructor(capacity: number) {
    this.score = new Float64Array(capacity);
    this.left = new Int32Array(capacity);
    this.right = new Int32Array(capacity);
    this.tokL = new Int32Array(capacity);
    this.tokR = new Int32Array(capacity);
    this.merged = new Int32Array(capacity);
    this.heap = new Int32Array(capacity);
  }

  /** True when entry a comes before entry b. */
  before(a: number, b: number): boolean {
    const sa = this.score[a], sb = this.score[b];
    return sa > sb || (sa === sb && this.left[a] < this.left[b]);
  }

  push(score: number, l: number, r: number, tl: number, tr: number, m: number): void {
    if (this.count >= this.score.length) this.grow();
    const e = this.count++;
    this.score[e] = score;
    this.left[e] = l;
    this.right[e] = r;
    this.tokL[e] = tl;
    this.tokR[e] = tr;
    this.merged[e] = m;
    const h = this.heap;
    let i = this.size++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(e, h[p])) break;
      h[i] = h[p];
      i = p;
    }
    h[i] = e;
  }

  /** Removes and returns the top entry index (size must be > 0). */
  pop(): number {
    const h = this.heap;
    const top = h[0];
    const last = h[--this.size];
    const n = this.size;
    let i = 0;
    while (true) {
      let c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && this.before(h[c + 1], h[c])) c++;
      if (!this.before(h[c], last)) break;
      h[i] = h[c];
      i = c;
    }
    if (n > 0) h[i] = last;
    return top;
  }

  grow(): void {
    const cap = this.score.length * 2 + 16;
    const f = (a: Float64Array) => {
      const b = new Float64Array(cap);
      b.set(a);
      return b;
    };
    const g = (a: Int32Array) => {
      const b = new Int32Array(cap);
      b.set(a);
      return b;
    };
    this.score = f(this.score);
    this.left = g(this.left);
    this.right = g(this.right);
    this.tokL = g(this.tokL);
    this.tokR = g(this.tokR);
    this.merged = g(this.merged);
    this.heap = g(this.heap);
  }
}

/**
 * run.c's `encode(text, bos=1, eos=0)` over a vocabulary, in O(n log n).
 *
 * Initial tokens: BOS (1); the id of `" "` when the text is non-empty (dummy prefix); then per
 * UTF-8 code point (run.c's byte loop, at most 4 bytes per group) its vocab id, or one token per
 * byte with id `byte + 3`. Then, repeatedly, the adjacent pair whose concatenated piece strings
 * form a vocab entry with the highest score is merged, the leftmost such pair on ties (run.c
 * keeps the first strictly greater score), until no pair merges. The BOS takes part in pair
 * lookups exactly as in run.c.
 */
export function llama2cEncode(
  vocab: Llama2cVocab,
  lookup: Map<string, number>,
  text: string,
): number[] {
  const bytes = new TextEncoder().encode(text);
  const init: number[] = [1];
  if (bytes.length > 0) {
    const dummy = lookup.get(" ");
    if (dummy === undefined) throw new Error('llama2.c tokenizer: no " " token for dummy prefix');
    init.push(dummy);
  }
  let buf = "";
  for (let c = 0; c < bytes.length; c++) {
    const b = bytes[c];
    if ((b & 0xc0) !== 0x80) buf = "";
    buf += String.fromCharCode(b);
    const next = c + 1 < bytes.length ? bytes[c + 1] : 0;
    if ((next & 0xc0) === 0x80 && buf.length < 4) continue;
    const id = lookup.get(buf);
    if (id !== undefined) init.push(id);
    else for (let i = 0; i < buf.length; i++) init.push(buf.charCodeAt(i) + 3);
    buf = "";
  }
  return mergePairs(vocab, lookup, init);
}

/**
 * SentencePiece-style merging over token ids: repeatedly merges the adjacent pair whose
 * concatenated pieces form a vocabulary entry (`lookup`) with the highest score, the leftmost
 * on ties, until no pair merges (run.c's `encode` loop and llama.cpp's SPM tokenizer, in
 * O(n log n)). `vocab.pieces` may extend past the vocabulary with pieces that only stand for
 * themselves (characters a tokenizer cannot cover); they are never the result of a merge.
 */
export function mergePairs(
  vocab: Llama2cVocab,
  lookup: Map<string, number>,
  init: number[],
): number[] {
  const n = init.length;
  const tok = Int32Array.from(init);
  const prev = new Int32Array(n);
  const next = new Int32Array(n);
  const alive = new Uint8Array(n).fill(1);
  for (let i = 0; i < n; i++) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  const V = vocab.pieces.length;
  const pairCache = new Map<number, number>();
  const mergeOf = (a: number, b: number): number => {
    const key = a * V + b;
    let m = pairCache.get(key);
    if (m === undefined) {
      m = lookup.get(vocab.pieces[a] + vocab.pieces[b]) ?? -1;
      pairCache.set(key, m);
    }
    return m;
  };
  const heap = new PairHeap(Math.max(16, 2 * n));
  const offer = (l: number, r: number) => {
    const m = mergeOf(tok[l], tok[r]);
    if (m >= 0) heap.push(vocab.scores[m], l, r, tok[l], tok[r], m);
  };
  for (let i = 0; i + 1 < n; i++) offer(i, i + 1);

  while (heap.size > 0) {
    const e = heap.pop();
    const l = heap.left[e], r = heap.right[e];
    if (
      !alive[l] || !alive[r] || next[l] !== r || tok[l] !== heap.tokL[e] ||
      tok[r] !== heap.tokR[e]
    ) continue; // stale
    tok[l] = heap.merged[e];
    alive[r] = 0;
    const rn = next[r];
    next[l] = rn;
    if (rn >= 0) prev[rn] = l;
    if (prev[l] >= 0) offer(prev[l], l);
    if (rn >= 0) offer(l, rn);
  }
  const out: number[] = [];
  for (let i = 0; i >= 0; i = next[i]) out.push(tok[i]);
  return out;
}

/**
 * run.c's `decode(prev_token, token)` applied along `ids`, concatenated as bytes then UTF-8
 * decoded: after BOS a leading space of the piece is dropped, `<0xNN>` pieces become byte NN.
 * BOS (1) and EOS (2) themselves produce no text.
 */
export function llama2cDecode(vocab: Llama2cVocab, ids: number[]): string {
  const out: number[] = [];
  let prevId = -1;
  for (const id of ids) {
    if (id < 0 || id >= vocab.pieces.length) {
      throw new RangeError(`llama2.c decode: id ${id} out of range`);
    }
    if (id === 1 || id === 2) {
      prevId = id;
      continue;
    }
    let piece = vocab.pieces[id];
    if (prevId === 1 && piece.charCodeAt(0) === 0x20) piece = piece.slice(1);
    const m = /^<0x([0-9A-Fa-f]{1,2})/.exec(piece);
    if (m) out.push(parseInt(m[1], 16));
    else for (let i = 0; i < piece.length; i++) out.push(piece.charCodeAt(i));
    prevId = id;
  }
  return new TextDecoder().decode(Uint8Array.from(out));
}

/** Loads a llama2.c `tok*.bin` tokenizer (BOS 1, EOS 2, no chat template). */
export async function loadLlama2cTokenizer(path: string): Promise<TextTokenizer> {
  let vocab: Llama2cVocab;
  try {
    vocab = parseLlama2cVocab(await Deno.readFile(path));
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  }
  const lookup = new Map<string, number>();
  // run.c bsearches a sorted vocab; with duplicate strings the hit is unspecified. Keep the first.
  vocab.pieces.forEach((p, i) => {
    if (!lookup.has(p)) lookup.set(p, i);
  });
  return {
    encode: (text: string): number[] => llama2cEncode(vocab, lookup, text),
    decode: (ids: number[]): string => llama2cDecode(vocab, ids),
    bos: 1,
    eos: 2,
    vocabSize: vocab.pieces.length,
    bosToken: "<s>",
    eosToken: "</s>",
  };
}

/**
 * The tokenizer of a model directory (or of the directory holding a model file):
 * `tokenizer.json` → Hugging Face; else a `tok*.bin` in the directory → llama2.c; else, when the
 * directory holds a llama2.c model (`*.bin`) and `o.llama2cFallback` names a `tok*.bin`, that one.
 */
export async function loadTokenizer(
  modelDir: string,
  o: { llama2cFallback?: string } = {},
): Promise<TextTokenizer> {
  let dir = modelDir;
  try {
    if ((await Deno.stat(modelDir)).isFile) dir = modelDir.replace(/\/[^/]*$/, "") || ".";
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(`loadTokenizer: model directory ${modelDir} does not exist`);
    }
    throw e;
  }
  if (await exists(`${dir}/tokenizer.json`)) return await loadHfTokenizer(dir);
  const bins: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isFile && entry.name.endsWith(".bin")) bins.push(entry.name);
  }
  bins.sort();
  const tok = bins.find((b) => /^tok.*\.bin$/.test(b));
  if (tok !== undefined) return await loadLlama2cTokenizer(`${dir}/${tok}`);
  if (bins.length > 0 && o.llama2cFallback) return await loadLlama2cTokenizer(o.llama2cFallback);
  throw new Error(
    `loadTokenizer: no tokenizer in ${dir} (expected tokenizer.json, or a llama2.c tok*.bin ` +
      `beside the model)`,
  );
}
