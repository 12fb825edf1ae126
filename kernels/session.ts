/**
 * ONNX Runtime sessions: one cache per execution device, keyed by the graph's bytes, so a graph
 * built for one block is compiled once and reused for every block of the same shape.
 * @module
 */
import * as ort from "onnxruntime-node";
import { GarbageMeter, releaseMemory } from "./garbage.ts";
import type { Tensor } from "./tensor.ts";

/** An ONNX Runtime inference session (onnxruntime-node's). */
export type InferenceSession = ort.InferenceSession;

/** Where graphs run. */
export type Device = "cpu" | "webgpu" | "cuda";

/** The devices a user may name with `--device`. */
export const DEVICES: readonly Device[] = ["cpu", "webgpu", "cuda"];

/** A feed value: a float tensor, or int64 indices given as a `BigInt64Array` with its shape. */
export type Feed = Tensor | { int64: BigInt64Array; shape: number[] };

/** How a graph's session is made. */
export interface SessionOptions {
  /**
   * Keep ORT's memory arena (default). Graphs of many small ops need it (without it, every run
   * maps its buffers afresh); a graph of one large product does not, and its arena would keep
   * the largest buffers it ever saw for the whole run.
   */
  arena?: boolean;
}

/** Outputs from this size on count towards the next garbage collection. */
const LARGE_OUTPUT = 2 ** 20;

/** Runs graphs on one device and caches their sessions. */
export class Runtime {
  /** The execution device every session of this runtime uses. */
  readonly device: Device;
  #sessions = new Map<string, Promise<ort.InferenceSession>>();
  #threads: number;
  #garbage = new GarbageMeter();

  /** A runtime on `device` (cpu by default) with `threads` intra-op threads (default: all cores). */
  constructor(device: Device = "cpu", threads = navigator.hardwareConcurrency ?? 2) {
    if (!DEVICES.includes(device)) {
      throw new Error(`--device: unknown device "${device}" (expected ${DEVICES.join(", ")})`);
    }
    this.device = device;
    this.#threads = threads;
  }

  /** The cached session for a graph, created on first use. */
  session(bytes: Uint8Array, o: SessionOptions = {}): Promise<InferenceSession> {
    const arena = o.arena ?? true;
    const key = hashBytes(bytes) + (arena ? "" : ":no-arena");
    let s = this.#sessions.get(key);
    if (!s) {
      s = this.#create(bytes, arena);
      this.#sessions.set(key, s);
      s.catch(() => this.#sessions.delete(key));
    }
    return s;
  }

  /** Runs a graph on named feeds and returns every float output as a Tensor. */
  async run(
    bytes: Uint8Array,
    feeds: Record<string, Feed>,
    o: SessionOptions = {},
  ): Promise<Record<string, Tensor>> {
    const s = await this.session(bytes, o);
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const [name, f] of Object.entries(feeds)) {
      ortFeeds[name] = "int64" in f
        ? new ort.Tensor("int64", f.int64, f.shape)
        : new ort.Tensor("float32", f.data, f.shape);
    }
    const out = await s.run(ortFeeds);
    const result: Record<string, Tensor> = {};
    let outBytes = 0;
    for (const [name, t] of Object.entries(out)) {
      const data = t.data as Float32Array;
      result[name] = { data, shape: t.dims.map(Number) };
      if (data.byteLength >= LARGE_OUTPUT) outBytes += data.byteLength;
    }
    // Outputs arrive as fresh buffers: the previous runs' are garbage by now, and V8 alone
    // would let hundreds of MB of large ones pile up in loops of large products (small ones,
    // as in training steps, it handles well, and counting them would only add collections).
    this.#garbage.add(outBytes);
    return result;
  }

  /**
   * Releases the cached session of one graph, and with it the memory its arena holds (a later
   * run compiles the graph again).
   */
  async releaseGraph(bytes: Uint8Array): Promise<void> {
    const h = hashBytes(bytes);
    for (const key of [h, `${h}:no-arena`]) {
      const s = this.#sessions.get(key);
      if (!s) continue;
      this.#sessions.delete(key);
      await (await s).release();
    }
    releaseMemory();
  }

  /** Releases every cached session. */
  async release(): Promise<void> {
    const all = [...this.#sessions.values()];
    this.#sessions.clear();
    for (const s of all) await (await s).release();
  }

  #create(bytes: Uint8Array, arena: boolean): Promise<ort.InferenceSession> {
    return createSession(bytes, { device: this.device, threads: this.#threads, arena });
  }
}

/** How {@linkcode createSession} makes a session. */
export interface CreateSessionOptions {
  /** Execution device (cpu by default). */
  device?: Device;
  /** Intra-op threads (default: all cores). */
  threads?: number;
  /** Keep ORT's memory arena (default true; see {@linkcode SessionOptions.arena}). */
  arena?: boolean;
  /**
   * Let worker threads spin between the ops of a run (default false: the TypeScript loops
   * between our runs need the cores). A decoder's step is hundreds of tiny ops, and waking
   * sleeping threads for each took half of its time.
   */
  spinning?: boolean;
}

/**
 * An ONNX Runtime session for a model's bytes or file path (a file's external data is read
 * from beside it) with the toolkit's settings; a device that cannot be had is an error naming it.
 */
export async function createSession(
  model: Uint8Array | string,
  o: CreateSessionOptions = {},
): Promise<InferenceSession> {
  const device = o.device ?? "cpu";
  const opts: ort.InferenceSession.SessionOptions = {
    executionProviders: [device],
    intraOpNumThreads: o.threads ?? navigator.hardwareConcurrency ?? 2,
    interOpNumThreads: 1,
    graphOptimizationLevel: "all",
    executionMode: "sequential",
    // Without the arena, every run mmaps its large buffers afresh and runs up to 7× slower.
    // Each session's arena keeps its own peak, so graphs are built for small batches
    // (models/forward.ts) and grown only by what is requested.
    enableCpuMemArena: o.arena ?? true,
    extra: {
      session: {
        // Spinning worker threads would take the cores from the TypeScript loops between runs
        // (unless asked for: see CreateSessionOptions.spinning).
        intra_op: { allow_spinning: o.spinning ? "1" : "0" },
      },
    },
  };
  try {
    return typeof model === "string"
      ? await ort.InferenceSession.create(model, opts)
      : await ort.InferenceSession.create(model, opts);
  } catch (e) {
    if (device === "cpu") throw e;
    throw new Error(
      `--device ${device}: ONNX Runtime could not create a session on this device ` +
        `(${(e as Error).message.split("\n")[0]}). ` +
        (device === "cuda"
          ? "CUDA needs ONNX Runtime's CUDA binaries and an NVIDIA driver."
          : "WebGPU needs a GPU adapter (Vulkan on Linux)."),
    );
  }
}

/** FNV-1a over the bytes, as hex: cheap and good enough to tell graphs apart. */
function hashBytes(b: Uint8Array): string {
  let h1 = 0x811c9dc5, h2 = 0x01000193 ^ b.length;
  for (let i = 0; i < b.length; i++) {
    h1 = Math.imul(h1 ^ b[i], 0x01000193);
    h2 = Math.imul(h2 ^ b[i], 0x5bd1e995);
  }
  return (h1 >>> 0).toString(16) + (h2 >>> 0).toString(16) + ":" + b.length;
}
