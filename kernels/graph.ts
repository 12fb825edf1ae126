/**
 * A small builder for ONNX graphs. Every heavy computation of the toolkit is written as a
 * graph with this builder and run by ONNX Runtime (see `session.ts`).
 *
 * The builder records what it emits in a form other code can read back: the nodes
 * ({@linkcode Graph.nodes}), the constants ({@linkcode Graph.constantOf}), the declared inputs,
 * and the static shape and element type of every value ({@linkcode Graph.shapeOf}), inferred as
 * each node is added. `kernels/autodiff.ts` and `kernels/interp.ts` work from these records.
 * @module
 */
import onnxProto from "onnx-proto";

// deno-lint-ignore no-explicit-any
const onnx: any = (onnxProto as any).onnx;

/** ONNX element types used by the toolkit. */
export const DType = {
  float32: 1,
  uint8: 2,
  int8: 3,
  int32: 6,
  int64: 7,
  bool: 9,
  float64: 11,
} as const;
/** An ONNX element type code. */
export type DTypeCode = (typeof DType)[keyof typeof DType];

/** Whether an ONNX element type code is a floating-point type (float16/32/64, bfloat16). */
export function isFloatType(t: number): boolean {
  return t === 1 || t === 10 || t === 11 || t === 16;
}

/** A named value inside a graph under construction. */
export interface Value {
  /** The value's name in the graph (an input, constant or node output). */
  readonly name: string;
}

/** Attribute values accepted by {@linkcode Graph.op}. */
export type Attr = number | string | number[] | Float32Array | { float: number } | {
  floats: number[];
};

/** A dimension: a fixed size or a symbolic name (`"?"` where the builder cannot tell). */
export type Dim = number | string;

/** A node as the builder recorded it; a missing optional input is the empty string. */
export interface GraphNode {
  /** The operator type (`MatMul`, `Gemm`, …). */
  readonly type: string;
  /** Names of the input values, in operator order. */
  readonly inputs: readonly string[];
  /** Names of the output values, in operator order. */
  readonly outputs: readonly string[];
  /** The node's attributes by name. */
  readonly attrs: Readonly<Record<string, Attr>>;
  /** `""` for the default ONNX domain. */
  readonly domain: string;
}

/** A constant tensor (initializer): float32 data, or int64 values as numbers. */
export interface GraphConstant {
  /** Element type: {@linkcode DType.float32} or {@linkcode DType.int64}. */
  readonly dtype: DTypeCode;
  /** Static shape (`[]` for a scalar). */
  readonly shape: readonly number[];
  /** Row-major values: a Float32Array for float32, numbers for int64. */
  readonly data: Readonly<Float32Array> | readonly number[];
}

/** A declared graph input. */
export interface GraphInput {
  /** The input's name (the feed key). */
  readonly name: string;
  /** Declared shape; symbolic dimensions are strings. */
  readonly shape: readonly Dim[];
  /** Element type (float32 unless declared otherwise). */
  readonly dtype: DTypeCode;
}

interface ValueInfo {
  /** Undefined when not even the rank is known (an op without a shape rule). */
  shape?: Dim[];
  dtype: number;
}

/** Builds one ONNX model; values are named automatically unless given a name. */
export class Graph {
  #nodes: GraphNode[] = [];
  // deno-lint-ignore no-explicit-any
  #inputs: any[] = [];
  // deno-lint-ignore no-explicit-any
  #outputs: any[] = [];
  // deno-lint-ignore no-explicit-any
  #inits: any[] = [];
  #declared: GraphInput[] = [];
  #outputNames: string[] = [];
  #constants = new Map<string, GraphConstant>();
  #values = new Map<string, ValueInfo>();
  #counter = 0;
  #usesContrib = false;
  #external: GraphInput[] = [];

  /** Declares a graph input. */
  input(name: string, shape: Dim[], dtype: DTypeCode = DType.float32): Value {
    this.#inputs.push(valueInfo(name, dtype, shape));
    this.#declared.push(Object.freeze({ name, shape: Object.freeze([...shape]), dtype }));
    this.#values.set(name, { shape: [...shape], dtype });
    return { name };
  }

  /** Marks a value as a graph output (renaming it through Identity when the name differs). */
  output(v: Value, name = v.name, dtype: DTypeCode = DType.float32): void {
    if (name !== v.name) this.#record("Identity", [v.name], [name], {}, "");
    this.#outputs.push(valueInfo(name, dtype, null));
    this.#outputNames.push(name);
  }

  /**
   * Declares an initializer whose data this graph does not hold: a model file writer stores it
   * (`formats/onnx_file.ts`), so a model's weights never sit in memory as protobuf. The value
   * has the given type and shape; {@linkcode toBytes} leaves it out.
   */
  external(name: string, shape: number[], dtype: DTypeCode = DType.float32): Value {
    if (this.#values.has(name)) throw new Error(`graph: "${name}" is already defined`);
    this.#external.push(Object.freeze({ name, shape: Object.freeze([...shape]), dtype }));
    this.#values.set(name, { shape: [...shape], dtype });
    return { name };
  }

  /** The initializers declared with {@linkcode external}, in order. */
  externals(): readonly GraphInput[] {
    return this.#external.slice();
  }

  /** A float32 constant tensor (stored as an initializer). */
  constant(values: ArrayLike<number>, shape: number[] = [values.length]): Value {
    const name = this.#fresh("c");
    const data = Float32Array.from(values);
    this.#inits.push(onnx.TensorProto.create({
      name,
      dims: shape,
      dataType: DType.float32,
      rawData: new Uint8Array(data.buffer),
    }));
    this.#addConstant(name, DType.float32, shape, data);
    return { name };
  }

  /** A float32 scalar constant. */
  scalar(v: number): Value {
    return this.constant([v], []);
  }

  /** An int64 constant (shapes, axes, indices). */
  int64(values: ArrayLike<number>, shape: number[] = [values.length]): Value {
    const name = this.#fresh("i");
    const numbers = Array.from(values, Number);
    const data = BigInt64Array.from(numbers, (x) => BigInt(x));
    this.#inits.push(onnx.TensorProto.create({
      name,
      dims: shape,
      dataType: DType.int64,
      rawData: new Uint8Array(data.buffer),
    }));
    this.#addConstant(name, DType.int64, shape, numbers);
    return { name };
  }

  /** Adds a node with one output. */
  op(type: string, inputs: (Value | null)[], attrs: Record<string, Attr> = {}, domain = ""): Value {
    return this.opN(type, inputs, 1, attrs, domain)[0];
  }

  /** Adds a node with `n` outputs. */
  opN(
    type: string,
    inputs: (Value | null)[],
    n: number,
    attrs: Record<string, Attr> = {},
    domain = "",
  ): Value[] {
    const outs = Array.from({ length: n }, () => this.#fresh(type));
    if (domain) this.#usesContrib = true;
    this.#record(type, inputs.map((v) => v?.name ?? ""), outs, attrs, domain);
    return outs.map((name) => ({ name }));
  }

  // Common operators, named as in ONNX.
  /** `MatMul`: the matrix product `a·b` (numpy broadcasting over leading axes). */
  matmul(a: Value, b: Value): Value {
    return this.op("MatMul", [a, b]);
  }
  /** `Add`: elementwise `a + b` (broadcasting). */
  add(a: Value, b: Value): Value {
    return this.op("Add", [a, b]);
  }
  /** `Sub`: elementwise `a − b` (broadcasting). */
  sub(a: Value, b: Value): Value {
    return this.op("Sub", [a, b]);
  }
  /** `Mul`: elementwise `a·b` (broadcasting). */
  mul(a: Value, b: Value): Value {
    return this.op("Mul", [a, b]);
  }
  /** `Div`: elementwise `a / b` (broadcasting). */
  div(a: Value, b: Value): Value {
    return this.op("Div", [a, b]);
  }
  /** `Reshape` to a constant `shape` (ONNX rules: 0 copies a dimension, −1 is inferred). */
  reshape(a: Value, shape: number[]): Value {
    return this.op("Reshape", [a, this.int64(shape)]);
  }
  /** `Transpose`: output axis i is input axis `perm[i]`. */
  transpose(a: Value, perm: number[]): Value {
    return this.op("Transpose", [a], { perm });
  }
  /** `ReduceMean` over `axes`; `keepdims` 1 (default) keeps them as size 1. */
  reduceMean(a: Value, axes: number[], keepdims = 1): Value {
    return this.op("ReduceMean", [a, this.int64(axes)], { keepdims });
  }
  /** `ReduceMax` over `axes`; `keepdims` 1 (default) keeps them as size 1. */
  reduceMax(a: Value, axes: number[], keepdims = 1): Value {
    return this.op("ReduceMax", [a, this.int64(axes)], { keepdims });
  }
  /** `ReduceMin` over `axes`; `keepdims` 1 (default) keeps them as size 1. */
  reduceMin(a: Value, axes: number[], keepdims = 1): Value {
    return this.op("ReduceMin", [a, this.int64(axes)], { keepdims });
  }
  /** `ReduceSum` over `axes`; `keepdims` 1 (default) keeps them as size 1. */
  reduceSum(a: Value, axes: number[], keepdims = 1): Value {
    return this.op("ReduceSum", [a, this.int64(axes)], { keepdims });
  }
  /** `Slice`: `[starts[i], ends[i])` along each of `axes` (step 1). */
  slice(a: Value, starts: number[], ends: number[], axes: number[]): Value {
    return this.op("Slice", [a, this.int64(starts), this.int64(ends), this.int64(axes)]);
  }
  /** `Concat` of `vs` along `axis`. */
  concat(vs: Value[], axis: number): Value {
    return this.op("Concat", vs, { axis });
  }

  /**
   * The static shape of a value. Dimensions are numbers where the builder can tell, else the
   * symbolic names of the inputs or `"?"`. Throws when not even the rank is known (a value made
   * by an op without a shape rule, or a name this graph never defined).
   */
  shapeOf(v: Value): Dim[] {
    const info = this.#values.get(v.name);
    if (!info) throw new Error(`graph: no value named "${v.name}"`);
    if (!info.shape) throw new Error(`graph: the shape of "${v.name}" is unknown`);
    return [...info.shape];
  }

  /** The element type of a value (inferred for node outputs). */
  dtypeOf(v: Value): number {
    const info = this.#values.get(v.name);
    if (!info) throw new Error(`graph: no value named "${v.name}"`);
    return info.dtype;
  }

  /** Whether this graph defines a value of that name (input, constant or node output). */
  has(v: Value): boolean {
    return this.#values.has(v.name);
  }

  /** The nodes recorded so far, in the order added (which is a topological order). */
  nodes(): readonly GraphNode[] {
    return this.#nodes.slice();
  }

  /** The declared inputs, in declaration order. */
  inputs(): readonly GraphInput[] {
    return this.#declared.slice();
  }

  /** The names marked as outputs, in order. */
  outputs(): readonly string[] {
    return this.#outputNames.slice();
  }

  /** The constant behind a value, or undefined when the value is not a constant. */
  constantOf(v: Value): GraphConstant | undefined {
    return this.#constants.get(v.name);
  }

  /** The values of an int64 constant (axes, perms, shapes, bounds), or undefined. */
  int64Values(v: Value): number[] | undefined {
    const c = this.#constants.get(v.name);
    return c && c.dtype === DType.int64 ? [...(c.data as readonly number[])] : undefined;
  }

  /** Serialises the model (opset 18, plus com.microsoft when contrib ops were used). */
  toBytes(): Uint8Array {
    return onnx.ModelProto.encode(this.#modelProto(this.#graphProto())).finish();
  }

  /**
   * The model as two protobuf messages, for a writer that appends the external initializers:
   * the ModelProto without its graph, and the GraphProto without them.
   */
  encodeParts(): { model: Uint8Array; graph: Uint8Array } {
    return {
      model: onnx.ModelProto.encode(this.#modelProto(undefined)).finish(),
      graph: onnx.GraphProto.encode(this.#graphProto()).finish(),
    };
  }

  // deno-lint-ignore no-explicit-any
  #graphProto(): any {
    const live = this.#liveNodes();
    const used = new Set([...live.flatMap((n) => n.inputs), ...this.#outputNames]);
    return onnx.GraphProto.create({
      name: "g",
      node: live.map(nodeProto),
      input: this.#inputs,
      output: this.#outputs,
      initializer: this.#inits.filter((t) => used.has(t.name!)),
    });
  }

  // deno-lint-ignore no-explicit-any
  #modelProto(graph: any): any {
    const opsetImport = [{ domain: "", version: 18 }];
    if (this.#usesContrib) opsetImport.push({ domain: "com.microsoft", version: 1 });
    return onnx.ModelProto.create({ irVersion: 8, opsetImport, producerName: "qllm-deno", graph });
  }

  /** The nodes some output depends on (a graph built for fewer outputs skips the rest). */
  #liveNodes(): GraphNode[] {
    const needed = new Set(this.#outputNames);
    const live: GraphNode[] = [];
    for (let i = this.#nodes.length - 1; i >= 0; i--) {
      const nd = this.#nodes[i];
      if (!nd.outputs.some((o) => needed.has(o))) continue;
      live.push(nd);
      for (const n of nd.inputs) if (n) needed.add(n);
    }
    return live.reverse();
  }

  #record(
    type: string,
    inputs: string[],
    outputs: string[],
    attrs: Record<string, Attr>,
    domain: string,
  ): void {
    const nd: GraphNode = Object.freeze({
      type,
      inputs: Object.freeze(inputs),
      outputs: Object.freeze(outputs),
      attrs: Object.freeze({ ...attrs }),
      domain,
    });
    const infos = inputs.map((n) => n === "" ? undefined : this.#values.get(n));
    let shape: Dim[] | undefined;
    if (!domain) {
      try {
        shape = inferShape(
          type,
          infos.map((i) => i?.shape),
          attrs,
          (i) => inputs[i] ? this.int64Values({ name: inputs[i] }) : undefined,
        );
      } catch (e) {
        const shapes = infos.map((i) => i?.shape ? `[${i.shape.join(", ")}]` : "?").join(", ");
        throw new Error(`graph: ${type}(${shapes}): ${(e as Error).message}`);
      }
    }
    const dtype = inferDtype(type, infos.map((i) => i?.dtype), attrs);
    this.#nodes.push(nd);
    outputs.forEach((o, i) => this.#values.set(o, { shape: i === 0 ? shape : undefined, dtype }));
  }

  #addConstant(name: string, dtype: DTypeCode, shape: number[], data: Float32Array | number[]) {
    this.#constants.set(name, Object.freeze({ dtype, shape: Object.freeze([...shape]), data }));
    this.#values.set(name, { shape: [...shape], dtype });
  }

  #fresh(prefix: string): string {
    return `${prefix}_${this.#counter++}`;
  }
}

function valueInfo(name: string, elemType: number, shape: Dim[] | null) {
  const tensorType: Record<string, unknown> = { elemType };
  if (shape) {
    tensorType.shape = {
      dim: shape.map((d) => typeof d === "number" ? { dimValue: d } : { dimParam: d }),
    };
  }
  return onnx.ValueInfoProto.create({ name, type: { tensorType } });
}

function nodeProto(nd: GraphNode) {
  const attribute = Object.entries(nd.attrs).map(([name, v]) => attribute_(name, v));
  const p = onnx.NodeProto.create({
    opType: nd.type,
    input: [...nd.inputs],
    output: [...nd.outputs],
    attribute,
  });
  if (nd.domain) p.domain = nd.domain;
  return p;
}

// AttributeProto.AttributeType: FLOAT 1, INT 2, STRING 3, FLOATS 6, INTS 7
function attribute_(name: string, v: Attr) {
  if (typeof v === "number") {
    return Number.isInteger(v) ? { name, type: 2, i: v } : { name, type: 1, f: v };
  }
  if (typeof v === "string") return { name, type: 3, s: new TextEncoder().encode(v) };
  if (v instanceof Float32Array) return { name, type: 6, floats: Array.from(v) };
  if (Array.isArray(v)) return { name, type: 7, ints: v };
  if ("float" in v) return { name, type: 1, f: v.float };
  return { name, type: 6, floats: v.floats };
}

// ---------------------------------------------------------------------------------------------
// element types and shapes of node outputs

const BOOL_OPS = new Set([
  "Equal",
  "And",
  "Or",
  "Not",
  "Xor",
  "Greater",
  "Less",
  "GreaterOrEqual",
  "LessOrEqual",
  "IsNaN",
  "IsInf",
]);

function inferDtype(type: string, ins: (number | undefined)[], attrs: Record<string, Attr>) {
  if (BOOL_OPS.has(type)) return DType.bool;
  if (type === "Cast") return attrs.to as number;
  if (type === "Shape" || type === "ArgMax" || type === "ArgMin") return DType.int64;
  if (type === "Where") return ins[1] ?? DType.float32;
  if (type === "ConstantOfShape") return DType.float32;
  return ins[0] ?? DType.float32;
}

/** A numeric attribute, whether given as a number or as `{ float }`. */
export function attrNumber(a: Attr | undefined, fallback: number): number {
  if (a === undefined) return fallback;
  if (typeof a === "number") return a;
  if (typeof a === "object" && "float" in a) return a.float;
  throw new Error(`expected a numeric attribute, got ${JSON.stringify(a)}`);
}

const SAME_SHAPE = new Set([
  "Identity",
  "Neg",
  "Reciprocal",
  "Sqrt",
  "Exp",
  "Log",
  "Abs",
  "Sign",
  "Sigmoid",
  "Tanh",
  "Erf",
  "Round",
  "Floor",
  "Ceil",
  "Clip",
  "Relu",
  "Softmax",
  "LogSoftmax",
  "Cast",
  "Not",
  "IsNaN",
  "IsInf",
]);

const BROADCAST = new Set([
  "Add",
  "Sub",
  "Mul",
  "Div",
  "Pow",
  "Min",
  "Max",
  "Sum",
  "Mean",
  "Where",
  "Equal",
  "And",
  "Or",
  "Xor",
  "Greater",
  "Less",
  "GreaterOrEqual",
  "LessOrEqual",
]);

const REDUCE = new Set(["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"]);

/** Two dimensions under numpy broadcasting. */
function broadcastDim(a: Dim, b: Dim): Dim {
  if (a === b || b === 1) return a;
  if (a === 1) return b;
  if (typeof a === "number" && typeof b === "number") {
    throw new Error(`dimensions ${a} and ${b} do not broadcast`);
  }
  return typeof a === "number" ? a : typeof b === "number" ? b : "?";
}

/** The numpy broadcast of several shapes. */
export function broadcastShapes(shapes: readonly (readonly Dim[])[]): Dim[] {
  const rank = Math.max(0, ...shapes.map((s) => s.length));
  const out: Dim[] = new Array(rank).fill(1);
  for (const s of shapes) {
    for (let i = 0; i < s.length; i++) {
      const j = rank - s.length + i;
      out[j] = broadcastDim(out[j], s[i]);
    }
  }
  return out;
}

function normAxis(axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!(a >= 0 && a < rank)) throw new Error(`axis ${axis} is out of range for rank ${rank}`);
  return a;
}

/** Same sizes, where both are numbers (symbolic dimensions are taken on trust). */
function checkSame(a: Dim, b: Dim, what: string): void {
  if (typeof a === "number" && typeof b === "number" && a !== b) {
    throw new Error(`${what}: ${a} ≠ ${b}`);
  }
}

/** The product of dimensions, or undefined when one is symbolic. */
function product(dims: readonly Dim[]): number | undefined {
  let n = 1;
  for (const d of dims) {
    if (typeof d !== "number") return undefined;
    n *= d;
  }
  return n;
}

type Ints = (i: number) => number[] | undefined;

/**
 * The output shape of one node, from its input shapes, attributes and int64 constant inputs;
 * undefined for ops without a rule or inputs of unknown rank. Throws on definite mismatches.
 */
function inferShape(
  type: string,
  ins: (Dim[] | undefined)[],
  attrs: Record<string, Attr>,
  ints: Ints,
): Dim[] | undefined {
  const x = ins[0];
  if (SAME_SHAPE.has(type)) return x && [...x];
  if (BROADCAST.has(type)) {
    if (ins.some((s) => !s)) return undefined;
    return broadcastShapes(ins as Dim[][]);
  }
  if (REDUCE.has(type)) return x && reduceShape(x, attrs, ints);
  const rule = SHAPE_RULES[type];
  if (!rule || ins.some((s, i) => s === undefined && rule.needs.includes(i))) return undefined;
  return rule.infer(ins, attrs, ints);
}

function reduceShape(x: Dim[], attrs: Record<string, Attr>, ints: Ints): Dim[] {
  const axes = reduceAxes(x.length, attrs, ints(1));
  if (axes === undefined) return x.map(() => "?");
  const keep = attrNumber(attrs.keepdims, 1) !== 0;
  const out: Dim[] = [];
  x.forEach((d, i) => {
    if (!axes.includes(i)) out.push(d);
    else if (keep) out.push(1);
  });
  return out;
}

/**
 * The normalized axes a Reduce* node reduces over (axes input, or the older `axes` attribute;
 * none means all unless `noop_with_empty_axes`), or undefined when the axes are not constant.
 */
export function reduceAxes(
  rank: number,
  attrs: Readonly<Record<string, Attr>>,
  axesInput: number[] | undefined,
): number[] | undefined {
  const given = axesInput ?? (Array.isArray(attrs.axes) ? attrs.axes : undefined);
  if (given === undefined || given.length === 0) {
    return attrNumber(attrs.noop_with_empty_axes, 0)
      ? []
      : Array.from({ length: rank }, (_, i) => i);
  }
  return given.map((a) => normAxis(a, rank));
}

/** ONNX Slice bounds of one axis, clamped: the first index, the step and the count. */
export function sliceRange(
  dim: number,
  start: number,
  end: number,
  step: number,
): { start: number; step: number; count: number } {
  if (step === 0) throw new Error("Slice step 0");
  const clamp = (v: number, lo: number, hi: number) => Math.min(Math.max(v, lo), hi);
  let s = start < 0 ? start + dim : start;
  let e = end < 0 ? end + dim : end;
  if (step > 0) {
    s = clamp(s, 0, dim);
    e = clamp(e, 0, dim);
  } else {
    s = clamp(s, 0, dim - 1);
    e = clamp(e, -1, dim - 1);
  }
  return { start: s, step, count: Math.max(0, Math.ceil((e - s) / step)) };
}

/** The target shape of a Reshape: 0 copies the input's dimension, −1 takes the rest. */
export function reshapeTarget(input: readonly Dim[], target: readonly number[]): Dim[] {
  const out: Dim[] = target.map((t, i) => t === 0 ? input[i] : t);
  const free = out.indexOf(-1);
  const total = product(input);
  if (free >= 0) {
    const rest = product(out.filter((_, i) => i !== free));
    out[free] = total !== undefined && rest !== undefined && rest !== 0 ? total / rest : "?";
    if (typeof out[free] === "number" && !Number.isInteger(out[free])) {
      throw new Error(`cannot reshape ${total} values to [${target.join(", ")}]`);
    }
  }
  const n = product(out);
  if (total !== undefined && n !== undefined && n !== total) {
    throw new Error(`cannot reshape ${total} values to [${target.join(", ")}]`);
  }
  return out;
}

interface ShapeRule {
  /** Inputs whose shapes the rule reads. */
  needs: number[];
  infer: (ins: (Dim[] | undefined)[], attrs: Record<string, Attr>, ints: Ints) => Dim[] | undefined;
}

const SHAPE_RULES: Record<string, ShapeRule> = {
  MatMul: { needs: [0, 1], infer: ([a, b]) => matmulShape(a!, b!) },
  Gemm: {
    needs: [0, 1],
    infer: ([a, b, c], attrs) => {
      if (a!.length !== 2 || b!.length !== 2) throw new Error("Gemm needs 2-D A and B");
      const [m, k] = attrNumber(attrs.transA, 0) ? [a![1], a![0]] : a!;
      const [k2, n] = attrNumber(attrs.transB, 0) ? [b![1], b![0]] : b!;
      checkSame(k, k2, "inner sizes differ");
      const out = [m, n];
      if (c) broadcastShapes([out, c]);
      return out;
    },
  },
  Reshape: {
    needs: [0],
    infer: ([x, s], _a, ints) => {
      const target = ints(1);
      if (!target) return s && typeof s[0] === "number" ? new Array(s[0]).fill("?") : undefined;
      return reshapeTarget(x!, target);
    },
  },
  Transpose: {
    needs: [0],
    infer: ([x], attrs) => {
      const perm = Array.isArray(attrs.perm) ? attrs.perm : x!.map((_, i) => x!.length - 1 - i);
      if (perm.length !== x!.length || [...perm].sort().some((p, i) => p !== i)) {
        throw new Error(`perm [${perm.join(", ")}] is not a permutation of rank ${x!.length}`);
      }
      return perm.map((p) => x![p]);
    },
  },
  Slice: {
    needs: [0],
    infer: ([x], _a, ints) => {
      const starts = ints(1), ends = ints(2);
      if (!starts || !ends) return x!.map(() => "?");
      const axes = ints(3) ?? starts.map((_, i) => i);
      const steps = ints(4) ?? starts.map(() => 1);
      const out = [...x!];
      axes.forEach((ax, i) => {
        const a = normAxis(ax, x!.length);
        const d = x![a];
        out[a] = typeof d === "number" ? sliceRange(d, starts[i], ends[i], steps[i]).count : "?";
      });
      return out;
    },
  },
  Concat: {
    needs: [],
    infer: (ins, attrs) => {
      if (ins.some((s) => !s)) return undefined;
      const shapes = ins as Dim[][];
      const axis = normAxis(attrNumber(attrs.axis, 0), shapes[0].length);
      const out = [...shapes[0]];
      for (const s of shapes.slice(1)) {
        if (s.length !== out.length) throw new Error("Concat inputs differ in rank");
        s.forEach((d, i) => {
          if (i !== axis) checkSame(out[i], d, `dimension ${i} differs`);
        });
      }
      const sizes = shapes.map((s) => s[axis]);
      out[axis] = product(sizes) === undefined ? "?" : sizes.reduce<number>((a, d) => a + +d, 0);
      return out;
    },
  },
  Unsqueeze: {
    needs: [0],
    infer: ([x], attrs, ints) => {
      const axes = ints(1) ?? (Array.isArray(attrs.axes) ? attrs.axes : undefined);
      if (!axes) return undefined;
      const rank = x!.length + axes.length;
      const at = new Set(axes.map((a) => normAxis(a, rank)));
      const out: Dim[] = [];
      let j = 0;
      for (let i = 0; i < rank; i++) out.push(at.has(i) ? 1 : x![j++]);
      return out;
    },
  },
  Squeeze: {
    needs: [0],
    infer: ([x], attrs, ints) => {
      const given = ints(1) ?? (Array.isArray(attrs.axes) ? attrs.axes : undefined);
      const axes = given
        ? given.map((a) => normAxis(a, x!.length))
        : x!.flatMap((d, i) => d === 1 ? [i] : []);
      for (const a of axes) checkSame(x![a], 1, `Squeeze axis ${a} is not 1`);
      return x!.filter((_, i) => !axes.includes(i));
    },
  },
  Expand: {
    needs: [0],
    infer: ([x], _a, ints) => {
      const shape = ints(1);
      return shape ? broadcastShapes([x!, shape]) : undefined;
    },
  },
  Gather: {
    needs: [0, 1],
    infer: ([x, idx], attrs) => {
      const a = normAxis(attrNumber(attrs.axis, 0), x!.length);
      return [...x!.slice(0, a), ...idx!, ...x!.slice(a + 1)];
    },
  },
  GatherElements: { needs: [1], infer: ([, idx]) => [...idx!] },
  ScatterElements: { needs: [0], infer: ([x]) => [...x!] },
  Tile: {
    needs: [0],
    infer: ([x], _a, ints) => {
      const reps = ints(1);
      if (!reps) return x!.map(() => "?");
      if (reps.length !== x!.length) throw new Error("Tile repeats differ from the rank");
      return x!.map((d, i) => typeof d === "number" ? d * reps[i] : reps[i] === 1 ? d : "?");
    },
  },
  Pad: {
    needs: [0],
    infer: ([x], _a, ints) => {
      const pads = ints(1);
      if (!pads) return x!.map(() => "?");
      const axes = (ints(3) ?? x!.map((_, i) => i)).map((a) => normAxis(a, x!.length));
      const out = [...x!];
      axes.forEach((a, i) => {
        const d = out[a];
        out[a] = typeof d === "number" ? d + pads[i] + pads[i + axes.length] : "?";
      });
      return out;
    },
  },
  Shape: { needs: [0], infer: ([x]) => [x!.length] },
  ConstantOfShape: { needs: [], infer: (_i, _a, ints) => ints(0) },
};

/** MatMul's output shape, numpy style: 1-D operands are promoted and the added axis dropped. */
function matmulShape(a: Dim[], b: Dim[]): Dim[] {
  if (a.length === 0 || b.length === 0) throw new Error("MatMul of a scalar");
  const a2 = a.length === 1 ? [1, a[0]] : a;
  const b2 = b.length === 1 ? [b[0], 1] : b;
  checkSame(a2[a2.length - 1], b2[b2.length - 2], "inner sizes differ");
  const batch = broadcastShapes([a2.slice(0, -2), b2.slice(0, -2)]);
  const out = [...batch];
  if (a.length > 1) out.push(a2[a2.length - 2]);
  if (b.length > 1) out.push(b2[b2.length - 1]);
  return out;
}
