/**
 * Zero-shot multiple-choice accuracy by lm-evaluation-harness's log-likelihood protocol: each
 * choice is scored as the summed log-probability of its continuation tokens given the context;
 * `acc` takes the argmax of the sums, `acc_norm` of the sums divided by each choice's length in
 * characters (the harness's `len(choice)`; `acc_bytes` divides by UTF-8 bytes), and each comes
 * with the standard error of a mean, as the harness computes it. The model behind the scores is
 * any {@linkcode LogLikelihood} backend.
 * @module
 */
import type { TextTokenizer } from "../text/tokenizer.ts";
import type { LogLikelihood, LoglikelihoodRequest, LoglikelihoodResult } from "./loglikelihood.ts";
import { readTask, type Task, type TaskFormat, type TaskMetric } from "./tasks.ts";

/**
 * The token ids of a (context, continuation) pair as the harness's causal models make them:
 * trailing whitespace of the context moves to the continuation; the whole string is encoded,
 * then split at the length of the context's own encoding (so a token merged across the boundary
 * counts as the continuation's). Our tokenizers put the BOS first, as the harness's Hugging
 * Face models do by default; an empty context is that BOS alone (the harness's prefix token).
 */
export function encodePair(
  tok: TextTokenizer,
  context: string,
  continuation: string,
): LoglikelihoodRequest {
  const kept = context.trimEnd();
  const moved = context.slice(kept.length) + continuation;
  const whole = tok.encode(kept + moved);
  let ctx = tok.encode(kept);
  const cont = whole.slice(ctx.length);
  // A tokenizer that adds no BOS: the prefix token (the harness uses EOS where there is no BOS).
  if (ctx.length === 0) ctx = [tok.bos ?? tok.eos];
  return { context: ctx, continuation: cont };
}

/** numpy's argmax: the first NaN if any, else the first maximum. */
function argmax(v: readonly number[]): number {
  let best = 0;
  for (let i = 0; i < v.length; i++) {
    if (Number.isNaN(v[i])) return i;
    if (v[i] > v[best]) best = i;
  }
  return best;
}

/** Standard error of a mean as the harness computes it (sample deviation, n − 1); null if n < 2. */
export function meanStderr(xs: readonly number[]): number | null {
  const n = xs.length;
  if (n < 2) return null;
  let mean = 0;
  for (const x of xs) mean += x;
  mean /= n;
  let ss = 0;
  for (const x of xs) ss += (x - mean) ** 2;
  return Math.sqrt(ss / (n - 1)) / Math.sqrt(n);
}

/** Every choice's score, per question, of one task. */
export interface TaskScores {
  /** The task scored. */
  task: Task;
  /** `choices[q][i]`: question q's choice i. */
  choices: LoglikelihoodResult[][];
  /** Choices whose continuation encoded to no token (scored 0, as the harness does). */
  emptyContinuations: number;
}

/** A task's accuracies, as the report keeps them. */
export interface TaskResult {
  /** The task's format. */
  format: TaskFormat;
  /** Questions scored. */
  questions: number;
  /** The accuracies the harness reports for this task. */
  metrics: TaskMetric[];
  /** Fraction of questions whose highest-scoring choice is the gold one. */
  acc: number;
  /** Standard error of `acc`. */
  acc_stderr: number | null;
  /** The same with each sum divided by its choice's length in characters. */
  acc_norm: number;
  /** Standard error of `acc_norm`. */
  acc_norm_stderr: number | null;
  /** The same with each sum divided by its choice's length in UTF-8 bytes. */
  acc_bytes: number;
  /** Standard error of `acc_bytes`. */
  acc_bytes_stderr: number | null;
  /** Continuations that encoded to no token (see {@linkcode TaskScores}). */
  empty_continuations: number;
}

/** Scores every task through one pass of `model` (the backend sees all requests at once). */
export async function scoreTasks(
  model: LogLikelihood,
  tok: TextTokenizer,
  tasks: readonly Task[],
): Promise<TaskScores[]> {
  const requests: LoglikelihoodRequest[] = [];
  for (const t of tasks) {
    for (const q of t.questions) {
      for (const r of q.requests) requests.push(encodePair(tok, r.context, r.continuation));
    }
  }
  const results = await model.loglikelihood(requests);
  let k = 0;
  return tasks.map((task) => {
    let empty = 0;
    const choices = task.questions.map((q) =>
      q.requests.map(() => {
        if (requests[k].continuation.length === 0) empty++;
        return results[k++];
      })
    );
    return { task, choices, emptyContinuations: empty };
  });
}

/** A task's accuracies and their standard errors from its scores. */
export function taskMetrics(s: TaskScores): TaskResult {
  const acc: number[] = [], norm: number[] = [], bytes: number[] = [];
  const enc = new TextEncoder();
  s.task.questions.forEach((q, i) => {
    const lls = s.choices[i].map((c) => c.logprob);
    const hit = (pred: number) => pred === q.gold ? 1 : 0;
    acc.push(hit(argmax(lls)));
    norm.push(hit(argmax(lls.map((l, j) => l / [...q.choices[j]].length))));
    bytes.push(hit(argmax(lls.map((l, j) => l / enc.encode(q.choices[j]).length))));
  });
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  return {
    format: s.task.format,
    questions: acc.length,
    metrics: s.task.metrics,
    acc: mean(acc),
    acc_stderr: meanStderr(acc),
    acc_norm: mean(norm),
    acc_norm_stderr: meanStderr(norm),
    acc_bytes: mean(bytes),
    acc_bytes_stderr: meanStderr(bytes),
    empty_continuations: s.emptyContinuations,
  };
}

/** What {@linkcode evaluateTasks} takes besides the model. */
export interface EvaluateTasksOptions {
  /** Only the first N questions of each task. */
  limit?: number;
  /** Receives progress and warnings. */
  log?: (msg: string) => void;
}

/**
 * Reads task files and scores them through `model` (one pass for all of them); results by task
 * name (each file's name without its extension).
 */
export async function evaluateTasks(
  model: LogLikelihood,
  tok: TextTokenizer,
  files: readonly string[],
  o: EvaluateTasksOptions = {},
): Promise<Record<string, TaskResult>> {
  const tasks: Task[] = [];
  for (const f of files) {
    const t = await readTask(f, { limit: o.limit });
    const twin = tasks.find((u) => u.name === t.name);
    if (twin) throw new Error(`--tasks: ${twin.path} and ${f} would both be reported as ${t.name}`);
    tasks.push(t);
  }
  const n = tasks.reduce((s, t) => s + t.questions.length, 0);
  o.log?.(`tasks: ${n} questions from ${tasks.map((t) => `${t.name} (${t.format})`).join(", ")}`);
  const out: Record<string, TaskResult> = {};
  for (const s of await scoreTasks(model, tok, tasks)) {
    if (s.emptyContinuations) {
      o.log?.(
        `${s.task.path}: warning: ${s.emptyContinuations} continuations encode to no token of ` +
          `their own (the tokenizer merges them into the context); scored 0 as the harness does`,
      );
    }
    out[s.task.name] = taskMetrics(s);
  }
  return out;
}

/** One line for a task's result: its accuracies ± standard errors. */
export function formatTaskResult(name: string, r: TaskResult): string {
  const pct = (v: number, se: number | null) =>
    `${(100 * v).toFixed(2)}${se === null ? "" : ` ± ${(100 * se).toFixed(2)}`} %`;
  const parts = [`acc ${pct(r.acc, r.acc_stderr)}`];
  if (r.metrics.includes("acc_norm")) parts.push(`acc_norm ${pct(r.acc_norm, r.acc_norm_stderr)}`);
  return `${name}: ${parts.join(", ")} (${r.questions} questions)`;
}
