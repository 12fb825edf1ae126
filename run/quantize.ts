/**
 * Running a quantization pipeline end to end: calibration windows, evaluation before, the block
 * stream (source → the method's stages → sink), the output model, evaluation after, and the
 * JSON report every pipeline of the toolkit shares. Methods (`methods/`) only choose their
 * stages.
 * @module
 */
import {
  describeRotations,
  modelRotations,
  rotateEmbedding,
  rotateHead,
  type RotateOptions,
} from "../algorithms/rotation.ts";
import { UsageError } from "../cli/flags.ts";
import { Progress } from "../cli/progress.ts";
import { blockGraphLoglikelihood } from "../eval/loglikelihood.ts";
import { defaultSeqlen, perplexity } from "../eval/perplexity.ts";
import { evaluateTasks, type TaskResult } from "../eval/zero_shot.ts";
import { openModel, openTokenizer } from "../formats/open.ts";
import { ModelWriter } from "../formats/writer.ts";
import { RssMeter } from "../kernels/rss.ts";
import { type Device, Runtime } from "../kernels/session.ts";
import type { MethodRun } from "../methods/method.ts";
import { ActivationFile } from "../models/activation_file.ts";
import { checkSeqlen } from "../models/config.ts";
import { embed, embedToFile } from "../models/forward.ts";
import type { RunContext } from "../stages/job.ts";
import { blockSink, blockSource, ChainLink, runStream, type SinkResult } from "../stages/stream.ts";
import { calibrationWindows } from "../text/calibration.ts";
import { readDataset } from "../text/dataset.ts";
import { checkPackShapes, evaluatePacked, packModel, type PackResult } from "./pack.ts";
import { type QuantizeReport, taskReport, writeAtomically } from "./report.ts";
import { reportHtml } from "./report_html.ts";
import type { PackedFormat } from "../formats/packed.ts";

/** Everything a pipeline run needs: what the method decided, and where and on what it runs. */
export interface QuantizeRun extends MethodRun {
  /** Source model: a Hugging Face directory or a llama2.c checkpoint. */
  model: string;
  /**
   * Rotate the model (QuaRot): the run builds the rotations, rotates the embedding and the head,
   * and the `rotate()` stage, first in the stream, rotates each block.
   */
  rotation?: RotateOptions;
  /** Output directory (fake-quantized model, learned state, report). */
  out: string;
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

/** Runs a quantization pipeline and returns its report. */
export async function runQuantization(r: QuantizeRun): Promise<QuantizeReport> {
  const t0 = performance.now();
  const progress = new Progress(r.quiet);
  const rt = new Runtime(r.device ?? "cpu");
  const model = await openModel(r.model);
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
  let writer: ModelWriter | null = null;
  try {
    const c = model.config;
    const seqlen = r.calib.seqlen ?? defaultSeqlen(model);
    checkSeqlen(c, seqlen);
    if (r.pack) checkPackShapes(r.pack, c, 2 ** Math.ceil(r.wbits) - 1);
    const tok = await openTokenizer(r.model);
    const cache = r.cache ?? new RunCache();
    const tokenized = (f: string) =>
      cache.memo(cache.ids, `${r.model}\0${f}`, () => readDataset(f, tok));
    const evalIds = new Map<string, Int32Array>();
    for (const f of r.eval.files) evalIds.set(f, await tokenized(f));
    const fp: Record<string, number> = {};
    await time("eval_fp", async () => {
      for (const [f, ids] of evalIds) {
        fp[f] = await cache.memo(
          cache.fpPpl,
          `${r.model}\0${f}\0${seqlen}\0${r.eval.windows}`,
          async () => {
            progress.log(`evaluating the original model on ${f}`);
            return (await perplexity(rt, model, ids, { seqlen, maxWindows: r.eval.windows })).ppl;
          },
        );
      }
    });
    const taskFiles = r.eval.tasks ?? [];
    const tasks = (m: typeof model) =>
      evaluateTasks(blockGraphLoglikelihood(rt, m), tok, taskFiles, {
        limit: r.eval.taskLimit,
        log: (msg) => progress.log(msg),
      });
    const fpTasks = taskFiles.length
      ? await time("tasks_fp", () =>
        cache.memo(
          cache.fpTasks,
          [r.model, ...taskFiles, r.eval.taskLimit].join("\0"),
          () => tasks(model),
        ))
      : {};

    const calibIds = await tokenized(r.calib.file);
    const calib = calibrationWindows(calibIds, r.calib.nsamples, seqlen, r.calib.seed);
    progress.log(
      `calibration: ${r.calib.nsamples} windows of ${seqlen} tokens from ${r.calib.file}`,
    );
    const rotations = r.rotation ? modelRotations(c, r.rotation) : undefined;
    const ctx: RunContext = {
      rt,
      config: c,
      seqlen,
      abits: r.abits,
      kvBits: r.kvBits,
      log: (m) => progress.log(m),
      rotations,
      rss,
    };
    const chainBytes = calib.data.length * c.hidden * 4;
    const offload = offloadDecision(r.offloadActivations ?? "auto", !!r.teacher, chainBytes);
    if (offload && r.teacher) {
      throw new UsageError(
        `--offload-activations: ${r.method} trains on the activations and needs them in memory`,
      );
    }
    // A rotated model's head is (W∘γ)·Q and its embedding E·Q: no longer one matrix.
    writer = await ModelWriter.create(r.out, rotations ? { ...c, tiedEmbeddings: false } : c);
    let table = await model.embedding();
    if (rotations) table = rotateEmbedding(table, rotations.residual);
    await writer.add("model.embed_tokens.weight", table);
    const link = new ChainLink();
    const sink: SinkResult = { reports: [], storage: {}, extraTensors: {} };
    const chainPath = `${writer.tmpDir}/activations.tmp`;
    if (offload) {
      progress.log(
        `calibration activations (${(chainBytes / 2 ** 20).toFixed(0)} MiB) in ${chainPath}`,
      );
    }
    const input = offload
      ? embedToFile(table, calib.data, seqlen, chainPath)
      : embed(table, calib.data, seqlen);
    try {
      await time("quantize", () =>
        runStream(
          blockSource({ model, ctx, input, teacher: !!r.teacher, link }),
          r.stages(ctx),
          blockSink(writer!, link, sink),
        ));
    } finally {
      if (input instanceof ActivationFile) input.close();
    }
    let [finalNorm, head] = [await model.finalNorm(), await model.head()];
    if (rotations) {
      head = rotateHead(head, finalNorm, rotations.residual);
      finalNorm = { data: new Float32Array(c.hidden).fill(1), shape: [c.hidden] };
    }
    await writer.finish(finalNorm, head, r.model, {
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

    const quant: Record<string, number> = {};
    let quantTasks: Record<string, TaskResult> = {};
    const outModel = await openModel(r.out);
    try {
      await time("eval_quant", async () => {
        for (const [f, ids] of evalIds) {
          progress.log(`evaluating the quantized model on ${f}`);
          quant[f] = (await perplexity(rt, outModel, ids, { seqlen, maxWindows: r.eval.windows }))
            .ppl;
        }
      });
      if (taskFiles.length) quantTasks = await time("tasks_quant", () => tasks(outModel));
    } finally {
      outModel.close();
    }
    const evalReport: QuantizeReport["eval"] = {};
    for (const f of r.eval.files) {
      evalReport[f.replace(/^.*\//, "")] = { fp: fp[f], quant: quant[f] };
    }
    let packed: PackResult | undefined;
    if (r.pack) {
      progress.log(`packing the output as ${r.pack}`);
      packed = await time("pack", () => packModel(r.out, { format: r.pack! }));
      const p = packed;
      p.eval = await time("eval_packed", () =>
        evaluatePacked(rt, p.path, r.eval.files, {
          seqlen,
          windows: r.eval.windows,
          log: (m) => progress.log(m),
        }));
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
    };
    await writeAtomically(`${r.out}/report.json`, JSON.stringify(report, null, 2) + "\n");
    await writeAtomically(`${r.out}/report.html`, reportHtml(report));
    for (const [name, e] of Object.entries(evalReport)) {
      progress.log(`${name}: perplexity ${e.fp.toFixed(3)} → ${e.quant.toFixed(3)}`);
    }
    for (const [name, t] of Object.entries(report.tasks ?? {})) {
      progress.log(`${name}: acc ${t.fp.acc.toFixed(4)} → ${t.quant.acc.toFixed(4)}`);
    }
    return report;
  } finally {
    await writer?.abort();
    model.close();
    await rt.release();
  }
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
