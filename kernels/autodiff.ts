/**
 * Reverse-mode differentiation of graphs built with {@linkcode Graph}: {@linkcode gradients}
 * appends the backward nodes to the same graph, so forward and backward run as one ONNX Runtime
 * session per training step.
 *
 * The gradient rules are one table, {@linkcode GRADIENT_RULES}, one short function per op. A
 * rule returns, per input, a thunk that builds that input's gradient (or null where none flows);
 * only the thunks of inputs that depend on a `wrt` value are called, so no node is emitted for
 * gradients nobody needs.
 *
 * Choices at non-differentiable points:
 * - Round and Floor use the straight-through estimator: their gradient is the identity.
 * - Clip follows torch.clamp: the gradient reaches `x` where min ≤ x ≤ max (boundaries
 *   included); the `min` input receives it where x < min and `max` where x > max, so that
 *   clipping ranges can be learned.
 * - ReduceMax/ReduceMin, and Max/Min between inputs, share the gradient equally among tied
 *   elements (as torch.amax does), so the total is conserved.
 * - Relu passes the gradient where x > 0 (none at 0, as torch).
 * - Comparisons, logic, Shape, Sign and casts to non-float types stop gradients.
 * @module
 */
import {
  attrNumber,
  DType,
  type Graph,
  type GraphNode,
  isFloatType,
  reduceAxes,
  sliceRange,
  type Value,
} from "./graph.ts";

/** Builds the gradient of one input. */
export type GradThunk = () => Value;

/** What a rule sees: the node, its inputs and outputs, the output's gradient and helpers. */
export interface RuleContext {
  /** The graph being differentiated; rules add their gradient nodes to it. */
  readonly g: Graph;
  /** The node whose inputs' gradients the rule builds. */
  readonly node: GraphNode;
  /** The node's inputs (a missing optional input has the name `""`). */
  readonly x: readonly Value[];
  /** The node's outputs. */
  readonly y: readonly Value[];
  /** The gradient of the loss with respect to the first output. */
  readonly gy: Value;
  /** The static shape of a value (every dimension a number). */
  shape(v: Value): number[];
  /** The values of the int64 constant at input `i`; throws when it is not a constant. */
  ints(i: number): number[];
  /** Sums a gradient shaped like the output over the axes input `i` was broadcast along. */
  unbroadcast(grad: Value, i: number): Value;
}

/** One gradient rule: per input, a thunk building its gradient, or null (no gradient). */
export type GradientRule = (c: RuleContext) => (GradThunk | null)[];

/** Ops whose outputs are treated as constants: no gradient flows through them. */
export const NON_DIFFERENTIABLE: ReadonlySet<string> = new Set([
  "Equal",
  "And",
  "Or",
  "Not",
  "Xor",
  "Greater",
  "Less",
  "GreaterOrEqual",
  "LessOrEqual",
  "Shape",
  "Sign",
  "ArgMax",
  "ArgMin",
  "IsNaN",
  "IsInf",
  "ConstantOfShape",
]);

/**
 * Appends to `g` the gradient of the scalar `loss` with respect to each value of `wrt`, and
 * returns them (same shapes; a zero tensor where the loss does not depend on the value).
 * Gradients of values used by several nodes are summed. Throws, naming the op, when a node
 * on a path from a `wrt` value to the loss has no rule in {@linkcode GRADIENT_RULES}.
 */
export function gradients(g: Graph, loss: Value, wrt: Value[]): Value[] {
  const nodes = g.nodes();
  const lossShape = staticShape(g, loss);
  if (lossShape.some((d) => d !== 1)) {
    throw new Error(`gradients: the loss must be a scalar, "${loss.name}" is [${lossShape}]`);
  }
  for (const v of wrt) {
    if (!isFloatType(g.dtypeOf(v))) throw new Error(`gradients: "${v.name}" is not a float`);
  }
  const live = liveValues(g, nodes, wrt);
  const grads = new Map<string, Value>();
  const accumulate = (v: Value, d: Value, nd: GraphNode) => {
    const want = staticShape(g, v), got = staticShape(g, d);
    if (want.join() !== got.join()) {
      throw new Error(
        `gradients: the ${nd.type} rule gave [${got}] for "${v.name}" of shape [${want}]`,
      );
    }
    const prev = grads.get(v.name);
    grads.set(v.name, prev ? g.add(prev, d) : d);
  };
  if (live.has(loss.name)) grads.set(loss.name, g.constant([1], lossShape));
  for (let n = nodes.length - 1; n >= 0; n--) {
    const nd = nodes[n];
    const gy = grads.get(nd.outputs[0]);
    const needed = nd.inputs.map((name) => name !== "" && live.has(name));
    if (!needed.some(Boolean) || !nd.outputs.some((o) => grads.has(o))) continue;
    const rule = nd.domain ? undefined : GRADIENT_RULES[nd.type];
    if (!rule) {
      throw new Error(
        `gradients: no gradient rule for op ${nd.type} (node making "${nd.outputs[0]}"), ` +
          "which lies between a wrt value and the loss",
      );
    }
    if (!gy || nd.outputs.slice(1).some((o) => grads.has(o))) {
      throw new Error(`gradients: ${nd.type}: only the first output can be differentiated`);
    }
    const thunks = rule(context(g, nd, gy));
    nd.inputs.forEach((name, i) => {
      if (!needed[i]) return;
      const t = thunks[i];
      if (!t) {
        throw new Error(
          `gradients: op ${nd.type} has no gradient for its input ${i} ("${name}"), ` +
            "which depends on a wrt value",
        );
      }
      accumulate({ name }, t(), nd);
    });
  }
  return wrt.map((v) => grads.get(v.name) ?? zeros(g, staticShape(g, v)));
}

/** Values that depend differentiably on a `wrt` value (float values reached through ops). */
function liveValues(g: Graph, nodes: readonly GraphNode[], wrt: Value[]): Set<string> {
  const live = new Set(wrt.map((v) => v.name));
  for (const nd of nodes) {
    if (NON_DIFFERENTIABLE.has(nd.type)) continue;
    if (!nd.inputs.some((name) => name !== "" && live.has(name))) continue;
    for (const o of nd.outputs) if (isFloatType(g.dtypeOf({ name: o }))) live.add(o);
  }
  return live;
}

function staticShape(g: Graph, v: Value): number[] {
  const s = g.shapeOf(v);
  if (s.some((d) => typeof d !== "number")) {
    throw new Error(`gradients: "${v.name}" has a symbolic shape [${s}]; static shapes needed`);
  }
  return s as number[];
}

function context(g: Graph, node: GraphNode, gy: Value): RuleContext {
  const x = node.inputs.map((name) => ({ name }));
  const y = node.outputs.map((name) => ({ name }));
  const shape = (v: Value) => staticShape(g, v);
  return {
    g,
    node,
    x,
    y,
    gy,
    shape,
    ints: (i) => {
      const v = node.inputs[i] ? g.int64Values(x[i]) : undefined;
      if (!v) throw new Error(`gradients: ${node.type} input ${i} must be an int64 constant`);
      return v;
    },
    unbroadcast: (grad, i) => sumTo(g, grad, shape(grad), shape(x[i])),
  };
}

// ---------------------------------------------------------------------------------------------
// small graph helpers shared by the rules

/** Sums `v` (shaped `from`) down to `to` under numpy broadcasting rules. */
function sumTo(g: Graph, v: Value, from: number[], to: number[]): Value {
  if (from.join() === to.join()) return v;
  const lead = from.length - to.length;
  const axes = from.flatMap((d, i) => i < lead || (to[i - lead] === 1 && d !== 1) ? [i] : []);
  const summed = axes.length ? g.reduceSum(v, axes, 1) : v;
  return g.reshape(summed, to);
}

function zeros(g: Graph, shape: number[]): Value {
  return g.op("Expand", [g.scalar(0), g.int64(shape)]);
}

function neg(g: Graph, v: Value): Value {
  return g.op("Neg", [v]);
}

function expandTo(g: Graph, v: Value, shape: number[]): Value {
  return g.op("Expand", [v, g.int64(shape)]);
}

function toFloat(g: Graph, v: Value): Value {
  return g.op("Cast", [v], { to: DType.float32 });
}

/** Where(cond, v, 0). */
function where0(g: Graph, cond: Value, v: Value): Value {
  return g.op("Where", [cond, v, g.scalar(0)]);
}

/** Swaps the last two axes. */
function swapLast(g: Graph, v: Value, rank: number): Value {
  const perm = Array.from({ length: rank }, (_, i) => i);
  [perm[rank - 2], perm[rank - 1]] = [perm[rank - 1], perm[rank - 2]];
  return g.transpose(v, perm);
}

/** A reduction's output gradient reshaped to the input's rank (reduced axes of size 1). */
function keptGrad(c: RuleContext): { axes: number[]; gk: Value; xs: number[] } {
  const xs = c.shape(c.x[0]);
  const axes = reduceAxes(xs.length, c.node.attrs, c.node.inputs[1] ? c.ints(1) : undefined)!;
  const kept = xs.map((d, i) => axes.includes(i) ? 1 : d);
  return { axes, gk: c.g.reshape(c.gy, kept), xs };
}

/** Gradient for an argmax/argmin-like selection: shared equally among elements equal to y. */
function selectGrad(c: RuleContext): Value {
  const { g } = c;
  const { axes, gk, xs } = keptGrad(c);
  const yk = g.reshape(c.y[0], xs.map((d, i) => axes.includes(i) ? 1 : d));
  const mask = toFloat(g, g.op("Equal", [c.x[0], yk]));
  return g.mul(g.div(mask, g.reduceSum(mask, axes, 1)), gk);
}

/** Max/Min between inputs: input i gets the gradient where it equals y, shared among ties. */
function minMaxGrad(c: RuleContext, i: number): Value {
  const { g } = c;
  const masks = c.x.map((xj) => toFloat(g, g.op("Equal", [xj, c.y[0]])));
  const count = masks.reduce((a, b) => g.add(a, b));
  return c.unbroadcast(g.mul(c.gy, g.div(masks[i], count)), i);
}

function softmaxAxis(c: RuleContext): number {
  return attrNumber(c.node.attrs.axis, -1);
}

function gemmGrads(c: RuleContext): (GradThunk | null)[] {
  const { g, gy } = c;
  const [a, b, cIn] = c.x;
  const alpha = attrNumber(c.node.attrs.alpha, 1), beta = attrNumber(c.node.attrs.beta, 1);
  const tA = attrNumber(c.node.attrs.transA, 0), tB = attrNumber(c.node.attrs.transB, 0);
  const gemm = (p: Value, q: Value, ta: number, tb: number) => {
    const attrs: Record<string, number | { float: number }> = {};
    if (ta) attrs.transA = 1;
    if (tb) attrs.transB = 1;
    if (alpha !== 1) attrs.alpha = { float: alpha };
    return g.op("Gemm", [p, q], attrs);
  };
  return [
    () => tA ? gemm(b, gy, tB, 1) : gemm(gy, b, 0, 1 - tB),
    () => tB ? gemm(gy, a, 1, tA) : gemm(a, gy, 1 - tA, 0),
    cIn && cIn.name ? () => c.unbroadcast(beta === 1 ? gy : g.mul(gy, g.scalar(beta)), 2) : null,
  ];
}

function clipGrads(c: RuleContext): (GradThunk | null)[] {
  const { g, gy } = c;
  const [x, lo, hi] = c.x;
  const has = (v: Value | undefined): v is Value => !!v && v.name !== "";
  const conds: Value[] = [];
  if (has(lo)) conds.push(g.op("GreaterOrEqual", [x, lo]));
  if (has(hi)) conds.push(g.op("LessOrEqual", [x, hi]));
  return [
    () => conds.length ? where0(g, conds.reduce((p, q) => g.op("And", [p, q])), gy) : gy,
    has(lo) ? () => c.unbroadcast(where0(g, g.op("Less", [x, lo]), gy), 1) : null,
    has(hi) ? () => c.unbroadcast(where0(g, g.op("Greater", [x, hi]), gy), 2) : null,
  ];
}

/**
 * Gather along an axis, 1-D indices: constant indices scatter back through a one-hot matrix
 * product; indices computed at run time (e.g. channel-reassembly maps fed as inputs) through
 * ScatterElements with reduction "add".
 */
function gatherGrad(c: RuleContext): Value {
  const { g } = c;
  const xs = c.shape(c.x[0]);
  const axis = attrNumber(c.node.attrs.axis, 0);
  const a = axis < 0 ? axis + xs.length : axis;
  const n = xs[a];
  const pre = xs.slice(0, a).reduce((p, d) => p * d, 1);
  const post = xs.slice(a + 1).reduce((p, d) => p * d, 1);
  const idx = c.g.int64Values(c.x[1]);
  if (!idx) {
    const ishape = c.shape(c.x[1]);
    if (ishape.length !== 1) {
      throw new Error("gradients: Gather with run-time indices needs 1-D indices");
    }
    const k = ishape[0];
    const gy3 = g.reshape(c.gy, [pre, k, post]);
    const spread = g.op("Expand", [g.reshape(c.x[1], [1, k, 1]), g.int64([pre, k, post])]);
    const zero = g.constant(new Float32Array(pre * n * post), [pre, n, post]);
    return g.reshape(
      g.op("ScatterElements", [zero, spread, gy3], { axis: 1, reduction: "add" }),
      xs,
    );
  }
  const k = idx.length;
  const onehot = new Float32Array(n * k);
  idx.forEach((j, i) => onehot[(j < 0 ? j + n : j) * k + i] = 1);
  const gathered = g.matmul(g.constant(onehot, [n, k]), g.reshape(c.gy, [pre, k, post]));
  return g.reshape(gathered, xs);
}

function sliceGrad(c: RuleContext): Value {
  const xs = c.shape(c.x[0]);
  const starts = c.ints(1), ends = c.ints(2);
  const axes = c.node.inputs[3] ? c.ints(3) : starts.map((_, i) => i);
  const steps = c.node.inputs[4] ? c.ints(4) : starts.map(() => 1);
  const pads = new Array(2 * xs.length).fill(0);
  axes.forEach((ax, i) => {
    if (steps[i] !== 1) throw new Error("gradients: Slice is differentiated only with step 1");
    const a = ax < 0 ? ax + xs.length : ax;
    const r = sliceRange(xs[a], starts[i], ends[i], 1);
    pads[a] = r.start;
    pads[a + xs.length] = xs[a] - r.start - r.count;
  });
  return c.g.op("Pad", [c.gy, c.g.int64(pads)]);
}

function concatGrads(c: RuleContext): GradThunk[] {
  const rank = c.shape(c.x[0]).length;
  const a0 = attrNumber(c.node.attrs.axis, 0);
  const axis = a0 < 0 ? a0 + rank : a0;
  let offset = 0;
  return c.x.map((xi) => {
    const start = offset;
    offset += c.shape(xi)[axis];
    return () => c.g.slice(c.gy, [start], [start + c.shape(xi)[axis]], [axis]);
  });
}

function matmulGrads(c: RuleContext): GradThunk[] {
  const { g, gy } = c;
  const [a, b] = c.x;
  const ra = c.shape(a).length, rb = c.shape(b).length;
  if (ra < 2 || rb < 2) throw new Error("gradients: MatMul is differentiated for ≥ 2-D operands");
  return [
    () => c.unbroadcast(g.matmul(gy, swapLast(g, b, rb)), 0),
    () => c.unbroadcast(g.matmul(swapLast(g, a, ra), gy), 1),
  ];
}

const reshapeBack: GradientRule = (c) => [() => c.g.reshape(c.gy, c.shape(c.x[0])), null];
const identity: GradientRule = (c) => [() => c.gy];

/** The gradient rules, one per op. */
export const GRADIENT_RULES: Readonly<Record<string, GradientRule>> = {
  Identity: identity,
  // straight-through estimators
  Round: identity,
  Floor: identity,
  Cast: (c) => [() => c.g.op("Cast", [c.gy], { to: c.g.dtypeOf(c.x[0]) })],
  Add: (c) => [() => c.unbroadcast(c.gy, 0), () => c.unbroadcast(c.gy, 1)],
  Sub: (c) => [() => c.unbroadcast(c.gy, 0), () => c.unbroadcast(neg(c.g, c.gy), 1)],
  Mul: (c) => [
    () => c.unbroadcast(c.g.mul(c.gy, c.x[1]), 0),
    () => c.unbroadcast(c.g.mul(c.gy, c.x[0]), 1),
  ],
  Div: (c) => [
    () => c.unbroadcast(c.g.div(c.gy, c.x[1]), 0),
    () => c.unbroadcast(neg(c.g, c.g.div(c.g.mul(c.gy, c.y[0]), c.x[1])), 1),
  ],
  Neg: (c) => [() => neg(c.g, c.gy)],
  Reciprocal: (c) => [() => neg(c.g, c.g.mul(c.gy, c.g.mul(c.y[0], c.y[0])))],
  Sqrt: (c) => [() => c.g.div(c.g.mul(c.gy, c.g.scalar(0.5)), c.y[0])],
  Pow: (c) => [
    () => {
      const { g } = c;
      const dp = g.mul(c.x[1], g.op("Pow", [c.x[0], g.sub(c.x[1], g.scalar(1))]));
      return c.unbroadcast(g.mul(c.gy, dp), 0);
    },
    null, // the exponent must not depend on a wrt value
  ],
  Exp: (c) => [() => c.g.mul(c.gy, c.y[0])],
  Log: (c) => [() => c.g.div(c.gy, c.x[0])],
  Abs: (c) => [() => c.g.mul(c.gy, c.g.op("Sign", [c.x[0]]))],
  Sigmoid: (c) => [() => c.g.mul(c.gy, c.g.mul(c.y[0], c.g.sub(c.g.scalar(1), c.y[0])))],
  Relu: (c) => [() => where0(c.g, c.g.op("Greater", [c.x[0], c.g.scalar(0)]), c.gy)],
  Softmax: (c) => [() => {
    const { g } = c;
    const dot = g.reduceSum(g.mul(c.gy, c.y[0]), [softmaxAxis(c)], 1);
    return g.mul(c.y[0], g.sub(c.gy, dot));
  }],
  LogSoftmax: (c) => [() => {
    const { g } = c;
    const total = g.reduceSum(c.gy, [softmaxAxis(c)], 1);
    return g.sub(c.gy, g.mul(g.op("Exp", [c.y[0]]), total));
  }],
  ReduceSum: (c) => [() => {
    const { gk, xs } = keptGrad(c);
    return expandTo(c.g, gk, xs);
  }, null],
  ReduceMean: (c) => [() => {
    const { axes, gk, xs } = keptGrad(c);
    const n = axes.reduce((p, a) => p * xs[a], 1);
    return expandTo(c.g, c.g.div(gk, c.g.scalar(n)), xs);
  }, null],
  ReduceMax: (c) => [() => selectGrad(c), null],
  ReduceMin: (c) => [() => selectGrad(c), null],
  Max: (c) => c.x.map((_, i) => () => minMaxGrad(c, i)),
  Min: (c) => c.x.map((_, i) => () => minMaxGrad(c, i)),
  Where: (c) => [
    null,
    () => c.unbroadcast(where0(c.g, c.x[0], c.gy), 1),
    () => c.unbroadcast(c.g.op("Where", [c.x[0], c.g.scalar(0), c.gy]), 2),
  ],
  Clip: clipGrads,
  Reshape: reshapeBack,
  Unsqueeze: reshapeBack,
  Squeeze: reshapeBack,
  Expand: (c) => [() => c.unbroadcast(c.gy, 0), null],
  Transpose: (c) => {
    const rank = c.shape(c.x[0]).length;
    const p = c.node.attrs.perm as number[] | undefined ??
      Array.from({ length: rank }, (_, i) => rank - 1 - i);
    const inverse = new Array<number>(rank);
    p.forEach((src, i) => inverse[src] = i);
    return [() => c.g.transpose(c.gy, inverse)];
  },
  Slice: (c) => [() => sliceGrad(c), null, null, null, null],
  Concat: concatGrads,
  Gather: (c) => [() => gatherGrad(c), null],
  MatMul: matmulGrads,
  Gemm: gemmGrads,
};
