/**
 * Hugging Face style checkpoints: a single `model.safetensors`, or shards
 * `model-0000i-of-0000N.safetensors` listed by `model.safetensors.index.json`
 * (`{"metadata": {"total_size": …}, "weight_map": {tensor: shard}}`).
 *
 * Reading resolves aliases recorded in `__metadata__` (a tied weight stored once, e.g.
 * `"model.embed_tokens.weight": "lm_head.weight"`). Writing keeps everything under temporary
 * names until `finish()`, which renames the shards into place and writes the index last.
 * @module
 */

import type { Tensor } from "../kernels/tensor.ts";
import {
  DTYPE_BYTES,
  type RawData,
  type RawTensor,
  SafetensorsReader,
  type SafetensorsSnapshot,
  SafetensorsWriter,
  type TensorInfo,
  type WritableDtype,
} from "./safetensors.ts";

/** File name of a single-file checkpoint. */
export const SINGLE_FILE = "model.safetensors";
/** File name of the shard index. */
export const INDEX_FILE = "model.safetensors.index.json";
/** Default shard size limit: 2 GiB. */
export const DEFAULT_MAX_SHARD_BYTES = 2 * 1024 ** 3;

const MAX_ALIAS_HOPS = 16;

function join(dir: string, file: string): string {
  return dir === "" ? file : `${dir.replace(/\/+$/, "")}/${file}`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

async function removeQuietly(path: string): Promise<void> {
  try {
    await Deno.remove(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

function isPlainName(file: string): boolean {
  return file !== "" && file !== "." && file !== ".." && !/[\\/]/.test(file);
}

/** Shard file name `model-0000i-of-0000N.safetensors` (1-based `i`). */
export function shardName(i: number, n: number): string {
  const pad = (k: number) => String(k).padStart(5, "0");
  return `model-${pad(i)}-of-${pad(n)}.safetensors`;
}

// ---------------------------------------------------------------------------------------------
// reading

/** Reads and validates `weight_map` of an index file: tensor name → shard file name. */
async function readWeightMap(indexPath: string): Promise<Map<string, string>> {
  let json: unknown;
  try {
    json = JSON.parse(await Deno.readTextFile(indexPath));
  } catch (e) {
    throw new Error(`${indexPath}: cannot read index (${(e as Error).message})`);
  }
  const map = (json as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== "object" || map === null || Array.isArray(map)) {
    throw new Error(`${indexPath}: "weight_map" must be an object of tensor name → shard file`);
  }
  const out = new Map<string, string>();
  for (const [name, file] of Object.entries(map)) {
    if (typeof file !== "string" || !isPlainName(file)) {
      throw new Error(`${indexPath}: tensor "${name}": bad shard file ${JSON.stringify(file)}`);
    }
    out.set(name, file);
  }
  return out;
}

/** Opens every shard named by the weight map and checks each listed tensor is really there. */
async function openShards(
  dir: string,
  indexPath: string,
  weightMap: Map<string, string>,
): Promise<{ readers: SafetensorsReader[]; where: Map<string, SafetensorsReader> }> {
  const files = [...new Set(weightMap.values())];
  const settled = await Promise.allSettled(files.map((f) => SafetensorsReader.open(join(dir, f))));
  const readers = settled.flatMap((s) => s.status === "fulfilled" ? [s.value] : []);
  const failed = settled.find((s) => s.status === "rejected");
  if (failed) {
    for (const r of readers) r.close();
    throw (failed as PromiseRejectedResult).reason;
  }
  const byFile = new Map(files.map((f, i) => [f, readers[i]]));
  const where = new Map<string, SafetensorsReader>();
  for (const [name, file] of weightMap) {
    const reader = byFile.get(file)!;
    if (!reader.has(name)) {
      for (const r of readers) r.close();
      throw new Error(
        `${indexPath}: tensor "${name}" is mapped to ${file}, which does not hold it`,
      );
    }
    where.set(name, reader);
  }
  return { readers, where };
}

/** Alias name → stored name, from metadata entries whose value (transitively) names a tensor. */
function findAliases(
  metadata: Record<string, string>,
  stored: ReadonlyMap<string, unknown>,
): Map<string, string> {
  const aliases = new Map<string, string>();
  for (const key of Object.keys(metadata)) {
    if (stored.has(key)) continue;
    let target = metadata[key];
    for (let hop = 0; hop < MAX_ALIAS_HOPS && !stored.has(target); hop++) {
      if (!Object.hasOwn(metadata, target)) break;
      target = metadata[target];
    }
    if (stored.has(target)) aliases.set(key, target);
  }
  return aliases;
}

/**
 * An opened checkpoint: one file or several shards, seen as one set of tensors.
 * Shard headers are read (and validated) when the checkpoint is opened; tensor data is read
 * only on demand, one tensor at a time.
 */
export class Checkpoint {
  /** The checkpoint directory. */
  readonly dir: string;
  /** The shards' `__metadata__`, merged in shard order (later shards win on conflicts). */
  readonly metadata: Record<string, string>;
  #readers: SafetensorsReader[];
  #where: Map<string, SafetensorsReader>;
  #aliases: Map<string, string>;

  /** Use `openCheckpoint`. */
  constructor(
    dir: string,
    readers: SafetensorsReader[],
    where: Map<string, SafetensorsReader>,
  ) {
    this.dir = dir;
    this.#readers = readers;
    this.#where = where;
    this.metadata = Object.assign({}, ...readers.map((r) => r.metadata));
    this.#aliases = findAliases(this.metadata, where);
  }

  /** Stored tensor names (aliases excluded), in index / header order. */
  names(): string[] {
    return [...this.#where.keys()];
  }

  /** Alias name → stored tensor name (from `__metadata__`). */
  aliases(): Record<string, string> {
    return Object.fromEntries(this.#aliases);
  }

  /** Whether `name` is stored or is an alias of a stored tensor. */
  has(name: string): boolean {
    return this.#where.has(name) || this.#aliases.has(name);
  }

  /** The stored name behind `name` (itself if stored); throws naming the directory if unknown. */
  resolve(name: string): string {
    if (this.#where.has(name)) return name;
    const target = this.#aliases.get(name);
    if (target === undefined) throw new Error(`${this.dir}: no tensor "${name}" in checkpoint`);
    return target;
  }

  /** The file that stores `name` (aliases resolved). */
  fileOf(name: string): string {
    return this.#where.get(this.resolve(name))!.path;
  }

  /** Dtype, shape and byte length of a tensor (aliases resolved). */
  info(name: string): TensorInfo {
    const stored = this.resolve(name);
    return this.#where.get(stored)!.info(stored);
  }

  /** Reads a floating tensor as exact float32 values (aliases resolved). */
  readF32(name: string): Promise<Tensor> {
    const stored = this.resolve(name);
    return this.#where.get(stored)!.readF32(stored);
  }

  /** Reads a tensor in its stored form (aliases resolved); see `SafetensorsReader.readRaw`. */
  readRaw(name: string): Promise<RawTensor> {
    const stored = this.resolve(name);
    return this.#where.get(stored)!.readRaw(stored);
  }

  /** Closes every shard. */
  close(): void {
    for (const r of this.#readers) r.close();
  }
}

/**
 * Opens the checkpoint in `dir`: `model.safetensors.index.json` and its shards if the index
 * exists, else `model.safetensors`; otherwise throws naming the directory.
 */
export async function openCheckpoint(dir: string): Promise<Checkpoint> {
  const indexPath = join(dir, INDEX_FILE);
  if (await exists(indexPath)) {
    const weightMap = await readWeightMap(indexPath);
    const { readers, where } = await openShards(dir, indexPath, weightMap);
    return new Checkpoint(dir, readers, where);
  }
  const single = join(dir, SINGLE_FILE);
  if (!(await exists(single))) {
    throw new Error(`${dir}: no checkpoint found (neither ${INDEX_FILE} nor ${SINGLE_FILE})`);
  }
  const reader = await SafetensorsReader.open(single);
  const where = new Map(reader.names().map((n) => [n, reader]));
  return new Checkpoint(dir, [reader], where);
}

// ---------------------------------------------------------------------------------------------
// writing

/** Options of `CheckpointWriter.create`. */
export interface CheckpointWriterOptions {
  /** Largest shard data size in bytes (default 2 GiB); a bigger tensor gets a shard of its own. */
  maxShardBytes?: number;
  /** `__metadata__` written into every shard (e.g. tied-weight aliases). */
  metadata?: Record<string, string>;
}

/** A finished shard still under its temporary name. */
interface PendingShard {
  tmpPath: string;
  names: string[];
  bytes: number;
}

/** Removes a previous checkpoint's files in `dir` that the new one did not overwrite. */
async function removeStale(dir: string, keep: ReadonlySet<string>): Promise<void> {
  const indexPath = join(dir, INDEX_FILE);
  if (!keep.has(INDEX_FILE) && await exists(indexPath)) {
    const old = await readWeightMap(indexPath).catch(() => new Map<string, string>());
    await removeQuietly(indexPath);
    for (const file of new Set(old.values())) {
      if (!keep.has(file)) await removeQuietly(join(dir, file));
    }
  }
  if (!keep.has(SINGLE_FILE)) await removeQuietly(join(dir, SINGLE_FILE));
}

/** The index JSON for shards renamed to `files`. */
function indexJson(shards: readonly PendingShard[], files: readonly string[]): string {
  const weightMap: Record<string, string> = {};
  shards.forEach((s, i) => s.names.forEach((n) => (weightMap[n] = files[i])));
  const totalSize = shards.reduce((sum, s) => sum + s.bytes, 0);
  return JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2) +
    "\n";
}

/** The state of an unfinished {@linkcode CheckpointWriter}, from which another process resumes it. */
export interface CheckpointSnapshot {
  /** The checkpoint directory. */
  dir: string;
  /** Largest shard. */
  maxShardBytes: number;
  /** `__metadata__` of every shard. */
  metadata: Record<string, string>;
  /** Temporary name prefix of the shards. */
  prefix: string;
  /** Finished shards, under their temporary names. */
  done: { tmpPath: string; names: string[]; bytes: number }[];
  /** The shard being written. */
  current: SafetensorsSnapshot | null;
  /** Its tensors. */
  currentNames: string[];
}

/**
 * Writes a checkpoint tensor by tensor, starting a new shard when the next tensor would push the
 * current one past `maxShardBytes`. One shard → `model.safetensors`; several →
 * `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`. Until `finish()` everything
 * lives under temporary names (`.shard-<random>-<k>.safetensors…`); an existing checkpoint in
 * `dir` is replaced by `finish()`.
 */
export class CheckpointWriter {
  /** The checkpoint directory. */
  readonly dir: string;
  #maxShardBytes: number;
  #metadata: Record<string, string>;
  #prefix: string;
  #current: SafetensorsWriter | null = null;
  #currentNames: string[] = [];
  #done: PendingShard[] = [];
  #names = new Set<string>();
  #state: "open" | "finished" | "aborted" = "open";

  private constructor(dir: string, maxShardBytes: number, metadata: Record<string, string>) {
    this.dir = dir;
    this.#maxShardBytes = maxShardBytes;
    this.#metadata = metadata;
    this.#prefix = `.shard-${crypto.randomUUID().slice(0, 8)}`;
  }

  /** Starts a checkpoint in `dir` (created if missing). */
  static async create(
    dir: string,
    options: CheckpointWriterOptions = {},
  ): Promise<CheckpointWriter> {
    const max = options.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
    if (!(max > 0) || !Number.isFinite(max)) {
      throw new Error(`${dir}: maxShardBytes must be a positive number, got ${max}`);
    }
    await Deno.mkdir(dir, { recursive: true });
    return new CheckpointWriter(dir, max, { ...options.metadata });
  }

  /** What {@linkcode resume} needs to continue this checkpoint in another process. */
  snapshot(): CheckpointSnapshot {
    this.#requireOpen();
    return {
      dir: this.dir,
      maxShardBytes: this.#maxShardBytes,
      metadata: { ...this.#metadata },
      prefix: this.#prefix,
      done: this.#done.map((d) => ({ ...d, names: [...d.names] })),
      current: this.#current?.snapshot() ?? null,
      currentNames: [...this.#currentNames],
    };
  }

  /** Continues a checkpoint from a {@linkcode snapshot} (later writes are discarded). */
  static async resume(s: CheckpointSnapshot): Promise<CheckpointWriter> {
    const w = new CheckpointWriter(s.dir, s.maxShardBytes, { ...s.metadata });
    w.#prefix = s.prefix;
    for (const d of s.done) {
      if (!(await exists(d.tmpPath))) {
        throw new Error(`${d.tmpPath}: a finished shard of the checkpoint is missing`);
      }
    }
    w.#done = s.done.map((d) => ({ ...d, names: [...d.names] }));
    w.#current = s.current ? await SafetensorsWriter.resume(s.current) : null;
    w.#currentNames = [...s.currentNames];
    for (const d of w.#done) for (const n of d.names) w.#names.add(n);
    for (const n of w.#currentNames) w.#names.add(n);
    return w;
  }

  /** Appends one tensor (see `SafetensorsWriter.add`); duplicate names throw. */
  async add(
    name: string,
    dtype: WritableDtype,
    shape: readonly number[],
    data: RawData,
  ): Promise<void> {
    this.#requireOpen();
    if (this.#names.has(name)) {
      throw new Error(`${this.dir}: tensor "${name}": duplicate tensor name in checkpoint`);
    }
    const bytes = data.length * (DTYPE_BYTES[dtype] ?? 0);
    const cur = this.#current;
    if (cur !== null && cur.count > 0 && cur.dataBytes + bytes > this.#maxShardBytes) {
      try {
        await this.#closeShard();
      } catch (e) {
        await this.abort();
        throw e;
      }
    }
    const writer = this.#current ?? await this.#openShard();
    await writer.add(name, dtype, shape, data);
    this.#currentNames.push(name);
    this.#names.add(name);
  }

  /** Finalizes the shards, renames them into place (index last) and returns the file names. */
  async finish(): Promise<string[]> {
    this.#requireOpen();
    this.#state = "finished";
    const renamed: string[] = [];
    try {
      await this.#closeLastShard();
      const files = this.#done.length === 1
        ? [SINGLE_FILE]
        : this.#done.map((_, i) => shardName(i + 1, this.#done.length));
      for (let i = 0; i < files.length; i++) {
        await Deno.rename(this.#done[i].tmpPath, join(this.dir, files[i]));
        renamed.push(join(this.dir, files[i]));
      }
      if (files.length > 1) files.push(await this.#writeIndex(files));
      await removeStale(this.dir, new Set(files));
      return files;
    } catch (e) {
      await this.#discard();
      for (const p of renamed) await removeQuietly(p);
      throw e;
    }
  }

  /** Discards everything; removes all temporary files. Safe to call twice. */
  async abort(): Promise<void> {
    if (this.#state !== "open") return;
    this.#state = "aborted";
    await this.#discard();
  }

  #requireOpen(): void {
    if (this.#state !== "open") {
      throw new Error(`${this.dir}: checkpoint writer already ${this.#state}`);
    }
  }

  async #openShard(): Promise<SafetensorsWriter> {
    const tmpPath = join(this.dir, `${this.#prefix}-${this.#done.length + 1}.safetensors`);
    this.#current = await SafetensorsWriter.create(tmpPath, this.#metadata);
    this.#currentNames = [];
    return this.#current;
  }

  async #closeShard(): Promise<void> {
    const w = this.#current!;
    this.#current = null;
    await w.finish();
    this.#done.push({ tmpPath: w.path, names: this.#currentNames, bytes: w.dataBytes });
  }

  /** Finishes the open shard; an empty one is dropped unless it would be the only shard. */
  async #closeLastShard(): Promise<void> {
    const cur = this.#current;
    if (cur !== null && cur.count === 0 && this.#done.length > 0) {
      this.#current = null;
      await cur.abort();
      return;
    }
    if (cur === null && this.#done.length === 0) await this.#openShard();
    if (this.#current !== null) await this.#closeShard();
  }

  async #writeIndex(files: readonly string[]): Promise<string> {
    const tmp = join(this.dir, `${this.#prefix}.index.json`);
    try {
      await Deno.writeTextFile(tmp, indexJson(this.#done, files));
      await Deno.rename(tmp, join(this.dir, INDEX_FILE));
    } catch (e) {
      await removeQuietly(tmp);
      throw e;
    }
    return INDEX_FILE;
  }

  async #discard(): Promise<void> {
    const cur = this.#current;
    this.#current = null;
    if (cur !== null) await cur.abort();
    for (const s of this.#done) await removeQuietly(s.tmpPath);
  }
}
