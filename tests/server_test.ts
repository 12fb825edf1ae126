/**
 * The OpenAI-compatible server (serve/server.ts) driven by a real client, `npm:openai`, on
 * 127.0.0.1: completions and chat completions (plain and streamed) equal our own generation of
 * the same prompt; stop strings and seeds; 16 concurrent requests each get what they get alone;
 * a batch of malformed requests gets 4xx JSON errors naming the field while the server keeps
 * serving; an oversized prompt is a 400 that says the limit; a full queue is a 503; a client that
 * disconnects from its stream ends its generation early and frees its slot.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { fixtureModel } from "../fixtures/paths.ts";
import { exportModel } from "../run/export.ts";
import { OnnxDecoder } from "../serve/decoder.ts";
import { generate } from "../serve/generate.ts";
import { type RunningServer, serveOpenAI, type ServerOptions } from "../serve/server.ts";
import { encodeChat, renderChat } from "../text/chat.ts";

const TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n" +
  "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

/** Serves an export of tinystories-656k for `fn`, collecting the server's log lines. */
async function withServer(
  o: ServerOptions,
  fn: (dec: OnnxDecoder, server: RunningServer, log: string[]) => Promise<void>,
): Promise<void> {
  const tmp = await Deno.makeTempDir();
  try {
    await exportModel({ model: fixtureModel("tinystories-656k"), out: `${tmp}/tiny`, quiet: true });
    const dec = await OnnxDecoder.open(`${tmp}/tiny`);
    const log: string[] = [];
    const server = serveOpenAI(dec, { port: 0, ...o, log: (m) => log.push(m) });
    try {
      await fn(dec, server, log);
    } finally {
      await server.shutdown();
      await dec.release();
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

Deno.test("the OpenAI client gets from our server what we generate", async (t) => {
  await withServer({ maxConcurrent: 3, chatTemplate: TEMPLATE }, async (dec, server) => {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none", maxRetries: 0 });
    const greedy = async (prompt: number[], maxNewTokens: number, stop?: string[]) =>
      (await generate(dec, [prompt], { maxNewTokens, stop })).rows[0];
    assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+$/);

    await t.step("models", async () => {
      const models = await client.models.list();
      assert.deepEqual(models.data.map((m) => m.id), ["tiny"]);
    });

    const story = "Once upon a time";
    const expected = await greedy(dec.tokenizer.encode(story), 40);
    /** A greedy completion request of 40 tokens of `story`, with `extra` fields. */
    const request = <E extends object>(extra: E) => ({
      model: "tiny",
      prompt: story,
      max_tokens: 40,
      temperature: 0,
      ...extra,
    });

    await t.step("completion", async () => {
      const r = await client.completions.create(request({}));
      assert.equal(r.choices[0].text, expected.text);
      assert.equal(r.choices[0].finish_reason, "length");
      assert.equal(r.usage?.prompt_tokens, dec.tokenizer.encode(story).length);
      assert.equal(r.usage?.completion_tokens, 40);
    });

    await t.step("streamed completion", async () => {
      const stream = await client.completions.create(request({ stream: true as const }));
      let text = "", chunks = 0, finish: string | null = null;
      for await (const c of stream) {
        text += c.choices[0].text;
        finish = c.choices[0].finish_reason ?? finish;
        chunks++;
      }
      assert.ok(chunks > 10, `${chunks} chunks`);
      assert.equal(text, expected.text);
      assert.equal(finish, "length");
    });

    await t.step("stop strings and seeds", async () => {
      const r = await client.completions.create(request({ stop: ["."] }));
      assert.equal(r.choices[0].finish_reason, "stop");
      assert.equal(r.choices[0].text, expected.text.slice(0, expected.text.indexOf(".")));
      const sampled = () =>
        client.completions.create(request({ max_tokens: 30, temperature: 1, top_p: 0.9, seed: 7 }));
      const [a, b] = [await sampled(), await sampled()];
      assert.equal(a.choices[0].text, b.choices[0].text);
      assert.notEqual(a.choices[0].text, expected.text.slice(0, a.choices[0].text.length));
    });

    const messages = [
      { role: "system" as const, content: "Tell a story." },
      { role: "user" as const, content: "A story about a cat." },
    ];
    const chatPrompt = encodeChat(
      renderChat(TEMPLATE, messages, dec.tokenizer, true),
      dec.tokenizer,
    );
    const chatExpected = await greedy(chatPrompt, 30);

    await t.step("chat completion, plain and streamed", async () => {
      const r = await client.chat.completions.create({
        model: "tiny",
        messages,
        max_tokens: 30,
        temperature: 0,
      });
      assert.equal(r.choices[0].message.content, chatExpected.text);
      assert.equal(r.usage?.prompt_tokens, chatPrompt.length);
      const stream = await client.chat.completions.create({
        model: "tiny",
        messages,
        max_tokens: 30,
        temperature: 0,
        stream: true,
      });
      let text = "", role = "";
      for await (const c of stream) {
        role ||= c.choices[0].delta.role ?? "";
        text += c.choices[0].delta.content ?? "";
      }
      assert.equal(role, "assistant");
      assert.equal(text, chatExpected.text);
    });

    await t.step("16 concurrent requests", async () => {
      const prompts = Array.from(
        { length: 16 },
        (_, i) => `${story}, there was a ${["cat", "dog", "boy", "girl"][i % 4]}`,
      );
      const lengths = prompts.map((_, i) => 8 + i);
      const alone = [];
      for (let i = 0; i < 16; i++) {
        alone.push((await greedy(dec.tokenizer.encode(prompts[i]), lengths[i])).text);
      }
      const together = await Promise.all(
        prompts.map((prompt, i) =>
          i % 2
            ? client.completions.create({
              model: "tiny",
              prompt,
              max_tokens: lengths[i],
              temperature: 0,
            })
              .then((r) => r.choices[0].text)
            : client.completions.create({
              model: "tiny",
              prompt,
              max_tokens: lengths[i],
              temperature: 0,
              stream: true,
            }).then(async (s) => {
              let text = "";
              for await (const c of s) text += c.choices[0].text;
              return text;
            })
        ),
      );
      assert.deepEqual(together, alone);
    });

    await t.step("malformed requests: 4xx JSON errors, and the server goes on", async () => {
      const post = (path: string, body: string, method = "POST") =>
        fetch(`${server.url}${path}`, {
          method,
          headers: { "content-type": "application/json" },
          body: method === "GET" ? undefined : body,
        });
      const ok = { model: "tiny", prompt: story, max_tokens: 4 };
      const bad: [string, string, number, string | null][] = [
        ["/v1/completions", "{not json", 400, null],
        ["/v1/completions", "[1, 2]", 400, null],
        ["/v1/completions", JSON.stringify({ prompt: story }), 400, "model"],
        ["/v1/completions", JSON.stringify({ ...ok, model: "gpt-4" }), 404, "model"],
        ["/v1/completions", JSON.stringify({ ...ok, prompt: 42 }), 400, "prompt"],
        ["/v1/completions", JSON.stringify({ ...ok, max_tokens: -1 }), 400, "max_tokens"],
        ["/v1/completions", JSON.stringify({ ...ok, max_tokens: 2.5 }), 400, "max_tokens"],
        ["/v1/completions", JSON.stringify({ ...ok, temperature: 3 }), 400, "temperature"],
        ["/v1/completions", JSON.stringify({ ...ok, top_p: 0 }), 400, "top_p"],
        [
          "/v1/completions",
          JSON.stringify({ ...ok, stop: ["a", "b", "c", "d", "e"] }),
          400,
          "stop",
        ],
        ["/v1/completions", JSON.stringify({ ...ok, n: 2 }), 400, "n"],
        ["/v1/completions", JSON.stringify({ ...ok, seed: "x" }), 400, "seed"],
        ["/v1/completions", JSON.stringify({ ...ok, stream: "yes" }), 400, "stream"],
        ["/v1/chat/completions", JSON.stringify({ model: "tiny", messages: [] }), 400, "messages"],
        [
          "/v1/chat/completions",
          JSON.stringify({ model: "tiny", messages: [{ role: "wizard", content: "hi" }] }),
          400,
          "messages[0].role",
        ],
        [
          "/v1/chat/completions",
          JSON.stringify({ model: "tiny", messages: [{ role: "user", content: 1 }] }),
          400,
          "messages[0].content",
        ],
        ["/v1/nothing", "{}", 404, null],
      ];
      for (const [path, body, status, param] of bad) {
        const r = await post(path, body);
        const json = await r.json();
        assert.equal(r.status, status, `${path} ${body}: ${JSON.stringify(json)}`);
        assert.equal(typeof json.error.message, "string");
        assert.equal(json.error.param, param, `${path} ${body}: ${JSON.stringify(json)}`);
      }
      const get = await post("/v1/completions", "", "GET");
      assert.equal(get.status, 405);
      await get.body?.cancel();
      // Through the client: its typed error carries the status and message.
      await assert.rejects(
        client.completions.create({ model: "tiny", prompt: story, max_tokens: 0 }),
        (e: unknown) => e instanceof OpenAI.BadRequestError && /max_tokens/.test(e.message),
      );
      const r = await client.completions.create({
        model: "tiny",
        prompt: story,
        max_tokens: 4,
        temperature: 0,
      });
      assert.equal(r.choices[0].text, expected.text.slice(0, r.choices[0].text.length));
    });

    await t.step("an oversized prompt is a 400 that says the limit", async () => {
      const long = "Once upon a time, there was a girl. ".repeat(80);
      await assert.rejects(
        client.completions.create({ model: "tiny", prompt: long, max_tokens: 8 }),
        (e: unknown) =>
          e instanceof OpenAI.BadRequestError &&
          /maximum context length is 512 tokens/.test(e.message),
      );
      await assert.rejects(
        client.completions.create({ model: "tiny", prompt: story, max_tokens: 600 }),
        (e: unknown) => e instanceof OpenAI.BadRequestError && /512/.test(e.message),
      );
    });
  });
});

Deno.test("a disconnecting client frees its slot; a full queue is a 503", async () => {
  await withServer(
    { maxConcurrent: 1, maxQueue: 1, modelId: "tiny" },
    async (_dec, server, log) => {
      const body = (max_tokens: number, stream: boolean) =>
        JSON.stringify({
          model: "tiny",
          prompt: "Once upon a time",
          max_tokens,
          temperature: 0,
          stream,
        });
      const post = (b: string, signal?: AbortSignal) =>
        fetch(`${server.url}/v1/completions`, { method: "POST", body: b, signal });
      // A long stream, dropped after its first event.
      const ac = new AbortController();
      const r = await post(body(500, true), ac.signal);
      const reader = r.body!.getReader();
      await reader.read();
      ac.abort();
      await reader.cancel().catch(() => {});
      // The slot is free again: a request gets it and completes.
      const next = await post(body(5, false));
      assert.equal(next.status, 200);
      assert.equal((await next.json()).usage.completion_tokens, 5);
      const dropped = log.find((l) => l.includes("(stream)"));
      const m = dropped?.match(/: (\d+) tokens, abort/);
      assert.ok(m && Number(m[1]) < 500, `the dropped stream's generation: ${dropped}`);

      // A plain request dropped while it generates.
      const gone = new AbortController();
      const pending = post(body(500, false), gone.signal).catch(() => null);
      await new Promise((r) => setTimeout(r, 30));
      gone.abort();
      await pending;
      const after = await post(body(5, false));
      assert.equal(after.status, 200);
      await after.body?.cancel();
      const plain = log.filter((l) => !l.includes("(stream)")).find((l) => l.includes("abort"));
      const p = plain?.match(/: (\d+) tokens, abort/);
      assert.ok(p && Number(p[1]) < 500, `the dropped request's generation: ${log.join("; ")}`);

      // One running, one waiting, the third refused.
      const three = await Promise.all([0, 1, 2].map(() => post(body(200, false))));
      const statuses = await Promise.all(three.map(async (x) => {
        await x.body?.cancel();
        return x.status;
      }));
      assert.deepEqual(statuses.sort(), [200, 200, 503]);
    },
  );
});
