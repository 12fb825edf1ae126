/**
 * Datasets as token id streams (PROTOCOL §2) and the evaluation windows cut from them (§3).
 * @module
 */

import { encodeChat, isMessages, renderChat } from "./chat.ts";
import type { TextTokenizer } from "./tokenizer.ts";

function concat(parts: number[][]): Int32Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Int32Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** One parsed line of a JSON-lines file, with `file:line` for messages. */
export interface JsonLine {
  /** The parsed value. */
  value: unknown;
  /** `path:line` (1-based), for error messages. */
  where: string;
  /** The line number (1-based). */
  line: number;
}

/** Parses JSON lines, skipping blank ones; an invalid line is an error naming file and line. */
export function jsonLines(text: string, path: string): JsonLine[] {
  const out: JsonLine[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === "") continue;
    const where = `${path}:${i + 1}`;
    try {
      out.push({ value: JSON.parse(line), where, line: i + 1 });
    } catch (e) {
      throw new Error(`${where}: invalid JSON (${(e as Error).message})`);
    }
  }
  return out;
}

/**
 * Reads a dataset file as one id stream.
 *
 * - `.txt`: the whole file as one UTF-8 string, unchanged (no newline normalisation), encoded
 *   once (one BOS at the very start), as PROTOCOL §2.
 * - `.jsonl`, lines with a `text` string: each document is encoded on its own and the results are
 *   concatenated in file order, so **every document starts with its own BOS** (as `encode` gives
 *   it) and merges never cross document boundaries.
 * - `.jsonl`, lines with `messages` (`[{role, content}]`): each conversation is rendered through
 *   the tokenizer's chat template ({@link renderChat}), encoded (one leading BOS per
 *   conversation), and concatenated. Needs `tok.chatTemplate`.
 *
 * Blank JSONL lines are skipped. Errors name the file (and line, for JSONL).
 */
export async function readDataset(
  path: string,
  tok: TextTokenizer,
  o: DatasetOptions = {},
): Promise<Int32Array> {
  const lower = path.toLowerCase();
  if (!lower.endsWith(".txt") && !lower.endsWith(".jsonl")) {
    throw new Error(`${path}: unsupported file type (expected .txt or .jsonl)`);
  }
  const text = await readText(path);
  if (lower.endsWith(".txt")) return Int32Array.from(tok.encode(text));
  const parts: number[][] = [];
  for (const { value: obj, where, line } of jsonLines(text, path)) {
    const rec = (obj ?? {}) as { text?: unknown; messages?: unknown };
    if (typeof obj === "object" && obj !== null && isMessages(rec.messages)) {
      if (tok.chatTemplate === undefined) {
        throw new Error(
          `${where}: chat-format line (messages) but the tokenizer has no chat template`,
        );
      }
      let rendered: string;
      try {
        rendered = renderChat(tok.chatTemplate, rec.messages, tok);
      } catch (e) {
        throw new Error(`${where}: the chat template failed (${(e as Error).message})`);
      }
      const ids = encodeChat(rendered, tok);
      o.onChat?.(rendered, line, ids.length);
      parts.push(ids);
    } else if (typeof obj === "object" && obj !== null && typeof rec.text === "string") {
      parts.push(tok.encode(rec.text));
    } else {
      throw new Error(
        `${where}: expected an object with a "text" string or a "messages" array of {role, content}`,
      );
    }
  }
  return concat(parts);
}

/** Options of {@linkcode readDataset}. */
export interface DatasetOptions {
  /** Receives each chat conversation as rendered by the template, its line and token count. */
  onChat?: (rendered: string, line: number, tokens: number) => void;
}

/** Above this fraction of invalid UTF-8 or control characters a file is refused as not text. */
export const MAX_BINARY_FRACTION = 0.05;

/**
 * A text file's contents, refused (naming the file) when it cannot be read, or when more than
 * {@linkcode MAX_BINARY_FRACTION} of its characters are invalid UTF-8 or control characters
 * other than tab, newline, carriage return and form feed (random bytes, a checkpoint, …).
 */
export async function readText(path: string): Promise<string> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new Error(`${path}: no such file`);
    if (e instanceof Deno.errors.IsADirectory) throw new Error(`${path}: is a directory`);
    throw new Error(`${path}: cannot read (${(e as Error).message})`);
  }
  const text = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true }).decode(bytes);
  let bad = 0, first = -1;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const control = (c < 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0c && c !== 0x0d) ||
      c === 0x7f;
    if (control || c === 0xfffd) {
      if (first < 0) first = i;
      bad++;
    }
  }
  if (text.length > 0 && bad > MAX_BINARY_FRACTION * text.length) {
    throw new Error(
      `${path}: not a text file (${(100 * bad / text.length).toFixed(1)}% of its characters ` +
        `are invalid UTF-8 or control bytes, the first at character ${first})`,
    );
  }
  return text;
}

/** sha256 (hex) of token ids written as little-endian uint32, as PROTOCOL.md §2 lists them. */
export async function idsSha256(ids: ArrayLike<number>): Promise<string> {
  const bytes = new Uint8Array(ids.length * 4);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < ids.length; i++) view.setUint32(i * 4, ids[i], true);
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Non-overlapping windows of a token stream. */
export interface Windows {
  /** Number of windows used. */
  count: number;
  /** Start offset of each window in the stream (`i * seqlen`). */
  starts: number[];
  /** Window length. */
  seqlen: number;
}

/**
 * Cuts `floor(len / seqlen)` non-overlapping windows from the start (the remainder is dropped)
 * and keeps the first `maxWindows` of them when given (PROTOCOL §3).
 */
export function windows(
  ids: ArrayLike<number>,
  seqlen: number,
  maxWindows?: number,
): Windows {
  if (!Number.isInteger(seqlen) || seqlen <= 0) {
    throw new RangeError(`windows: seqlen must be a positive integer, got ${seqlen}`);
  }
  let count = Math.floor(ids.length / seqlen);
  if (maxWindows !== undefined) count = Math.min(count, Math.max(0, Math.floor(maxWindows)));
  const starts = Array.from({ length: count }, (_, i) => i * seqlen);
  return { count, starts, seqlen };
}

/** The ids of window `i` (a view, no copy). */
export function windowIds(ids: Int32Array, w: Windows, i: number): Int32Array {
  if (i < 0 || i >= w.count) throw new RangeError(`windowIds: window ${i} of ${w.count}`);
  return ids.subarray(w.starts[i], w.starts[i] + w.seqlen);
}
