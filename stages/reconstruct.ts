/**
 * Block-wise reconstruction: the one training engine under OmniQuant, ABQ-LLM and QLLM's
 * low-rank compensation, for groups of N ≥ 1 consecutive blocks (QLLM's `--num-layer`).
 *
 * A {@linkcode ReconstructionMethod} says what it learns (initial parameters), how the deployed
 * block tensors follow from the block's tensors and those parameters (a graph), and optionally
 * its loss; the engine owns everything else. It builds one ONNX graph computing the student
 * blocks, the loss against the teacher output of the group's last block and the gradients,
 * trains the parameters with AdamW over the calibration samples, then computes the deployed
 * tensors with the same `student` ops — so the deployed blocks are exactly the trained function
 * — and checks that by running the folded blocks on a sample.
 *
 * A group of N > 1 blocks is held by the stage until its last block arrives; meanwhile each held
 * block hands its teacher output on as a provisional input (`job.handOff`) so the stream keeps
 * flowing, and once the group is trained the real student inputs of its later blocks are
 * recomputed through the folded blocks. Memory grows with N.
 * @module
 */
import { gradients } from "../kernels/autodiff.ts";
import { Graph, type Value } from "../kernels/graph.ts";
import { AdamW, constant, NanGuard, type Param, type Schedule } from "../kernels/optim.ts";
import type { RssStretch } from "../kernels/rss.ts";
import type { Feed } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { addBlock, CAPTURE_POINTS, type CapturePoint } from "../models/block_graph.ts";
import type { ModelConfig } from "../models/config.ts";
import {
  type Activations,
  captureBlock,
  causalMask,
  ropeTables,
  runBlock,
} from "../models/forward.ts";
import type { BlockWeights } from "../models/source.ts";
import { SafetensorsReader, writeSafetensors } from "../formats/safetensors.ts";
import type { BlockJob, StageReport } from "./job.ts";
import { inMemory, type Stage } from "./job.ts";

/** Per-channel max |x| of each linear group's input on the teacher chain (unquantized). */
export type ChannelStats = Record<CapturePoint, Float32Array>;

/** A block's output in a training graph: [B, T, d], and its attention [B, KV, G, T, T]. */
export interface BlockOutput {
  /** The output [B, T, d]. */
  y: Value;
  /** The attention probabilities [B, KV, G, T, T]. */
  probs: Value;
}

/** What a loss is built from, in the training graph of a group of blocks. */
export interface LossInputs {
  /** The training graph. */
  g: Graph;
  /** The student: the group's output and its last block's attention. */
  student: BlockOutput;
  /** The teacher output of the group's last block on the full-precision chain. */
  target: Value;
  /**
   * The teacher (the blocks as earlier stages left them, unquantized) on the full-precision
   * input; the engine then also feeds that input.
   */
  teacherOnFpInput(): BlockOutput;
  /** The teacher on the student's (quantized-chain) input. */
  teacherOnStudentInput(): BlockOutput;
}

/** A training loss: a scalar value of the graph. */
export type ReconstructionLoss = (t: LossInputs) => Value;

/** A learned-reconstruction method. */
export interface ReconstructionMethod {
  /** Stage name in reports. */
  name: string;
  /** The parameters to learn for this block, with their initial values and learning rates. */
  init(job: BlockJob, stats: ChannelStats): Param[];
  /**
   * The block tensors the student runs with (every name of the block: weights already
   * fake-quantized, transformed norms, …), as graph values computed from the block's tensors `w`
   * and the parameters `p` (both keyed by name). Entries named by {@linkcode learnedOutput} are
   * not block tensors but learned state the fold saves (a quantized weight's scales and zeros).
   */
  student(
    g: Graph,
    c: ModelConfig,
    w: Record<string, Value>,
    p: Record<string, Value>,
    blockIndex: number,
  ): Record<string, Value>;
  /** The loss (default {@linkcode mseLoss}). */
  loss?: ReconstructionLoss;
  /** Bits stored per weight tensor of the deployed block (for the bits-per-weight figure). */
  storedBits(c: ModelConfig, tensor: string, rows: number, cols: number): number;
}

/** Training settings. */
export interface TrainOptions {
  /** Passes over the calibration samples per group (0: no training). */
  epochs: number;
  /** Calibration samples per step (1). */
  batch?: number;
  /** Learning-rate multiplier over the run (constant). */
  schedule?: Schedule;
  /** Consecutive blocks trained jointly (1). */
  numLayer?: number;
  /**
   * Directory of per-block checkpoints (`block-{i}.safetensors`, the learned parameters) written
   * after each group; a later run given it as `resume` folds those blocks without training.
   */
  checkpointDir?: string;
  /** A previous run's checkpoint directory. */
  resume?: string;
}

const LEARNED_PREFIX = "learned:";

/**
 * The key under which a method's `student` returns learned state the fold saves to
 * `learned.safetensors` as `{name}` (e.g. `self_attn.q_proj.scales`), beside the block tensors.
 */
export function learnedOutput(name: string): string {
  return LEARNED_PREFIX + name;
}

/** Mean squared difference of two [B, T, d] values, as a scalar. */
export function mse(g: Graph, a: Value, b: Value): Value {
  const d = g.sub(a, b);
  return g.reduceMean(g.mul(d, d), [0, 1, 2], 0);
}

/** The default loss: MSE between the student output and the teacher output. */
export function mseLoss(t: LossInputs): Value {
  return mse(t.g, t.student.y, t.target);
}

/** Windows `first … first + count − 1` of [N, T, d] activations (a view). */
export function sampleSlice(t: Tensor, first: number, count: number): Tensor {
  const per = t.shape[1] * t.shape[2];
  return {
    data: t.data.subarray(first * per, (first + count) * per),
    shape: [count, t.shape[1], t.shape[2]],
  };
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

/** A block of a group: its job and the parameters learned for it. */
interface Member {
  job: BlockJob;
  params: Param[];
  /** When the block arrived at the stage (its report's clock). */
  t0: number;
  /** Its peak RSS from then on, when the run measures it. */
  rss?: RssStretch;
}

/** Graph input and output names: block tensors and parameters by member, gradients, folds. */
const names = {
  weight: (k: number, n: string) => `w${k}:${n}`,
  param: (k: number, n: string) => `p${k}:${n}`,
  grad: (k: number, n: string) => `grad${k}:${n}`,
  folded: (n: string) => `out:${n}`,
};

interface GroupGraphs {
  /** Loss, gradients and the student output `y` on a batch. */
  train: Uint8Array;
  /** Whether the loss reads the teacher's full-precision input `xfp`. */
  readsFpInput: boolean;
  /** Per member: the deployed block tensors from its tensors and parameters. */
  folds: Uint8Array[];
}

/** Builds the training graph of a group and one fold graph per member. */
function buildGraphs(
  m: ReconstructionMethod,
  group: Member[],
  batch: number,
  seqlen: number,
): GroupGraphs {
  const { config: c, abits, kvBits } = group[0].job.ctx;
  const tensorsOf = (g: Graph, k: number) => {
    const w: Record<string, Value> = {};
    for (const [n, t] of Object.entries(group[k].job.weights)) {
      w[n] = g.input(names.weight(k, n), t.shape);
    }
    return w;
  };
  const studentOf = (g: Graph, k: number, w: Record<string, Value>) => {
    const p: Record<string, Value> = {};
    for (const q of group[k].params) p[q.name] = g.input(names.param(k, q.name), q.shape);
    return m.student(g, c, w, p, group[k].job.index);
  };

  const g = new Graph();
  const x = g.input("x", [batch, seqlen, c.hidden]);
  const target = g.input("target", [batch, seqlen, c.hidden]);
  const cos = g.input("cos", [seqlen, 1, c.headDim / 2]);
  const sin = g.input("sin", [seqlen, 1, c.headDim / 2]);
  const mask = g.input("mask", [seqlen, seqlen]);
  const base = group.map((_, k) => tensorsOf(g, k));
  // The chain of blocks from `input`: quantized activations and learned tensors for the student.
  const chain = (input: Value, w: (k: number) => Record<string, Value>, quantized: boolean) => {
    let out: BlockOutput = { y: input, probs: input };
    const o = quantized ? { batch, seqlen, abits, kvBits } : { batch, seqlen };
    for (let k = 0; k < group.length; k++) {
      out = addBlock(g, c, o, { x: out.y, cos, sin, mask, w: w(k) });
    }
    return out;
  };
  const student = chain(x, (k) => studentOf(g, k, base[k]), true);
  let readsFpInput = false;
  const loss = (m.loss ?? mseLoss)({
    g,
    student,
    target,
    teacherOnFpInput: () => {
      readsFpInput = true;
      return chain(g.input("xfp", [batch, seqlen, c.hidden]), (k) => base[k], false);
    },
    teacherOnStudentInput: () => chain(x, (k) => base[k], false),
  });
  const wrt = group.flatMap((mem, k) =>
    mem.params.map((q) => ({ name: names.param(k, q.name), grad: names.grad(k, q.name) }))
  );
  const grads = gradients(g, loss, wrt);
  g.output(loss, "loss");
  g.output(student.y, "y");
  wrt.forEach((v, i) => g.output(grads[i], v.grad));

  const folds = group.map((mem, k) => {
    const f = new Graph();
    const sw = studentOf(f, k, tensorsOf(f, k));
    for (const n of Object.keys(mem.job.weights)) f.output(sw[n], names.folded(n));
    for (const n of Object.keys(sw)) if (n.startsWith(LEARNED_PREFIX)) f.output(sw[n], n);
    return f.toBytes();
  });
  return { train: g.toBytes(), readsFpInput, folds };
}

const checkpointPath = (dir: string, block: number) => `${dir}/block-${block}.safetensors`;

async function hasCheckpoint(dir: string, block: number): Promise<boolean> {
  return !!(await Deno.stat(checkpointPath(dir, block)).catch(() => null))?.isFile;
}

async function loadCheckpoint(dir: string, block: number, params: Param[]): Promise<void> {
  const path = checkpointPath(dir, block);
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
}

async function saveCheckpoint(dir: string, block: number, params: Param[]): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await writeSafetensors(
    checkpointPath(dir, block),
    params.map((p) => ({ name: p.name, dtype: "F32" as const, shape: p.shape, data: p.data })),
  );
}

/** Trains a group, folds its blocks, sets the real student inputs of its later blocks. */
async function trainGroup(
  m: ReconstructionMethod,
  o: TrainOptions,
  group: Member[],
): Promise<void> {
  const first = group[0].job, last = group[group.length - 1].job;
  const { rt, config: c, seqlen } = first.ctx;
  const batch = o.batch ?? 1;
  const n = first.qIn.shape[0];
  const what = group.length === 1
    ? `block ${first.index + 1}/${c.layers}`
    : `blocks ${first.index + 1}–${last.index + 1}/${c.layers}`;
  const graphs = buildGraphs(m, group, batch, seqlen);
  const { cos, sin } = ropeTables(c, seqlen);
  const fixed: Record<string, Feed> = { cos, sin, mask: causalMask(seqlen, c.slidingWindow) };
  group.forEach(({ job }, k) => {
    for (const [nm, t] of Object.entries(job.weights)) fixed[names.weight(k, nm)] = t;
  });
  const qIn = inMemory(first.qIn, m.name), fpOut = inMemory(last.fpOut!, m.name);
  const fpIn = graphs.readsFpInput ? inMemory(first.fpIn!, m.name) : null;
  const feedsFor = (s: number): Record<string, Feed> => {
    const f: Record<string, Feed> = {
      ...fixed,
      x: sampleSlice(qIn, s, batch),
      target: sampleSlice(fpOut, s, batch),
    };
    if (fpIn) f.xfp = sampleSlice(fpIn, s, batch);
    group.forEach((mem, k) => {
      for (const q of mem.params) f[names.param(k, q.name)] = { data: q.data, shape: q.shape };
    });
    return f;
  };
  const all = group.flatMap((mem) => mem.params);
  const gradsOf = (r: Record<string, Tensor>) =>
    group.flatMap((mem, k) => mem.params.map((q) => r[names.grad(k, q.name)].data));

  // A group resumes only when every member was saved (a kill can come between two saves);
  // otherwise it trains from its initial parameters.
  let resumed = false;
  if (o.resume) {
    const found = await Promise.all(group.map((mem) => hasCheckpoint(o.resume!, mem.job.index)));
    resumed = found.every((f) => f);
    if (resumed) {
      for (const mem of group) await loadCheckpoint(o.resume, mem.job.index, mem.params);
      first.ctx.log(`${what}: ${m.name} parameters resumed from ${o.resume}`);
    }
  }
  const opt = new AdamW(all);
  const guard = new NanGuard(all);
  const schedule = o.schedule ?? constant;
  const epochs = resumed ? 0 : o.epochs;
  const steps = epochs * (n / batch);
  const curve: number[] = [];
  let t = 0;
  const t0 = performance.now();
  train: for (let e = 0; e < epochs; e++) {
    let sum = 0, count = 0;
    for (let s = 0; s < n; s += batch, t++) {
      const r = await rt.run(graphs.train, feedsFor(s));
      const loss = r.loss.data[0];
      const grads = gradsOf(r);
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
    first.ctx.log(
      `${what}: ${m.name} epoch ${e + 1}/${epochs} ` +
        `loss ${curve[e].toExponential(4)} (~${left.toFixed(0)} s left in this ` +
        `${group.length === 1 ? "block" : "group"})`,
    );
  }
  // The last update has not been checked yet: check it (restoring the last good values).
  // Its output on sample 0 is the trained function the fold check compares with.
  let trained: Tensor | null = null;
  if (epochs > 0 && guard.stoppedAt === null) {
    const r = await rt.run(graphs.train, feedsFor(0));
    if (guard.check(t, r.loss.data[0], gradsOf(r))) trained = r.y;
  }
  const trainSeconds = (performance.now() - t0) / 1000;
  if (guard.stoppedAt !== null) {
    first.ctx.log(
      `${what}: ${m.name} stopped at step ${guard.stoppedAt} (${guard.reason}); ` +
        "restored the last good parameters",
    );
  }
  if (o.checkpointDir && !resumed) {
    for (const mem of group) await saveCheckpoint(o.checkpointDir, mem.job.index, mem.params);
  }
  // The train graph's output, before the fold replaces the tensors it reads.
  trained ??= (await rt.run(graphs.train, feedsFor(0))).y;

  // Fold: the deployed tensors, computed by the same ops as in training; then the student
  // chain through the folded blocks gives the later members their real inputs.
  let chain: Tensor = qIn;
  let check = sampleSlice(qIn, 0, batch);
  for (const [k, { job, params }] of group.entries()) {
    const feeds: Record<string, Feed> = {};
    for (const [nm, tt] of Object.entries(job.weights)) feeds[names.weight(k, nm)] = tt;
    for (const p of params) feeds[names.param(k, p.name)] = { data: p.data, shape: p.shape };
    const folded = await rt.run(graphs.folds[k], feeds);
    for (const nm of Object.keys(job.weights)) {
      const s = job.weights[nm].shape;
      job.weights[nm] = { data: folded[names.folded(nm)].data.slice(), shape: s };
      if (s.length === 2 && nm.endsWith(".weight")) {
        job.storage[nm] = { weights: s[0] * s[1], bits: m.storedBits(c, nm, s[0], s[1]) };
      }
    }
    for (const p of params) job.learned[p.name] = { data: p.data.slice(), shape: p.shape };
    for (const [n, t] of Object.entries(folded)) {
      if (n.startsWith(LEARNED_PREFIX)) {
        job.learned[n.slice(LEARNED_PREFIX.length)] = { data: t.data.slice(), shape: t.shape };
      }
    }
    const run = { abits: job.ctx.abits, kvBits: job.ctx.kvBits };
    if (k > 0) job.qIn = chain;
    if (k < group.length - 1) chain = await runBlock(rt, c, job.weights, chain, run);
    check = await runBlock(rt, c, job.weights, check, { ...run, batch });
  }

  // The folded blocks must compute what was trained: compare on the first sample.
  let num = 0, den = 0;
  for (let i = 0; i < trained.data.length; i++) {
    const d = trained.data[i] - check.data[i];
    num += d * d;
    den += trained.data[i] * trained.data[i];
  }
  const foldRelError = Math.sqrt(num / den);
  if (!Number.isFinite(foldRelError)) {
    throw new Error(
      `${what}: ${m.name}: the folded blocks do not compute a finite output ` +
        `(fold error ${foldRelError})`,
    );
  }
  if (foldRelError > 1e-3) {
    first.ctx.log(
      `${what}: warning: the folded blocks differ from the trained ones ` +
        `(relative ${foldRelError.toExponential(2)})`,
    );
  }
  const now = performance.now();
  for (const { job, t0, rss } of group) {
    const r: StageReport = { stage: m.name, block: job.index, seconds: 0 };
    const peak = rss?.stop();
    if (peak !== undefined) r.peak_rss_bytes = peak;
    if (group.length > 1 || (o.numLayer ?? 1) > 1) r.group = group.map((g) => g.job.index);
    if (job === last) {
      Object.assign(r, {
        seconds: (now - t0) / 1000,
        loss_curve: curve,
        first_loss: curve[0],
        last_loss: curve[curve.length - 1],
        train_seconds: trainSeconds,
        steps: t,
        resumed,
        stopped_at: guard.stoppedAt,
        stop_reason: guard.reason || undefined,
        fold_rel_error: foldRelError,
      });
    }
    job.report.push(r);
  }
}

/**
 * The reconstruction stage: learns `m`'s parameters per group of `o.numLayer` blocks (1 by
 * default), then folds them. Needs the teacher chain (`capture()` before it).
 */
export function reconstruct(m: ReconstructionMethod, o: TrainOptions): Stage {
  const numLayer = o.numLayer ?? 1;
  if (!Number.isInteger(numLayer) || numLayer < 1) {
    throw new Error(`${m.name}: numLayer ${numLayer}: expected an integer ≥ 1`);
  }
  let held: Member[] = [];
  return new TransformStream<BlockJob, BlockJob>({
    async transform(job, controller) {
      const t0 = performance.now();
      const rss = job.ctx.rss?.start();
      const { config: c, log } = job.ctx;
      log(`block ${job.index + 1}/${c.layers}: ${m.name}`);
      if (!job.fpIn || !job.fpOut) {
        throw new Error(`${m.name}: needs the teacher chain (capture() before it, teacher: true)`);
      }
      const batch = o.batch ?? 1;
      const n = job.qIn.shape[0];
      if (n % batch !== 0) {
        throw new Error(`--batch ${batch} must divide the ${n} calibration samples`);
      }
      const stats = await channelStats(job, job.fpWeights, job.fpIn);
      held.push({ job, params: m.init(job, stats), t0, rss });
      const lastOfGroup = (job.index + 1) % numLayer === 0 || job.index === c.layers - 1;
      if (!lastOfGroup) {
        // Provisional student input for the next block; replaced once the group is trained.
        job.handOff?.({ fp: job.fpOut, q: job.fpOut });
        return;
      }
      if (held.length > 1) {
        log(`blocks ${held[0].job.index + 1}–${job.index + 1}/${c.layers}: ${m.name} (joint)`);
      }
      await trainGroup(m, o, held);
      for (const mem of held) controller.enqueue(mem.job);
      held = [];
    },
  });
}
