/**
 * Resuming a layer-wise run (RTN, GPTQ, CLAQ) block by block after a kill. After each block
 * reaches the sink, the checkpoint directory receives the activation chain (the next block's
 * inputs, `chain-{i}.f32`) and then `progress.json`: the last block written, the state of the
 * model writer (its temporary files so far, which stay in the run's partial directory) and what
 * the sink gathered. A resumed run adopts the partial directory, cuts the writer's files back to
 * that state, reads the chain and continues from the next block; its output is byte for byte
 * the output of an uninterrupted run. Each file is written under a temporary name and renamed,
 * progress last, so a kill at any moment leaves a consistent checkpoint.
 * @module
 */
import type { ModelWriterSnapshot } from "../formats/writer.ts";
import { ActivationFile } from "../models/activation_file.ts";
import type { Activations } from "./job.ts";
import type { SinkResult } from "./stream.ts";

/** The progress file inside a checkpoint directory. */
export const PROGRESS_FILE = "progress.json";

/** Where a layer-wise run stands. */
export interface CheckpointProgress {
  /** The fingerprint's sha256, so that progress never outlives its run's settings. */
  fingerprint: string;
  /** `stream`: blocks 0…`block` are written; `complete`: the model is complete in `partial`. */
  stage: "stream" | "complete";
  /** The last block written. */
  block: number;
  /** The run's partial output directory. */
  partial: string;
  /** The model writer's state after that block (stage `stream`). */
  writer?: ModelWriterSnapshot;
  /** The sink's reports, storage and extra tensors so far. */
  sink: SinkResult;
  /** The chain file (the next block's inputs) and its shape (stage `stream`). */
  chain?: { file: string; shape: [number, number, number] };
  /** Full-precision perplexities already measured, by evaluation key. */
  fp: Record<string, number>;
}

async function writeAtomic(path: string, write: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = `${path}.tmp`;
  try {
    await write(tmp);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`${path}: cannot write the checkpoint (${(e as Error).message})`);
  }
}

/** The checkpoints of one layer-wise run in `dir`. */
export class LayerwiseCheckpoints {
  /** The checkpoint directory. */
  readonly dir: string;
  readonly #fingerprint: string;

  /** Checkpoints in `dir` for the run whose fingerprint hashes to `fingerprint`. */
  constructor(dir: string, fingerprint: string) {
    this.dir = dir;
    this.#fingerprint = fingerprint;
  }

  /**
   * Records that block `block` is written: its outputs `chain` first, then the progress that
   * points at them; the previous chain file is removed last.
   */
  async save(
    block: number,
    writer: ModelWriterSnapshot,
    sink: SinkResult,
    chain: Activations,
    fp: Record<string, number>,
  ): Promise<void> {
    const file = `chain-${block}.f32`;
    const path = `${this.dir}/${file}`;
    await writeAtomic(path, async (tmp) => {
      if (chain instanceof ActivationFile) await Deno.copyFile(chain.path, tmp);
      else {
        const d = chain.data;
        await Deno.writeFile(tmp, new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
      }
    });
    await this.#write({
      fingerprint: this.#fingerprint,
      stage: "stream",
      block,
      partial: writer.tmpDir,
      writer,
      sink,
      chain: { file, shape: chain.shape as [number, number, number] },
      fp,
    });
    if (block > 0) await Deno.remove(`${this.dir}/chain-${block - 1}.f32`).catch(() => {});
  }

  /** Records that the model is complete in `partial` (the stream needs no resuming). */
  async complete(partial: string, block: number, sink: SinkResult, fp: Record<string, number>) {
    await this.#write({
      fingerprint: this.#fingerprint,
      stage: "complete",
      block,
      partial,
      sink,
      fp,
    });
    for await (const e of Deno.readDir(this.dir)) {
      if (/^chain-\d+\.f32$/.test(e.name)) await Deno.remove(`${this.dir}/${e.name}`);
    }
  }

  async #write(p: CheckpointProgress): Promise<void> {
    await writeAtomic(
      `${this.dir}/${PROGRESS_FILE}`,
      (tmp) => Deno.writeTextFile(tmp, JSON.stringify(p) + "\n"),
    );
  }

  /**
   * The progress of a killed run of these settings in `dir`, or null (none, another run's, or
   * its partial directory is gone, e.g. an interrupted run removed it); `log` says why not.
   */
  static async load(
    dir: string,
    fingerprint: string,
    log: (msg: string) => void,
  ): Promise<CheckpointProgress | null> {
    let p: CheckpointProgress;
    try {
      p = JSON.parse(await Deno.readTextFile(`${dir}/${PROGRESS_FILE}`));
    } catch {
      return null;
    }
    if (p.fingerprint !== fingerprint) {
      log(`${dir}/${PROGRESS_FILE} belongs to other settings: starting from the first block`);
      return null;
    }
    const partial = await Deno.stat(p.partial).catch(() => null);
    const chain = p.chain ? await Deno.stat(`${dir}/${p.chain.file}`).catch(() => null) : true;
    if (!partial?.isDirectory || !chain) {
      log(
        `${dir}: the partial output ${p.partial} of the last checkpoint is gone: ` +
          "starting from the first block",
      );
      return null;
    }
    return p;
  }

  /** The chain a progress points at, into memory or into a new activation file at `path`. */
  static readChain(
    dir: string,
    p: CheckpointProgress,
    toFile?: string,
  ): Promise<Activations> | Activations {
    const src = `${dir}/${p.chain!.file}`;
    if (toFile !== undefined) {
      Deno.copyFileSync(src, toFile);
      return ActivationFile.open(toFile, p.chain!.shape);
    }
    const bytes = Deno.readFileSync(src);
    const data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    return { data, shape: [...p.chain!.shape] };
  }
}
