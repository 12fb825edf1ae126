/**
 * What a run checks before its first block, so that nothing fails after hours of work that could
 * have failed at once: the data is long enough for the windows asked, the memory the run will
 * allocate fits the machine, and the disk holds the output, the activation file and the
 * checkpoints. Every error names the flag and the amount.
 * @module
 */
import { statfsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { UsageError } from "../cli/flags.ts";
import { blockTensorShapes, type ModelConfig } from "../models/config.ts";

const GiB = 2 ** 30;

/** Bytes as GiB or MiB, for messages. */
export function formatBytes(n: number): string {
  return n >= GiB ? `${(n / GiB).toFixed(1)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`;
}

/** Calibration needs windows of `seqlen` tokens drawn from a stream at least one token longer. */
export function checkCalibrationLength(ids: ArrayLike<number>, file: string, seqlen: number) {
  if (ids.length < seqlen + 1) {
    throw new UsageError(
      `--calib ${file}: ${ids.length} tokens, too few for calibration windows of ${seqlen} ` +
        `(need at least ${seqlen + 1}; use a longer text or a smaller --seqlen)`,
    );
  }
}

/** Evaluation needs at least one window of `seqlen` tokens. */
export function checkEvalLength(ids: ArrayLike<number>, file: string, seqlen: number) {
  if (ids.length < seqlen) {
    throw new UsageError(
      `--eval ${file}: ${ids.length} tokens, not one window of ${seqlen} ` +
        "(use a longer text or a smaller --seqlen)",
    );
  }
}

/** Refuses token ids the model has no embedding for (a tokenizer of another model). */
export function checkTokenIds(ids: Int32Array, flag: string, file: string, vocab: number): void {
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      throw new Error(
        `${flag} ${file}: token id ${ids[i]} (at ${i}) is outside the model's vocabulary of ` +
          `${vocab}: the tokenizer does not belong to this model`,
      );
    }
  }
}

/** One allocation or file a run will make. */
export interface Need {
  /** What it is, with the flag that sizes it (`calibration windows (--nsamples 128 …)`). */
  what: string;
  /** Its size in bytes. */
  bytes: number;
}

function list(needs: Need[]): string {
  return needs.filter((n) => n.bytes > 0).map((n) => `${n.what}: ${formatBytes(n.bytes)}`)
    .join("; ");
}

/**
 * Bytes of memory this process can still take: MemAvailable and free swap, or less where a
 * cgroup (v2) limit leaves less.
 */
export function availableMemory(): number {
  const m = Deno.systemMemoryInfo();
  let bytes = m.available + m.swapFree;
  try {
    const max = Deno.readTextFileSync("/sys/fs/cgroup/memory.max").trim();
    const current = Number(Deno.readTextFileSync("/sys/fs/cgroup/memory.current").trim());
    if (max !== "max") bytes = Math.min(bytes, Number(max) - current);
  } catch { /* no cgroup v2 limit here */ }
  return bytes;
}

/**
 * Refuses a run whose memory requests add up to more than `available` (default: what the
 * machine has now), before anything is allocated.
 */
export function checkMemory(needs: Need[], available = availableMemory()): void {
  const total = needs.reduce((s, n) => s + n.bytes, 0);
  if (total > available) {
    throw new UsageError(
      `the run would need ${formatBytes(total)} of memory (${list(needs)}), more than the ` +
        `${formatBytes(available)} available`,
    );
  }
}

/** Free bytes on the file system holding `path` (or its nearest existing ancestor). */
export function freeDisk(path: string): number {
  let p = resolve(path);
  for (;;) {
    try {
      const s = statfsSync(p);
      return Number(s.bavail) * Number(s.bsize);
    } catch {
      const up = dirname(p);
      if (up === p) return Infinity;
      p = up;
    }
  }
}

/** Refuses a run whose files will not fit on the disk that holds `path`. */
export function checkDisk(path: string, needs: Need[], free = freeDisk(path)): void {
  const total = needs.reduce((s, n) => s + n.bytes, 0);
  if (total > free) {
    throw new UsageError(
      `--out ${path}: the run would write ${formatBytes(total)} (${list(needs)}), more than ` +
        `the ${formatBytes(free)} free there`,
    );
  }
}

/** Parameters of a model of config `c` (embedding, blocks, final norm, head). */
export function parameterCount(c: ModelConfig): number {
  return c.vocab * c.hidden * (c.tiedEmbeddings ? 1 : 2) + c.layers * blockParameters(c) + c.hidden;
}

/** Parameters of one decoder block of config `c`. */
export function blockParameters(c: ModelConfig): number {
  let n = 0;
  for (const shape of Object.values(blockTensorShapes(c))) n += shape.reduce((a, b) => a * b);
  return n;
}
