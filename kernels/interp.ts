/**
 * A small float64 interpreter of {@linkcode Graph}s, independent of ONNX Runtime: the reference
 * that finite-difference tests and gradient checks evaluate. Every value is held as float64
 * (integers and booleans too); shapes come from the data, so symbolic input dimensions work when
 * feeds carry their shapes. Round is round-half-to-even, as ONNX and torch.
 * @module
 */
import { type Attr, attrNumber, type Graph, type GraphNode } from "./graph.ts";

/** A float64 tensor in row-major order. */
export interface InterpTensor {
  /** Values, row-major. */
  data: Float64Array;
  /** Dimensions (`[]` for a scalar). */
  shape: number[];
}

/**
 * Evaluates the named values of `g` (inputs, constants or node outputs) on `feeds` in float64.
 * A feed given as a plain array takes its input's declared (numeric) shape. Only the nodes the
 * requested outputs depend on are run.
 */
export function evaluate(
  g: Graph,
  feeds: Record<string, Float64Array | InterpTensor>,
  outputs: string[],
): Record<string, InterpTensor> {
  const env = new Map<string, InterpTensor>();
  for (const input of g.inputs()) {
    const f = feeds[input.name];
    if (f === undefined) continue;
    if (f instanceof Float64Array) {
      if (input.shape.some((d) => typeof d !== "number")) {
        throw new Error(`evaluate: feed "${input.name}" needs a shape (its input is symbolic)`);
      }
      env.set(input.name, make(f, input.shape as number[]));
    } else {
      env.set(input.name, make(f.data, f.shape));
    }
  }
  const nodes = g.nodes();
  const producer = new Map<string, number>();
  nodes.forEach((nd, i) => nd.outputs.forEach((o) => producer.set(o, i)));
  const wanted = new Set<number>();
  const visit = (name: string) => {
    if (name === "" || env.has(name)) return;
    const i = producer.get(name);
    if (i === undefined) {
      const c = g.constantOf({ name });
      if (!c) throw new Error(`evaluate: no feed for "${name}"`);
      env.set(name, make(Float64Array.from(c.data), [...c.shape]));
      return;
    }
    if (wanted.has(i)) return;
    wanted.add(i);
    nodes[i].inputs.forEach(visit);
  };
  outputs.forEach(visit);
  for (const i of [...wanted].sort((a, b) => a - b)) {
    const nd = nodes[i];
    const kernel = KERNELS[nd.type];
    if (!kernel || nd.domain) throw new Error(`evaluate: no kernel for op ${nd.type}`);
    const ins = nd.inputs.map((n) => n === "" ? undefined : env.get(n)!);
    let outs: InterpTensor[];
    try {
      outs = kernel(ins, nd.attrs, nd);
    } catch (e) {
      throw new Error(`evaluate: ${nd.type} making "${nd.outputs[0]}": ${(e as Error).message}`);
    }
    nd.outputs.forEach((o, j) => env.set(o, outs[j]));
  }
  return Object.fromEntries(outputs.map((o) => [o, env.get(o)!]));
}

function make(data: Float64Array, shape: number[]): InterpTensor {
  if (data.length !== size(shape)) {
    throw new Error(`evaluate: ${data.length} values do not fill [${shape.join(", ")}]`);
  }
  return { data, shape };
}

function size(shape: readonly number[]): number {
  return shape.reduce((p, d) => p * d, 1);
}

function strides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

function normAxis(a: number, rank: number): number {
  const r = a < 0 ? a + rank : a;
  if (!(r >= 0 && r < rank)) throw new Error(`axis ${a} out of range for rank ${rank}`);
  return r;
}

function broadcastShape(shapes: number[][]): number[] {
  const rank = Math.max(0, ...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (const s of shapes) {
    s.forEach((d, i) => {
      const j = rank - s.length + i;
      if (out[j] === 1) out[j] = d;
      else if (d !== 1 && d !== out[j]) throw new Error(`shapes do not broadcast: ${d}, ${out[j]}`);
    });
  }
  return out;
}

/**
 * For every element of `out` (row-major), the flat index of the element of a tensor shaped
 * `from` that maps to it under broadcasting: `from` is right-aligned and its axes of size 1
 * repeat.
 */
function indexMap(from: readonly number[], out: readonly number[]): Int32Array {
  const n = size(out), rank = out.length;
  const map = new Int32Array(n);
  const fs = strides(from), lead = rank - from.length;
  const step = out.map((_, a) => a >= lead && from[a - lead] !== 1 ? fs[a - lead] : 0);
  const idx = new Array<number>(rank).fill(0);
  let off = 0;
  for (let i = 0; i < n; i++) {
    map[i] = off;
    for (let a = rank - 1; a >= 0; a--) {
      off += step[a];
      if (++idx[a] < out[a]) break;
      off -= step[a] * out[a];
      idx[a] = 0;
    }
  }
  return map;
}

/** Elementwise map over broadcast inputs. */
function broadcastMap(ins: InterpTensor[], f: (v: number[]) => number): InterpTensor {
  const shape = broadcastShape(ins.map((t) => t.shape));
  const maps = ins.map((t) => indexMap(t.shape, shape));
  const out = new Float64Array(size(shape));
  const v = new Array<number>(ins.length);
  for (let i = 0; i < out.length; i++) {
    for (let k = 0; k < ins.length; k++) v[k] = ins[k].data[maps[k][i]];
    out[i] = f(v);
  }
  return { data: out, shape };
}

function binary(f: (a: number, b: number) => number): Kernel {
  return (ins) => [broadcastMap(ins as InterpTensor[], (v) => f(v[0], v[1]))];
}

function unary(f: (a: number) => number): Kernel {
  return ([x]) => [{ data: x!.data.map(f), shape: [...x!.shape] }];
}

function variadic(f: (a: number, b: number) => number): Kernel {
  return (ins) => [broadcastMap(ins as InterpTensor[], (v) => v.reduce(f))];
}

/** Round half to even (keeping the sign of a zero result, as ONNX Runtime and torch do). */
export function roundHalfEven(v: number): number {
  const f = Math.floor(v), d = v - f;
  const r = d < 0.5 ? f : d > 0.5 ? f + 1 : f % 2 === 0 ? f : f + 1;
  return r === 0 && (v < 0 || Object.is(v, -0)) ? -0 : r;
}

type Kernel = (
  ins: (InterpTensor | undefined)[],
  attrs: Readonly<Record<string, Attr>>,
  node: GraphNode,
) => InterpTensor[];

const ints = (t: InterpTensor | undefined) => t ? Array.from(t.data) : undefined;
const num = attrNumber;

function reduce(init: number, f: (acc: number, v: number) => number, mean = false): Kernel {
  return ([x, axesT], attrs) => {
    const rank = x!.shape.length;
    const given = ints(axesT) ?? (Array.isArray(attrs.axes) ? attrs.axes : undefined);
    const axes = given && given.length
      ? given.map((a) => normAxis(a, rank))
      : num(attrs.noop_with_empty_axes, 0)
      ? []
      : x!.shape.map((_, i) => i);
    const kept = x!.shape.map((d, i) => axes.includes(i) ? 1 : d);
    const map = indexMap(kept, x!.shape);
    const out = new Float64Array(size(kept)).fill(init);
    for (let i = 0; i < x!.data.length; i++) out[map[i]] = f(out[map[i]], x!.data[i]);
    if (mean) {
      const n = axes.reduce((p, a) => p * x!.shape[a], 1);
      for (let i = 0; i < out.length; i++) out[i] /= n;
    }
    const keep = num(attrs.keepdims, 1) !== 0;
    return [{ data: out, shape: keep ? kept : x!.shape.filter((_, i) => !axes.includes(i)) }];
  };
}

function softmax(log: boolean): Kernel {
  return ([x], attrs) => {
    const shape = x!.shape, a = normAxis(num(attrs.axis, -1), shape.length);
    const n = shape[a], inner = size(shape.slice(a + 1)), outer = size(shape.slice(0, a));
    const out = new Float64Array(x!.data.length);
    for (let o = 0; o < outer; o++) {
      for (let k = 0; k < inner; k++) {
        const at = (j: number) => (o * n + j) * inner + k;
        let max = -Infinity, z = 0;
        for (let j = 0; j < n; j++) max = Math.max(max, x!.data[at(j)]);
        for (let j = 0; j < n; j++) z += Math.exp(x!.data[at(j)] - max);
        for (let j = 0; j < n; j++) {
          const v = x!.data[at(j)] - max;
          out[at(j)] = log ? v - Math.log(z) : Math.exp(v) / z;
        }
      }
    }
    return [{ data: out, shape: [...shape] }];
  };
}

/** Copies `x` into `shape` where `src(outIndex)` gives each element's source multi-index. */
function gatherBy(
  x: InterpTensor,
  shape: number[],
  src: (idx: number[]) => number[] | null,
  fill = 0,
): InterpTensor {
  const xs = strides(x.shape), n = size(shape);
  const out = new Float64Array(n);
  const idx = new Array<number>(shape.length).fill(0);
  for (let i = 0; i < n; i++) {
    const s = src(idx);
    out[i] = s ? x.data[s.reduce((p, v, a) => p + v * xs[a], 0)] : fill;
    for (let a = shape.length - 1; a >= 0; a--) {
      if (++idx[a] < shape[a]) break;
      idx[a] = 0;
    }
  }
  return { data: out, shape };
}

function reshapeTo(x: InterpTensor, target: number[]): InterpTensor {
  const shape = target.map((t, i) => t === 0 ? x.shape[i] : t);
  const free = shape.indexOf(-1);
  if (free >= 0) shape[free] = x.data.length / size(shape.filter((_, i) => i !== free));
  return make(x.data, shape);
}

function sliceBounds(dim: number, start: number, end: number, step: number) {
  const clamp = (v: number, lo: number, hi: number) => Math.min(Math.max(v, lo), hi);
  let s = start < 0 ? start + dim : start, e = end < 0 ? end + dim : end;
  [s, e] = step > 0
    ? [clamp(s, 0, dim), clamp(e, 0, dim)]
    : [clamp(s, 0, dim - 1), clamp(e, -1, dim - 1)];
  return { s, count: Math.max(0, Math.ceil((e - s) / step)) };
}

function matmul(a: InterpTensor, b: InterpTensor): InterpTensor {
  const as = a.shape.length === 1 ? [1, a.shape[0]] : a.shape;
  const bs = b.shape.length === 1 ? [b.shape[0], 1] : b.shape;
  const [m, k] = as.slice(-2), [k2, n] = bs.slice(-2);
  if (k !== k2) throw new Error(`inner sizes differ: ${k} ≠ ${k2}`);
  const batch = broadcastShape([as.slice(0, -2), bs.slice(0, -2)]);
  const ma = indexMap(as.slice(0, -2), batch), mb = indexMap(bs.slice(0, -2), batch);
  const out = new Float64Array(size(batch) * m * n);
  for (let p = 0; p < ma.length; p++) {
    const ao = ma[p] * m * k, bo = mb[p] * k * n, oo = p * m * n;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let t = 0; t < k; t++) s += a.data[ao + i * k + t] * b.data[bo + t * n + j];
        out[oo + i * n + j] = s;
      }
    }
  }
  const shape = [...batch];
  if (a.shape.length > 1) shape.push(m);
  if (b.shape.length > 1) shape.push(n);
  return { data: out, shape };
}

function transpose2(x: InterpTensor): InterpTensor {
  return gatherBy(x, [x.shape[1], x.shape[0]], ([i, j]) => [j, i]);
}

function castTo(to: number): (v: number) => number {
  if (to === 9) return (v) => v !== 0 ? 1 : 0;
  if (to === 1 || to === 10 || to === 11 || to === 16) return (v) => v;
  return Math.trunc;
}

const KERNELS: Record<string, Kernel> = {
  Identity: ([x]) => [x!],
  Neg: unary((v) => -v),
  Reciprocal: unary((v) => 1 / v),
  Sqrt: unary(Math.sqrt),
  Exp: unary(Math.exp),
  Log: unary(Math.log),
  Abs: unary(Math.abs),
  Sign: unary(Math.sign),
  Sigmoid: unary((v) => 1 / (1 + Math.exp(-v))),
  Tanh: unary(Math.tanh),
  Relu: unary((v) => Math.max(v, 0)),
  Round: unary(roundHalfEven),
  Floor: unary(Math.floor),
  Ceil: unary(Math.ceil),
  Not: unary((v) => v ? 0 : 1),
  Cast: ([x], attrs) => [{ data: x!.data.map(castTo(attrs.to as number)), shape: [...x!.shape] }],
  Clip: ([x, lo, hi]) => {
    const l = lo ? lo.data[0] : -Infinity, h = hi ? hi.data[0] : Infinity;
    return [{ data: x!.data.map((v) => Math.min(Math.max(v, l), h)), shape: [...x!.shape] }];
  },
  Add: binary((a, b) => a + b),
  Sub: binary((a, b) => a - b),
  Mul: binary((a, b) => a * b),
  Div: binary((a, b) => a / b),
  Pow: binary(Math.pow),
  Equal: binary((a, b) => a === b ? 1 : 0),
  Greater: binary((a, b) => a > b ? 1 : 0),
  Less: binary((a, b) => a < b ? 1 : 0),
  GreaterOrEqual: binary((a, b) => a >= b ? 1 : 0),
  LessOrEqual: binary((a, b) => a <= b ? 1 : 0),
  And: binary((a, b) => a && b ? 1 : 0),
  Or: binary((a, b) => a || b ? 1 : 0),
  Max: variadic((a, b) => Math.max(a, b)),
  Min: variadic((a, b) => Math.min(a, b)),
  Sum: variadic((a, b) => a + b),
  Where: (ins) => [broadcastMap(ins as InterpTensor[], ([c, a, b]) => c ? a : b)],
  Softmax: softmax(false),
  LogSoftmax: softmax(true),
  ReduceSum: reduce(0, (a, v) => a + v),
  ReduceMean: reduce(0, (a, v) => a + v, true),
  ReduceMax: reduce(-Infinity, Math.max),
  ReduceMin: reduce(Infinity, Math.min),
  MatMul: ([a, b]) => [matmul(a!, b!)],
  Gemm: ([a, b, c], attrs) => {
    const at = num(attrs.transA, 0) ? transpose2(a!) : a!;
    const bt = num(attrs.transB, 0) ? transpose2(b!) : b!;
    // ONNX float attributes are float32
    const alpha = Math.fround(num(attrs.alpha, 1)), beta = Math.fround(num(attrs.beta, 1));
    const y = matmul(at, bt);
    if (!c) return [{ data: y.data.map((v) => alpha * v), shape: y.shape }];
    return [broadcastMap([y, c], ([p, q]) => alpha * p + beta * q)];
  },
  Reshape: ([x, s]) => [reshapeTo(x!, ints(s)!)],
  Unsqueeze: ([x, a], attrs) => {
    const axes = ints(a) ?? (attrs.axes as number[]);
    const rank = x!.shape.length + axes.length;
    const at = new Set(axes.map((v) => normAxis(v, rank)));
    const shape: number[] = [];
    for (let i = 0, j = 0; i < rank; i++) shape.push(at.has(i) ? 1 : x!.shape[j++]);
    return [make(x!.data, shape)];
  },
  Squeeze: ([x, a], attrs) => {
    const given = ints(a) ?? (attrs.axes as number[] | undefined);
    const axes = given ? given.map((v) => normAxis(v, x!.shape.length)) : null;
    const shape = x!.shape.filter((d, i) => axes ? !axes.includes(i) : d !== 1);
    return [make(x!.data, shape)];
  },
  Expand: ([x, s]) => {
    const shape = broadcastShape([x!.shape, ints(s)!]);
    const map = indexMap(x!.shape, shape);
    return [{ data: Float64Array.from(map, (j) => x!.data[j]), shape }];
  },
  Tile: ([x, r]) => {
    const shape = x!.shape.map((d, i) => d * ints(r)![i]);
    return [gatherBy(x!, shape, (idx) => idx.map((v, a) => v % x!.shape[a]))];
  },
  Transpose: ([x], attrs) => {
    const rank = x!.shape.length;
    const perm = (attrs.perm as number[] | undefined) ??
      Array.from({ length: rank }, (_, i) => rank - 1 - i);
    const shape = perm.map((p) => x!.shape[p]);
    const src = new Array<number>(rank);
    return [gatherBy(x!, shape, (idx) => {
      perm.forEach((p, i) => src[p] = idx[i]);
      return src;
    })];
  },
  Slice: ([x, st, en, ax, sp]) => {
    const rank = x!.shape.length;
    const starts = ints(st)!, ends = ints(en)!;
    const axes = (ints(ax) ?? starts.map((_, i) => i)).map((a) => normAxis(a, rank));
    const steps = ints(sp) ?? starts.map(() => 1);
    const first = new Array<number>(rank).fill(0), step = new Array<number>(rank).fill(1);
    const shape = [...x!.shape];
    axes.forEach((a, i) => {
      const b = sliceBounds(x!.shape[a], starts[i], ends[i], steps[i]);
      [first[a], step[a], shape[a]] = [b.s, steps[i], b.count];
    });
    return [gatherBy(x!, shape, (idx) => idx.map((v, a) => first[a] + v * step[a]))];
  },
  Concat: (ins, attrs) => {
    const ts = ins as InterpTensor[];
    const axis = normAxis(num(attrs.axis, 0), ts[0].shape.length);
    const shape = [...ts[0].shape];
    shape[axis] = ts.reduce((p, t) => p + t.shape[axis], 0);
    const outer = size(shape.slice(0, axis)), inner = size(shape.slice(axis + 1));
    const out = new Float64Array(size(shape));
    let at = 0;
    for (let o = 0; o < outer; o++) {
      for (const t of ts) {
        const chunk = t.shape[axis] * inner;
        out.set(t.data.subarray(o * chunk, (o + 1) * chunk), at);
        at += chunk;
      }
    }
    return [{ data: out, shape }];
  },
  Gather: ([x, i], attrs) => {
    const a = normAxis(num(attrs.axis, 0), x!.shape.length);
    const n = x!.shape[a], idx = Array.from(i!.data, (v) => v < 0 ? v + n : v);
    const pre = size(x!.shape.slice(0, a)), post = size(x!.shape.slice(a + 1));
    const out = new Float64Array(pre * idx.length * post);
    for (let p = 0; p < pre; p++) {
      idx.forEach((j, k) => {
        if (!(j >= 0 && j < n)) throw new Error(`index ${j} out of range`);
        out.set(
          x!.data.subarray((p * n + j) * post, (p * n + j + 1) * post),
          (p * idx.length + k) * post,
        );
      });
    }
    return [{ data: out, shape: [...x!.shape.slice(0, a), ...i!.shape, ...x!.shape.slice(a + 1)] }];
  },
  GatherElements: ([x, i], attrs) => {
    const a = normAxis(num(attrs.axis, 0), x!.shape.length);
    const is = i!.shape, n = x!.shape[a];
    let flat = 0;
    return [gatherBy(x!, [...is], (idx) => {
      const v = i!.data[flat++];
      const src = [...idx];
      src[a] = v < 0 ? v + n : v;
      return src;
    })];
  },
  Pad: ([x, p, c, ax], attrs) => {
    if ((attrs.mode ?? "constant") !== "constant") throw new Error("only constant Pad");
    const rank = x!.shape.length, pads = ints(p)!;
    const axes = (ints(ax) ?? x!.shape.map((_, i) => i)).map((a) => normAxis(a, rank));
    const begin = new Array<number>(rank).fill(0), shape = [...x!.shape];
    axes.forEach((a, i) => {
      begin[a] = pads[i];
      shape[a] += pads[i] + pads[i + axes.length];
    });
    const src = new Array<number>(rank);
    return [gatherBy(x!, shape, (idx) => {
      for (let a = 0; a < rank; a++) {
        src[a] = idx[a] - begin[a];
        if (src[a] < 0 || src[a] >= x!.shape[a]) return null;
      }
      return src;
    }, c ? c.data[0] : 0)];
  },
  Shape: ([x]) => [{ data: Float64Array.from(x!.shape), shape: [x!.shape.length] }],
  ConstantOfShape: ([s]) => {
    const shape = ints(s)!;
    return [{ data: new Float64Array(size(shape)), shape }];
  },
};
