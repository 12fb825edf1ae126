/**
 * An exported decoder (`formats/onnx.ts`) opened for running: its config, tokenizer and EOS
 * ids, one ONNX Runtime session, and a forward step over a batch with the KV cache — the first
 * step with an empty past, each later one with the previous step's present keys and values.
 * @module
 */
import * as ort from "onnxruntime-node";
import { createSession, type Device } from "../kernels/session.ts";
import { type ModelConfig, parseHfConfig } from "../models/config.ts";
import { loadTokenizer, type TextTokenizer } from "../text/tokenizer.ts";

/** How an export is opened. */
export interface DecoderOptions {
  /** Execution device (cpu). */
  device?: Device;
  /** Intra-op threads (default: all cores). */
  threads?: number;
  /** The ONNX file under `onnx/` (default: the one the export's config names, or the only one). */
  file?: string;
  /**
   * Worker threads spin between ops (default true: a decode step is hundreds of tiny ops, and
   * waking the threads for each doubled its time; false leaves the cores to other work).
   */
  spinning?: boolean;
}

/** A tensor as ONNX Runtime hands it over (the cache is kept in this form between steps). */
export type OrtTensor = ort.Tensor;

/** The keys and values of every layer for a batch, [B, KV, S, hd] each. */
export interface KvCache {
  /** Positions held (S). */
  length: number;
  /** Per layer. */
  layers: { key: OrtTensor; value: OrtTensor }[];
}

/** One forward step of a batch of rows of equal length T. */
export interface StepInput {
  /** Token ids [B, T], row-major. */
  ids: ArrayLike<number>;
  /** Rows (B). */
  batch: number;
  /** 1 for a real token, 0 for padding, over the cache and the new tokens [B, S + T]. */
  mask: ArrayLike<number>;
  /** Position of each new token [B, T]. */
  positions: ArrayLike<number>;
}

/** An exported decoder with its session. */
export class OnnxDecoder {
  /** The export directory. */
  readonly dir: string;
  /** The ONNX file, relative to `dir`. */
  readonly file: string;
  /** The model's shape. */
  readonly config: ModelConfig;
  /** The tokenizer beside it. */
  readonly tokenizer: TextTokenizer;
  /** Token ids that end a generation (`generation_config.json`'s `eos_token_id`, the config's). */
  readonly eos: readonly number[];
  #session: ort.InferenceSession;

  private constructor(
    dir: string,
    file: string,
    config: ModelConfig,
    tokenizer: TextTokenizer,
    eos: number[],
    session: ort.InferenceSession,
  ) {
    this.dir = dir;
    this.file = file;
    this.config = config;
    this.tokenizer = tokenizer;
    this.eos = eos;
    this.#session = session;
  }

  /** Opens an export directory. */
  static async open(dir: string, o: DecoderOptions = {}): Promise<OnnxDecoder> {
    const configPath = `${dir}/config.json`;
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(await Deno.readTextFile(configPath));
    } catch (e) {
      throw new Error(`--onnx ${dir}: cannot read config.json (${(e as Error).message})`);
    }
    const config = parseHfConfig(json, configPath);
    const file = `onnx/${o.file ?? await pickFile(dir, json)}`;
    const gen = await readJsonIfAny(`${dir}/generation_config.json`);
    const eos = new Set<number>([config.eos]);
    for (const v of [gen?.eos_token_id].flat()) if (typeof v === "number") eos.add(v);
    const tokenizer = await loadTokenizer(dir);
    const session = await createSession(`${dir}/${file}`, {
      ...o,
      spinning: o.spinning ?? true,
    }).catch((e: Error) => {
      throw new Error(`${dir}/${file}: ${e.message.split("\n")[0]}`);
    });
    for (const name of ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key"]) {
      if (!session.inputNames.includes(name)) {
        await session.release();
        throw new Error(`${dir}/${file}: not a decoder with a KV cache (no input "${name}")`);
      }
    }
    return new OnnxDecoder(dir, file, config, tokenizer, [...eos], session);
  }

  /** An empty cache for `batch` rows (the first step's past). */
  emptyCache(batch: number): KvCache {
    const c = this.config;
    const empty = () =>
      new ort.Tensor("float32", new Float32Array(0), [batch, c.kvHeads, 0, c.headDim]);
    return {
      length: 0,
      layers: Array.from({ length: c.layers }, () => ({ key: empty(), value: empty() })),
    };
  }

  /** Runs one step: logits [B, T, V] of the new tokens and the cache including them. */
  async step(input: StepInput, past: KvCache): Promise<{ logits: Float32Array; cache: KvCache }> {
    const B = input.batch, T = input.ids.length / B, S = past.length + T;
    if (!Number.isInteger(T) || input.mask.length !== B * S || input.positions.length !== B * T) {
      throw new Error(`decoder step: ${B} rows of ${T} ids need a mask of ${B}×${S} and positions`);
    }
    const int64 = (a: ArrayLike<number>, dims: number[]) =>
      new ort.Tensor("int64", BigInt64Array.from(Array.from(a, BigInt)), dims);
    const feeds: Record<string, ort.Tensor> = {
      input_ids: int64(input.ids, [B, T]),
      attention_mask: int64(input.mask, [B, S]),
      position_ids: int64(input.positions, [B, T]),
    };
    past.layers.forEach((l, i) => {
      feeds[`past_key_values.${i}.key`] = l.key;
      feeds[`past_key_values.${i}.value`] = l.value;
    });
    const out = await this.#session.run(feeds);
    return {
      logits: out.logits.data as Float32Array,
      cache: {
        length: S,
        layers: past.layers.map((_, i) => ({
          key: out[`present.${i}.key`],
          value: out[`present.${i}.value`],
        })),
      },
    };
  }

  /** Releases the session. */
  async release(): Promise<void> {
    await this.#session.release();
  }
}

/** The ONNX file of an export: the one its config names, else the only one in `onnx/`. */
async function pickFile(dir: string, config: Record<string, unknown>): Promise<string> {
  const named = (config.qllm_deno_export as { file?: unknown } | undefined)?.file;
  if (typeof named === "string") return named.replace(/^onnx\//, "");
  const files: string[] = [];
  try {
    for await (const e of Deno.readDir(`${dir}/onnx`)) {
      if (e.isFile && e.name.endsWith(".onnx")) files.push(e.name);
    }
  } catch {
    throw new Error(`--onnx ${dir}: no onnx/ directory`);
  }
  if (files.length === 1) return files[0];
  throw new Error(
    `--onnx ${dir}: ${
      files.length ? `several ONNX files (${files.sort().join(", ")})` : "no ONNX file"
    } in onnx/; name one with --file`,
  );
}

async function readJsonIfAny(path: string): Promise<Record<string, unknown> | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch {
    return null;
  }
}
