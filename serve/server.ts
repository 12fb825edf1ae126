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
import type { OnnxDecoder } from "./decoder.ts";
import { type FinishReason, generate } from "./generate.ts";
import { ApiError, readRequest } from "./requests.ts";
import { Slots } from "./slots.ts";

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

/** The request handler of the server (usable with any `Deno.serve` or in tests). */
export function openAIHandler(
  dec: OnnxDecoder,
  o: ServerOptions = {},
): (req: Request) => Promise<Response> {
  const modelId = o.modelId ?? (dec.dir.replace(/\/+$/, "").replace(/^.*\//, "") || "model");
  const slots = new Slots(o.maxConcurrent ?? 2, o.maxQueue ?? 64);
  const created = Math.floor(Date.now() / 1000);
  const template = o.chatTemplate ?? dec.tokenizer.chatTemplate;

  const complete = async (req: Request, chat: boolean): Promise<Response> => {
    const j = await readRequest(req, chat, { dec, modelId, template });
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
