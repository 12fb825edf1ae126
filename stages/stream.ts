/**
 * The block stream: a source that yields one {@linkcode BlockJob} per decoder block and a sink
 * that writes each finished block. The source yields block i+1 only once the sink has received
 * block i (whose propagated outputs are block i+1's inputs), so at most one block's activations
 * and the next block's prefetched weights are alive, whatever the model's depth.
 * @module
 */
import { blockTensorShapes } from "../models/config.ts";
import type { ModelSource } from "../models/source.ts";
import type { ModelWriter } from "../formats/writer.ts";
import type { Activations, BlockJob, RunContext, Stage, StageReport } from "./job.ts";

/** Hands a finished block's outputs from the sink back to the source. */
export class ChainLink {
  #pending = new Map<number, PromiseWithResolvers<{ fp?: Activations; q: Activations }>>();
  #delivered = new Set<number>();

  #slot(i: number) {
    let s = this.#pending.get(i);
    if (!s) {
      s = Promise.withResolvers();
      this.#pending.set(i, s);
    }
    return s;
  }

  /** Block `i`'s inputs, once block i−1 has reached the sink. */
  take(i: number): Promise<{ fp?: Activations; q: Activations }> {
    const p = this.#slot(i).promise;
    p.then(() => this.#pending.delete(i), () => this.#pending.delete(i));
    return p;
  }

  /** Delivers block `i`'s inputs (only the first delivery for a block counts). */
  put(i: number, inputs: { fp?: Activations; q: Activations }): void {
    if (this.#delivered.has(i)) return;
    this.#delivered.add(i);
    this.#slot(i).resolve(inputs);
  }

  /** Fails every waiting source (the pipeline broke). */
  fail(e: unknown): void {
    for (const s of this.#pending.values()) s.reject(e);
  }
}

/** Where the stream starts. */
export interface SourceOptions {
  /** The model whose blocks are read. */
  model: ModelSource;
  /** The run's shared settings, put on every job. */
  ctx: RunContext;
  /** Block-0 inputs of the student chain (the embedded calibration windows). */
  input: Activations;
  /** Keep a full-precision teacher chain (block-0 teacher input = `input`). */
  teacher: boolean;
  /** Where the sink hands each block's outputs back as the next block's inputs. */
  link: ChainLink;
  /** The first block (a resumed run starts after its checkpoint; `input` is its input). */
  start?: number;
}

/**
 * The stream of block jobs. Block i+1 is asked for as soon as the first stage has finished
 * block i; its weights are read from then on, while block i goes through the later stages, so
 * the read is hidden without holding two blocks' weights through the first stage (for the
 * layer-wise methods, the one with the largest working set).
 */
export function blockSource(o: SourceOptions): ReadableStream<BlockJob> {
  const layers = o.model.config.layers;
  const start = o.start ?? 0;
  let i = start;
  return new ReadableStream<BlockJob>({
    async pull(controller) {
      if (i >= layers) {
        controller.close();
        return;
      }
      const reading = o.model.block(i);
      reading.catch(() => {}); // awaited below; a failed read must not go unhandled meanwhile
      const inputs = i === start
        ? { fp: o.teacher ? o.input : undefined, q: o.input }
        : await o.link.take(i);
      const weights = await reading;
      const index = i;
      controller.enqueue({
        index,
        ctx: o.ctx,
        weights,
        fpWeights: o.teacher ? { ...weights } : {},
        fpIn: inputs.fp,
        qIn: inputs.q,
        learned: {},
        storage: {},
        report: [],
        handOff: (inputs) => o.link.put(index + 1, inputs),
      });
      i++;
    },
  }, { highWaterMark: 0 });
}

/** What the sink hands back when the stream ends. */
export interface SinkResult {
  /** Every stage report of every block, in order. */
  reports: StageReport[];
  /** Block tensors beyond the standard LLaMA ones (reassembly maps, …), name → shape. */
  extraTensors: Record<string, number[]>;
  /** Weights and stored bits per linear weight (`model.layers.{i}.…`), for the bits-per-weight figure. */
  storage: Record<string, { weights: number; bits: number }>;
}

/**
 * The end of the stream: writes each block's weights and learned state, collects its reports,
 * calls `written` (a checkpoint) and passes its outputs on as the next block's inputs.
 */
export function blockSink(
  writer: ModelWriter,
  link: ChainLink,
  result: SinkResult,
  written?: (job: BlockJob) => Promise<void>,
): WritableStream<BlockJob> {
  return new WritableStream<BlockJob>({
    async write(job) {
      if (!job.qOut) {
        throw new Error(`block ${job.index}: no stage propagated its outputs (add propagate())`);
      }
      if (job.fpIn && !job.fpOut) {
        throw new Error(`block ${job.index}: the teacher chain has no outputs (add capture())`);
      }
      const standard = blockTensorShapes({ ...job.ctx.config, extraTensors: undefined });
      for (const [k, t] of Object.entries(job.weights)) {
        if (!(k in standard)) result.extraTensors[k] = t.shape;
      }
      await writer.addBlock(job.index, job.weights);
      for (const [k, t] of Object.entries(job.learned)) {
        await writer.addLearned(`model.layers.${job.index}.${k}`, t);
      }
      result.reports.push(...job.report);
      for (const [k, v] of Object.entries(job.storage)) {
        result.storage[`model.layers.${job.index}.${k}`] = v;
      }
      await written?.(job);
      link.put(job.index + 1, { fp: job.fpOut, q: job.qOut });
    },
    abort(reason) {
      link.fail(reason);
    },
  });
}

/** Pipes the source through `stages` into the sink. */
export async function runStream(
  source: ReadableStream<BlockJob>,
  stages: Stage[],
  sink: WritableStream<BlockJob>,
): Promise<void> {
  let s = source;
  for (const st of stages) s = s.pipeThrough(st);
  await s.pipeTo(sink);
}
