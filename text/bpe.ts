/**
 * A fast Hugging Face `tokenizer.json` pipeline for BPE models: added-token splitting,
 * normalizers, pre-tokenizers, the BPE model, post-processors and decoders.
 *
 * The reference is npm `@huggingface/tokenizers@0.2.0`, the library the project's figures were
 * made with: {@link BpeTokenizer.encode} gives its ids exactly. Where that library departs from
 * the Rust implementation in a way that changes ids (Split behaviours other than `Isolated` and
 * `Removed`, inverted Split, `continuing_subword_prefix`, unusual regex syntax, ...) the
 * configuration is refused with {@link UnsupportedTokenizerError}, so that callers can fall back
 * to the library itself. Known places where the reference (and so this module) follows its own
 * rules rather than Rust's: Metaspace never splits into words, `Digits` only knows ASCII digits,
 * `fuse_unk` fuses unknown tokens across words, `dropout` is ignored.
 *
 * The merge step is O(n log n) in the length of a word: a linked list of symbols and a priority
 * queue of candidate pairs keyed by (merge rank, position), stale entries skipped when popped
 * (one binary heap for short words; per-rank position lists and heaps for long ones, such as a
 * whole text when there is no pre-tokenizer). Results of short words are cached.
 * @module
 */

/** Thrown when a `tokenizer.json` uses something this module does not implement. */
export class UnsupportedTokenizerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UnsupportedTokenizerError";
  }
}

type Json = Record<string, unknown>;
type Normalize = (text: string) => string;
/** Splits one section of normalized text into words; `section` is the added-token section index. */
type PreTokenize = (text: string, section: number) => string[];
type PostProcess = (ids: number[], addSpecialTokens: boolean) => number[];
type DecodeStep = (tokens: string[]) => string[];

function unsupported(what: string): never {
  throw new UnsupportedTokenizerError(what);
}

function isObject(v: unknown): v is Json {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function optString(cfg: Json, key: string): string | undefined {
  const v = cfg[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") unsupported(`${key} is not a string`);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Regular expressions: Oniguruma (tokenizer.json) → JavaScript
// ---------------------------------------------------------------------------------------------

/** A pattern translated from Oniguruma syntax. */
export interface TranslatedPattern {
  /** JavaScript source, to compile with the `gu` flags. */
  source: string;
  /** Whether the pattern has capturing groups (they change `String.prototype.split`). */
  hasCaptures: boolean;
}

const WHITE_SPACE = "\\p{White_Space}";
const NOT_WHITE_SPACE = "\\P{White_Space}";
const LINE_START = "(?:(?<![\\s\\S])|(?<=\\n))";
const LINE_END = "(?:(?=\\n)|(?![\\s\\S]))";
const JS_SYNTAX = "^$\\.*+?()[]{}|/";
const CLASS_SYNTAX = "\\]^-[";

/** Oniguruma escapes that mean something else (or nothing) in JavaScript `u` mode. */
const ESCAPES: Record<string, string> = {
  s: WHITE_SPACE,
  S: NOT_WHITE_SPACE,
  d: "\\p{Nd}",
  D: "\\P{Nd}",
  h: "[0-9A-Fa-f]",
  H: "[^0-9A-Fa-f]",
  n: "\\n",
  r: "\\r",
  t: "\\t",
  f: "\\f",
  v: "\\v",
  a: "\\x07",
  e: "\\x1B",
  A: "(?<![\\s\\S])",
  z: "(?![\\s\\S])",
  Z: "(?=\\n?(?![\\s\\S]))",
};

const CLASS_ESCAPES: Record<string, string> = {
  s: WHITE_SPACE,
  S: NOT_WHITE_SPACE,
  d: "\\p{Nd}",
  D: "\\P{Nd}",
  h: "0-9A-Fa-f",
  n: "\\n",
  r: "\\r",
  t: "\\t",
  f: "\\f",
  v: "\\v",
  a: "\\x07",
  e: "\\x1B",
};

function compiles(source: string): boolean {
  try {
    new RegExp(source, "u");
    return true;
  } catch {
    return false;
  }
}

/** `\p{Name}`: Oniguruma also accepts bare script names (`\p{Han}`). */
function translateProperty(kind: string, body: string): string | null {
  const plain = `\\${kind}{${body}}`;
  if (compiles(plain)) return plain;
  const script = `\\${kind}{Script=${body}}`;
  return compiles(script) ? script : null;
}

interface Piece {
  text: string;
  end: number;
}

/** One escape sequence at `src[i] === "\\"`, inside a character class or not. */
function translateEscape(src: string, i: number, inClass: boolean, fold: boolean): Piece | null {
  const rest = src.slice(i);
  const prop = /^\\([pP])\{([^}^]+)\}/.exec(rest);
  if (prop) {
    const text = translateProperty(prop[1], prop[2]);
    return text === null ? null : { text, end: i + prop[0].length };
  }
  const hex = /^\\x\{([0-9A-Fa-f]{1,8})\}|^\\x[0-9A-Fa-f]{2}|^\\u[0-9A-Fa-f]{4}/.exec(rest);
  if (hex) {
    if (fold) return null;
    return { text: hex[1] !== undefined ? `\\u{${hex[1]}}` : hex[0], end: i + hex[0].length };
  }
  if (i + 1 >= src.length) return null;
  const c = src[i + 1];
  const mapped = (inClass ? CLASS_ESCAPES : ESCAPES)[c];
  if (mapped !== undefined) return { text: mapped, end: i + 2 };
  if (/[A-Za-z0-9]/.test(c) || c.charCodeAt(0) >= 0xd800) return null;
  const special = inClass ? CLASS_SYNTAX : JS_SYNTAX;
  return { text: special.includes(c) ? `\\${c}` : c, end: i + 2 };
}

/** ASCII letters whose other case a (case-insensitive) class must also match. */
function caseFoldAdditions(body: string): string | null {
  let test: RegExp;
  try {
    test = new RegExp(`^[${body}]$`, "u");
  } catch {
    return null;
  }
  let add = "";
  for (let k = 0; k < 26; k++) {
    const upper = String.fromCharCode(65 + k), lower = String.fromCharCode(97 + k);
    const hasUpper = test.test(upper), hasLower = test.test(lower);
    if (hasUpper !== hasLower) add += hasUpper ? lower : upper;
  }
  return add;
}

/** A bracket expression at `src[i] === "["`; nested classes and `&&` are not supported. */
function translateClass(src: string, i: number, fold: boolean): Piece | null {
  let j = i + 1;
  const negated = src[j] === "^";
  if (negated) j++;
  let body = "";
  for (const first = j; j < src.length; j++) {
    const c = src[j];
    if (c === "]" && j > first) break;
    if (c === "]") body += "\\]";
    else if (c === "[" || (c === "&" && src[j + 1] === "&")) return null;
    else if (c === "\\") {
      const esc = translateEscape(src, j, true, fold);
      if (esc === null) return null;
      body += esc.text;
      j = esc.end - 1;
    } else if (fold && c.toLowerCase() !== c.toUpperCase() && c.charCodeAt(0) > 127) return null;
    else body += c;
  }
  if (j >= src.length) return null;
  if (fold) {
    const add = caseFoldAdditions(body);
    if (add === null) return null;
    body += add;
  }
  return { text: `[${negated ? "^" : ""}${body}]`, end: j + 1 };
}

/** A group opening at `src[i] === "("`: its JavaScript text, or null when unsupported. */
function groupPrefix(src: string, i: number): { text: string; end: number; fold: boolean } | null {
  const rest = src.slice(i);
  if (rest.startsWith("(?i:")) return { text: "(?:", end: i + 4, fold: true };
  const m = /^\((?:\?(?::|=|!|<=|<!|<[A-Za-z_][A-Za-z0-9_]*>))?/.exec(rest)!;
  if (rest[1] === "?" && m[0].length === 1) return null;
  return { text: m[0], end: i + m[0].length, fold: false };
}

/**
 * Translates the Oniguruma syntax of `tokenizer.json` regexes to JavaScript, with the meanings
 * the reference library gives them (`\s` = White_Space, `.` excludes only `\n`, `^`/`$` at
 * line boundaries, `(?i:…)` folds ASCII letters). Returns null for syntax it does not handle
 * (`\w`, `\b`, possessive quantifiers, atomic groups, nested classes, back-references, ...).
 */
export function translateOniguruma(src: string): TranslatedPattern | null {
  let out = "";
  let hasCaptures = false;
  let afterQuantifier = false;
  const folds: boolean[] = [];
  let fold = false;
  for (let i = 0; i < src.length;) {
    const c = src[i];
    let piece: Piece | null = null;
    let quantifier = false;
    if (c === "\\") piece = translateEscape(src, i, false, fold);
    else if (c === "[") piece = translateClass(src, i, fold);
    else if (c === "(") {
      const g = groupPrefix(src, i);
      if (g === null) return null;
      if (g.text === "(" || (g.text.startsWith("(?<") && !/^\(\?<[=!]/.test(g.text))) {
        hasCaptures = true;
      }
      folds.push(fold);
      fold = fold || g.fold;
      piece = { text: g.text, end: g.end };
    } else if (c === ")") {
      fold = folds.pop() ?? false;
      piece = { text: ")", end: i + 1 };
    } else if (c === "*" || c === "+" || c === "?") {
      if (afterQuantifier && c !== "?") return null; // possessive
      quantifier = !afterQuantifier;
      piece = { text: c, end: i + 1 };
    } else if (c === "{") {
      const q = /^\{(\d*)(,\d*)?\}/.exec(src.slice(i));
      if (q && (q[1] !== "" || (q[2] ?? ",").length > 1)) {
        if (afterQuantifier) return null;
        quantifier = true;
        piece = { text: `{${q[1] || "0"}${q[2] ?? ""}}`, end: i + q[0].length };
      } else piece = { text: "\\{", end: i + 1 };
    } else if (c === "}" || c === "]") piece = { text: `\\${c}`, end: i + 1 };
    else if (c === ".") piece = { text: "[^\\n]", end: i + 1 };
    else if (c === "^") piece = { text: LINE_START, end: i + 1 };
    else if (c === "$") piece = { text: LINE_END, end: i + 1 };
    else if (fold && c.toLowerCase() !== c.toUpperCase()) {
      if (c.charCodeAt(0) > 127) return null;
      piece = { text: `[${c.toLowerCase()}${c.toUpperCase()}]`, end: i + 1 };
    } else piece = { text: c, end: i + 1 };
    if (piece === null) return null;
    out += piece.text;
    i = piece.end;
    afterQuantifier = quantifier;
  }
  return compiles(out) ? { source: out, hasCaptures } : null;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** A `{String}` or `{Regex}` pattern of tokenizer.json as a global JavaScript regex. */
function compilePattern(pattern: unknown): { regex: RegExp; fromString: boolean; caps: boolean } {
  if (!isObject(pattern)) return unsupported("pattern is not an object");
  if (typeof pattern.String === "string") {
    return { regex: new RegExp(escapeRegExp(pattern.String), "gu"), fromString: true, caps: false };
  }
  if (typeof pattern.Regex === "string") {
    const t = translateOniguruma(pattern.Regex);
    if (t === null) unsupported(`regex ${JSON.stringify(pattern.Regex)}`);
    return { regex: new RegExp(t.source, "gu"), fromString: false, caps: t.hasCaptures };
  }
  return unsupported("pattern is neither String nor Regex");
}

// ---------------------------------------------------------------------------------------------
// Normalizers
// ---------------------------------------------------------------------------------------------

/** `Replace` (normalizer or decoder step) of one string. */
function replacer(cfg: Json): (text: string) => string {
  const content = optString(cfg, "content") ?? "";
  // The reference passes `content` to String.prototype.replaceAll, which expands `$` patterns.
  if (content.includes("$")) unsupported("Replace content with '$'");
  const literal = isObject(cfg.pattern) ? cfg.pattern.String : undefined;
  // An empty String pattern matches between code points (the reference's regex has the u flag).
  if (typeof literal === "string" && literal !== "") {
    return (text) => text.split(literal).join(content);
  }
  const { regex } = compilePattern(cfg.pattern);
  return (text) => text.replaceAll(regex, content);
}

function stripNormalizer(cfg: Json): Normalize {
  const left = cfg.strip_left === true, right = cfg.strip_right === true;
  if (left && right) return (text) => text.trim();
  if (left) return (text) => text.trimStart();
  if (right) return (text) => text.trimEnd();
  return (text) => text;
}

/** One normalizer from its tokenizer.json description (null: none). */
function buildNormalizer(cfg: unknown): Normalize | null {
  if (cfg === null || cfg === undefined) return null;
  if (!isObject(cfg)) return unsupported("normalizer is not an object");
  switch (cfg.type) {
    case "Sequence": {
      const list = cfg.normalizers ?? [];
      if (!Array.isArray(list)) return unsupported("normalizers is not a list");
      const steps = list.map(buildNormalizer).filter((n): n is Normalize => n !== null);
      return (text) => steps.reduce((t, step) => step(t), text);
    }
    case "Prepend": {
      const prepend = optString(cfg, "prepend");
      if (prepend === undefined) return unsupported("Prepend without prepend");
      return (text) => prepend + text;
    }
    case "Replace":
      return replacer(cfg);
    case "NFC":
    case "NFD":
    case "NFKC":
    case "NFKD": {
      const form = cfg.type;
      return (text) => text.normalize(form);
    }
    case "Lowercase":
      return (text) => text.toLowerCase();
    case "Strip":
      return stripNormalizer(cfg);
    case "StripAccents":
      return (text) => text.replace(/\p{M}/gu, "");
    default:
      return unsupported(`normalizer ${String(cfg.type)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers
// ---------------------------------------------------------------------------------------------

/** GPT-2's byte → printable character table (bytes that print as themselves keep their code). */
export function bytesToUnicode(): string[] {
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    table[b] = String.fromCharCode(printable ? b : 256 + extra++);
  }
  return table;
}

/** The GPT-2 split, as the reference's ByteLevel pre-tokenizer writes it (JavaScript `\s`). */
const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** `text` as UTF-8 bytes, each written as its GPT-2 printable character. */
function byteLevelString(text: string, table: string[], encoder: TextEncoder): string {
  const bytes = encoder.encode(text);
  const parts: string[] = [];
  const chunk = 8192;
  for (let start = 0; start < bytes.length; start += chunk) {
    let s = "";
    const end = Math.min(bytes.length, start + chunk);
    for (let k = start; k < end; k++) s += table[bytes[k]];
    parts.push(s);
  }
  return parts.join("");
}

function byteLevelPreTokenizer(cfg: Json): PreTokenize {
  const addPrefixSpace = cfg.add_prefix_space === true;
  const useRegex = cfg.use_regex ?? true;
  const table = bytesToUnicode();
  const encoder = new TextEncoder();
  return (text) => {
    if (addPrefixSpace && !text.startsWith(" ")) text = " " + text;
    const words = useRegex ? text.match(GPT2_SPLIT) ?? [] : [text];
    return words.map((w) => byteLevelString(w, table, encoder));
  };
}

function metaspacePreTokenizer(cfg: Json): PreTokenize {
  const replacement = optString(cfg, "replacement") ?? "\u2581";
  const strRep = optString(cfg, "str_rep") || replacement;
  const scheme = optString(cfg, "prepend_scheme") ?? "always";
  if (!["always", "first", "never"].includes(scheme)) unsupported(`prepend_scheme ${scheme}`);
  return (text, section) => {
    let out = text.replaceAll(" ", strRep);
    const prepend = scheme === "always" || (scheme === "first" && section === 0);
    if (prepend && !out.startsWith(replacement)) out = strRep + out;
    return [out];
  };
}

/** The pieces between matches and the matches themselves (an empty match only cuts). */
function splitIsolated(text: string, regex: RegExp): string[] {
  const out: string[] = [];
  let prev = 0;
  for (const m of text.matchAll(regex)) {
    if (prev < m.index) out.push(text.slice(prev, m.index));
    if (m[0].length > 0) out.push(m[0]);
    prev = m.index + m[0].length;
  }
  if (prev < text.length) out.push(text.slice(prev));
  return out;
}

function splitPreTokenizer(cfg: Json): PreTokenize {
  if (cfg.invert === true) unsupported("Split with invert");
  const behavior = String(cfg.behavior ?? "Isolated").toLowerCase();
  const { regex, fromString, caps } = compilePattern(cfg.pattern);
  if (behavior === "isolated") return (text) => splitIsolated(text, regex);
  if (behavior === "removed" && !fromString && !caps) {
    return (text) => text.split(regex).filter((w) => w.length > 0);
  }
  return unsupported(`Split behavior ${String(cfg.behavior)}`);
}

function digitsPreTokenizer(cfg: Json): PreTokenize {
  const regex = cfg.individual_digits === true ? /[^\d]+|\d/gu : /[^\d]+|\d+/gu;
  return (text) => text.match(regex) ?? [];
}

/** One pre-tokenizer from its tokenizer.json description (null: none). */
function buildPreTokenizer(cfg: unknown): PreTokenize | null {
  if (cfg === null || cfg === undefined) return null;
  if (!isObject(cfg)) return unsupported("pre_tokenizer is not an object");
  switch (cfg.type) {
    case "Sequence": {
      const list = cfg.pretokenizers ?? [];
      if (!Array.isArray(list)) return unsupported("pretokenizers is not a list");
      const steps = list.map(buildPreTokenizer).filter((p): p is PreTokenize => p !== null);
      return (text, section) =>
        steps.reduce((words, step) => words.flatMap((w) => step(w, section)), [text]);
    }
    case "Metaspace":
      return metaspacePreTokenizer(cfg);
    case "ByteLevel":
      return byteLevelPreTokenizer(cfg);
    case "Split":
      return splitPreTokenizer(cfg);
    case "Digits":
      return digitsPreTokenizer(cfg);
    default:
      return unsupported(`pre_tokenizer ${String(cfg.type)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Added tokens
// ---------------------------------------------------------------------------------------------

interface AddedToken {
  content: string;
  id: number;
  lstrip: boolean;
  rstrip: boolean;
  special: boolean;
  normalized: boolean;
}

function parseAddedToken(v: unknown): AddedToken {
  if (!isObject(v) || typeof v.content !== "string" || !Number.isInteger(v.id)) {
    return unsupported("malformed added token");
  }
  const special = v.special === true;
  return {
    content: v.content,
    id: v.id as number,
    lstrip: v.lstrip === true,
    rstrip: v.rstrip === true,
    special,
    normalized: typeof v.normalized === "boolean" ? v.normalized : !special,
  };
}

/** Leftmost-longest matching of a set of strings (a trie over UTF-16 code units). */
class TokenSplitter {
  readonly #children: Map<number, number>[] = [new Map()];
  readonly #ends: (string | null)[] = [null];
  readonly #firstUnit = new Uint8Array(65536);

  constructor(words: string[]) {
    for (const w of words) if (w.length > 0) this.#add(w);
  }

  #add(word: string): void {
    let node = 0;
    for (let i = 0; i < word.length; i++) {
      const c = word.charCodeAt(i);
      let child = this.#children[node].get(c);
      if (child === undefined) {
        child = this.#children.length;
        this.#children.push(new Map());
        this.#ends.push(null);
        this.#children[node].set(c, child);
      }
      node = child;
    }
    this.#ends[node] = word;
    this.#firstUnit[word.charCodeAt(0)] = 1;
  }

  /** The longest word starting at `i`, or null. */
  #longestAt(text: string, i: number): string | null {
    let node = 0;
    let match: string | null = null;
    for (let j = i; j < text.length; j++) {
      const child = this.#children[node].get(text.charCodeAt(j));
      if (child === undefined) break;
      node = child;
      if (this.#ends[node] !== null) match = this.#ends[node];
    }
    return match;
  }

  /** `text` cut into the matched words and the (non-empty) pieces between them. */
  split(text: string): string[] {
    const out: string[] = [];
    let start = 0;
    for (let i = 0; i < text.length;) {
      const match = this.#firstUnit[text.charCodeAt(i)] ? this.#longestAt(text, i) : null;
      if (match === null) {
        i++;
        continue;
      }
      if (i > start) out.push(text.slice(start, i));
      out.push(match);
      i += match.length;
      start = i;
    }
    if (start < text.length) out.push(text.slice(start));
    return out;
  }
}

/** Trims the neighbours of added tokens that ask for it (in place, in order, as the reference). */
function stripAroundAdded(parts: string[], added: Map<string, AddedToken>): void {
  for (let i = 0; i < parts.length; i++) {
    const tok = added.get(parts[i]);
    if (tok === undefined) continue;
    if (tok.lstrip && i > 0) parts[i - 1] = parts[i - 1].trimEnd();
    if (tok.rstrip && i < parts.length - 1) parts[i + 1] = parts[i + 1].trimStart();
  }
}

// ---------------------------------------------------------------------------------------------
// BPE merges
// ---------------------------------------------------------------------------------------------

/** Open-addressing hash map (left symbol, right symbol) → (rank, merged symbol). */
class PairTable {
  readonly #left: Int32Array;
  readonly #right: Int32Array;
  readonly rank: Int32Array;
  readonly merged: Int32Array;
  /** One more than the largest rank set. */
  rankCount = 0;
  readonly #mask: number;

  constructor(expected: number) {
    let cap = 16;
    while (cap < expected * 2) cap *= 2;
    this.#left = new Int32Array(cap).fill(-1);
    this.#right = new Int32Array(cap);
    this.rank = new Int32Array(cap);
    this.merged = new Int32Array(cap);
    this.#mask = cap - 1;
  }

  #slot(a: number, b: number): number {
    let h = (Math.imul(a, 0x9e3779b1) ^ Math.imul(b + 0x632be5ab, 0x85ebca77)) >>> 0;
    h = (h ^ (h >>> 15)) & this.#mask;
    while (this.#left[h] !== -1 && (this.#left[h] !== a || this.#right[h] !== b)) {
      h = (h + 1) & this.#mask;
    }
    return h;
  }

  /** Sets the merge of (a, b); a later rule for the same pair replaces an earlier one. */
  set(a: number, b: number, rank: number, merged: number): void {
    const h = this.#slot(a, b);
    this.#left[h] = a;
    this.#right[h] = b;
    this.rank[h] = rank;
    this.merged[h] = merged;
    this.rankCount = Math.max(this.rankCount, rank + 1);
  }

  /** Slot of the merge of (a, b), or -1. */
  find(a: number, b: number): number {
    const h = this.#slot(a, b);
    return this.#left[h] === -1 ? -1 : h;
  }
}

/** A queue of adjacent pairs keyed by (merge rank, position of the left symbol). */
interface PairQueue {
  /** Adds the pair at `pos` with merge rank `rank`. */
  push(rank: number, pos: number): void;
  /** Removes the least entry and returns its position (-1: empty); its rank is then `rank`. */
  pop(): number;
  /** Rank of the entry last popped. */
  rank: number;
}

/** A binary min-heap of doubles, grown as needed. */
class MinHeap {
  #keys: Float64Array;
  size: number;

  /** Heapifies `keys[0..size)` (the array is taken over). */
  constructor(keys: Float64Array, size: number) {
    this.#keys = keys;
    this.size = size;
    for (let i = (size >> 1) - 1; i >= 0; i--) this.#down(i, keys[i]);
  }

  push(key: number): void {
    if (this.size === this.#keys.length) {
      const grown = new Float64Array(this.#keys.length * 2 + 16);
      grown.set(this.#keys);
      this.#keys = grown;
    }
    const k = this.#keys;
    let i = this.size++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (k[p] <= key) break;
      k[i] = k[p];
      i = p;
    }
    k[i] = key;
  }

  /** Removes and returns the smallest key (size must be > 0). */
  pop(): number {
    const top = this.#keys[0];
    const last = this.#keys[--this.size];
    if (this.size > 0) this.#down(0, last);
    return top;
  }

  #down(i: number, key: number): void {
    const k = this.#keys, n = this.size;
    while (true) {
      let c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && k[c + 1] < k[c]) c++;
      if (k[c] >= key) break;
      k[i] = k[c];
      i = c;
    }
    k[i] = key;
  }
}

/** A binary min-heap of int32 values, grown as needed. */
class IntHeap {
  #v: Int32Array;
  size = 0;

  constructor(capacity: number) {
    this.#v = new Int32Array(Math.max(4, capacity));
  }

  /** The smallest value (size must be > 0). */
  peek(): number {
    return this.#v[0];
  }

  push(x: number): void {
    if (this.size === this.#v.length) {
      const grown = new Int32Array(this.#v.length * 2);
      grown.set(this.#v);
      this.#v = grown;
    }
    const v = this.#v;
    let i = this.size++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (v[p] <= x) break;
      v[i] = v[p];
      i = p;
    }
    v[i] = x;
  }

  /** Removes and returns the smallest value (size must be > 0). */
  pop(): number {
    const v = this.#v, top = v[0], x = v[--this.size], n = this.size;
    if (n === 0) return top;
    let i = 0;
    while (true) {
      let c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && v[c + 1] < v[c]) c++;
      if (v[c] >= x) break;
      v[i] = v[c];
      i = c;
    }
    v[i] = x;
    return top;
  }
}

/** Short words: one heap of `rank * n + position` keys. */
class KeyQueue implements PairQueue {
  readonly #heap: MinHeap;
  readonly #n: number;
  rank = -1;

  /** `ranks[i]`: rank of the initial pair at position i (-1: none). */
  constructor(ranks: Int32Array, n: number) {
    const keys = new Float64Array(n);
    let count = 0;
    for (let i = 0; i < n; i++) if (ranks[i] >= 0) keys[count++] = ranks[i] * n + i;
    this.#heap = new MinHeap(keys, count);
    this.#n = n;
  }

  push(rank: number, pos: number): void {
    this.#heap.push(rank * this.#n + pos);
  }

  pop(): number {
    if (this.#heap.size === 0) return -1;
    const key = this.#heap.pop();
    const pos = key % this.#n;
    this.rank = (key - pos) / this.#n;
    return pos;
  }
}

/**
 * Long words: per rank, the initial positions in ascending order (counting sort) and a heap of
 * the positions pushed later; a heap of the ranks that may have entries on top. Pops walk
 * memory mostly in order, which a single heap of a million entries does not.
 */
class RankQueue implements PairQueue {
  readonly #list: Int32Array;
  readonly #head: Int32Array;
  readonly #end: Int32Array;
  readonly #later: (IntHeap | undefined)[];
  readonly #ranks: IntHeap;
  readonly #queued: Uint8Array;
  rank = -1;

  /** `ranks[i]`: rank (< `rankCount`) of the initial pair at position i (-1: none). */
  constructor(ranks: Int32Array, n: number, rankCount: number) {
    const start = new Int32Array(rankCount + 1);
    for (let i = 0; i < n; i++) if (ranks[i] >= 0) start[ranks[i] + 1]++;
    for (let r = 0; r < rankCount; r++) start[r + 1] += start[r];
    this.#head = start.slice(0, rankCount);
    this.#end = start.slice(1);
    this.#list = new Int32Array(start[rankCount]);
    const fill = this.#head.slice();
    for (let i = 0; i < n; i++) if (ranks[i] >= 0) this.#list[fill[ranks[i]]++] = i;
    this.#later = new Array(rankCount);
    this.#ranks = new IntHeap(64);
    this.#queued = new Uint8Array(rankCount);
    for (let r = 0; r < rankCount; r++) if (this.#head[r] < this.#end[r]) this.#queueRank(r);
  }

  #queueRank(r: number): void {
    this.#queued[r] = 1;
    this.#ranks.push(r);
  }

  push(rank: number, pos: number): void {
    (this.#later[rank] ??= new IntHeap(8)).push(pos);
    if (!this.#queued[rank]) this.#queueRank(rank);
  }

  pop(): number {
    while (this.#ranks.size > 0) {
      const r = this.#ranks.peek();
      const later = this.#later[r];
      const h = this.#head[r];
      const hasLater = later !== undefined && later.size > 0;
      if (h < this.#end[r] && (!hasLater || this.#list[h] < later.peek())) {
        this.#head[r] = h + 1;
        this.rank = r;
        return this.#list[h];
      }
      if (hasLater) {
        this.rank = r;
        return later.pop();
      }
      this.#queued[this.#ranks.pop()] = 0;
    }
    return -1;
  }
}

/** Words at least this long (and not much shorter than the merge list) use a {@link RankQueue}. */
const RANK_QUEUE_MIN = 1024;

/**
 * Applies BPE merges to `syms[0..n)` in place and returns the new length: repeatedly the pair
 * with the lowest merge rank, the leftmost on ties, is replaced by its merged symbol.
 *
 * Symbols form a linked list indexed by their first character's position; `rank[l]`/`merged[l]`
 * describe the pair now starting at `l` (rank -1: none). A popped (rank, l) is acted on when the
 * pair now at `l` has that rank: then it is the best pair, whichever entry announced it; other
 * entries are stale and skipped. A merge never recreates a pair of its own rank (the merged
 * symbol is longer than both parts), so a pair is merged at most once per entry.
 */
function mergeSymbols(syms: Int32Array, n: number, pairs: PairTable): number {
  if (n < 2) return n;
  const next = new Int32Array(n);
  const prev = new Int32Array(n);
  const rank = new Int32Array(n).fill(-1);
  const merged = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
    const slot = i + 1 < n ? pairs.find(syms[i], syms[i + 1]) : -1;
    if (slot >= 0) {
      rank[i] = pairs.rank[slot];
      merged[i] = pairs.merged[slot];
    }
  }
  const queue: PairQueue = n >= RANK_QUEUE_MIN && 4 * n >= pairs.rankCount
    ? new RankQueue(rank, n, pairs.rankCount)
    : new KeyQueue(rank, n);
  const update = (l: number): void => {
    const slot = pairs.find(syms[l], syms[next[l]]);
    rank[l] = slot < 0 ? -1 : pairs.rank[slot];
    if (slot < 0) return;
    merged[l] = pairs.merged[slot];
    queue.push(rank[l], l);
  };
  for (let l = queue.pop(); l >= 0; l = queue.pop()) {
    if (next[l] < 0 || rank[l] !== queue.rank) continue; // dead, last, or stale
    const r = next[l];
    syms[l] = merged[l];
    const rn = next[r];
    next[l] = rn;
    next[r] = -2;
    if (rn >= 0) {
      prev[rn] = l;
      update(l);
    } else rank[l] = -1;
    if (prev[l] >= 0) update(prev[l]);
  }
  let out = 0;
  for (let i = 0; i >= 0; i = next[i]) syms[out++] = syms[i];
  return out;
}

// ---------------------------------------------------------------------------------------------
// BPE model
// ---------------------------------------------------------------------------------------------

const CACHE_MAX_WORD = 256;
const CACHE_MAX_ENTRIES = 1 << 16;

/** Collapses each run of `id` in `out[start..]` to one (in place). */
function fuseRuns(out: number[], start: number, id: number): void {
  let w = start;
  for (let i = start; i < out.length; i++) {
    if (out[i] === id && w > start && out[w - 1] === id) continue;
    out[w++] = out[i];
  }
  out.length = w;
}

/** The merge rules as [left, right] pairs (both "a b" and ["a", "b"] forms). */
function parseMerges(merges: unknown): [string, string][] {
  if (!Array.isArray(merges)) return unsupported("merges is not a list");
  return merges.flatMap((m): [string, string][] => {
    if (typeof m === "string") {
      const [a, b] = m.split(" ", 2);
      // The reference keys ranks by the pair; a rule without a space never matches.
      return b === undefined ? [] : [[a, b]];
    }
    if (Array.isArray(m) && m.length === 2 && m.every((x) => typeof x === "string")) {
      return [[m[0], m[1]]];
    }
    return unsupported("malformed merge");
  });
}

/** Validates the BPE model options this module implements. */
function checkBpeOptions(cfg: Json): void {
  if (cfg.type !== "BPE") unsupported(`model ${String(cfg.type)}`);
  if (!isObject(cfg.vocab)) unsupported("vocab is not an object");
  if (optString(cfg, "continuing_subword_prefix")) unsupported("continuing_subword_prefix");
  if (cfg.continuing_subword_suffix != null) unsupported("continuing_subword_suffix");
}

/**
 * The BPE model: words → token ids. Symbols are interned strings (vocab entries, merge parts and
 * results, then input characters as they are met); `#tokenOf[s]` is the id of symbol `s` in
 * the vocabulary (added tokens included) or -1, `#outputOf[s]` the id it is written as (the same
 * but for {@link BpeModel.aliasOutput}).
 */
class BpeModel {
  readonly #index = new Map<string, number>();
  readonly #text: string[] = [];
  readonly #tokenOf: number[] = [];
  readonly #outputOf: number[] = [];
  readonly #bmp = new Int32Array(65536).fill(-1);
  readonly #pairs: PairTable;
  readonly #byteIds: Int32Array | null;
  readonly #unkId: number;
  readonly #fuseUnk: boolean;
  readonly #ignoreMerges: boolean;
  readonly #suffix: string;
  readonly #encoder = new TextEncoder();
  readonly #cache = new Map<string, Int32Array>();
  /** Token string of each id (vocab, then added tokens). */
  readonly idToToken: string[] = [];
  /** The unknown token, when the model has one. */
  readonly unkToken: string | undefined;

  constructor(cfg: Json, added: AddedToken[]) {
    checkBpeOptions(cfg);
    const vocab = cfg.vocab as Json;
    for (const [token, id] of Object.entries(vocab)) {
      if (!Number.isInteger(id) || (id as number) < 0) unsupported("vocab id is not an integer");
      this.#setToken(token, id as number);
    }
    this.unkToken = optString(cfg, "unk_token");
    this.#unkId = this.unkToken === undefined
      ? -1
      : this.#tokenId(this.unkToken) ?? unsupported("unk_token not in vocab");
    for (const a of added) {
      const prior = this.#tokenId(a.content);
      if (prior !== undefined && prior !== a.id) unsupported("added token with a vocab id clash");
      this.#setToken(a.content, a.id);
    }
    const merges = parseMerges(cfg.merges);
    this.#pairs = new PairTable(merges.length);
    merges.forEach(([a, b], rank) => {
      this.#pairs.set(this.#intern(a), this.#intern(b), rank, this.#intern(a + b));
    });
    this.#byteIds = cfg.byte_fallback === true ? this.#byteTokenIds() : null;
    this.#fuseUnk = cfg.fuse_unk === true;
    this.#ignoreMerges = cfg.ignore_merges === true;
    this.#suffix = optString(cfg, "end_of_word_suffix") ?? "";
  }

  /** Id of `token` in the vocabulary (added tokens included). */
  tokenId(token: string): number | undefined {
    return this.#tokenId(token);
  }

  /** The suffix appended to the last character of every word ("" when none). */
  get endOfWordSuffix(): string {
    return this.#suffix;
  }

  #tokenId(token: string): number | undefined {
    const s = this.#index.get(token);
    return s === undefined || this.#tokenOf[s] < 0 ? undefined : this.#tokenOf[s];
  }

  #setToken(token: string, id: number): void {
    const s = this.#intern(token);
    this.#tokenOf[s] = this.#outputOf[s] = id;
    this.idToToken[id] = token;
  }

  /**
   * Writes vocab token `token` as `id`: the reference maps output token strings through the
   * added tokens' normalized contents before the vocabulary.
   */
  aliasOutput(token: string, id: number): void {
    const s = this.#index.get(token);
    if (s === undefined || this.#tokenOf[s] < 0 || this.#tokenOf[s] === id) return;
    // fuse_unk compares vocabulary ids, so an alias to or from unk would fuse differently.
    if (this.#tokenOf[s] === this.#unkId || id === this.#unkId) unsupported("unk alias");
    this.#outputOf[s] = id;
  }

  #intern(text: string): number {
    let s = this.#index.get(text);
    if (s === undefined) {
      s = this.#text.length;
      this.#index.set(text, s);
      this.#text.push(text);
      this.#tokenOf.push(-1);
      this.#outputOf.push(-1);
      if (text.length === 1) this.#bmp[text.charCodeAt(0)] = s;
    }
    return s;
  }

  /** Ids of the `<0xNN>` tokens (-1: not in the vocabulary). */
  #byteTokenIds(): Int32Array {
    const ids = new Int32Array(256);
    for (let b = 0; b < 256; b++) {
      const id = this.#tokenId(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
      ids[b] = id ?? -1;
    }
    return ids;
  }

  /** The word's characters (code points) as symbols, the end-of-word suffix on the last one. */
  #symbolsOf(word: string): Int32Array {
    const syms = new Int32Array(word.length);
    let n = 0;
    for (let i = 0; i < word.length; i++) {
      const c = word.charCodeAt(i);
      const pair = c >= 0xd800 && c < 0xdc00 && i + 1 < word.length &&
        (word.charCodeAt(i + 1) & 0xfc00) === 0xdc00;
      if (pair) {
        syms[n++] = this.#intern(word.slice(i, i + 2));
        i++;
      } else {
        const s = this.#bmp[c];
        syms[n++] = s >= 0 ? s : this.#intern(word[i]);
      }
    }
    if (this.#suffix !== "") syms[n - 1] = this.#intern(this.#text[syms[n - 1]] + this.#suffix);
    return syms.subarray(0, n);
  }

  /** Appends the ids of a symbol that is no token: its bytes' tokens, else unk (if any). */
  #emitUnknown(s: number, out: number[]): void {
    const byteIds = this.#byteIds;
    if (byteIds !== null) {
      const bytes = this.#encoder.encode(this.#text[s]);
      if (bytes.every((b) => byteIds[b] >= 0)) {
        for (const b of bytes) out.push(byteIds[b]);
        return;
      }
    }
    if (this.#unkId >= 0) out.push(this.#unkId);
  }

  /** Appends the model ids of one word (byte fallback and unk applied, unks not yet fused). */
  #word(word: string, out: number[]): void {
    if (word.length === 0) return;
    if (this.#ignoreMerges) {
      const s = this.#index.get(word);
      if (s !== undefined && this.#outputOf[s] >= 0) {
        out.push(this.#outputOf[s]);
        return;
      }
    }
    const cacheable = word.length < CACHE_MAX_WORD;
    const hit = cacheable ? this.#cache.get(word) : undefined;
    if (hit !== undefined) {
      for (let i = 0; i < hit.length; i++) out.push(hit[i]);
      return;
    }
    const syms = this.#symbolsOf(word);
    const n = mergeSymbols(syms, syms.length, this.#pairs);
    const start = out.length;
    const outputOf = this.#outputOf;
    for (let i = 0; i < n; i++) {
      const id = outputOf[syms[i]];
      if (id >= 0) out.push(id);
      else this.#emitUnknown(syms[i], out);
    }
    if (cacheable) {
      if (this.#cache.size >= CACHE_MAX_ENTRIES) this.#cache.clear();
      this.#cache.set(word, Int32Array.from(out.slice(start)));
    }
  }

  /** Appends the ids of `words` to `out`; with fuse_unk, a run of unks becomes one. */
  words(words: string[], out: number[]): void {
    const start = out.length;
    for (const w of words) this.#word(w, out);
    if (this.#fuseUnk && this.#unkId >= 0) fuseRuns(out, start, this.#unkId);
  }
}

// ---------------------------------------------------------------------------------------------
// Post-processors
// ---------------------------------------------------------------------------------------------

function templatePostProcessor(cfg: Json, idOf: (t: string) => number): PostProcess {
  if (!Array.isArray(cfg.single)) return unsupported("TemplateProcessing without single");
  const parts = cfg.single.map((item): number | "A" => {
    if (isObject(item) && isObject(item.SpecialToken)) {
      return idOf(String(item.SpecialToken.id));
    }
    if (isObject(item) && isObject(item.Sequence) && item.Sequence.id === "A") return "A";
    return unsupported("TemplateProcessing item");
  });
  return (ids, addSpecial) => {
    const out: number[] = [];
    for (const p of parts) {
      if (p !== "A") {
        if (addSpecial) out.push(p);
        continue;
      }
      for (const id of ids) out.push(id);
    }
    return out;
  };
}

/** `[cls, ...ids, sep]` of BertProcessing / RobertaProcessing (single sequence). */
function wrapPostProcessor(cfg: Json, idOf: (t: string) => number): PostProcess {
  if (!Array.isArray(cfg.cls) || !Array.isArray(cfg.sep)) return unsupported("cls/sep");
  const cls = idOf(String(cfg.cls[0])), sep = idOf(String(cfg.sep[0]));
  return (ids, addSpecial) => addSpecial ? [cls, ...ids, sep] : ids;
}

/** One post-processor from its tokenizer.json description (null: none). */
function buildPostProcessor(cfg: unknown, idOf: (t: string) => number): PostProcess | null {
  if (cfg === null || cfg === undefined) return null;
  if (!isObject(cfg)) return unsupported("post_processor is not an object");
  switch (cfg.type) {
    case "TemplateProcessing":
      return templatePostProcessor(cfg, idOf);
    case "ByteLevel":
      return (ids) => ids;
    case "BertProcessing":
    case "RobertaProcessing":
      return wrapPostProcessor(cfg, idOf);
    case "Sequence": {
      const list = cfg.processors ?? [];
      if (!Array.isArray(list)) return unsupported("processors is not a list");
      const steps = list.map((p) => buildPostProcessor(p, idOf)).filter((p) => p !== null);
      return (ids, add) => steps.reduce((acc, step) => step(acc, add), ids);
    }
    default:
      return unsupported(`post_processor ${String(cfg.type)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Decoders
// ---------------------------------------------------------------------------------------------

function byteLevelDecoder(added: Set<string>): DecodeStep {
  const toByte = new Map(bytesToUnicode().map((ch, b) => [ch, b]));
  const decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
  const flush = (run: string[], out: string[]) => {
    if (run.length === 0) return;
    const chars = Array.from(run.join(""));
    out.push(decoder.decode(Uint8Array.from(chars, (c) => toByte.get(c) ?? 0)));
    run.length = 0;
  };
  return (tokens) => {
    const out: string[] = [];
    const run: string[] = [];
    for (const t of tokens) {
      if (added.has(t)) {
        flush(run, out);
        out.push(t);
      } else run.push(t);
    }
    flush(run, out);
    return out;
  };
}

function byteFallbackDecoder(): DecodeStep {
  const decoder = new TextDecoder();
  return (tokens) => {
    const out: string[] = [];
    let bytes: number[] = [];
    for (const t of tokens) {
      const b = t.length === 6 && t.startsWith("<0x") && t.endsWith(">")
        ? parseInt(t.slice(3, 5), 16)
        : NaN;
      if (!Number.isNaN(b)) {
        bytes.push(b);
        continue;
      }
      if (bytes.length > 0) out.push(decoder.decode(Uint8Array.from(bytes)));
      bytes = [];
      out.push(t);
    }
    if (bytes.length > 0) out.push(decoder.decode(Uint8Array.from(bytes)));
    return out;
  };
}

function stripDecoder(cfg: Json): DecodeStep {
  const content = optString(cfg, "content") ?? "";
  const start = Number(cfg.start ?? 0), stop = Number(cfg.stop ?? 0);
  return (tokens) =>
    tokens.map((t) => {
      let from = 0, to = t.length;
      for (let i = 0; i < start && t[i] === content; i++) from = i + 1;
      for (let i = 0; i < stop && t[t.length - 1 - i] === content; i++) to = t.length - 1 - i;
      return t.slice(from, to);
    });
}

function metaspaceDecoder(cfg: Json): DecodeStep {
  const replacement = optString(cfg, "replacement") ?? "\u2581";
  return (tokens) =>
    tokens.map((t, i) => {
      const s = t.replaceAll(replacement, " ");
      return i === 0 && s.startsWith(" ") ? s.slice(1) : s;
    });
}

/** One decoder from its tokenizer.json description (null: none). */
function buildDecoder(cfg: unknown, added: Set<string>): DecodeStep | null {
  if (cfg === null || cfg === undefined) return null;
  if (!isObject(cfg)) return unsupported("decoder is not an object");
  switch (cfg.type) {
    case "Sequence": {
      const list = cfg.decoders ?? [];
      if (!Array.isArray(list)) return unsupported("decoders is not a list");
      const steps = list.map((d) => buildDecoder(d, added) ?? unsupported("null decoder"));
      return (tokens) => steps.reduce((acc, step) => step(acc), tokens);
    }
    case "ByteLevel":
      return byteLevelDecoder(added);
    case "ByteFallback":
      return byteFallbackDecoder();
    case "Metaspace":
      return metaspaceDecoder(cfg);
    case "Replace": {
      const replace = replacer(cfg);
      return (tokens) => tokens.map(replace);
    }
    case "Fuse":
      return (tokens) => [tokens.join("")];
    case "Strip":
      return stripDecoder(cfg);
    case "BPEDecoder": {
      const suffix = optString(cfg, "suffix") ?? "";
      return (tokens) =>
        tokens.map((t, i) => t.replaceAll(suffix, i === tokens.length - 1 ? "" : " "));
    }
    default:
      return unsupported(`decoder ${String(cfg.type)}`);
  }
}

/** The reference's `clean_up_tokenization` (spaces before punctuation and contractions). */
function cleanUpTokenization(text: string): string {
  return text.replaceAll(" .", ".").replaceAll(" ?", "?").replaceAll(" !", "!")
    .replaceAll(" ,", ",").replaceAll(" ' ", "'").replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m").replaceAll(" 's", "'s").replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

/** Options of {@link BpeTokenizer.decode}. */
export interface DecodeOptions {
  /** Drop special tokens (default false). */
  skipSpecialTokens?: boolean;
  /** Apply `clean_up_tokenization` (default: tokenizer_config.json, else true). */
  cleanUpTokenizationSpaces?: boolean;
}

const REQUIRED_KEYS = ["model", "decoder", "post_processor", "pre_tokenizer", "normalizer"];

/** Config keys (tokenizer_config.json) that change encoding before the normalizer. */
function configFlags(config: Json): { removeSpace: boolean; lowerStrip: boolean } {
  return {
    removeSpace: config.remove_space === true,
    lowerStrip: config.do_lowercase_and_remove_accent === true,
  };
}

/**
 * A Hugging Face BPE tokenizer (`tokenizer.json` plus optional `tokenizer_config.json`) that
 * encodes exactly as `new Tokenizer(json, config).encode(text).ids` of the reference library.
 */
export class BpeTokenizer {
  readonly #model: BpeModel;
  readonly #normalizer: Normalize | null;
  readonly #preTokenizer: PreTokenize | null;
  readonly #postProcessor: PostProcess | null;
  readonly #decoder: DecodeStep | null;
  readonly #added = new Map<string, AddedToken>();
  readonly #rawSplitter: TokenSplitter;
  readonly #normSplitter: TokenSplitter;
  readonly #special = new Set<string>();
  readonly #flags: { removeSpace: boolean; lowerStrip: boolean };
  readonly #cleanUp: boolean;

  /**
   * Builds the tokenizer; throws {@link UnsupportedTokenizerError} when the description uses
   * anything not implemented here (the caller can then use the reference library).
   */
  constructor(tokenizerJson: unknown, tokenizerConfig: unknown = {}) {
    if (!isObject(tokenizerJson) || !isObject(tokenizerConfig)) unsupported("not an object");
    const json = tokenizerJson, config = tokenizerConfig;
    for (const key of REQUIRED_KEYS) if (!(key in json)) unsupported(`no ${key}`);
    if (!Array.isArray(json.added_tokens)) unsupported("added_tokens is not a list");
    if (!isObject(json.model)) unsupported("model is not an object");
    const added = json.added_tokens.map(parseAddedToken);
    this.#normalizer = buildNormalizer(json.normalizer);
    this.#preTokenizer = buildPreTokenizer(json.pre_tokenizer);
    this.#model = new BpeModel(json.model, added);
    [this.#rawSplitter, this.#normSplitter] = this.#registerAdded(added);
    const extra = config.additional_special_tokens;
    for (const t of Array.isArray(extra) ? extra : []) {
      if (typeof t === "string") this.#special.add(t);
    }
    this.#postProcessor = buildPostProcessor(json.post_processor, (t) => this.#idOfToken(t));
    this.#decoder = buildDecoder(json.decoder, new Set(added.map((a) => a.content)));
    this.#flags = configFlags(config);
    this.#cleanUp = Boolean(config.clean_up_tokenization_spaces ?? true);
  }

  /** Indexes added tokens by content and normalized content; returns the two splitters. */
  #registerAdded(added: AddedToken[]): [TokenSplitter, TokenSplitter] {
    const raw: string[] = [], normalized: string[] = [];
    for (const a of added) {
      if (a.special) this.#special.add(a.content);
      this.#added.set(a.content, a);
      if (a.normalized && this.#normalizer !== null) {
        const key = this.#normalizer(a.content);
        this.#model.aliasOutput(key, a.id);
        normalized.push(key);
        this.#added.set(key, a);
      } else raw.push(a.content);
    }
    return [new TokenSplitter(raw), new TokenSplitter(normalized)];
  }

  /** Id of a token string as the reference maps output tokens (added tokens first). */
  #idOfToken(token: string): number {
    const id = this.#added.get(token)?.id ?? this.#model.tokenId(token);
    return id ?? unsupported(`token ${JSON.stringify(token)} has no id`);
  }

  /** Id of `token` in the vocabulary (added tokens included), as `token_to_id`. */
  tokenToId(token: string): number | undefined {
    return this.#model.tokenId(token);
  }

  /** Token ids of `text`; `addSpecialTokens` (default true) runs the post-processor's template. */
  encode(text: string, addSpecialTokens = true): number[] {
    const ids: number[] = [];
    const sections = this.#rawSplitter.split(text);
    stripAroundAdded(sections, this.#added);
    sections.forEach((section, index) => this.#encodeSection(section, index, ids));
    return this.#postProcessor === null ? ids : this.#postProcessor(ids, addSpecialTokens);
  }

  #encodeSection(section: string, index: number, ids: number[]): void {
    if (section.length === 0) return;
    const whole = this.#added.get(section);
    if (whole !== undefined) {
      ids.push(whole.id);
      return;
    }
    let text = section;
    if (this.#flags.removeSpace) text = text.trim().split(/\s+/).join(" ");
    if (this.#flags.lowerStrip) text = text.toLowerCase().replace(/\p{M}/gu, "");
    if (this.#normalizer !== null) text = this.#normalizer(text);
    if (text.length === 0) return;
    const parts = this.#normSplitter.split(text);
    stripAroundAdded(parts, this.#added);
    for (const part of parts) {
      if (part.length === 0) continue;
      const tok = this.#added.get(part);
      if (tok !== undefined) ids.push(tok.id);
      else {
        const words = this.#preTokenizer === null ? [part] : this.#preTokenizer(part, index);
        this.#model.words(words, ids);
      }
    }
  }

  /** Text of `ids` through the decoder (best effort; for display). */
  decode(ids: number[], options: DecodeOptions = {}): string {
    const unk = this.#model.unkToken ?? "";
    let tokens = ids.map((id) => this.#model.idToToken[id] ?? unk);
    if (options.skipSpecialTokens) tokens = tokens.filter((t) => !this.#special.has(t));
    let text = this.#decoder === null ? tokens.join(" ") : this.#decoder(tokens).join("");
    const suffix = this.#model.endOfWordSuffix;
    if (this.#decoder !== null && suffix !== "") {
      text = text.replaceAll(suffix, " ");
      if (options.skipSpecialTokens) text = text.trim();
    }
    return options.cleanUpTokenizationSpaces ?? this.#cleanUp ? cleanUpTokenization(text) : text;
  }
}
