/**
 * The OpenAI API's requests, read and checked: the JSON body, the model's name, the prompt (a
 * completion's text, or a chat's messages through the chat template), and the generation
 * settings with their limits. Every refusal is an {@linkcode ApiError} that names the field.
 * @module
 */
import { type ChatMessage, encodeChat, renderChat } from "../text/chat.ts";
import type { OnnxDecoder } from "./decoder.ts";

/** An error answered as an OpenAI-style JSON body. */
export class ApiError extends Error {
  /** HTTP status. */
  readonly status: number;
  /** OpenAI's error type. */
  readonly type: string;
  /** The request field at fault. */
  readonly param: string | null;
  /** A short machine-readable code. */
  readonly code: string | null;

  /** An error with its status, type, field and code. */
  constructor(
    status: number,
    message: string,
    o: { type?: string; param?: string; code?: string } = {},
  ) {
    super(message);
    this.status = status;
    this.type = o.type ?? (status >= 500 ? "server_error" : "invalid_request_error");
    this.param = o.param ?? null;
    this.code = o.code ?? null;
  }
}

function invalid(param: string, message: string): ApiError {
  return new ApiError(400, message, { param, code: "invalid_value" });
}

/** A request's prompt and generation settings, checked. */
export interface Job {
  /** The prompt's token ids (BOS included). */
  prompt: number[];
  /** New tokens at most (`max_tokens`). */
  maxTokens: number;
  /** `temperature` (OpenAI's default 1; 0 is greedy). */
  temperature: number;
  /** `top_p`. */
  topP: number;
  /** `top_k` (0: all). */
  topK: number;
  /** `stop` strings. */
  stop: string[];
  /** `seed` of the draws. */
  seed?: number;
  /** `stream`: server-sent events. */
  stream: boolean;
}

/** What a request is checked against. */
export interface RequestContext {
  /** The model served. */
  dec: OnnxDecoder;
  /** Its name in the API. */
  modelId: string;
  /** The chat template, if any. */
  template?: string;
}

/** Largest request body read. */
export const MAX_BODY = 4 * 2 ** 20;

/** Reads a completion (`chat` false) or chat completion request's body into a {@linkcode Job}. */
export async function readRequest(req: Request, chat: boolean, ctx: RequestContext): Promise<Job> {
  const body = await readBody(req);
  if (typeof body.model !== "string" || body.model === "") {
    throw invalid("model", "model must be a string");
  }
  if (body.model !== ctx.modelId) {
    throw new ApiError(
      404,
      `The model '${body.model}' does not exist (this server has '${ctx.modelId}')`,
      { param: "model", code: "model_not_found" },
    );
  }
  const prompt = chat ? chatPrompt(body, ctx) : completionPrompt(body, ctx.dec);
  return settings(body, prompt, chat, ctx.dec.config.maxSeq);
}

/** The generation settings of a request whose prompt is `prompt`. */
function settings(
  body: Record<string, unknown>,
  prompt: number[],
  chat: boolean,
  maxSeq: number,
): Job {
  const num = (k: string, fallback: number, ok: (v: number) => boolean, what: string) => {
    const v = body[k];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== "number" || !ok(v)) throw invalid(k, `${k} must be ${what}`);
    return v;
  };
  const field = chat && body.max_tokens == null ? "max_completion_tokens" : "max_tokens";
  const given = body[field] != null;
  const maxTokens = num(
    field,
    chat ? maxSeq - prompt.length : 16,
    (v) => Number.isInteger(v) && v >= 1,
    "an integer ≥ 1",
  );
  if (prompt.length + (given || !chat ? maxTokens : 1) > maxSeq) {
    const asked = given || !chat ? maxTokens : 1;
    throw new ApiError(
      400,
      `This model's maximum context length is ${maxSeq} tokens. However, you requested ` +
        `${prompt.length + asked} tokens (${prompt.length} in the prompt, ${asked} for the ` +
        `completion). Please reduce the prompt or ${field}.`,
      { param: chat ? "messages" : "prompt", code: "context_length_exceeded" },
    );
  }
  const stop = body.stop ?? [];
  const stops = typeof stop === "string" ? [stop] : stop;
  if (
    !Array.isArray(stops) || stops.length > 4 || stops.some((s) => typeof s !== "string")
  ) {
    throw invalid("stop", "stop must be a string or an array of at most 4 strings");
  }
  if (body.n !== undefined && body.n !== null && body.n !== 1) {
    throw invalid("n", "n must be 1 (one choice per request)");
  }
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== "boolean") {
    throw invalid("stream", "stream must be a boolean");
  }
  const seed = body.seed === undefined || body.seed === null ? undefined : num(
    "seed",
    0,
    (v) => Number.isSafeInteger(v) && v >= 0,
    "an integer ≥ 0",
  );
  return {
    prompt,
    maxTokens,
    temperature: num("temperature", 1, (v) => v >= 0 && v <= 2, "a number in [0, 2]"),
    topP: num("top_p", 1, (v) => v > 0 && v <= 1, "a number in (0, 1]"),
    topK: num("top_k", 0, (v) => Number.isInteger(v) && v >= 0, "an integer ≥ 0"),
    stop: stops as string[],
    seed,
    stream: body.stream === true,
  };
}

/** A completion's prompt: a string (or a list of one). */
function completionPrompt(body: Record<string, unknown>, dec: OnnxDecoder): number[] {
  let p = body.prompt;
  if (Array.isArray(p) && p.length === 1) p = p[0];
  if (typeof p !== "string") throw invalid("prompt", "prompt must be a string");
  return dec.tokenizer.encode(p);
}

/** A chat's prompt: its messages through the chat template, the assistant's turn opened. */
function chatPrompt(body: Record<string, unknown>, ctx: RequestContext): number[] {
  const { dec, template } = ctx;
  const msgs = body.messages;
  if (!Array.isArray(msgs) || msgs.length === 0) {
    throw invalid("messages", "messages must be a non-empty array");
  }
  const messages: ChatMessage[] = msgs.map((m, i) => {
    const role = (m as { role?: unknown })?.role;
    let content = (m as { content?: unknown })?.content;
    if (Array.isArray(content)) {
      if (!content.every((p) => p?.type === "text" && typeof p.text === "string")) {
        throw invalid(`messages[${i}].content`, "only text content parts are supported");
      }
      content = content.map((p) => p.text).join("");
    }
    if (
      typeof role !== "string" || !["system", "user", "assistant", "developer"].includes(role)
    ) {
      throw invalid(
        `messages[${i}].role`,
        "role must be system, developer, user or assistant",
      );
    }
    if (typeof content !== "string") {
      throw invalid(`messages[${i}].content`, "content must be a string");
    }
    return { role, content };
  });
  if (!template) {
    throw new ApiError(
      400,
      "this model has no chat template (start the server with --chat-template FILE); " +
        "use /v1/completions",
      { code: "no_chat_template" },
    );
  }
  let rendered: string;
  try {
    rendered = renderChat(template, messages, dec.tokenizer, true);
  } catch (e) {
    throw invalid("messages", `the chat template failed: ${(e as Error).message}`);
  }
  return encodeChat(rendered, dec.tokenizer);
}

async function readBody(req: Request): Promise<Record<string, unknown>> {
  const length = Number(req.headers.get("content-length") ?? 0);
  if (length > MAX_BODY) throw new ApiError(413, `the request body exceeds ${MAX_BODY} bytes`);
  const text = await req.text();
  if (text.length > MAX_BODY) throw new ApiError(413, `the request body exceeds ${MAX_BODY} bytes`);
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (e) {
    throw new ApiError(400, `the request body is not valid JSON (${(e as Error).message})`, {
      code: "invalid_json",
    });
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new ApiError(400, "the request body must be a JSON object", { code: "invalid_json" });
  }
  return body as Record<string, unknown>;
}
