/**
 * Running a quantization pipeline end to end: calibration windows, evaluation before, the block
 * stream (source → the method's stages → sink), the output model, evaluation after, and the
 * JSON report every pipeline of the toolkit shares. Methods (`methods/`) only choose their
 * stages.
 * @module
 */
import { resolve } from "node:path";
import {
  describeRotations,
  type ModelRotations,
  modelRotations,
  rotateEmbedding,
  rotateHead,
  type RotateOptions,
} from "../algorithms/rotation.ts";
import { UsageError } from "../cli/flags.ts";
import { Progress } from "../cli/progress.ts";
import { Interrupts } from "../cli/signals.ts";
import { blockGraphLoglikelihood } from "../eval/loglikelihood.ts";
import { defaultSeqlen, perplexity, type PerplexityOptions } from "../eval/perplexity.ts";
import { evaluateTasks, type TaskResult } from "../eval/zero_shot.ts";
import { openModel, openTokenizer } from "../formats/open.ts";
import { claimTemp, writeMarker } from "../formats/output_dir.ts";
import type { PackedFormat } from "../formats/packed.ts";
import { ModelWriter } from "../formats/writer.ts";
import { releaseMemory } from "../kernels/garbage.ts";
import { RssMeter } from "../kernels/rss.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { type Device, Runtime } from "../kernels/session.ts";
import type { MethodRun } from "../methods/method.ts";
import { ActivationFile } from "../models/activation_file.ts";
import { checkSeqlen, type ModelConfig } from "../models/config.ts";
import { embed, embedToFile } from "../models/forward.ts";
import type { ModelSource } from "../models/source.ts";
import { type CheckpointProgress, LayerwiseCheckpoints } from "../stages/checkpoint.ts";
import type { Activations, RunContext } from "../stages/job.ts";
import { blockSink, blockSource, ChainLink, runStream, type SinkResult } from "../stages/stream.ts";
import { type CalibrationWindows, calibrationWindows } from "../text/calibration.ts";
import { readDataset } from "../text/dataset.ts";
import type { TextTokenizer } from "../text/tokenizer.ts";
import {
  checkResume,
  fingerprint,
  fingerprintHash,
  prepareCheckpointDir,
  removeCheckpointDir,
  saveFingerprint,
} from "./fingerprint.ts";
import { checkOutput, commitOutput, type OutputTarget, type RunInput } from "./output.ts";
import {
  blockParameters,
  checkCalibrationLength,
  checkDisk,
  checkEvalLength,
  checkMemory,
  checkTokenIds,
  parameterCount,
} from "./preflight.ts";
import { checkPackShapes, evaluatePacked, packModel, type PackResult } from "./pack.ts";
import { type QuantizeReport, taskReport, writeAtomically } from "./report.ts";
import { reportHtml } from "./report_html.ts";

/** Everything a pipeline run needs: what the method decided, and where and on what it runs. */
export interface QuantizeRun extends MethodRun {
  /** Source model: a Hugging Face directory or a llama2.c checkpoint. */
  model: string;
  /** Output directory (fake-quantized model, learned state, report). */
  out: string;
  /**
   * Rotate the model (QuaRot): the run builds the rotations, rotates the embedding and the head,
   * and the `rotate()` stage, first in the stream, rotates each block.
   */
  rotation?: RotateOptions;
  /**
   * Where the calibration activations live: `true`, in a file inside the output's temporary
   * directory, read a batch at a time (layer-wise methods only, whose stages read them in block
   * passes); `false`, in memory; `"auto"` (default), in a file when they exceed
   * {@linkcode OFFLOAD_AUTO_BYTES} and the run keeps no teacher chain.
   */
  offloadActivations?: boolean | "auto";
  /** Calibration data: text file, windows, window length (default min(256, max positions)), seed. */
  calib: { file: string; nsamples: number; seqlen?: number; seed: number };
  /**
   * Evaluation texts and windows per text (default all); zero-shot task files and questions per
   * task (default all).
   */
  eval: { files: string[]; windows?: number; tasks?: string[]; taskLimit?: number };
  /** Execution device (cpu). */
  device?: Device;
  /** No progress lines on stderr. */
  quiet?: boolean;
  /** Reuses tokenized texts and full-precision perplexities across runs in one process. */
  cache?: RunCache;
  /**
   * Also write the output packed in this format (`run/pack.ts`) and evaluate the packed model
   * itself; the method's scales must already be rounded for it (`withPacking`).
   */
  pack?: PackedFormat;
  /** Replace a file or a directory that is not ours at `out` (`--overwrite`). */
  overwrite?: boolean;
  /**
   * A previous run's checkpoint directory (`--resume`, by default `<out>.ckpt`): its fingerprint
   * must match this run; layer-wise runs continue after its last block, learned ones fold the
   * blocks it holds without training them.
   */
  resume?: string;
  /** Settings beyond the method's that change results (e.g. the activation scheme). */
  fingerprintExtras?: Record<string, unknown>;
  /** Where the run registers its temporary paths, removed if the process is interrupted. */
  interrupts?: Interrupts;
}

/**
 * Memo of the work that repeats between runs on the same model and data (tokenizing texts,
 * evaluating the original model), for sweeps and tests that run many configurations.
 */
export class RunCache {
  /** Token ids by model and text file. */
  readonly ids: Map<string, Int32Array> = new Map();
  /** Full-precision perplexity by model, text file, window length and window count. */
  readonly fpPpl: Map<string, number> = new Map();
  /** Full-precision zero-shot results by model, task files and question limit. */
  readonly fpTasks: Map<string, Record<string, TaskResult>> = new Map();

  /** Memoizes `f` under `key` in `map`. */
  async memo<T>(map: Map<string, T>, key: string, f: () => Promise<T>): Promise<T> {
    if (map.has(key)) return map.get(key)!;
    const v = await f();
    map.set(key, v);
    return v;
  }
}

/**
 * The final norm and head the output stores: the source's, or the rotated head (W∘γ)·Q with a
 * norm of ones; no head for a tied output (reading it would cost a vocabulary × hidden table).
 * A function of its own: a suspended async function keeps its dead locals, and the run's would
 * keep the head (1 GB at 128K × 2048) resident through the evaluation.
 */
async function outputTail(
  model: ModelSource,
  out: ModelConfig,
  rotations: ModelRotations | undefined,
): Promise<{ finalNorm: Tensor; head: Tensor | null }> {
  const finalNorm = await model.finalNorm();
  if (rotations) {
    return {
      finalNorm: { data: new Float32Array(out.hidden).fill(1), shape: [out.hidden] },
      head: rotateHead(await model.head(), finalNorm, rotations.residual),
    };
  }
  return { finalNorm, head: out.tiedEmbeddings ? null : await model.head() };
}

/** Runs a quantization pipeline and returns its report. */
export async function runQuantization(r: QuantizeRun): Promise<QuantizeReport> {
  const t0 = performance.now();
  const progress = new Progress(r.quiet);
  const log = (m: string) => progress.log(m);
  const interrupts = r.interrupts ?? new Interrupts(log);
  const rt = new Runtime(r.device ?? "cpu");
  const rss = new RssMeter();
  const timing: Record<string, number> = {};
  const peaks: Record<string, number> = {};
  const time = async <T>(key: string, f: () => Promise<T>): Promise<T> => {
    const t = performance.now();
    const stretch = rss.start();
    try {
      return await f();
    } finally {
      timing[key] = (timing[key] ?? 0) + (performance.now() - t) / 1000;
      const peak = stretch.stop();
      if (peak !== undefined) peaks[key] = Math.max(peaks[key] ?? 0, peak);
    }
  };
  // Evaluations run on a runtime of their own, released with its arenas afterwards, so that
  // nothing of them stays resident through the stream; they start from a collected heap, so that
  // what the stream left for the collector (a 128K-vocabulary head is 1 GB) is not held beside
  // the evaluation's own tables.
  const onEvalRuntime = async <T>(f: (evalRt: Runtime) => Promise<T>): Promise<T> => {
    releaseMemory();
    const evalRt = new Runtime(r.device ?? "cpu");
    try {
      return await f(evalRt);
    } finally {
      await evalRt.release();
      releaseMemory();
    }
  };
  const evaluate = (m: ModelSource, ids: Int32Array, o: PerplexityOptions) =>
    onEvalRuntime((evalRt) => perplexity(evalRt, m, ids, o));
  const { out, ckptDir } = outputPaths(r);
  // Layer-wise runs checkpoint the stream itself; their checkpoints mean nothing without the
  // run's partial output, so they go with it on every exit path but a kill.
  const layerwise = !r.teacher;
  let model: ModelSource | null = null;
  let writer: ModelWriter | null = null;
  let partial: string | null = null;
  let ownsCheckpoints = false;
  let committed = false;
  try {
    model = await openModel(r.model);
    const c = model.config;
    const cache = r.cache ?? new RunCache();
    const { seqlen, calib, evalIds, offload, chainBytes, fpHash, resumed, target, tok } =
      await preflight(r, model, cache, log);
    const rotations = r.rotation ? modelRotations(c, r.rotation) : undefined;
    // A rotated model's head is (W∘γ)·Q and its embedding E·Q: no longer one matrix.
    const outConfig = rotations ? { ...c, tiedEmbeddings: false } : c;
    ownsCheckpoints = true;
    if (layerwise) interrupts.track(ckptDir);

    const fpCache: Record<string, number> = { ...resumed?.fp };
    let complete = resumed?.stage === "complete";
    if (resumed?.stage === "stream") {
      writer = await ModelWriter.resume(resumed.writer!, outConfig).catch(async (e) => {
        log(`${resumed.partial}: cannot resume (${(e as Error).message}); starting over`);
        await Deno.remove(resumed.partial, { recursive: true }).catch(() => {});
        return null;
      });
    }
    // Blocks already written (0 when the run starts over).
    const start = complete ? c.layers : writer && resumed ? resumed.block + 1 : 0;
    const sink: SinkResult = start > 0
      ? resumed!.sink
      : { reports: [], storage: {}, extraTensors: {} };
    if (complete) {
      partial = resumed!.partial;
      await claimTemp(partial);
    } else {
      writer ??= await ModelWriter.create(out, outConfig, { dtype: model.dtype ?? "F32" });
      partial = writer.tmpDir;
    }
    interrupts.track(partial);
    if (target !== "nothing") log(`--out ${out}: will replace ${target} at the end of the run`);
    const ctx: RunContext = {
      rt,
      config: c,
      seqlen,
      abits: r.abits,
      kvBits: r.kvBits,
      log,
      rotations,
      rss,
    };

    const evalKey = (f: string) => `${f}\0${seqlen}\0${r.eval.windows}`;
    const fpPpl: Record<string, number> = {};
    await time("eval_fp", async () => {
      for (const [f, ids] of evalIds) {
        fpPpl[f] = fpCache[evalKey(f)] ??= await cache.memo(
          cache.fpPpl,
          `${r.model}\0${f}\0${seqlen}\0${r.eval.windows}`,
          async () => {
            log(`evaluating the original model on ${f}`);
            return (await evaluate(model!, ids, {
              seqlen,
              maxWindows: r.eval.windows,
              scratch: partial!,
            })).ppl;
          },
        );
      }
    });
    const taskFiles = r.eval.tasks ?? [];
    const tasks = (m: ModelSource) =>
      onEvalRuntime((evalRt) =>
        evaluateTasks(blockGraphLoglikelihood(evalRt, m), tok, taskFiles, {
          limit: r.eval.taskLimit,
          log,
        })
      );
    const fpTasks = taskFiles.length
      ? await time("tasks_fp", () =>
        cache.memo(
          cache.fpTasks,
          [r.model, ...taskFiles, r.eval.taskLimit].join("\0"),
          () => tasks(model!),
        ))
      : {};

    log(`calibration: ${r.calib.nsamples} windows of ${seqlen} tokens from ${r.calib.file}`);
    const chainPath = `${partial}/activations.tmp`;
    if (start > 0) log(`resuming after block ${start}/${c.layers} from ${r.resume}`);
    if (!complete) {
      const w = writer!;
      if (offload) {
        log(`calibration activations (${(chainBytes / 2 ** 20).toFixed(0)} MiB) in ${chainPath}`);
      }
      // The embedding table is written and used here, and not held through the stream.
      const input: Activations = start > 0
        ? await LayerwiseCheckpoints.readChain(r.resume!, resumed!, offload ? chainPath : undefined)
        : await embedCalibration(
          w,
          model,
          rotations,
          calib.data,
          seqlen,
          offload ? chainPath : undefined,
        );
      const checkpoints = layerwise ? new LayerwiseCheckpoints(ckptDir, fpHash) : null;
      const link = new ChainLink();
      try {
        await time("quantize", () =>
          runStream(
            blockSource({ model: model!, ctx, input, teacher: !!r.teacher, link, start }),
            r.stages(ctx),
            blockSink(
              w,
              link,
              sink,
              checkpoints
                ? (job) => checkpoints.save(job.index, w.snapshot(), sink, job.qOut!, fpCache)
                : undefined,
            ),
          ));
      } finally {
        if (input instanceof ActivationFile) input.close();
      }
      const { finalNorm, head } = await outputTail(model, outConfig, rotations);
      await w.complete(finalNorm, head, r.model, {
        quantization_config: {
          quant_method: `qllm-deno/${r.method}`,
          bits: Math.floor(r.wbits),
          group_size: r.groupSize || -1,
          activation_bits: r.abits < 16 ? r.abits : null,
          activation_scheme: r.abits >= 16
            ? null
            : Object.keys(sink.extraTensors).some((k) => /^act_quant\.\w+\.scale$/.test(k))
            ? "per-tensor static asymmetric (fake)"
            : "per-token dynamic asymmetric (fake)",
          kv_bits: r.kvBits !== undefined && r.kvBits < 16 ? r.kvBits : null,
          extra_block_tensors: Object.keys(sink.extraTensors).length ? sink.extraTensors : null,
          fake_quantized: true,
          rotation: rotations ? describeRotations(rotations, r.rotation!) : null,
          ...r.quantConfig,
        },
      });
      writer = null;
      complete = true;
      await checkpoints?.complete(partial, c.layers - 1, sink, fpCache);
    }

    // The new model is evaluated and reported inside the partial directory, so that a kill at
    // any moment leaves the old output or the complete new one with its report.
    const quant: Record<string, number> = {};
    let quantTasks: Record<string, TaskResult> = {};
    const outModel = await openModel(partial);
    try {
      await time("eval_quant", async () => {
        for (const [f, ids] of evalIds) {
          log(`evaluating the quantized model on ${f}`);
          quant[f] = (await evaluate(outModel, ids, {
            seqlen,
            maxWindows: r.eval.windows,
            scratch: partial!,
          })).ppl;
        }
      });
      if (taskFiles.length) quantTasks = await time("tasks_quant", () => tasks(outModel));
    } finally {
      outModel.close();
    }
    let packed: PackResult | undefined;
    if (r.pack) {
      log(`packing the output as ${r.pack}`);
      const p = await time("pack", () => packModel(partial!, { format: r.pack! }));
      p.eval = await time(
        "eval_packed",
        () =>
          onEvalRuntime((evalRt) =>
            evaluatePacked(evalRt, p.path, r.eval.files, { seqlen, windows: r.eval.windows, log })
          ),
      );
      // Packed inside the partial directory, which becomes the output.
      packed = { ...p, path: out + p.path.slice(partial.length) };
    }
    const evalReport: QuantizeReport["eval"] = {};
    for (const f of r.eval.files) {
      evalReport[f.replace(/^.*\//, "")] = { fp: fpPpl[f], quant: quant[f] };
    }
    let bits = 0, weights = 0;
    for (const s of Object.values(sink.storage)) {
      bits += s.bits;
      weights += s.weights;
    }
    const bitsByLayer: Record<string, number> = {};
    for (const [k, s] of Object.entries(sink.storage)) bitsByLayer[k] = s.bits / s.weights;
    for (const rep of sink.reports) {
      const stage = `stage_${rep.stage}`;
      timing[stage] = (timing[stage] ?? 0) + rep.seconds;
      if (typeof rep.peak_rss_bytes === "number") {
        peaks[stage] = Math.max(peaks[stage] ?? 0, rep.peak_rss_bytes);
      }
      for (const k of ["hessian_seconds", "quantize_seconds"]) {
        if (typeof rep[k] === "number") timing[k] = (timing[k] ?? 0) + (rep[k] as number);
      }
    }
    const report: QuantizeReport = {
      method: r.method,
      wbits: r.wbits,
      abits: r.abits,
      group_size: r.groupSize,
      bits_per_weight: weights ? bits / weights : 32,
      seconds: (performance.now() - t0) / 1000,
      peak_rss_bytes: rss.peak(),
      eval: evalReport,
      ...(taskFiles.length ? { tasks: taskReport(fpTasks, quantTasks) } : {}),
      model: r.model,
      out: r.out,
      settings: r.settings ?? {},
      activations: offload ? "file" : "memory",
      calibration: { ...r.calib, seqlen, starts: calib.starts },
      timing,
      peak_rss_by_phase: peaks,
      bits_by_layer: bitsByLayer,
      blocks: sink.reports,
      ...(packed ? { packed } : {}),
      ...(start > 0 ? { resumed_after_block: start - 1 } : {}),
    };
    await writeAtomically(`${partial}/report.json`, JSON.stringify(report, null, 2) + "\n");
    await writeAtomically(`${partial}/report.html`, reportHtml(report));
    await writeMarker(partial, { kind: "run", method: r.method });
    await commitOutput(partial, out, { overwrite: r.overwrite });
    committed = true;
    interrupts.release(partial);
    if (layerwise) {
      await removeCheckpointDir(ckptDir).catch(() => {});
      interrupts.release(ckptDir);
    }
    for (const [name, e] of Object.entries(evalReport)) {
      log(`${name}: perplexity ${e.fp.toFixed(3)} → ${e.quant.toFixed(3)}`);
    }
    for (const [name, t] of Object.entries(report.tasks ?? {})) {
      log(`${name}: acc ${t.fp.acc.toFixed(4)} → ${t.quant.acc.toFixed(4)}`);
    }
    return report;
  } finally {
    if (!committed) {
      await writer?.abort();
      if (partial) {
        await Deno.remove(partial, { recursive: true }).catch(() => {});
        interrupts.release(partial);
      }
      if (layerwise && ownsCheckpoints) {
        await removeCheckpointDir(ckptDir).catch(() => {});
        interrupts.release(ckptDir);
      }
    }
    model?.close();
    await rt.release();
  }
}

/** The output path (trailing slashes removed) and the run's checkpoint directory beside it. */
function outputPaths(r: QuantizeRun): { out: string; ckptDir: string } {
  const out = r.out.replace(/\/+$/, "") || r.out;
  return { out, ckptDir: `${out}.ckpt` };
}

/** What the pre-flight settled before any block is read. */
interface Prepared {
  /** Calibration window length. */
  seqlen: number;
  /** The calibration windows. */
  calib: CalibrationWindows;
  /** Token ids of each evaluation file. */
  evalIds: Map<string, Int32Array>;
  /** Whether the calibration activations live in a file. */
  offload: boolean;
  /** Bytes of one calibration activation chain. */
  chainBytes: number;
  /** The hash of the run's fingerprint. */
  fpHash: string;
  /** The progress of a killed layer-wise run this one continues, if any. */
  resumed: CheckpointProgress | null;
  /** What is at the output path. */
  target: OutputTarget;
  /** The model's tokenizer. */
  tok: TextTokenizer;
}

/**
 * Everything that can be checked before the first block, in order: the window length and the
 * method's flags against the model, the data (length, token ids), the memory, the fingerprint
 * against `--resume`, the output path, the disk; then the checkpoint directory is made ready and
 * the fingerprint saved in it.
 */
async function preflight(
  r: QuantizeRun,
  model: ModelSource,
  cache: RunCache,
  log: (m: string) => void,
): Promise<Prepared> {
  const { out, ckptDir } = outputPaths(r);
  const layerwise = !r.teacher;
  const c = model.config;
  const seqlen = r.calib.seqlen ?? defaultSeqlen(model);
  try {
    checkSeqlen(c, seqlen);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  r.check?.(c, { nsamples: r.calib.nsamples, seqlen });
  if (r.pack) checkPackShapes(r.pack, c, 2 ** Math.ceil(r.wbits) - 1);

  const tok = await openTokenizer(r.model);
  const tokenized = (f: string, flag: string) =>
    cache.memo(cache.ids, `${r.model}\0${f}`, () =>
      readDataset(f, tok).catch((e) => {
        throw new Error(`${flag} ${(e as Error).message}`);
      }));
  const calibIds = await tokenized(r.calib.file, "--calib");
  checkCalibrationLength(calibIds, r.calib.file, seqlen);
  checkTokenIds(calibIds, "--calib", r.calib.file, c.vocab);
  const chainBytes = r.calib.nsamples * seqlen * c.hidden * 4;
  const offload = offloadDecision(r.offloadActivations ?? "auto", !!r.teacher, chainBytes);
  if (offload && r.teacher) {
    throw new UsageError(
      `--offload-activations: ${r.method} trains on the activations and needs them in memory`,
    );
  }
  const windowsOf = `--nsamples ${r.calib.nsamples} × --seqlen ${seqlen}`;
  checkMemory([
    { what: `calibration windows (${windowsOf} token ids)`, bytes: chainBytes / c.hidden },
    {
      what: `calibration activations in memory (${windowsOf} × hidden ${c.hidden}` +
        `${r.teacher ? ", teacher and student chains" : ""})`,
      bytes: offload ? 0 : chainBytes * (r.teacher ? 3 : 1),
    },
    { what: "the embedding table", bytes: c.vocab * c.hidden * 4 },
    { what: "two blocks' weights", bytes: 2 * blockParameters(c) * 4 },
  ]);
  const calib = calibrationWindows(calibIds, r.calib.nsamples, seqlen, r.calib.seed);
  const evalIds = new Map<string, Int32Array>();
  for (const f of r.eval.files) {
    const ids = await tokenized(f, "--eval");
    checkEvalLength(ids, f, seqlen);
    checkTokenIds(ids, "--eval", f, c.vocab);
    evalIds.set(f, ids);
  }
  const fp = await fingerprint({
    model: r.model,
    method: {
      method: r.method,
      wbits: r.wbits,
      abits: r.abits,
      kv_bits: r.kvBits ?? null,
      group_size: r.groupSize,
      settings: r.settings ?? {},
      quant_config: r.quantConfig ?? {},
      rotation: r.rotation ?? null,
      pack: r.pack ?? null,
      ...r.fingerprintExtras,
    },
    calibration: { ids: calib.data, nsamples: r.calib.nsamples, seqlen, seed: r.calib.seed },
  });
  const fpHash = await fingerprintHash(fp);
  if (r.resume !== undefined && !(await checkResume(r.resume, fp))) {
    log(`--resume ${r.resume}: nothing was checkpointed there; starting from the first block`);
  }
  const resumed = layerwise && r.resume !== undefined
    ? await LayerwiseCheckpoints.load(r.resume, fpHash, log)
    : null;
  const inputs: RunInput[] = [
    { flag: "--model", path: r.model },
    { flag: "--calib", path: r.calib.file },
    ...r.eval.files.map((f) => ({ flag: "--eval", path: f })),
    ...(r.resume !== undefined && resolve(r.resume) !== resolve(ckptDir)
      ? [{ flag: "--resume", path: r.resume }]
      : []),
  ];
  const target = await checkOutput(out, {
    overwrite: r.overwrite,
    inputs,
    keep: resumed?.partial,
  });
  const outputBytes = parameterCount(c) * 4;
  checkDisk(out, [
    { what: "the model (float32)", bytes: outputBytes },
    { what: "learned state, at most", bytes: outputBytes / 8 },
    { what: "calibration activations (offloaded)", bytes: offload ? chainBytes : 0 },
    { what: "activation checkpoints", bytes: layerwise ? 2 * chainBytes : 0 },
  ]);
  await prepareCheckpointDir(ckptDir, {
    resuming: r.resume !== undefined && resolve(r.resume) === resolve(ckptDir),
  });
  await saveFingerprint(ckptDir, fp);
  return { seqlen, calib, evalIds, offload, chainBytes, fpHash, resumed, target, tok };
}

/**
 * Writes the embedding (rotated, for a rotated model) into the model and embeds the calibration
 * windows with it, in memory or straight into an activation file at `file`.
 */
async function embedCalibration(
  w: ModelWriter,
  model: ModelSource,
  rotations: ModelRotations | undefined,
  ids: Int32Array,
  seqlen: number,
  file?: string,
): Promise<Activations> {
  let table = await model.embedding();
  if (rotations) table = rotateEmbedding(table, rotations.residual);
  await w.add("model.embed_tokens.weight", table);
  return file !== undefined ? embedToFile(table, ids, seqlen, file) : embed(table, ids, seqlen);
}

/** Calibration activations above this size go to a file by default (layer-wise methods). */
export const OFFLOAD_AUTO_BYTES = 64 * 2 ** 20;

/**
 * Whether a run's activations go to a file: as asked, or with `"auto"` when they exceed
 * {@linkcode OFFLOAD_AUTO_BYTES} and no teacher chain needs them in memory.
 */
export function offloadDecision(
  mode: boolean | "auto",
  teacher: boolean,
  chainBytes: number,
): boolean {
  return mode === "auto" ? !teacher && chainBytes > OFFLOAD_AUTO_BYTES : mode;
}
