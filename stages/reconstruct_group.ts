/**
 * Joint block-wise reconstruction of groups of consecutive decoder blocks (QLLM's
 * `--num-layer`): the stage holds the jobs of a group — handing the teacher outputs on as
 * provisional inputs so the stream keeps flowing — and when the group's last block arrives it
 * trains all their parameters together, from the group's quantized input to the teacher output of
 * its last block (MSE), folds each block with the same student ops, recomputes the student chain
 * through the folded blocks and releases the jobs in order. Memory grows with the group size.
 * @module
 */
import { gradients } from "../kernels/autodiff.ts";
import { Graph, type Value } from "../kernels/graph.ts";
import { AdamW, constant, NanGuard, type Param } from "../kernels/optim.ts";
import type { Feed } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { addBlock } from "../models/block_graph.ts";
import { causalMask, ropeTables, runBlock } from "../models/forward.ts";
import { type BlockJob, inMemory, type Stage } from "./job.ts";
import {
  channelStats,
  mse,
  type ReconstructionMethod,
  sampleSlice,
  type TrainOptions,
} from "./reconstruct.ts";

interface Member {
  job: BlockJob;
  params: Param[];
}

const wName = (k: number, n: string) => `w${k}:${n}`;
const pName = (k: number, n: string) => `p${k}:${n}`;

/** Builds the joint training graph and one fold graph per member. */
function buildGroupGraphs(m: ReconstructionMethod, group: Member[], batch: number, seqlen: number) {
  const c = group[0].job.ctx.config;
  const { abits, kvBits } = group[0].job.ctx;
  const inputs = (g: Graph, k: number) => {
    const { job, params } = group[k];
    const w: Record<string, Value> = {}, p: Record<string, Value> = {};
    for (const [n, t] of Object.entries(job.weights)) w[n] = g.input(wName(k, n), t.shape);
    for (const q of params) p[q.name] = g.input(pName(k, q.name), q.shape);
    return m.student(g, c, w, p, job.index);
  };
  const g = new Graph();
  const x = g.input("x", [batch, seqlen, c.hidden]);
  const target = g.input("target", [batch, seqlen, c.hidden]);
  const cos = g.input("cos", [seqlen, 1, c.headDim / 2]);
  const sin = g.input("sin", [seqlen, 1, c.headDim / 2]);
  const mask = g.input("mask", [seqlen, seqlen]);
  let y = x;
  group.forEach((_, k) => {
    const sw = inputs(g, k);
    y = addBlock(g, c, { batch, seqlen, abits, kvBits }, { x: y, cos, sin, mask, w: sw }).y;
  });
  const loss = mse(g, y, target);
  const wrt = group.flatMap((mem, k) => mem.params.map((q) => ({ name: pName(k, q.name) })));
  const grads = gradients(g, loss, wrt);
  g.output(loss, "loss");
  g.output(y, "y");
  wrt.forEach((v, i) => g.output(grads[i], `grad:${v.name}`));
  const folds = group.map((_, k) => {
    const f = new Graph();
    const sw = inputs(f, k);
    for (const n of Object.keys(group[k].job.weights)) f.output(sw[n], `out:${n}`);
    return f.toBytes();
  });
  return { train: g.toBytes(), folds, wrt };
}

/** Trains, folds and re-propagates one group; returns the jobs with their real student inputs. */
async function trainGroup(
  m: ReconstructionMethod,
  o: TrainOptions,
  group: Member[],
): Promise<void> {
  const first = group[0].job, last = group[group.length - 1].job;
  const { rt, config: c, seqlen } = first.ctx;
  const batch = o.batch ?? 1;
  const n = first.qIn.shape[0];
  const graphs = buildGroupGraphs(m, group, batch, seqlen);
  const { cos, sin } = ropeTables(c, seqlen);
  const fixed: Record<string, Feed> = { cos, sin, mask: causalMask(seqlen) };
  group.forEach(({ job }, k) => {
    for (const [nm, t] of Object.entries(job.weights)) fixed[wName(k, nm)] = t;
  });
  const all = group.flatMap((mem) => mem.params);
  const feedsFor = (s: number): Record<string, Feed> => {
    const f: Record<string, Feed> = {
      ...fixed,
      x: sampleSlice(inMemory(first.qIn, m.name), s, batch),
      target: sampleSlice(inMemory(last.fpOut!, m.name), s, batch),
    };
    group.forEach((mem, k) => {
      for (const q of mem.params) f[pName(k, q.name)] = { data: q.data, shape: q.shape };
    });
    return f;
  };
  const opt = new AdamW(all);
  const guard = new NanGuard(all);
  const schedule = o.schedule ?? constant;
  const steps = o.epochs * (n / batch);
  const curve: number[] = [];
  const t0 = performance.now();
  let t = 0;
  train: for (let e = 0; e < o.epochs; e++) {
    let sum = 0, count = 0;
    for (let s = 0; s < n; s += batch, t++) {
      const r = await rt.run(graphs.train, feedsFor(s));
      const grads = graphs.wrt.map((v) => r[`grad:${v.name}`].data);
      if (!guard.check(t, r.loss.data[0], grads)) {
        if (count) curve.push(sum / count);
        break train;
      }
      opt.step(grads, schedule(t, steps));
      sum += r.loss.data[0];
      count++;
    }
    curve.push(sum / count);
    first.ctx.log(
      `blocks ${first.index + 1}–${last.index + 1}/${c.layers}: ${m.name} epoch ${
        e + 1
      }/${o.epochs} ` +
        `loss ${curve[e].toExponential(4)}`,
    );
  }
  // Its output on sample 0 is the trained function the fold check compares with.
  let trained: Tensor | null = null;
  if (o.epochs > 0 && guard.stoppedAt === null) {
    const r = await rt.run(graphs.train, feedsFor(0));
    const grads = graphs.wrt.map((v) => r[`grad:${v.name}`].data);
    if (guard.check(t, r.loss.data[0], grads)) trained = r.y;
  }
  const trainSeconds = (performance.now() - t0) / 1000;

  // Fold every member, then run the student chain through the folded blocks.
  let q: Tensor = inMemory(first.qIn, m.name);
  let y0: Tensor | null = null;
  for (const [k, { job, params }] of group.entries()) {
    const feeds: Record<string, Feed> = {};
    for (const [nm, tt] of Object.entries(job.weights)) feeds[wName(k, nm)] = tt;
    for (const p of params) feeds[pName(k, p.name)] = { data: p.data, shape: p.shape };
    const folded = await rt.run(graphs.folds[k], feeds);
    const base = job.weights;
    for (const nm of Object.keys(base)) {
      const s = base[nm].shape;
      job.weights[nm] = { data: folded[`out:${nm}`].data.slice(), shape: s };
      if (s.length === 2 && nm.endsWith(".weight")) {
        job.storage[nm] = { weights: s[0] * s[1], bits: m.storedBits(c, nm, s[0], s[1]) };
      }
    }
    for (const p of params) job.learned[p.name] = { data: p.data.slice(), shape: p.shape };
    if (k > 0) job.qIn = q;
    const out = await runBlock(rt, c, job.weights, q, {
      abits: job.ctx.abits,
      kvBits: job.ctx.kvBits,
    });
    if (k === group.length - 1) y0 = sampleSlice(out, 0, batch);
    q = out;
  }
  trained ??= (await rt.run(graphs.train, feedsFor(0))).y;
  let num = 0, den = 0;
  for (let i = 0; i < trained.data.length; i++) {
    const d = trained.data[i] - y0!.data[i];
    num += d * d;
    den += trained.data[i] * trained.data[i];
  }
  const foldRelError = Math.sqrt(num / den);
  if (!Number.isFinite(foldRelError)) {
    throw new Error(
      `blocks ${first.index}–${last.index}: the folded group has a non-finite output`,
    );
  }
  const group_ = group.map((g) => g.job.index);
  for (const { job } of group) {
    job.report.push({ stage: m.name, block: job.index, seconds: 0, group: group_ });
  }
  Object.assign(last.report[last.report.length - 1], {
    seconds: trainSeconds,
    loss_curve: curve,
    first_loss: curve[0],
    last_loss: curve[curve.length - 1],
    train_seconds: trainSeconds,
    steps: t,
    stopped_at: guard.stoppedAt,
    stop_reason: guard.reason || undefined,
    fold_rel_error: foldRelError,
  });
}

/** The reconstruction stage over groups of `numLayer` consecutive blocks (MSE loss). */
export function reconstructGroups(
  m: ReconstructionMethod,
  o: TrainOptions,
  numLayer: number,
): Stage {
  if (m.loss && m.loss !== "mse") throw new Error(`--num-layer > 1 supports the MSE loss only`);
  if (o.resume) throw new Error("--resume is not supported with --num-layer > 1 yet");
  let held: Member[] = [];
  return new TransformStream<BlockJob, BlockJob>({
    async transform(job, controller) {
      if (!job.fpIn || !job.fpOut) {
        throw new Error(`${m.name}: needs the teacher chain (capture() before it, teacher: true)`);
      }
      const stats = await channelStats(job, job.fpWeights, job.fpIn);
      held.push({ job, params: m.init(job, stats) });
      const layers = job.ctx.config.layers;
      const lastOfGroup = (job.index + 1) % numLayer === 0 || job.index === layers - 1;
      if (!lastOfGroup) {
        // Provisional student input for the next block; replaced once the group is trained.
        job.handOff?.({ fp: job.fpOut, q: job.fpOut });
        return;
      }
      job.ctx.log(`blocks ${held[0].job.index + 1}–${job.index + 1}/${layers}: ${m.name} (joint)`);
      await trainGroup(m, o, held);
      for (const mem of held) controller.enqueue(mem.job);
      held = [];
    },
  });
}
