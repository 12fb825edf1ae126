/**
 * Block-wise reconstruction: the engine under OmniQuant, ABQ-LLM and QLLM's low-rank
 * compensation. A method says what it learns (initial parameters) and how the deployed block
 * tensors follow from the full-precision weights and those parameters (a graph); the engine
 * builds one ONNX graph computing the student block, its loss against the teacher outputs and
 * the gradients, trains the parameters with AdamW over the calibration samples, then computes the
 * final block tensors with the same ops — so the deployed block is exactly the trained function —
 * and checks that by running the folded block on a sample.
 * @module
 */
import { gradients } from "../kernels/autodiff.ts";
import { Graph, type Value } from "../kernels/graph.ts";
import { AdamW, constant, NanGuard, type Param, type Schedule } from "../kernels/optim.ts";
import type { Feed } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { addBlock, CAPTURE_POINTS, type CapturePoint } from "../models/block_graph.ts";
import type { ModelConfig } from "../models/config.ts";
import { captureBlock, causalMask, ropeTables, runBlock } from "../models/forward.ts";
import type { BlockWeights } from "../models/model.ts";
import { SafetensorsReader, writeSafetensors } from "../models/safetensors.ts";
import type { Activations, BlockJob, Stage } from "./job.ts";
import { inMemory, stage } from "./job.ts";

/** Per-channel max |x| of each linear group's input on the teacher chain (unquantized). */
export type ChannelStats = Record<CapturePoint, Float32Array>;

/** A learned-reconstruction method. */
export interface ReconstructionMethod {
  /** Stage name in reports. */
  name: string;
  /** The parameters to learn for this block, with their initial values and learning rates. */
  init(job: BlockJob, stats: ChannelStats): Param[];
  /**
   * The block tensors the student runs with (every name of the block: weights already
   * fake-quantized, transformed norms, …), as graph values computed from the full-precision
   * tensors `w` and the parameters `p` (both keyed by name).
   */
  student(
    g: Graph,
    c: ModelConfig,
    w: Record<string, Value>,
    p: Record<string, Value>,
    blockIndex: number,
  ): Record<string, Value>;
  /**
   * `mse` (OmniQuant, QLLM): MSE between student and teacher outputs. `abq` (ABQ-LLM): symmetric
   * KL between head-averaged attention maps of student and teacher, plus MSE and −log|cos| terms
   * against both the teacher on the full-precision input and the teacher on the student's input.
   */
  loss?: "mse" | "abq";
  /** Bits stored per weight tensor of the deployed block (for the bits-per-weight figure). */
  storedBits(c: ModelConfig, tensor: string, rows: number, cols: number): number;
}

/** Training settings. */
export interface TrainOptions {
  /** Passes over the calibration samples per block (0: no training). */
  epochs: number;
  /** Calibration samples per step (1). */
  batch?: number;
  /** Learning-rate multiplier over the run (constant). */
  schedule?: Schedule;
  /**
   * Directory of per-block checkpoints (`block-{i}.safetensors`, the learned parameters) written
   * after each block; a later run given it as `resume` folds those blocks without training.
   */
  checkpointDir?: string;
  /** A previous run's checkpoint directory. */
  resume?: string;
}

async function loadCheckpoint(dir: string, block: number, params: Param[]): Promise<boolean> {
  const path = `${dir}/block-${block}.safetensors`;
  try {
    await Deno.stat(path);
  } catch {
    return false;
  }
  const r = await SafetensorsReader.open(path);
  try {
    for (const p of params) {
      if (!r.has(p.name)) {
        throw new Error(`${path}: no tensor "${p.name}" (a different method or flags?)`);
      }
      const t = await r.readF32(p.name);
      if (t.data.length !== p.data.length) {
        throw new Error(
          `${path}: tensor "${p.name}" has ${t.data.length} values, expected ${p.data.length}`,
        );
      }
      p.data.set(t.data);
    }
  } finally {
    r.close();
  }
  return true;
}

async function saveCheckpoint(dir: string, block: number, params: Param[]): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await writeSafetensors(
    `${dir}/block-${block}.safetensors`,
    params.map((p) => ({ name: p.name, dtype: "F32" as const, shape: p.shape, data: p.data })),
  );
}

/** Per-channel max |x| of the linear inputs of a block on inputs x (no activation quantization). */
export async function channelStats(
  job: BlockJob,
  weights: BlockWeights,
  x: Activations,
): Promise<ChannelStats> {
  const stats = {} as ChannelStats;
  await captureBlock(job.ctx.rt, job.ctx.config, weights, x, {
    onCapture: (cap) => {
      for (const p of CAPTURE_POINTS) {
        const t = cap[p], k = t.shape[1];
        const m = stats[p] ??= new Float32Array(k);
        for (let i = 0; i < t.data.length; i++) {
          const v = Math.abs(t.data[i]);
          if (v > m[i % k]) m[i % k] = v;
        }
      }
    },
  });
  return stats;
}

interface BlockGraphs {
  train: Uint8Array;
  fold: Uint8Array;
  names: string[];
}

/** Builds the training graph (loss, gradients, student output) and the fold graph. */
function buildGraphs(
  base: BlockWeights,
  c: ModelConfig,
  m: ReconstructionMethod,
  params: Param[],
  batch: number,
  seqlen: number,
  abits: number,
  kvBits: number | undefined,
  blockIndex: number,
): BlockGraphs {
  const names = Object.keys(base);
  const shapes = Object.fromEntries(names.map((n) => [n, base[n].shape]));
  const make = (train: boolean) => {
    const g = new Graph();
    const w: Record<string, Value> = {};
    for (const n of names) w[n] = g.input(`w:${n}`, shapes[n]);
    const p: Record<string, Value> = {};
    for (const q of params) p[q.name] = g.input(`p:${q.name}`, q.shape);
    const sw = m.student(g, c, w, p, blockIndex);
    if (!train) {
      for (const n of names) g.output(sw[n], `out:${n}`);
      return g.toBytes();
    }
    const x = g.input("x", [batch, seqlen, c.hidden]);
    const target = g.input("target", [batch, seqlen, c.hidden]);
    const cos = g.input("cos", [seqlen, 1, c.headDim / 2]);
    const sin = g.input("sin", [seqlen, 1, c.headDim / 2]);
    const mask = g.input("mask", [seqlen, seqlen]);
    const student = addBlock(g, c, { batch, seqlen, abits, kvBits }, { x, cos, sin, mask, w: sw });
    const y = student.y;
    let loss: Value;
    if (m.loss === "abq") {
      const xfp = g.input("xfp", [batch, seqlen, c.hidden]);
      const o = { batch, seqlen };
      const teacherFp = addBlock(g, c, o, { x: xfp, cos, sin, mask, w });
      const teacherQ = addBlock(g, c, o, { x, cos, sin, mask, w });
      loss = abqLoss(g, y, student.probs, target, teacherFp.probs, teacherQ.y);
    } else {
      loss = mse(g, y, target);
    }
    const grads = gradients(g, loss, params.map((q) => p[q.name]));
    g.output(loss, "loss");
    g.output(y, "y");
    params.forEach((q, i) => g.output(grads[i], `grad:${q.name}`));
    return g.toBytes();
  };
  return { train: make(true), fold: make(false), names };
}

/** Mean squared difference of two [B, T, d] values, as a scalar. */
export function mse(g: Graph, a: Value, b: Value): Value {
  const d = g.sub(a, b);
  return g.reduceMean(g.mul(d, d), [0, 1, 2], 0);
}

/** −log|mean over tokens of cos(a_t, b_t)| over the hidden axis. */
function negLogCos(g: Graph, a: Value, b: Value): Value {
  const dot = g.reduceSum(g.mul(a, b), [2]);
  const na = g.op("Sqrt", [g.reduceSum(g.mul(a, a), [2])]);
  const nb = g.op("Sqrt", [g.reduceSum(g.mul(b, b), [2])]);
  const cos = g.reduceMean(g.div(dot, g.add(g.mul(na, nb), g.scalar(1e-12))), [0, 1], 0);
  return g.op("Neg", [g.op("Log", [g.op("Abs", [cos])])]);
}

/** Σ P log(P/Q) per attention row, averaged over rows (P, Q head-averaged maps [B, T, T]). */
function kl(g: Graph, p: Value, q: Value): Value {
  const eps = g.scalar(1e-10);
  const lr = g.sub(g.op("Log", [g.add(p, eps)]), g.op("Log", [g.add(q, eps)]));
  return g.reduceMean(g.reduceSum(g.mul(p, lr), [2], 0), [0, 1], 0);
}

/**
 * ABQ-LLM's loss on the student output `y` and attention `probs` [B, KV, G, T, T]: the teacher
 * output on the full-precision input (`target`) and its attention, and the teacher output on
 * the student's input (`yq`). The attention maps are probabilities already, so the KL terms use
 * them as they are (the reference applies softmax a second time).
 */
function abqLoss(
  g: Graph,
  y: Value,
  probs: Value,
  target: Value,
  probsFp: Value,
  yq: Value,
): Value {
  const pq = g.reduceMean(probs, [1, 2], 0);
  const pf = g.reduceMean(probsFp, [1, 2], 0);
  const terms = [
    kl(g, pf, pq),
    kl(g, pq, pf),
    mse(g, y, target),
    mse(g, y, yq),
    negLogCos(g, y, target),
    negLogCos(g, y, yq),
  ];
  return terms.reduce((a, b) => g.add(a, b));
}

/** Windows `first … first + count − 1` of [N, T, d] activations (a view). */
export function sampleSlice(t: Tensor, first: number, count: number): Tensor {
  const per = t.shape[1] * t.shape[2];
  return {
    data: t.data.subarray(first * per, (first + count) * per),
    shape: [count, t.shape[1], t.shape[2]],
  };
}

/** The reconstruction stage: learns `m`'s parameters per block, then folds them. */
export function reconstruct(m: ReconstructionMethod, o: TrainOptions): Stage {
  return stage(m.name, async (job) => {
    const { rt, config: c, seqlen } = job.ctx;
    if (!job.fpIn || !job.fpOut) {
      throw new Error(`${m.name}: needs the teacher chain (capture() before it, teacher: true)`);
    }
    const batch = o.batch ?? 1;
    const n = job.qIn.shape[0];
    if (n % batch !== 0) {
      throw new Error(`--batch ${batch} must divide the ${n} calibration samples`);
    }
    const stats = await channelStats(job, job.fpWeights, job.fpIn);
    const params = m.init(job, stats);
    // The student starts from the block as earlier stages left it (e.g. reassembled); the
    // teacher outputs come from the original block.
    const base = job.weights;
    const graphs = buildGraphs(
      base,
      c,
      m,
      params,
      batch,
      seqlen,
      job.ctx.abits,
      job.ctx.kvBits,
      job.index,
    );
    const { cos, sin } = ropeTables(c, seqlen);
    const fixed: Record<string, Feed> = { cos, sin, mask: causalMask(seqlen) };
    for (const name of graphs.names) fixed[`w:${name}`] = base[name];
    const qIn = inMemory(job.qIn, m.name), fpOut = inMemory(job.fpOut!, m.name);
    const fpIn = m.loss === "abq" ? inMemory(job.fpIn!, m.name) : null;
    const feedsFor = (first: number): Record<string, Feed> => {
      const f: Record<string, Feed> = {
        ...fixed,
        x: sampleSlice(qIn, first, batch),
        target: sampleSlice(fpOut, first, batch),
      };
      if (fpIn) f.xfp = sampleSlice(fpIn, first, batch);
      for (const q of params) f[`p:${q.name}`] = { data: q.data, shape: q.shape };
      return f;
    };

    const opt = new AdamW(params);
    const guard = new NanGuard(params);
    const schedule = o.schedule ?? constant;
    const resumed = o.resume ? await loadCheckpoint(o.resume, job.index, params) : false;
    if (resumed) {
      job.ctx.log(`block ${job.index + 1}: ${m.name} parameters resumed from ${o.resume}`);
    }
    const epochs = resumed ? 0 : o.epochs;
    const steps = epochs * (n / batch);
    const curve: number[] = [];
    let t = 0;
    const t0 = performance.now();
    train: for (let e = 0; e < epochs; e++) {
      let sum = 0, count = 0;
      for (let first = 0; first < n; first += batch, t++) {
        const r = await rt.run(graphs.train, feedsFor(first));
        const loss = r.loss.data[0];
        const grads = params.map((q) => r[`grad:${q.name}`].data);
        if (!guard.check(t, loss, grads)) {
          if (count) curve.push(sum / count); // the partial epoch
          break train;
        }
        opt.step(grads, schedule(t, steps));
        sum += loss;
        count++;
      }
      curve.push(sum / count);
      const left = ((performance.now() - t0) / (e + 1)) * (epochs - e - 1) / 1000;
      job.ctx.log(
        `block ${job.index + 1}/${c.layers}: ${m.name} epoch ${e + 1}/${epochs} ` +
          `loss ${curve[e].toExponential(4)} (~${left.toFixed(0)} s left in this block)`,
      );
    }
    // The last update has not been checked yet: check it (restoring the last good values).
    // Its output on sample 0 is the trained function the fold check compares with.
    let trained: Tensor | null = null;
    if (epochs > 0 && guard.stoppedAt === null) {
      const r = await rt.run(graphs.train, feedsFor(0));
      if (guard.check(t, r.loss.data[0], params.map((q) => r[`grad:${q.name}`].data))) {
        trained = r.y;
      }
    }
    const trainSeconds = (performance.now() - t0) / 1000;
    if (guard.stoppedAt !== null) {
      job.ctx.log(
        `block ${job.index + 1}: ${m.name} stopped at step ${guard.stoppedAt} (${guard.reason}); ` +
          "restored the last good parameters",
      );
    }

    if (o.checkpointDir && !resumed) await saveCheckpoint(o.checkpointDir, job.index, params);

    // Fold: the deployed tensors, computed by the same ops as in training.
    const feeds: Record<string, Feed> = {};
    for (const name of graphs.names) feeds[`w:${name}`] = base[name];
    for (const q of params) feeds[`p:${q.name}`] = { data: q.data, shape: q.shape };
    const folded = await rt.run(graphs.fold, feeds);
    for (const name of graphs.names) {
      job.weights[name] = {
        data: folded[`out:${name}`].data.slice(),
        shape: base[name].shape,
      };
    }
    for (const q of params) job.learned[q.name] = { data: q.data.slice(), shape: q.shape };
    for (const name of graphs.names) {
      const s = base[name].shape;
      if (s.length === 2 && name.endsWith(".weight")) {
        job.storage[name] = { weights: s[0] * s[1], bits: m.storedBits(c, name, s[0], s[1]) };
      }
    }

    // The folded block must compute what was trained: compare on the first sample.
    trained ??= (await rt.run(graphs.train, feedsFor(0))).y;
    const foldedOut = await runBlock(rt, c, job.weights, sampleSlice(qIn, 0, batch), {
      abits: job.ctx.abits,
      kvBits: job.ctx.kvBits,
      batch,
    });
    let num = 0, den = 0;
    for (let i = 0; i < trained.data.length; i++) {
      const dlt = trained.data[i] - foldedOut.data[i];
      num += dlt * dlt;
      den += trained.data[i] * trained.data[i];
    }
    const foldRelError = Math.sqrt(num / den);
    if (!Number.isFinite(foldRelError)) {
      throw new Error(
        `block ${job.index}: ${m.name}: the folded block does not compute a finite output ` +
          `(fold error ${foldRelError})`,
      );
    }
    if (foldRelError > 1e-3) {
      job.ctx.log(
        `block ${job.index + 1}: warning: the folded block differs from the trained one ` +
          `(relative ${foldRelError.toExponential(2)})`,
      );
    }
    return {
      loss_curve: curve,
      first_loss: curve[0],
      last_loss: curve[curve.length - 1],
      train_seconds: trainSeconds,
      steps: t,
      resumed,
      stopped_at: guard.stoppedAt,
      stop_reason: guard.reason || undefined,
      fold_rel_error: foldRelError,
    };
  });
}
