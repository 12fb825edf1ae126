/**
 * SentencePiece-style vocabularies as llama.cpp holds them (GGUF `tokenizer.ggml.model` =
 * `llama`: tokens, scores, token types, special ids) and llama.cpp's SPM tokenizer over them:
 * spaces escaped to `▁`, a `▁` prefix, the text split into UTF-8 characters, then the adjacent
 * pair whose concatenation is a token with the highest score merged first (leftmost on ties);
 * characters no token covers become byte tokens `<0xNN>`.
 *
 * Two sources become such a vocabulary:
 *
 * - llama2.c's `tok*.bin` (SentencePiece pieces with `▁` written as a space, real scores, all
 *   256 byte tokens): pieces get their `▁` back, `\n<s>\n` and `\n</s>\n` their plain names.
 * - a `tokenizer.json` BPE whose normalizer prepends `▁` and replaces spaces by `▁`, with no
 *   pre-tokenizer (the Llama 2 / TinyStories layout): each token's score is minus the rank of
 *   the merge that makes it, so merging by score follows the merge order. On text the vocabulary
 *   covers this gives the BPE's ids (checked on the whole TinyStories validation text).
 *   Characters it does not cover: with byte fallback and no `<0xNN>` tokens, `tokenizer.json`
 *   gives `<unk>` (consecutive ones fused), and so does {@linkcode spmTokenizer}; llama.cpp
 *   aborts there instead (it looks for a byte token that does not exist).
 * @module
 */
import { mergePairs, type TextTokenizer } from "./tokenizer.ts";

/** llama.cpp's token types. */
export const TokenType = {
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;

/** A SentencePiece-style vocabulary. */
export interface SpmVocab {
  /** Token texts, `▁` for spaces, `<0xNN>` for byte tokens. */
  tokens: string[];
  /** Merge priority of each token (higher merges first). */
  scores: Float32Array;
  /** {@linkcode TokenType} of each token. */
  types: Int32Array;
  /** Beginning-of-sequence id. */
  bos: number;
  /** End-of-sequence id. */
  eos: number;
  /** Id of the unknown token. */
  unk: number;
  /** Padding id, when the tokenizer has one. */
  pad?: number;
  /** Prepend BOS when encoding. */
  addBos: boolean;
  /** Prepend `▁` to the text. */
  addSpacePrefix: boolean;
}

const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;

/** A vocabulary from llama2.c's `tok*.bin` pieces (binary strings) and scores. */
export function spmVocabFromLlama2c(pieces: string[], scores: Float32Array): SpmVocab {
  const bytes = (p: string) => Uint8Array.from(p, (c) => c.charCodeAt(0));
  const tokens = pieces.map((p, i) => {
    const t = new TextDecoder().decode(bytes(p));
    if (i === 1 || i === 2) return t.trim();
    return t.replaceAll(" ", "▁");
  });
  const types = Int32Array.from(
    tokens,
    (t, i) =>
      i === 0
        ? TokenType.UNKNOWN
        : i === 1 || i === 2
        ? TokenType.CONTROL
        : BYTE_TOKEN.test(t)
        ? TokenType.BYTE
        : TokenType.NORMAL,
  );
  return {
    tokens,
    scores: Float32Array.from(scores),
    types,
    bos: 1,
    eos: 2,
    unk: 0,
    addBos: true,
    addSpacePrefix: true,
  };
}

type Json = Record<string, unknown>;

/** Why a `tokenizer.json` is not SentencePiece-shaped, or null when it is. */
function notSpmShaped(tj: Json): string | null {
  const model = tj.model as Json | undefined;
  if (model?.type !== "BPE") return `its model is ${model?.type}, not BPE`;
  if (!Array.isArray(model.merges)) return "it has no merges";
  if (tj.pre_tokenizer) return "it has a pre-tokenizer (byte-level BPE, e.g. Llama 3 or Qwen)";
  const n = tj.normalizer as Json | null;
  const steps = (n?.type === "Sequence" ? n.normalizers : [n]) as Json[];
  const prepend = steps.some((s) => s?.type === "Prepend" && s.prepend === "▁");
  const replace = steps.some((s) =>
    s?.type === "Replace" && (s.pattern as Json)?.String === " " && s.content === "▁"
  );
  if (!prepend || !replace || steps.length !== 2) {
    return "its normalizer is not Prepend(▁) + Replace(' ' → ▁)";
  }
  return null;
}

/**
 * A vocabulary from a SentencePiece-shaped BPE `tokenizer.json` (and `tokenizer_config.json`
 * for the special tokens). Throws, naming `file`, for other tokenizers.
 */
export function spmVocabFromHf(
  tj: Record<string, unknown>,
  config: Record<string, unknown>,
  file: string,
): SpmVocab {
  const why = notSpmShaped(tj);
  if (why) {
    throw new Error(
      `${file}: cannot be written as a llama.cpp SentencePiece vocabulary: ${why}`,
    );
  }
  const model = tj.model as {
    vocab: Record<string, number>;
    merges: unknown[];
    unk_token?: string;
  };
  const added = (tj.added_tokens ?? []) as { id: number; content: string; special?: boolean }[];
  let n = 0;
  for (const id of Object.values(model.vocab)) n = Math.max(n, id + 1);
  for (const a of added) n = Math.max(n, a.id + 1);
  const tokens: string[] = new Array(n).fill("");
  for (const [t, id] of Object.entries(model.vocab)) tokens[id] = t;
  for (const a of added) tokens[a.id] = a.content;
  const scores = new Float32Array(n);
  const types = new Int32Array(n).fill(TokenType.NORMAL);
  const merged = new Set<number>();
  model.merges.forEach((m, rank) => {
    const [a, b] = Array.isArray(m) ? m as string[] : String(m).split(" ");
    const id = model.vocab[a + b];
    if (id !== undefined && !merged.has(id)) {
      merged.add(id);
      scores[id] = -rank;
    }
  });
  // Tokens no merge makes can only be formed by llama.cpp's pair lookup: last resort.
  for (let id = 0; id < n; id++) {
    if (!merged.has(id) && Array.from(tokens[id]).length > 1) scores[id] = -model.merges.length;
  }
  const idOf = (v: unknown): number | undefined => {
    const t = typeof v === "string" ? v : (v as { content?: string } | undefined)?.content;
    return t === undefined ? undefined : tokens.indexOf(t);
  };
  const unk = idOf(config.unk_token ?? model.unk_token) ?? 0;
  for (const a of added) if (a.special) types[a.id] = TokenType.CONTROL;
  tokens.forEach((t, id) => {
    if (BYTE_TOKEN.test(t)) types[id] = TokenType.BYTE;
  });
  if (unk >= 0) types[unk] = TokenType.UNKNOWN;
  const pad = idOf(config.pad_token);
  return {
    tokens,
    scores,
    types,
    bos: idOf(config.bos_token) ?? 1,
    eos: idOf(config.eos_token) ?? 2,
    unk,
    ...(pad !== undefined && pad >= 0 ? { pad } : {}),
    addBos: config.add_bos_token !== false,
    addSpacePrefix: true,
  };
}

/**
 * llama.cpp's SPM tokenizer over a vocabulary. A character no token covers becomes its byte
 * tokens, or `<unk>` (consecutive ones fused) when the vocabulary has no byte tokens.
 */
export function spmTokenizer(v: SpmVocab): TextTokenizer {
  const lookup = new Map<string, number>();
  v.tokens.forEach((t, i) => {
    if (!lookup.has(t)) lookup.set(t, i);
  });
  const byteId = new Int32Array(256).fill(-1);
  v.tokens.forEach((t, i) => {
    const m = BYTE_TOKEN.exec(t);
    if (m && v.types[i] === TokenType.BYTE) byteId[parseInt(m[1], 16)] = i;
  });
  const base = { maxTokenLength: 0, pieces: v.tokens, scores: v.scores };
  const encode = (text: string): number[] => {
    const out: number[] = v.addBos ? [v.bos] : [];
    if (text === "") return out;
    const escaped = ((v.addSpacePrefix ? " " : "") + text).replaceAll(" ", "▁");
    // Characters outside the vocabulary get ids past its end, standing only for themselves.
    let pieces = base.pieces;
    const extra = new Map<string, number>();
    const init: number[] = [];
    for (const ch of escaped) {
      let id = lookup.get(ch);
      if (id === undefined) {
        id = extra.get(ch);
        if (id === undefined) {
          if (pieces === base.pieces) pieces = [...base.pieces];
          id = pieces.length;
          pieces.push(ch);
          extra.set(ch, id);
        }
      }
      init.push(id);
    }
    const merged = mergePairs({ ...base, pieces }, lookup, init);
    const V = v.tokens.length;
    for (const id of merged) {
      if (id < V) {
        out.push(id);
        continue;
      }
      for (const b of new TextEncoder().encode(pieces[id])) {
        if (byteId[b] >= 0) out.push(byteId[b]);
        else if (out[out.length - 1] !== v.unk) out.push(v.unk);
      }
    }
    return out;
  };
  const decode = (ids: number[]): string => {
    const bytes: number[] = [];
    for (const id of ids) {
      const t = v.tokens[id];
      if (t === undefined) throw new RangeError(`decode: id ${id} out of range`);
      const type = v.types[id];
      if (type === TokenType.CONTROL || type === TokenType.UNKNOWN) continue;
      const m = type === TokenType.BYTE ? BYTE_TOKEN.exec(t) : null;
      if (m) bytes.push(parseInt(m[1], 16));
      else bytes.push(...new TextEncoder().encode(t.replaceAll("▁", " ")));
    }
    const s = new TextDecoder().decode(Uint8Array.from(bytes));
    return v.addSpacePrefix && s.startsWith(" ") ? s.slice(1) : s;
  };
  return {
    encode,
    decode,
    bos: v.bos,
    eos: v.eos,
    vocabSize: v.tokens.length,
    bosToken: v.tokens[v.bos],
    eosToken: v.tokens[v.eos],
  };
}
