/**
 * Headless Chromium driven over its DevTools protocol (a WebSocket, Deno's own): open a page,
 * collect what it logs as errors (console errors, uncaught exceptions, failed loads), read
 * values out of its DOM, and take a screenshot. For the tests of the HTML reports and the script
 * that makes the README's example screenshot. The protocol, rather than `--dump-dom`, because
 * console errors arrive as events and the DOM, the layout and the screenshot come from one
 * loaded page.
 * @module
 */

/** The Chromium executable: `$CHROMIUM`, else the first of the usual names on the PATH. */
export function findChromium(): string | null {
  const named = Deno.env.get("CHROMIUM");
  if (named) return named;
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    for (const name of ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]) {
      try {
        if (Deno.statSync(`${dir}/${name}`).isFile) return `${dir}/${name}`;
      } catch { /* not here */ }
    }
  }
  return null;
}

type Message = {
  id?: number;
  method?: string;
  params?: Record<string, unknown>;
  result?: Record<string, unknown>;
  error?: { message: string };
  sessionId?: string;
};

/** One protocol connection: commands with replies, and events by session. */
class Connection {
  #ws: WebSocket;
  #next = 1;
  #pending = new Map<number, PromiseWithResolvers<Record<string, unknown>>>();
  #listeners = new Set<(m: Message) => void>();

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.onmessage = (e) => {
      const m = JSON.parse(String(e.data)) as Message;
      if (m.id !== undefined) {
        const p = this.#pending.get(m.id);
        this.#pending.delete(m.id);
        if (m.error) p?.reject(new Error(`chromium: ${m.error.message}`));
        else p?.resolve(m.result ?? {});
      } else {
        for (const l of this.#listeners) l(m);
      }
    };
    ws.onclose = () => {
      for (const p of this.#pending.values()) p.reject(new Error("chromium: connection closed"));
      this.#pending.clear();
    };
  }

  static async open(url: string): Promise<Connection> {
    const ws = new WebSocket(url);
    await new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error(`chromium: cannot connect to ${url}`));
    });
    return new Connection(ws);
  }

  send(
    method: string,
    params: Record<string, unknown> = {},
    sessionId?: string,
  ): Promise<Record<string, unknown>> {
    const id = this.#next++;
    const p = Promise.withResolvers<Record<string, unknown>>();
    this.#pending.set(id, p);
    this.#ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    return p.promise;
  }

  listen(f: (m: Message) => void): () => void {
    this.#listeners.add(f);
    return () => this.#listeners.delete(f);
  }

  close(): Promise<void> {
    if (this.#ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    const closed = new Promise<void>((resolve) =>
      this.#ws.addEventListener("close", () => resolve())
    );
    this.#ws.close();
    return closed;
  }
}

/** A loaded page. */
export interface Page {
  /** What the page reported as errors so far: console errors, exceptions, failed loads. */
  readonly errors: string[];
  /** Evaluates a JavaScript expression in the page; its value, as JSON. */
  evaluate<T>(expression: string): Promise<T>;
  /** A PNG of the whole page at the viewport's width. */
  screenshot(): Promise<Uint8Array>;
}

/** A headless Chromium process and its protocol connection. */
export class Chromium {
  #proc: Deno.ChildProcess;
  #conn: Connection;
  #profile: string;

  private constructor(proc: Deno.ChildProcess, conn: Connection, profile: string) {
    this.#proc = proc;
    this.#conn = conn;
    this.#profile = profile;
  }

  /** Starts headless Chromium (`findChromium()` unless `executable` is given). */
  static async launch(executable = findChromium()): Promise<Chromium> {
    if (!executable) {
      throw new Error(
        "chromium not found: install it (Debian: apt-get install chromium) or set CHROMIUM",
      );
    }
    const profile = await Deno.makeTempDir({ prefix: "qllm-chromium-" });
    const proc = new Deno.Command(executable, {
      args: [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        "--remote-debugging-port=0",
        `--user-data-dir=${profile}`,
        "about:blank",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    try {
      const url = await devtoolsUrl(proc.stderr);
      return new Chromium(proc, await Connection.open(url), profile);
    } catch (e) {
      try {
        proc.kill();
      } catch { /* already gone */ }
      await proc.status;
      await Deno.remove(profile, { recursive: true }).catch(() => {});
      throw e;
    }
  }

  /** Opens `url` in a new tab of `width` × `height` CSS pixels and waits for its load event. */
  async open(url: string, o: { width?: number; height?: number } = {}): Promise<Page> {
    const c = this.#conn;
    const { targetId } = await c.send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await c.send("Target.attachToTarget", { targetId, flatten: true }) as {
      sessionId: string;
    };
    const errors: string[] = [];
    const loaded = Promise.withResolvers<void>();
    c.listen((m) => {
      if (m.sessionId !== sessionId) return;
      const p = m.params ?? {};
      if (m.method === "Page.loadEventFired") loaded.resolve();
      if (m.method === "Runtime.exceptionThrown") {
        const d = p.exceptionDetails as { text?: string; exception?: { description?: string } };
        errors.push(`exception: ${d.exception?.description ?? d.text}`);
      }
      if (m.method === "Runtime.consoleAPICalled" && (p.type === "error" || p.type === "assert")) {
        const args = (p.args as { value?: unknown; description?: string }[]) ?? [];
        errors.push(`console.${p.type}: ${args.map((a) => a.value ?? a.description).join(" ")}`);
      }
      if (m.method === "Log.entryAdded") {
        const e = p.entry as { level: string; text: string; url?: string };
        if (e.level === "error") errors.push(`${e.text}${e.url ? ` (${e.url})` : ""}`);
      }
    });
    const send = (method: string, params: Record<string, unknown> = {}) =>
      c.send(method, params, sessionId);
    await Promise.all([send("Page.enable"), send("Runtime.enable"), send("Log.enable")]);
    const width = o.width ?? 1200, height = o.height ?? 900;
    await send("Emulation.setDeviceMetricsOverride", {
      width,
      height,
      deviceScaleFactor: 1,
      mobile: false,
    });
    const nav = await send("Page.navigate", { url });
    if (nav.errorText) throw new Error(`chromium: cannot open ${url}: ${nav.errorText}`);
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      loaded.promise,
      new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`chromium: ${url} did not load in 30 s`)),
          30_000,
        );
      }),
    ]).finally(() => clearTimeout(timer));
    return {
      errors,
      async evaluate<T>(expression: string): Promise<T> {
        const r = await send("Runtime.evaluate", { expression, returnByValue: true }) as {
          result: { value?: T };
          exceptionDetails?: { text: string; exception?: { description?: string } };
        };
        if (r.exceptionDetails) {
          const d = r.exceptionDetails;
          throw new Error(`chromium: ${d.exception?.description ?? d.text}`);
        }
        return r.result.value as T;
      },
      async screenshot(): Promise<Uint8Array> {
        const m = await send("Page.getLayoutMetrics") as { cssContentSize: { height: number } };
        const full = Math.ceil(m.cssContentSize.height);
        await send("Emulation.setDeviceMetricsOverride", {
          width,
          height: full,
          deviceScaleFactor: 1,
          mobile: false,
        });
        const { data } = await send("Page.captureScreenshot", { format: "png" }) as {
          data: string;
        };
        return Uint8Array.from(atob(data), (ch) => ch.charCodeAt(0));
      },
    };
  }

  /** Closes the browser and removes its profile. */
  async close(): Promise<void> {
    await this.#conn.send("Browser.close").catch(() => {});
    await this.#conn.close();
    const timer = setTimeout(() => {
      try {
        this.#proc.kill("SIGKILL");
      } catch { /* exited */ }
    }, 5000);
    await this.#proc.status;
    clearTimeout(timer);
    await Deno.remove(this.#profile, { recursive: true }).catch(() => {});
  }
}

/** Reads Chromium's stderr until it prints its DevTools WebSocket URL (then drains the rest). */
async function devtoolsUrl(stderr: ReadableStream<Uint8Array>): Promise<string> {
  const reader = stderr.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  const deadline = setTimeout(() => reader.cancel("timeout"), 30_000);
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += value;
      const m = seen.match(/DevTools listening on (ws:\/\/\S+)/);
      if (m) {
        // Keep reading in the background so that Chromium never blocks on a full pipe.
        (async () => {
          try {
            while (!(await reader.read()).done) { /* discard */ }
          } catch { /* closed */ }
        })();
        return m[1];
      }
    }
  } finally {
    clearTimeout(deadline);
  }
  throw new Error(`chromium did not start: ${seen.trim().slice(-500) || "no output"}`);
}
