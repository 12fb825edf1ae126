/**
 * Reverse-mode gradients (kernels/autodiff.ts): every rule against central finite differences
 * of the float64 interpreter (kernels/interp.ts), the gradient graph itself run in ONNX Runtime
 * (float32) and in the interpreter (float64); the interpreter's forward against ORT's for every
 * op; the straight-through rules (Round, Floor, Clip) against their definitions; a tiny LLaMA
 * block's MSE gradient with respect to every weight; a fake-quantized linear with learnable
 * weight clipping (LWC) against the STE surrogate; and the time of one training step.
 */
import assert from "node:assert/strict";
import { gradients } from "../kernels/autodiff.ts";
import { DType, Graph, type Value } from "../kernels/graph.ts";
import { evaluate, type InterpTensor, roundHalfEven } from "../kernels/interp.ts";
import { Runtime } from "../kernels/session.ts";
import { Rng, type Tensor } from "../kernels/tensor.ts";
import { addBlock, buildBlockGraph, rmsNorm, rope } from "../models/block_graph.ts";
import { blockTensorShapes, type ModelConfig } from "../models/config.ts";
import { causalMask, ropeTables } from "../models/forward.ts";

// ---------------------------------------------------------------------------------------------
// helpers

type Gen = (rng: Rng) => number;
const normal: Gen = (r) => r.normal();
/** In [0.5, 2]: for Sqrt, Log, Div denominators, Pow bases. */
const positive: Gen = (r) => 0.5 + 1.5 * r.uniform();
/** |v| in [0.3, 1.3]: away from the kinks of Abs and Relu and the pole of Reciprocal. */
const awayFromZero: Gen = (r) => (r.uniform() < 0.5 ? -1 : 1) * (0.3 + r.uniform());

interface InputSpec {
  shape: number[];
  gen?: Gen;
  /** Differentiate with respect to this input (default true). */
  wrt?: boolean;
}

interface RuleCase {
  name: string;
  inputs: Record<string, InputSpec>;
  build: (g: Graph, v: Record<string, Value>) => Value;
}

function size(shape: readonly number[]): number {
  return shape.reduce((p, d) => p * d, 1);
}

function norm(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return Math.sqrt(s);
}

/** ‖a − b‖ / ‖b‖ (absolute when b is zero). */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  const d = Array.from(a, (v, i) => v - b[i]);
  const nb = norm(b);
  return nb === 0 ? norm(d) : norm(d) / nb;
}

/** Values exactly representable in float32, so ORT and the interpreter see the same inputs. */
function sample(rng: Rng, shape: number[], gen: Gen = normal): Float64Array {
  return Float64Array.from({ length: size(shape) }, () => Math.fround(gen(rng)));
}

function staticShape(g: Graph, v: Value): number[] {
  return g.shapeOf(v) as number[];
}

/** loss = Σ y ⊙ R with a fixed random R, as a scalar. */
function weightedSum(g: Graph, y: Value, rng: Rng): Value {
  const shape = staticShape(g, y);
  const r = g.constant(sample(rng, shape), shape);
  return g.op("ReduceSum", [g.mul(y, r)], { keepdims: 0 });
}

function toFeeds(values: Record<string, Float64Array>, shapes: Record<string, number[]>) {
  const feeds: Record<string, Tensor> = {};
  for (const [k, v] of Object.entries(values)) {
    feeds[k] = { data: Float32Array.from(v), shape: shapes[k] };
  }
  return feeds;
}

/**
 * Central differences of the scalar `loss` in float64 (interpreter), with respect to every
 * element of `name`; step 1e-3 × the input's RMS.
 */
function finiteDiff(
  g: Graph,
  loss: string,
  values: Record<string, Float64Array>,
  name: string,
): Float64Array {
  const x = values[name];
  const h = 1e-3 * Math.max(norm(x) / Math.sqrt(x.length), 1e-2);
  const fd = new Float64Array(x.length);
  const at = (feeds: Record<string, Float64Array>) => evaluate(g, feeds, [loss])[loss].data[0];
  for (let i = 0; i < x.length; i++) {
    const plus = x.slice(), minus = x.slice();
    plus[i] += h;
    minus[i] -= h;
    fd[i] = (at({ ...values, [name]: plus }) - at({ ...values, [name]: minus })) / (2 * h);
  }
  return fd;
}

interface CheckResult {
  forward: number;
  ort: Record<string, number>;
  interp: Record<string, number>;
}

/**
 * Builds f, loss = Σ f ⊙ R and its gradients; checks the interpreter's forward against ORT
 * and both gradients (ORT float32, interpreter float64) against finite differences.
 */
async function checkCase(rt: Runtime, c: RuleCase, seed: number): Promise<CheckResult> {
  const rng = new Rng(seed);
  const g = new Graph();
  const vals: Record<string, Value> = {};
  const values: Record<string, Float64Array> = {};
  const shapes: Record<string, number[]> = {};
  for (const [name, spec] of Object.entries(c.inputs)) {
    vals[name] = g.input(name, spec.shape);
    values[name] = sample(rng, spec.shape, spec.gen);
    shapes[name] = spec.shape;
  }
  const y = c.build(g, vals);
  const loss = weightedSum(g, y, rng);
  const wrt = Object.keys(c.inputs).filter((k) => c.inputs[k].wrt !== false);
  const grads = gradients(g, loss, wrt.map((k) => vals[k]));
  g.output(y, "y");
  g.output(loss, "loss");
  grads.forEach((d, i) => g.output(d, `d_${wrt[i]}`));
  const names = wrt.map((k) => `d_${k}`);
  const ort = await rt.run(g.toBytes(), toFeeds(values, shapes));
  const ref = evaluate(g, values, ["y", ...names]);
  assert.deepEqual(ort.y.shape, ref.y.shape, `${c.name}: forward shapes`);
  assert.deepEqual(ref.y.shape, staticShape(g, y), `${c.name}: inferred shape`);
  const result: CheckResult = { forward: relErr(ort.y.data, ref.y.data), ort: {}, interp: {} };
  assert.ok(result.forward < 1e-5, `${c.name}: forward differs from ORT (${result.forward})`);
  for (const k of wrt) {
    const fd = finiteDiff(g, "loss", values, k);
    assert.deepEqual(ort[`d_${k}`].shape, shapes[k], `${c.name}: d_${k} shape`);
    result.ort[k] = relErr(ort[`d_${k}`].data, fd);
    result.interp[k] = relErr(ref[`d_${k}`].data, fd);
    assert.ok(result.ort[k] < 1e-3, `${c.name}: d_${k} (ORT) vs FD rel err ${result.ort[k]}`);
    assert.ok(result.interp[k] < 1e-5, `${c.name}: d_${k} (f64) vs FD rel err ${result.interp[k]}`);
  }
  return result;
}

async function withRuntime(f: (rt: Runtime) => Promise<void>): Promise<void> {
  const rt = new Runtime();
  try {
    await f(rt);
  } finally {
    await rt.release();
  }
}

// ---------------------------------------------------------------------------------------------
// one case (at least) per gradient rule

const unaryCase = (op: string, gen: Gen = normal, attrs = {}): RuleCase => ({
  name: op,
  inputs: { x: { shape: [3, 4], gen } },
  build: (g, { x }) => g.op(op, [x], attrs),
});

const RULE_CASES: RuleCase[] = [
  {
    name: "MatMul 2-D",
    inputs: { a: { shape: [3, 4] }, b: { shape: [4, 5] } },
    build: (g, { a, b }) => g.matmul(a, b),
  },
  {
    name: "MatMul batched, broadcast batch axes",
    inputs: { a: { shape: [2, 1, 3, 4] }, b: { shape: [3, 4, 5] } },
    build: (g, { a, b }) => g.matmul(a, b),
  },
  {
    name: "MatMul 2-D · 3-D",
    inputs: { a: { shape: [3, 4] }, b: { shape: [2, 4, 5] } },
    build: (g, { a, b }) => g.matmul(a, b),
  },
  {
    name: "MatMul 5-D as in GQA",
    inputs: { q: { shape: [1, 2, 3, 4, 5] }, k: { shape: [1, 2, 1, 5, 4] } },
    build: (g, { q, k }) => g.matmul(q, k),
  },
  {
    name: "Gemm + C[n]",
    inputs: { a: { shape: [3, 4] }, b: { shape: [4, 5] }, c: { shape: [5] } },
    build: (g, { a, b, c }) => g.op("Gemm", [a, b, c]),
  },
  {
    name: "Gemm transA, C[m,1]",
    inputs: { a: { shape: [4, 3] }, b: { shape: [4, 5] }, c: { shape: [3, 1] } },
    build: (g, { a, b, c }) => g.op("Gemm", [a, b, c], { transA: 1 }),
  },
  {
    name: "Gemm transB, no C",
    inputs: { a: { shape: [3, 4] }, b: { shape: [5, 4] } },
    build: (g, { a, b }) => g.op("Gemm", [a, b], { transB: 1 }),
  },
  {
    name: "Gemm transA transB alpha beta",
    inputs: { a: { shape: [4, 3] }, b: { shape: [5, 4] }, c: { shape: [3, 5] } },
    build: (g, { a, b, c }) =>
      g.op("Gemm", [a, b, c], { transA: 1, transB: 1, alpha: 0.7, beta: 1.3 }),
  },
  {
    name: "Add (broadcast both ways)",
    inputs: { a: { shape: [2, 1, 4] }, b: { shape: [3, 1] } },
    build: (g, { a, b }) => g.add(a, b),
  },
  {
    name: "Sub",
    inputs: { a: { shape: [3, 4] }, b: { shape: [3, 1] } },
    build: (g, { a, b }) => g.sub(a, b),
  },
  {
    name: "Mul",
    inputs: { a: { shape: [2, 3, 4] }, b: { shape: [1, 3, 1] } },
    build: (g, { a, b }) => g.mul(a, b),
  },
  {
    name: "Div",
    inputs: { a: { shape: [3, 4] }, b: { shape: [4], gen: positive } },
    build: (g, { a, b }) => g.div(a, b),
  },
  {
    name: "Div by a scalar input",
    inputs: { a: { shape: [3, 4] }, b: { shape: [], gen: positive } },
    build: (g, { a, b }) => g.div(a, b),
  },
  unaryCase("Neg"),
  unaryCase("Reciprocal", awayFromZero),
  unaryCase("Sqrt", positive),
  unaryCase("Exp"),
  unaryCase("Log", positive),
  unaryCase("Abs", awayFromZero),
  unaryCase("Sigmoid"),
  unaryCase("Relu", awayFromZero),
  unaryCase("Identity"),
  unaryCase("Cast", normal, { to: DType.float32 }),
  {
    name: "Pow, scalar constant exponent",
    inputs: { x: { shape: [3, 4], gen: positive } },
    build: (g, { x }) => g.op("Pow", [x, g.scalar(2.5)]),
  },
  {
    name: "Pow, exponent tensor not differentiated",
    inputs: { x: { shape: [3, 4], gen: positive }, p: { shape: [4], wrt: false } },
    build: (g, { x, p }) => g.op("Pow", [x, p]),
  },
  {
    name: "Softmax axis -1",
    inputs: { x: { shape: [2, 3, 5] } },
    build: (g, { x }) => g.op("Softmax", [x], { axis: -1 }),
  },
  {
    name: "Softmax axis 1",
    inputs: { x: { shape: [2, 3, 5] } },
    build: (g, { x }) => g.op("Softmax", [x], { axis: 1 }),
  },
  {
    name: "LogSoftmax",
    inputs: { x: { shape: [2, 3, 5] } },
    build: (g, { x }) => g.op("LogSoftmax", [x], { axis: -1 }),
  },
  {
    name: "ReduceMean keepdims",
    inputs: { x: { shape: [2, 3, 4] } },
    build: (g, { x }) => g.reduceMean(x, [-1]),
  },
  {
    name: "ReduceMean two axes, keepdims 0",
    inputs: { x: { shape: [2, 3, 4] } },
    build: (g, { x }) => g.reduceMean(x, [0, 2], 0),
  },
  {
    name: "ReduceSum keepdims 0",
    inputs: { x: { shape: [2, 3, 4] } },
    build: (g, { x }) => g.reduceSum(x, [1], 0),
  },
  {
    name: "ReduceSum all axes (empty axes)",
    inputs: { x: { shape: [2, 3, 4] } },
    build: (g, { x }) => g.reduceSum(x, []),
  },
  {
    name: "ReduceMax",
    inputs: { x: { shape: [3, 5] } },
    build: (g, { x }) => g.reduceMax(x, [1]),
  },
  {
    name: "ReduceMin keepdims 0",
    inputs: { x: { shape: [3, 5] } },
    build: (g, { x }) => g.reduceMin(x, [0], 0),
  },
  {
    name: "Reshape with 0 and -1",
    inputs: { x: { shape: [2, 3, 4] } },
    build: (g, { x }) => g.reshape(x, [0, -1]),
  },
  {
    name: "Transpose",
    inputs: { x: { shape: [2, 3, 4] } },
    build: (g, { x }) => g.transpose(x, [2, 0, 1]),
  },
  {
    name: "Transpose default perm",
    inputs: { x: { shape: [2, 3, 4] } },
    build: (g, { x }) => g.op("Transpose", [x]),
  },
  {
    name: "Slice (negative, clamped bounds)",
    inputs: { x: { shape: [3, 4, 5] } },
    build: (g, { x }) => g.slice(x, [1, -3], [100, -1], [0, 2]),
  },
  {
    name: "Slice without axes",
    inputs: { x: { shape: [4, 5] } },
    build: (g, { x }) => g.op("Slice", [x, g.int64([1, 0]), g.int64([3, 2])]),
  },
  {
    name: "Concat",
    inputs: { a: { shape: [2, 3] }, b: { shape: [2, 1] }, c: { shape: [2, 2] } },
    build: (g, { a, b, c }) => g.concat([a, b, c], -1),
  },
  {
    name: "Unsqueeze",
    inputs: { x: { shape: [3, 4] } },
    build: (g, { x }) => g.op("Unsqueeze", [x, g.int64([0, -1])]),
  },
  {
    name: "Squeeze",
    inputs: { x: { shape: [3, 1, 4, 1] } },
    build: (g, { x }) => g.op("Squeeze", [x, g.int64([1])]),
  },
  {
    name: "Squeeze all unit axes",
    inputs: { x: { shape: [3, 1, 4, 1] } },
    build: (g, { x }) => g.op("Squeeze", [x]),
  },
  {
    name: "Expand",
    inputs: { x: { shape: [3, 1] } },
    build: (g, { x }) => g.op("Expand", [x, g.int64([2, 3, 4])]),
  },
  {
    name: "Where (to the selected branch)",
    inputs: { a: { shape: [3, 4] }, b: { shape: [4] } },
    build: (g, { a, b }) => {
      const cond = g.op("Greater", [g.constant([1, -1, 2], [3, 1]), g.scalar(0)]);
      return g.op("Where", [cond, a, b]);
    },
  },
  {
    name: "Max (to the selected input)",
    inputs: { a: { shape: [3, 4] }, b: { shape: [4] } },
    build: (g, { a, b }) => g.op("Max", [a, b]),
  },
  {
    name: "Min of three",
    inputs: { a: { shape: [3, 4] }, b: { shape: [4] }, c: { shape: [3, 1] } },
    build: (g, { a, b, c }) => g.op("Min", [a, b, c]),
  },
  {
    name: "Gather axis 1, constant indices with repeats and negatives",
    inputs: { x: { shape: [4, 5] } },
    build: (g, { x }) => g.op("Gather", [x, g.int64([0, 3, 3, -1, 1, 0], [2, 3])], { axis: 1 }),
  },
  {
    name: "Gather axis 0, scalar index",
    inputs: { x: { shape: [4, 5] } },
    build: (g, { x }) => g.op("Gather", [x, g.int64([2], [])]),
  },
  {
    name: "Clip away from its bounds (min, max as inputs)",
    inputs: {
      x: { shape: [4, 5], gen: (r) => 0.2 + 0.1 * Math.floor(r.uniform() * 10) + 0.05 },
      lo: { shape: [], gen: () => 0.5 },
      hi: { shape: [], gen: () => 0.9 },
    },
    build: (g, { x, lo, hi }) => g.op("Clip", [x, lo, hi]),
  },
  {
    name: "a value used several times (gradients summed)",
    inputs: { x: { shape: [3, 4] } },
    build: (g, { x }) => g.add(g.mul(x, x), g.add(g.op("Exp", [x]), g.reduceMean(x, [0]))),
  },
  {
    name: "RMSNorm (block_graph.rmsNorm)",
    inputs: { x: { shape: [3, 8] }, w: { shape: [8] } },
    build: (g, { x, w }) => rmsNorm(g, x, w, 1e-5),
  },
  {
    name: "RoPE (block_graph.rope)",
    inputs: {
      x: { shape: [1, 3, 2, 4] },
      cos: { shape: [3, 1, 2], wrt: false },
      sin: { shape: [3, 1, 2], wrt: false },
    },
    build: (g, { x, cos, sin }) => rope(g, x, cos, sin, 4),
  },
];

Deno.test("every gradient rule agrees with finite differences", async () => {
  await withRuntime(async (rt) => {
    const lines: string[] = [];
    let seed = 1;
    for (const c of RULE_CASES) {
      const r = await checkCase(rt, c, seed++);
      const errs = Object.keys(r.ort).map((k) =>
        `${k} ${r.ort[k].toExponential(1)}/${r.interp[k].toExponential(1)}`
      );
      lines.push(`${c.name}: fwd ${r.forward.toExponential(1)}; ${errs.join(", ")}`);
    }
    console.log("rel err vs FD (ORT f32 / interp f64):\n" + lines.join("\n"));
  });
});

Deno.test("every rule of the table has a case", async () => {
  const { GRADIENT_RULES } = await import("../kernels/autodiff.ts");
  const covered = new Set(RULE_CASES.map((c) => c.name.split(/[ ,(]/)[0]));
  for (const s of ["Round", "Floor", "Clip"]) covered.add(s); // STE tests below
  for (const op of Object.keys(GRADIENT_RULES)) assert.ok(covered.has(op), `no case for ${op}`);
});

// ---------------------------------------------------------------------------------------------
// straight-through estimators

async function steGradient(
  rt: Runtime,
  build: (g: Graph, x: Value, extra: Value[]) => Value,
  x: number[],
  extra: number[] = [],
) {
  const g = new Graph();
  const xv = g.input("x", [x.length]);
  const ev = extra.map((_, i) => g.input(`e${i}`, []));
  const y = build(g, xv, ev);
  const r = Array.from(x, (_, i) => 1 + i);
  const loss = g.op("ReduceSum", [g.mul(y, g.constant(r))], { keepdims: 0 });
  const grads = gradients(g, loss, [xv, ...ev]);
  g.output(y, "y");
  grads.forEach((d, i) => g.output(d, `d${i}`));
  const feeds: Record<string, Tensor> = { x: { data: Float32Array.from(x), shape: [x.length] } };
  extra.forEach((v, i) => feeds[`e${i}`] = { data: Float32Array.from([v]), shape: [] });
  const out = await rt.run(g.toBytes(), feeds);
  const values: Record<string, Float64Array> = { x: Float64Array.from(x) };
  extra.forEach((v, i) => values[`e${i}`] = Float64Array.from([v]));
  const ref = evaluate(g, values, ["y"]).y.data;
  return {
    r,
    y: Array.from(out.y.data),
    ref: Array.from(ref),
    d: grads.map((_, i) => out[`d${i}`]),
  };
}

Deno.test("Round and Floor: straight-through gradient, half-to-even forward", async () => {
  await withRuntime(async (rt) => {
    const x = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, 3.7, -3.2];
    const round = await steGradient(rt, (g, v) => g.op("Round", [g.mul(v, g.scalar(3))]), x);
    assert.deepEqual(round.d[0].data, Float32Array.from(round.r, (v) => 3 * v));
    const ties = await steGradient(rt, (g, v) => g.op("Round", [v]), x);
    assert.deepEqual(ties.y, [0, 2, 2, -0, -2, -2, 0, 4, -3]);
    assert.deepEqual(ties.ref, ties.y, "interpreter rounds like ORT");
    assert.deepEqual(ties.d[0].data, Float32Array.from(ties.r));
    const floor = await steGradient(rt, (g, v) => g.op("Floor", [v]), x);
    assert.deepEqual(floor.y, x.map(Math.floor));
    assert.deepEqual(floor.ref, floor.y);
    assert.deepEqual(floor.d[0].data, Float32Array.from(floor.r));
  });
});

Deno.test("Clip passes the gradient where min ≤ x ≤ max; min/max get it where x is clipped", async () => {
  await withRuntime(async (rt) => {
    const lo = -0.5, hi = 1.25;
    const x = [-2, -0.5, -0.25, 0, 1, 1.25, 1.5, 3, -0.75];
    const clip = await steGradient(rt, (g, v, [a, b]) => g.op("Clip", [v, a, b]), x, [lo, hi]);
    assert.deepEqual(clip.y, x.map((v) => Math.min(Math.max(v, lo), hi)));
    assert.deepEqual(clip.ref, clip.y);
    // torch.clamp: boundaries included (x = −0.5 and x = 1.25 keep their gradient)
    const inside = x.map((v, i) => v >= lo && v <= hi ? clip.r[i] : 0);
    assert.deepEqual(Array.from(clip.d[0].data), inside);
    const sumWhere = (f: (v: number) => boolean) =>
      x.reduce((s, v, i) => s + (f(v) ? clip.r[i] : 0), 0);
    assert.equal(clip.d[1].data[0], sumWhere((v) => v < lo));
    assert.equal(clip.d[2].data[0], sumWhere((v) => v > hi));
    assert.deepEqual(clip.d[1].shape, []);
    // only an upper bound (min omitted), and constant bounds
    const upper = await steGradient(rt, (g, v) => g.op("Clip", [v, null, g.scalar(hi)]), x);
    assert.deepEqual(Array.from(upper.d[0].data), x.map((v, i) => v <= hi ? upper.r[i] : 0));
    const fixed = await steGradient(rt, (g, v) => g.op("Clip", [v, g.scalar(lo), g.scalar(hi)]), x);
    assert.deepEqual(Array.from(fixed.d[0].data), inside);
  });
});

// ---------------------------------------------------------------------------------------------
// gradient flow: stops, zeros, errors

Deno.test("non-differentiable ops stop gradients; unused inputs get zeros", async () => {
  await withRuntime(async (rt) => {
    const g = new Graph();
    const x = g.input("x", [2, 3]), u = g.input("u", [4]);
    const chosen = g.op("Where", [g.op("Greater", [x, g.scalar(0)]), g.scalar(1), g.scalar(2)]);
    const cast = g.op("Cast", [g.op("Cast", [x], { to: DType.int64 })], { to: DType.float32 });
    const flags = g.op("Cast", [g.op("And", [
      g.op("Equal", [x, x]),
      g.op("Less", [x, g.scalar(5)]),
    ])], { to: DType.float32 });
    const y = g.add(g.add(chosen, cast), g.mul(flags, g.scalar(3)));
    const loss = g.reduceSum(y, [0, 1]);
    const [dx, du] = gradients(g, loss, [x, u]);
    g.output(dx, "dx");
    g.output(du, "du");
    assert.deepEqual(g.shapeOf(dx), [2, 3]);
    assert.deepEqual(g.shapeOf(du), [4]);
    const out = await rt.run(g.toBytes(), {
      x: { data: Float32Array.from([1, -2, 3, 0.5, -0.1, 7]), shape: [2, 3] },
      u: { data: new Float32Array(4), shape: [4] },
    });
    assert.deepEqual(Array.from(out.dx.data), [0, 0, 0, 0, 0, 0]);
    assert.deepEqual(Array.from(out.du.data), [0, 0, 0, 0]);
  });
});

Deno.test("an op without a rule on the path is named; off the path it is fine", () => {
  const g = new Graph();
  const x = g.input("x", [2, 3]);
  const tiled = g.op("Tile", [x, g.int64([2, 1])]);
  assert.deepEqual(g.shapeOf(tiled), [4, 3]);
  const loss = g.reduceSum(tiled, [0, 1]);
  assert.throws(() => gradients(g, loss, [x]), /no gradient rule for op Tile/);
  const h = new Graph();
  const a = h.input("a", [3]), b = h.input("b", [3]);
  const l2 = h.reduceSum(h.add(a, h.op("Tile", [b, h.int64([1])])), [0]);
  assert.deepEqual(h.shapeOf(gradients(h, l2, [a])[0]), [3]);
  const p = new Graph();
  const base = p.input("base", [3], DType.float32), e = p.input("e", [3]);
  const l3 = p.reduceSum(p.op("Pow", [base, e]), [0]);
  assert.throws(() => gradients(p, l3, [e]), /Pow has no gradient for its input 1/);
  assert.throws(() => gradients(p, p.op("Exp", [base]), [base]), /must be a scalar/);
});

// ---------------------------------------------------------------------------------------------
// the interpreter's forward against ORT for the ops without a gradient case

Deno.test("interpreter forward equals ORT for comparison, logic, index and layout ops", async () => {
  await withRuntime(async (rt) => {
    const rng = new Rng(9);
    const xv = sample(rng, [3, 4]);
    xv[5] = xv[6]; // a tie for Equal
    const f32 = (g: Graph, v: Value) => g.op("Cast", [v], { to: DType.float32 });
    const cases: [string, (g: Graph, x: Value) => Value][] = [
      ["Equal", (g, x) => f32(g, g.op("Equal", [x, g.transpose(g.reshape(x, [4, 3]), [1, 0])]))],
      ["Equal (tie)", (g, x) => f32(g, g.op("Equal", [x, g.slice(x, [2], [3], [1])]))],
      ["Greater", (g, x) => f32(g, g.op("Greater", [x, g.scalar(0.1)]))],
      ["Less", (g, x) => f32(g, g.op("Less", [x, g.constant([0, 1, -1, 0.5])]))],
      ["GreaterOrEqual", (g, x) => f32(g, g.op("GreaterOrEqual", [x, g.reduceMax(x, [1])]))],
      ["LessOrEqual", (g, x) => f32(g, g.op("LessOrEqual", [x, g.reduceMin(x, [0])]))],
      [
        "And / Or / Not",
        (g, x) => {
          const a = g.op("Greater", [x, g.scalar(0)]), b = g.op("Less", [x, g.scalar(1)]);
          return g.add(
            f32(g, g.op("And", [a, b])),
            g.mul(f32(g, g.op("Or", [g.op("Not", [a]), b])), g.scalar(2)),
          );
        },
      ],
      [
        "Cast to int64 and back",
        (g, x) => f32(g, g.op("Cast", [g.mul(x, g.scalar(3))], { to: 7 })),
      ],
      ["Cast to bool", (g, x) => f32(g, g.op("Cast", [g.op("Relu", [x])], { to: DType.bool }))],
      ["Sign", (g, x) => g.op("Sign", [g.op("Relu", [x])])],
      ["Round", (g, x) => g.op("Round", [g.mul(x, g.scalar(4))])],
      ["Floor", (g, x) => g.op("Floor", [g.mul(x, g.scalar(4))])],
      ["Clip", (g, x) => g.op("Clip", [x, g.scalar(-0.3), g.scalar(0.4)])],
      ["Clip (no bounds)", (g, x) => g.op("Clip", [x])],
      ["Tile", (g, x) => g.op("Tile", [x, g.int64([2, 3])])],
      [
        "GatherElements",
        (g, x) => g.op("GatherElements", [x, g.int64([3, 0, 1, 1, -1, 2], [3, 2])], { axis: 1 }),
      ],
      [
        "Gather (2-D indices, axis 0)",
        (g, x) => g.op("Gather", [x, g.int64([2, 0, 1, 2], [2, 2])]),
      ],
      ["Pad", (g, x) => g.op("Pad", [x, g.int64([1, 0, 2, 3])])],
      [
        "Pad (axes, value)",
        (g, x) => g.op("Pad", [x, g.int64([1, 2]), g.scalar(7), g.int64([-1])]),
      ],
      ["Shape", (g, x) => f32(g, g.op("Shape", [x]))],
      [
        "Where (scalar branches)",
        (g, x) => g.op("Where", [g.op("Greater", [x, g.scalar(0)]), g.scalar(1), x]),
      ],
      [
        "Slice with step -2",
        (g, x) => g.op("Slice", [x, g.int64([3]), g.int64([-100]), g.int64([1]), g.int64([-2])]),
      ],
      [
        "Slice with step 2",
        (g, x) =>
          g.op("Slice", [x, g.int64([0, 1]), g.int64([3, 4]), g.int64([0, 1]), g.int64([2, 2])]),
      ],
      ["Sum", (g, x) => g.op("Sum", [x, g.scalar(1), g.constant([1, 2, 3, 4])])],
      [
        "ReduceSum noop_with_empty_axes",
        (g, x) => g.op("ReduceSum", [x, g.int64([])], { noop_with_empty_axes: 1 }),
      ],
      ["MatMul 1-D · 2-D", (g, x) => g.matmul(g.constant([1, 2, 3]), x)],
      ["MatMul 2-D · 1-D", (g, x) => g.matmul(x, g.constant([1, -1, 2, 0.5]))],
    ];
    for (const [name, build] of cases) {
      const g = new Graph();
      const x = g.input("x", [3, 4]);
      const y = build(g, x);
      g.output(y, "y");
      const out = (await rt.run(g.toBytes(), { x: { data: Float32Array.from(xv), shape: [3, 4] } }))
        .y;
      const ref = evaluate(g, { x: xv }, ["y"]).y;
      assert.deepEqual(out.shape, ref.shape, `${name}: shape`);
      assert.deepEqual(g.shapeOf(y), ref.shape, `${name}: inferred shape`);
      assert.ok(relErr(out.data, ref.data) < 1e-6, `${name}: ${out.data} vs ${ref.data}`);
    }
  });
});

Deno.test("shape inference: symbolic dimensions, mismatches, read-only records", () => {
  const g = new Graph();
  const a = g.input("a", ["m", "k"]), b = g.input("b", ["n", "k"]);
  const c = g.op("Gemm", [a, b], { transB: 1 });
  assert.deepEqual(g.shapeOf(c), ["m", "n"]);
  assert.deepEqual(g.shapeOf(g.reshape(c, [0, -1, 1])), ["m", "?", 1]);
  assert.deepEqual(g.shapeOf(g.matmul(g.input("x", [2, 1, "t", 4]), g.input("w", [3, 4, 5]))), [
    2,
    3,
    "t",
    5,
  ]);
  assert.throws(() => g.matmul(g.input("p", [2, 3]), g.input("q", [4, 5])), /inner sizes differ/);
  assert.throws(() => g.add(g.input("r", [2, 3]), g.input("s", [4])), /do not broadcast/);
  assert.throws(() => g.reshape(g.input("t", [2, 3]), [4, 2]), /cannot reshape/);
  const nodes = g.nodes();
  assert.equal(nodes[0].type, "Gemm");
  assert.deepEqual(nodes[0].inputs, ["a", "b"]);
  assert.throws(() => (nodes[0].inputs as string[]).push("z"));
  const perm = g.int64([1, 0]);
  assert.deepEqual(g.int64Values(perm), [1, 0]);
  assert.equal(g.int64Values(a), undefined);
  assert.deepEqual(g.constantOf(g.constant([1, 2], [2, 1]))?.shape, [2, 1]);
  assert.equal(g.dtypeOf(g.op("Equal", [a, a])), DType.bool);
  assert.throws(() => g.shapeOf(g.op("SomeCustomOp", [a], {}, "com.microsoft")), /unknown/);
});

// ---------------------------------------------------------------------------------------------
// (a) the LLaMA block: MSE gradient with respect to every weight

const TINY: ModelConfig = {
  modelType: "llama",
  hidden: 8,
  intermediate: 12,
  layers: 1,
  heads: 2,
  kvHeads: 1,
  headDim: 4,
  vocab: 16,
  maxSeq: 64,
  rmsEps: 1e-5,
  ropeTheta: 10000,
  tiedEmbeddings: false,
  qkvBias: true,
  bos: 1,
  eos: 2,
};

interface MseBlock {
  graph: Graph;
  loss: Value;
  grads: Record<string, Value>;
  shapes: Record<string, number[]>;
}

/** MSE(block(x; W), target) with gradients with respect to x and every weight. */
function mseBlockGraph(c: ModelConfig, batch: number, seqlen: number): MseBlock {
  const g = new Graph();
  const shapes: Record<string, number[]> = {
    x: [batch, seqlen, c.hidden],
    target: [batch, seqlen, c.hidden],
    cos: [seqlen, 1, c.headDim / 2],
    sin: [seqlen, 1, c.headDim / 2],
    mask: [seqlen, seqlen],
    ...blockTensorShapes(c),
  };
  const v: Record<string, Value> = {};
  for (const [name, shape] of Object.entries(shapes)) v[name] = g.input(name, shape);
  const w = Object.fromEntries(Object.keys(blockTensorShapes(c)).map((k) => [k, v[k]]));
  const { y } = addBlock(g, c, { batch, seqlen }, {
    x: v.x,
    cos: v.cos,
    sin: v.sin,
    mask: v.mask,
    w,
  });
  const err = g.sub(y, v.target);
  const loss = g.reduceMean(g.mul(err, err), [0, 1, 2], 0);
  const wrt = ["x", ...Object.keys(w)];
  const d = gradients(g, loss, wrt.map((k) => v[k]));
  g.output(loss, "loss");
  const grads: Record<string, Value> = {};
  wrt.forEach((k, i) => {
    g.output(d[i], `d:${k}`);
    grads[k] = d[i];
  });
  return { graph: g, loss, grads, shapes };
}

function blockValues(c: ModelConfig, shapes: Record<string, number[]>, seqlen: number, rng: Rng) {
  const { cos, sin } = ropeTables(c, seqlen);
  const values: Record<string, Float64Array> = {
    cos: Float64Array.from(cos.data),
    sin: Float64Array.from(sin.data),
    mask: Float64Array.from(causalMask(seqlen, c.slidingWindow).data),
  };
  for (const [k, shape] of Object.entries(shapes)) {
    if (values[k]) continue;
    const gen: Gen = k.endsWith("norm.weight")
      ? (r) => 1 + 0.2 * r.normal()
      : k === "x" || k === "target"
      ? normal
      : (r) => 0.4 * r.normal();
    values[k] = sample(rng, shape, gen);
  }
  return values;
}

Deno.test("LLaMA block: MSE gradient wrt every weight and the input matches FD (float64)", async () => {
  await withRuntime(async (rt) => {
    const B = 2, T = 5;
    const { graph, grads, shapes } = mseBlockGraph(TINY, B, T);
    const values = blockValues(TINY, shapes, T, new Rng(42));
    const out = await rt.run(graph.toBytes(), toFeeds(values, shapes));
    const lossRef = evaluate(graph, values, ["loss"]).loss.data[0];
    assert.ok(Math.abs(out.loss.data[0] - lossRef) < 1e-5 * lossRef, "forward loss");
    const report: string[] = [];
    for (const k of Object.keys(grads)) {
      const fd = finiteDiff(graph, "loss", values, k);
      const e = relErr(out[`d:${k}`].data, fd);
      report.push(`${k} ${e.toExponential(2)}`);
      assert.ok(norm(fd) > 0, `${k}: the loss does not depend on it`);
      assert.ok(e < 1e-3, `${k}: ORT gradient vs FD rel err ${e}`);
    }
    console.log("block MSE gradients, rel err vs FD: " + report.join(", "));
  });
});

Deno.test("family block (q/k norm, every bias, window 3): MSE gradients match FD (float64)", async () => {
  const c: ModelConfig = {
    ...TINY,
    modelType: "qwen3",
    qkNorm: true,
    oProjBias: true,
    mlpBias: true,
    slidingWindow: 3,
  };
  await withRuntime(async (rt) => {
    const B = 2, T = 5;
    const { graph, grads, shapes } = mseBlockGraph(c, B, T);
    assert.ok(grads["self_attn.q_norm.weight"] && grads["mlp.up_proj.bias"]);
    const values = blockValues(c, shapes, T, new Rng(43));
    const out = await rt.run(graph.toBytes(), toFeeds(values, shapes));
    for (const k of Object.keys(grads)) {
      const fd = finiteDiff(graph, "loss", values, k);
      const e = relErr(out[`d:${k}`].data, fd);
      assert.ok(norm(fd) > 0, `${k}: the loss does not depend on it`);
      assert.ok(e < 1e-3, `${k}: ORT gradient vs FD rel err ${e}`);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// (b) fake-quantized linear with learnable weight clipping (LWC)

/** How Round is built: the real op, or the STE surrogate of the test. */
type RoundFn = (g: Graph, u: Value) => Value;

/** Per-token asymmetric min-max fake quantization (as block_graph's), Round injectable. */
function fqPerToken(g: Graph, x: Value, bits: number, round: RoundFn): Value {
  const maxq = 2 ** bits - 1, zero0 = g.scalar(0);
  let xmin = g.op("Min", [g.reduceMin(x, [-1]), zero0]);
  let xmax = g.op("Max", [g.reduceMax(x, [-1]), zero0]);
  const flat = g.op("And", [g.op("Equal", [xmin, zero0]), g.op("Equal", [xmax, zero0])]);
  xmin = g.op("Where", [flat, g.scalar(-1), xmin]);
  xmax = g.op("Where", [flat, g.scalar(1), xmax]);
  const scale = g.div(g.sub(xmax, xmin), g.scalar(maxq));
  const zp = round(g, g.div(g.op("Neg", [xmin]), scale));
  const q = g.op("Clip", [g.add(round(g, g.div(x, scale)), zp), zero0, g.scalar(maxq)]);
  return g.mul(scale, g.sub(q, zp));
}

interface LwcParts {
  /** The input of Clip in the weight quantizer (round(W/s) + zero). */
  qw: Value;
  y: Value;
}

/** y = fq(x)·fq_w(W)ᵀ, fq_w with per-row clipping xmax' = σ(γ)·max, xmin' = σ(β)·min. */
function lwcLinear(
  g: Graph,
  x: Value,
  w: Value,
  gamma: Value,
  beta: Value,
  bits: { a: number; w: number },
  round: RoundFn,
): LwcParts {
  const maxq = 2 ** bits.w - 1;
  const xmax = g.mul(g.op("Sigmoid", [gamma]), g.reduceMax(w, [1]));
  const xmin = g.mul(g.op("Sigmoid", [beta]), g.reduceMin(w, [1]));
  const scale = g.div(g.sub(xmax, xmin), g.scalar(maxq));
  const zero = round(g, g.div(g.op("Neg", [xmin]), scale));
  const qw = g.add(round(g, g.div(w, scale)), zero);
  const q = g.op("Clip", [qw, g.scalar(0), g.scalar(maxq)]);
  const wq = g.mul(g.sub(q, zero), scale);
  return { qw, y: g.op("Gemm", [fqPerToken(g, x, bits.a, round), wq], { transB: 1 }) };
}

Deno.test("LWC fake-quantized linear: STE gradients wrt γ, β, x equal the STE surrogate's FD", async () => {
  await withRuntime(async (rt) => {
    const N = 3, K = 6, M = 3, bits = { a: 8, w: 4 }, maxq = 2 ** bits.w - 1;
    const shapes: Record<string, number[]> = { x: [N, K], w: [M, K], gamma: [M, 1], beta: [M, 1] };
    const build = (round: RoundFn) => {
      const g = new Graph();
      const v = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, g.input(k, s)]));
      const parts = lwcLinear(g, v.x, v.w, v.gamma, v.beta, bits, round);
      const loss = weightedSum(g, parts.y, new Rng(5));
      return { g, v, parts, loss };
    };
    // The inputs of every Round, in build order, to freeze their rounding offsets.
    const roundInputs: Value[] = [];
    const real = build((g, u) => {
      roundInputs.push(u);
      return g.op("Round", [u]);
    });
    // Weights whose quantized values all lie off the clip bounds 0 and maxq, where the STE
    // gradient is that of a kink (the surrogate below would see one side on each FD step).
    let values: Record<string, Float64Array> | undefined;
    for (let seed = 1; seed < 500 && !values; seed++) {
      const rng = new Rng(seed);
      const cand = {
        x: sample(rng, shapes.x),
        w: sample(rng, shapes.w),
        gamma: sample(rng, shapes.gamma, (r) => 1 + r.uniform()),
        beta: sample(rng, shapes.beta, (r) => 1 + r.uniform()),
      };
      const qw = evaluate(real.g, cand, [real.parts.qw.name])[real.parts.qw.name].data;
      if (qw.every((q) => q !== 0 && q !== maxq)) values = cand;
    }
    assert.ok(values, "no weights off the clip bounds");
    const qw = evaluate(real.g, values, [real.parts.qw.name])[real.parts.qw.name].data;
    assert.ok(qw.some((q) => q < 0) && qw.some((q) => q > maxq), "LWC clips some weights");

    const wrt = ["x", "gamma", "beta"];
    const grads = gradients(real.g, real.loss, wrt.map((k) => real.v[k]));
    grads.forEach((d, i) => real.g.output(d, `d_${wrt[i]}`));
    real.g.output(real.loss, "loss");
    const out = await rt.run(real.g.toBytes(), toFeeds(values, shapes));

    // STE surrogate: round(u) ≡ u + (round(u₀) − u₀), the offset frozen at the evaluation point;
    // its derivative is the identity, and its value equals round's there.
    const at = evaluate(real.g, values, roundInputs.map((u) => u.name));
    const offsets = roundInputs.map((u) => {
      const t: InterpTensor = at[u.name];
      for (const v of t.data) {
        const frac = Math.abs(v - Math.floor(v) - 0.5);
        assert.ok(frac > 1e-3, `a rounding input ${v} is at a tie`);
      }
      return { data: t.data.map((v) => roundHalfEven(v) - v), shape: t.shape };
    });
    // The offsets are inputs, not (float32) constants, to stay exact in float64.
    let k = 0;
    const surrogate = build((g, u) => g.add(u, g.input(`offset${k++}`, staticShape(g, u))));
    const surrogateValues = { ...values };
    offsets.forEach((o, i) => surrogateValues[`offset${i}`] = o.data);
    const lossAt = (b: { g: Graph; loss: Value }, v: Record<string, Float64Array>) =>
      evaluate(b.g, v, [b.loss.name])[b.loss.name].data[0];
    const l0 = lossAt(real, values);
    assert.ok(Math.abs(lossAt(surrogate, surrogateValues) - l0) < 1e-9 * Math.abs(l0));
    const report: string[] = [];
    for (const name of wrt) {
      const fd = finiteDiff(surrogate.g, surrogate.loss.name, surrogateValues, name);
      const e = relErr(out[`d_${name}`].data, fd);
      report.push(`${name} ${e.toExponential(2)}`);
      assert.ok(norm(fd) > 0, `${name}: zero gradient`);
      assert.ok(e < 1e-3, `${name}: STE gradient vs surrogate FD rel err ${e}`);
    }
    // With round ≡ identity (no offsets) the scale's rounding-error terms vanish: the test can
    // tell the difference.
    const identity = build((_g, u) => u);
    const e = relErr(
      out.d_gamma.data,
      finiteDiff(identity.g, identity.loss.name, values, "gamma"),
    );
    assert.ok(e > 1e-2, `round ≡ identity agrees too well for γ (${e})`);
    console.log(
      `LWC STE gradients, rel err vs FD: ${report.join(", ")}; ` +
        `γ vs round ≡ identity: ${e.toExponential(2)}`,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// cost of the backward graph

// Reverse mode costs a small constant multiple of the forward (the backward of each op is one or
// two ops of the same size): a rule that recomputed or expanded work would break the bound.
Deno.test("a forward+backward step of a LLaMA block costs under 10× its forward", async () => {
  await withRuntime(async (rt) => {
    const c: ModelConfig = {
      ...TINY,
      hidden: 128,
      intermediate: 384,
      heads: 8,
      kvHeads: 4,
      headDim: 16,
      qkvBias: false,
      maxSeq: 256,
    };
    const T = 256;
    const { graph, shapes } = mseBlockGraph(c, 1, T);
    const feeds = toFeeds(blockValues(c, shapes, T, new Rng(3)), shapes);
    const bytes = graph.toBytes();
    const fwdBytes = buildBlockGraph(c, { batch: 1, seqlen: T });
    const time = async (b: Uint8Array, f: Record<string, Tensor>) => {
      for (let i = 0; i < 3; i++) await rt.run(b, f);
      const ts: number[] = [];
      for (let i = 0; i < 10; i++) {
        const t0 = performance.now();
        await rt.run(b, f);
        ts.push(performance.now() - t0);
      }
      return ts.sort((p, q) => p - q)[5];
    };
    const step = await time(bytes, feeds);
    const { target: _t, ...fwdFeeds } = feeds;
    const fwd = await time(fwdBytes, fwdFeeds);
    console.log(
      `block d=128 ff=384 8/4 heads T=256: forward+backward ${step.toFixed(2)} ms/step ` +
        `(forward only ${fwd.toFixed(2)} ms; ${graph.nodes().length} nodes; ` +
        `${navigator.hardwareConcurrency} threads)`,
    );
    assert.ok(step < 10 * fwd, `forward+backward ${step} ms against forward ${fwd} ms`);
  });
});
