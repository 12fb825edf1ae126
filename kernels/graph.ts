/**
 * A small builder for ONNX graphs. Every heavy computation of the toolkit is written as a
 * graph with this builder and run by ONNX Runtime (see `session.ts`).
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

/** A named value inside a graph under construction. */
export interface Value {
  readonly name: string;
}

/** Attribute values accepted by {@linkcode Graph.op}. */
export type Attr = number | string | number[] | Float32Array | { float: number } | {
  floats: number[];
};

/** A dimension: a fixed size or a symbolic name. */
export type Dim = number | string;

/** Builds one ONNX model; values are named automatically unless given a name. */
export class Graph {
  // deno-lint-ignore no-explicit-any
  #nodes: any[] = [];
  // deno-lint-ignore no-explicit-any
  #inputs: any[] = [];
  // deno-lint-ignore no-explicit-any
  #outputs: any[] = [];
  // deno-lint-ignore no-explicit-any
  #inits: any[] = [];
  #counter = 0;
  #usesContrib = false;

  /** Declares a graph input. */
  input(name: string, shape: Dim[], dtype: DTypeCode = DType.float32): Value {
    this.#inputs.push(valueInfo(name, dtype, shape));
    return { name };
  }

  /** Marks a value as a graph output (renaming it through Identity when the name differs). */
  output(v: Value, name = v.name, dtype: DTypeCode = DType.float32): void {
    if (name !== v.name) this.#nodes.push(node("Identity", [v.name], [name], {}));
    this.#outputs.push(valueInfo(name, dtype, null));
  }

  /** A float32 constant tensor (stored as an initializer). */
  constant(values: ArrayLike<number>, shape: number[] = [values.length]): Value {
    const name = this.#fresh("c");
    this.#inits.push(onnx.TensorProto.create({
      name,
      dims: shape,
      dataType: DType.float32,
      rawData: new Uint8Array(Float32Array.from(values).buffer),
    }));
    return { name };
  }

  /** A float32 scalar constant. */
  scalar(v: number): Value {
    return this.constant([v], []);
  }

  /** An int64 constant (shapes, axes, indices). */
  int64(values: ArrayLike<number>, shape: number[] = [values.length]): Value {
    const name = this.#fresh("i");
    const data = BigInt64Array.from(Array.from(values, (x) => BigInt(x)));
    this.#inits.push(onnx.TensorProto.create({
      name,
      dims: shape,
      dataType: DType.int64,
      rawData: new Uint8Array(data.buffer),
    }));
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
    const nd = node(type, inputs.map((v) => v?.name ?? ""), outs, attrs);
    if (domain) {
      nd.domain = domain;
      this.#usesContrib = true;
    }
    this.#nodes.push(nd);
    return outs.map((name) => ({ name }));
  }

  // Common operators, named as in ONNX.
  matmul(a: Value, b: Value): Value {
    return this.op("MatMul", [a, b]);
  }
  add(a: Value, b: Value): Value {
    return this.op("Add", [a, b]);
  }
  sub(a: Value, b: Value): Value {
    return this.op("Sub", [a, b]);
  }
  mul(a: Value, b: Value): Value {
    return this.op("Mul", [a, b]);
  }
  div(a: Value, b: Value): Value {
    return this.op("Div", [a, b]);
  }
  reshape(a: Value, shape: number[]): Value {
    return this.op("Reshape", [a, this.int64(shape)]);
  }
  transpose(a: Value, perm: number[]): Value {
    return this.op("Transpose", [a], { perm });
  }
  reduceMean(a: Value, axes: number[], keepdims = 1): Value {
    return this.op("ReduceMean", [a, this.int64(axes)], { keepdims });
  }
  reduceMax(a: Value, axes: number[], keepdims = 1): Value {
    return this.op("ReduceMax", [a, this.int64(axes)], { keepdims });
  }
  reduceMin(a: Value, axes: number[], keepdims = 1): Value {
    return this.op("ReduceMin", [a, this.int64(axes)], { keepdims });
  }
  reduceSum(a: Value, axes: number[], keepdims = 1): Value {
    return this.op("ReduceSum", [a, this.int64(axes)], { keepdims });
  }
  slice(a: Value, starts: number[], ends: number[], axes: number[]): Value {
    return this.op("Slice", [a, this.int64(starts), this.int64(ends), this.int64(axes)]);
  }
  concat(vs: Value[], axis: number): Value {
    return this.op("Concat", vs, { axis });
  }

  /** Serialises the model (opset 18, plus com.microsoft when contrib ops were used). */
  toBytes(): Uint8Array {
    const graph = onnx.GraphProto.create({
      name: "g",
      node: this.#nodes,
      input: this.#inputs,
      output: this.#outputs,
      initializer: this.#inits,
    });
    const opsetImport = [{ domain: "", version: 18 }];
    if (this.#usesContrib) opsetImport.push({ domain: "com.microsoft", version: 1 });
    return onnx.ModelProto.encode(
      onnx.ModelProto.create({ irVersion: 8, opsetImport, producerName: "qllm-deno", graph }),
    ).finish();
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

function node(opType: string, input: string[], output: string[], attrs: Record<string, Attr>) {
  const attribute = Object.entries(attrs).map(([name, v]) => attribute_(name, v));
  return onnx.NodeProto.create({ opType, input, output, attribute });
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
