/**
 * An OpenAI-compatible HTTP server for an exported decoder, on `Deno.serve`, listening on
 * 127.0.0.1 unless told otherwise: `GET /v1/models`, `POST /v1/completions`,
 * `POST /v1/chat/completions` (messages rendered with the model's chat template), with
 * `stream: true` as server-sent events, `max_tokens`, `temperature`, `top_p`, `top_k`, `stop`
 * and `seed`.
 *
 * Requests wait in a bounded queue for one of `maxConcurrent` generation slots; a full queue is
 * a 503. A malformed request is a 400 with an OpenAI-style JSON error body that names the field;
 * a prompt that does not fit the model's context is a 400 that says the limit. A client that
 * disconnects (or cancels its stream) ends its generation at the next token and frees its slot;
 * an error inside a request is that request's 500, never the server's end.
 * @module
 */
import { type ChatMessage, encodeChat, renderChat } from "../text/chat.ts";
import type { OnnxDecoder } from "./decoder.ts";
import { type FinishReason, generate } from "./generate.ts";

/** How the server runs. */
export interface ServerOptions {
  /** Interface to listen on (default 127.0.0.1: this machine only). */
  hostname?: string;
  /** Port (default 8000; 0 picks a free one). */
  port?: number;
  /** Generations running at once (default 2). */
  maxConcurrent?: number;
  /** Requests waiting for a slot at most (default 64); more are refused with a 503. */
  maxQueue?: number;
  /** The model's id in the API (default: the export directory's name). */
  modelId?: string;
  /** A Jinja chat template to use instead of the tokenizer's. */
  chatTemplate?: string;
  /** Stops the server. */
  signal?: AbortSignal;
  /** A line per request (none by default). */
  log?: (msg: string) => void;
}

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

const invalid = (param: string, message: string) =>
  new ApiError(400, message, { param, code: "invalid_value" });

/** Generation slots and the queue in front of them. */
export class Slots {
  #free: number;
  #maxQueue: number;
  #waiting: { grant: () => void; signal?: AbortSignal }[] = [];

  /** `max` slots, at most `maxQueue` waiting. */
  constructor(max: number, maxQueue: number) {
    this.#free = max;
    this.#maxQueue = maxQueue;
  }

  /** Requests waiting. */
  get queued(): number {
    return this.#waiting.length;
  }

  /** Free slots. */
  get free(): number {
    return this.#free;
  }

  /**
   * Waits for a slot; returns its release. Throws a 503 when the queue is full, and rejects
   * when `signal` aborts first (the request then leaves the queue).
   */
  acquire(signal?: AbortSignal): Promise<() => void> {
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      const next = this.#waiting.shift();
      if (next) next.grant();
      else this.#free++;
    };
    if (this.#free > 0) {
      this.#free--;
      return Promise.resolve(release);
    }
    if (this.#waiting.length >= this.#maxQueue) {
      return Promise.reject(
        new ApiError(503, `the server is busy (${this.#maxQueue} requests waiting)`, {
          code: "server_busy",
        }),
      );
    }
    return new Promise((resolve, reject) => {
      const entry = { grant: () => resolve(release), signal };
      this.#waiting.push(entry);
      signal?.addEventListener("abort", () => {
        const i = this.#waiting.indexOf(entry);
        if (i >= 0) {
          this.#waiting.splice(i, 1);
          reject(new ApiError(499, "the client went away"));
        }
      }, { once: true });
    });
  }
}

/** A request's generation settings, validated. */
interface Job {
  prompt: number[];
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  stop: string[];
  seed?: number;
  stream: boolean;
}

/** Largest request body read. */
const MAX_BODY = 4 * 2 ** 20;

/** The request handler of the server (usable with any `Deno.serve` or in tests). */
export function openAIHandler(
  dec: OnnxDecoder,
  o: ServerOptions = {},
): (req: Request) => Promise<Response> {
  const modelId = o.modelId ?? (dec.dir.replace(/\/+$/, "").replace(/^.*\//, "") || "model");
  const slots = new Slots(o.maxConcurrent ?? 2, o.maxQueue ?? 64);
  const created = Math.floor(Date.now() / 1000);
  const template = o.chatTemplate ?? dec.tokenizer.chatTemplate;

  const job = (body: Record<string, unknown>, prompt: number[], chat: boolean): Job => {
    const c = dec.config;
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
      chat ? c.maxSeq - prompt.length : 16,
      (v) => Number.isInteger(v) && v >= 1,
      "an integer ≥ 1",
    );
    if (prompt.length + (given || !chat ? maxTokens : 1) > c.maxSeq) {
      const asked = given || !chat ? maxTokens : 1;
      throw new ApiError(
        400,
        `This model's maximum context length is ${c.maxSeq} tokens. However, you requested ` +
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
  };

  const promptOf = (body: Record<string, unknown>): number[] => {
    let p = body.prompt;
    if (Array.isArray(p) && p.length === 1) p = p[0];
    if (typeof p !== "string") throw invalid("prompt", "prompt must be a string");
    return dec.tokenizer.encode(p);
  };

  const chatPromptOf = (body: Record<string, unknown>): number[] => {
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
  };

  const complete = async (req: Request, chat: boolean): Promise<Response> => {
    const body = await readBody(req);
    if (typeof body.model !== "string" || body.model === "") {
      throw invalid("model", "model must be a string");
    }
    if (body.model !== modelId) {
      throw new ApiError(
        404,
        `The model '${body.model}' does not exist (this server has '${modelId}')`,
        {
          param: "model",
          code: "model_not_found",
        },
      );
    }
    const j = job(body, chat ? chatPromptOf(body) : promptOf(body), chat);
    const release = await slots.acquire(req.signal);
    const id = `${chat ? "chatcmpl" : "cmpl"}-${crypto.randomUUID().replaceAll("-", "")}`;
    const base = {
      id,
      object: chat ? "chat.completion" : "text_completion",
      created,
      model: modelId,
    };
    const ac = new AbortController();
    const abort = () => ac.abort();
    req.signal.addEventListener("abort", abort, { once: true });
    const run = (onText?: (t: string) => void | Promise<void>) =>
      generate(dec, [j.prompt], {
        maxNewTokens: j.maxTokens,
        temperature: j.temperature,
        topP: j.topP,
        topK: j.topK,
        seed: j.seed,
        stop: j.stop,
        signal: ac.signal,
        onText: onText ? (_r, t) => onText(t) : undefined,
      });
    const usage = (n: number) => ({
      prompt_tokens: j.prompt.length,
      completion_tokens: n,
      total_tokens: j.prompt.length + n,
    });
    if (!j.stream) {
      try {
        const { rows: [r] } = await run();
        o.log?.(
          `${req.method} ${new URL(req.url).pathname}: ${r.ids.length} tokens, ${r.finishReason}`,
        );
        const choice = chat
          ? { index: 0, message: { role: "assistant", content: r.text }, logprobs: null }
          : { index: 0, text: r.text, logprobs: null };
        return json(200, {
          ...base,
          choices: [{ ...choice, finish_reason: finishReason(r.finishReason) }],
          usage: usage(r.ids.length),
        });
      } finally {
        req.signal.removeEventListener("abort", abort);
        release();
      }
    }
    const enc = new TextEncoder();
    const chunkObject = chat ? "chat.completion.chunk" : "text_completion";
    const event = (delta: string | null, finish: FinishReason | null, first = false) => {
      const choice = chat
        ? {
          index: 0,
          delta: first
            ? { role: "assistant", content: "" }
            : delta === null
            ? {}
            : { content: delta },
        }
        : { index: 0, text: delta ?? "", logprobs: null };
      return enc.encode(`data: ${
        JSON.stringify({
          ...base,
          object: chunkObject,
          choices: [{ ...choice, finish_reason: finish ? finishReason(finish) : null }],
        })
      }\n\n`);
    };
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    const send = (bytes: Uint8Array) => {
      try {
        controller.enqueue(bytes);
      } catch { /* the client is gone */ }
    };
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        controller = c;
      },
      cancel: abort,
    });
    (async () => {
      try {
        if (chat) send(event(null, null, true));
        const { rows: [r] } = await run((t) => send(event(t, null)));
        o.log?.(
          `${req.method} ${
            new URL(req.url).pathname
          } (stream): ${r.ids.length} tokens, ${r.finishReason}`,
        );
        if (r.finishReason !== "abort") {
          send(event(null, r.finishReason));
          send(enc.encode("data: [DONE]\n\n"));
        }
      } catch (e) {
        send(enc.encode(`data: ${JSON.stringify(errorBody(toApiError(e)))}\n\n`));
      } finally {
        req.signal.removeEventListener("abort", abort);
        release();
        try {
          controller.close();
        } catch { /* cancelled */ }
      }
    })();
    return new Response(stream, {
      headers: {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
      },
    });
  };

  return async (req: Request): Promise<Response> => {
    try {
      const path = new URL(req.url).pathname.replace(/\/+$/, "");
      const routes: Record<string, Record<string, () => Promise<Response>>> = {
        "/v1/models": {
          GET: () =>
            Promise.resolve(json(200, {
              object: "list",
              data: [{ id: modelId, object: "model", created, owned_by: "qllm-deno" }],
            })),
        },
        "/v1/completions": { POST: () => complete(req, false) },
        "/v1/chat/completions": { POST: () => complete(req, true) },
      };
      const route = routes[path];
      if (!route) throw new ApiError(404, `no route ${req.method} ${path}`, { code: "not_found" });
      const handler = route[req.method];
      if (!handler) {
        throw new ApiError(405, `${path} takes ${Object.keys(route).join(", ")}`, {
          code: "method_not_allowed",
        });
      }
      return await handler();
    } catch (e) {
      const err = toApiError(e);
      if (err.status >= 500) o.log?.(`error: ${err.message}`);
      return json(err.status, errorBody(err));
    }
  };
}

/** A running server. */
export interface RunningServer {
  /** Its base URL (`http://127.0.0.1:PORT`). */
  url: string;
  /** Resolves when it has stopped. */
  finished: Promise<void>;
  /** Stops it. */
  shutdown(): Promise<void>;
}

/** Starts the server; it is listening when this returns. */
export function serveOpenAI(dec: OnnxDecoder, o: ServerOptions = {}): RunningServer {
  const server = Deno.serve({
    hostname: o.hostname ?? "127.0.0.1",
    port: o.port ?? 8000,
    signal: o.signal,
    onListen: () => {},
    onError: (e) => json(500, errorBody(toApiError(e))),
  }, openAIHandler(dec, o));
  const { hostname, port } = server.addr as Deno.NetAddr;
  return {
    url: `http://${hostname}:${port}`,
    finished: server.finished,
    shutdown: () => server.shutdown(),
  };
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

function finishReason(r: FinishReason): string {
  return r === "abort" ? "stop" : r;
}

function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  return new ApiError(500, `internal error: ${(e as Error)?.message ?? String(e)}`);
}

function errorBody(e: ApiError) {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}
