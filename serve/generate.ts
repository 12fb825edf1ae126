/**
 * Generation with an exported decoder: prompts of any lengths as one left-padded batch (the
 * attention mask hides the padding, positions count only real tokens), one prefill step over
 * the prompts, then one step per new token with the KV cache; each row stops at an EOS token,
 * at a stop string (cut from its text) or after `maxNewTokens`, and streams its text as it
 * grows (held back while it could still be the start of a stop string or half a character).
 * @module
 */
import type { KvCache, OnnxDecoder } from "./decoder.ts";
import { Sampler, type SamplingOptions } from "./sampling.ts";

/** What a generation does. */
export interface GenerateOptions extends SamplingOptions {
  /** New tokens per row at most. */
  maxNewTokens: number;
  /** Strings that end a row (not included in its text). */
  stop?: string[];
  /** Ends the generation early (a client that went away); rows finish with `abort`. */
  signal?: AbortSignal;
  /** Receives each row's new text as it is settled. */
  onText?: (row: number, text: string) => void | Promise<void>;
  /** Receives each step's token ids (one per unfinished row; −1 for finished rows). */
  onStep?: (ids: number[]) => void;
}

/** Why a row ended: EOS or a stop string, the token limit, or an abort. */
export type FinishReason = "stop" | "length" | "abort";

/** One row's result. */
export interface Generation {
  /** The new token ids (the EOS that ended it excluded). */
  ids: number[];
  /** Their text, cut before a stop string. */
  text: string;
  /** Why it ended. */
  finishReason: FinishReason;
  /** Tokens of its prompt. */
  promptTokens: number;
}

/** Timings of a generation. */
export interface GenerateTimings {
  /** Seconds of the prefill step. */
  prefillSeconds: number;
  /** Seconds of the decode steps. */
  decodeSeconds: number;
  /** Decode steps run. */
  decodeSteps: number;
}

/** A batch of prompts as left-padded rows of length L, row-major [B, L]. */
export interface PaddedBatch {
  /** Token ids (pads: `pad`). */
  ids: number[];
  /** 1 for a token, 0 for a pad. */
  mask: number[];
  /** Each token's position in its prompt (pads: 0). */
  positions: number[];
  /** L, the longest prompt. */
  length: number;
}

/** Left-pads prompts to the longest one. */
export function leftPad(prompts: number[][], pad = 0): PaddedBatch {
  const L = Math.max(...prompts.map((p) => p.length));
  const B = prompts.length;
  const ids = new Array<number>(B * L).fill(pad);
  const mask = new Array<number>(B * L).fill(0);
  const positions = new Array<number>(B * L).fill(0);
  prompts.forEach((p, r) => {
    const off = L - p.length;
    p.forEach((id, j) => {
      ids[r * L + off + j] = id;
      mask[r * L + off + j] = 1;
      positions[r * L + off + j] = j;
    });
  });
  return { ids, mask, positions, length: L };
}

/** Generates a continuation of every prompt (token ids, BOS included) in one batch. */
export async function generate(
  dec: OnnxDecoder,
  prompts: number[][],
  o: GenerateOptions,
): Promise<{ rows: Generation[]; timings: GenerateTimings }> {
  if (prompts.length === 0 || prompts.some((p) => p.length === 0)) {
    throw new Error("generate: every prompt needs at least one token");
  }
  const B = prompts.length, V = dec.config.vocab;
  const long = prompts.find((p) => p.length >= dec.config.maxSeq);
  if (long) {
    throw new Error(
      `generate: a prompt of ${long.length} tokens leaves no room in the model's context of ` +
        `${dec.config.maxSeq}`,
    );
  }
  const samplers = prompts.map((_, r) =>
    new Sampler({ ...o, seed: o.seed === undefined ? undefined : o.seed + r })
  );
  const rows = prompts.map((p) => new RowText(dec, o.stop ?? [], p));
  const padded = leftPad(prompts);
  let mask = padded.mask;
  let next = padded.positions.filter((_, i) => i % padded.length === padded.length - 1);
  const t0 = performance.now();
  let { logits, cache } = await dec.step(
    { ids: padded.ids, batch: B, mask, positions: padded.positions },
    dec.emptyCache(B),
  );
  const prefillSeconds = (performance.now() - t0) / 1000;
  let T = padded.length, steps = 0;
  const t1 = performance.now();
  for (let n = 0;; n++) {
    const ids = rows.map((row, r) => {
      if (row.done) return -1;
      const at = ((r + 1) * T - 1) * V;
      return samplers[r].pick(logits.subarray(at, at + V));
    });
    o.onStep?.(ids);
    for (let r = 0; r < B; r++) {
      const row = rows[r];
      if (row.done) continue;
      if (dec.eos.includes(ids[r])) row.finish("stop");
      else row.push(ids[r]);
      const limit = Math.min(o.maxNewTokens, dec.config.maxSeq - prompts[r].length);
      if (!row.done && row.ids.length >= limit) row.finish("length");
      const text = row.settled();
      if (text && o.onText) await o.onText(r, text);
    }
    if (rows.every((row) => row.done)) break;
    if (o.signal?.aborted) {
      for (const row of rows) if (!row.done) row.finish("abort");
      break;
    }
    mask = extend(mask, B, cache.length + T);
    next = next.map((p) => p + 1);
    const step: { logits: Float32Array; cache: KvCache } = await dec.step({
      ids: ids.map((id, r) => id >= 0 ? id : rows[r].ids.at(-1) ?? prompts[r].at(-1)!),
      batch: B,
      mask,
      positions: next,
    }, cache);
    ({ logits, cache } = step);
    T = 1;
    steps++;
  }
  const decodeSeconds = (performance.now() - t1) / 1000;
  const out = rows.map((row) => row.result());
  return { rows: out, timings: { prefillSeconds, decodeSeconds, decodeSteps: steps } };
}

/** The mask [B, S] grown by one real token per row. */
function extend(mask: number[], B: number, S: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < B; r++) out.push(...mask.slice(r * S, (r + 1) * S), 1);
  return out;
}

/** One row's tokens and text, its stop strings and how much of its text was streamed. */
class RowText {
  ids: number[] = [];
  done = false;
  #reason: FinishReason = "length";
  #text = "";
  #emitted = 0;
  #dec: OnnxDecoder;
  #stop: string[];
  #promptTokens: number;
  #context: number[];
  #contextText: string;

  constructor(dec: OnnxDecoder, stop: string[], prompt: number[]) {
    this.#dec = dec;
    this.#stop = stop.filter((s) => s.length > 0);
    this.#promptTokens = prompt.length;
    // The text is decoded after the prompt's last tokens, so that a tokenizer that strips the
    // first space of a text (SentencePiece's dummy prefix) keeps the new text's leading space.
    this.#context = prompt.slice(-4);
    this.#contextText = dec.tokenizer.decode(this.#context);
  }

  push(id: number): void {
    this.ids.push(id);
    const tok = this.#dec.tokenizer;
    const full = tok.decode([...this.#context, ...this.ids]);
    this.#text = full.startsWith(this.#contextText)
      ? full.slice(this.#contextText.length)
      : tok.decode(this.ids);
    let cut = -1;
    for (const s of this.#stop) {
      const at = this.#text.indexOf(s);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.#text = this.#text.slice(0, cut);
      this.finish("stop");
    }
  }

  finish(reason: FinishReason): void {
    this.done = true;
    this.#reason = reason;
  }

  /** Text not streamed yet that can no longer change (all of it once the row is done). */
  settled(): string {
    const text = this.#text;
    let end = text.length;
    if (!this.done) {
      // Hold back what could still become a stop string, and half a character.
      for (const s of this.#stop) {
        for (let k = Math.min(s.length - 1, text.length); k > 0; k--) {
          if (text.endsWith(s.slice(0, k))) {
            end = Math.min(end, text.length - k);
            break;
          }
        }
      }
      while (end > 0 && text[end - 1] === "\uFFFD") end--;
    }
    if (end <= this.#emitted) return "";
    const out = text.slice(this.#emitted, end);
    this.#emitted = end;
    return out;
  }

  result(): Generation {
    return {
      ids: this.ids,
      text: this.#text,
      finishReason: this.#reason,
      promptTokens: this.#promptTokens,
    };
  }
}
