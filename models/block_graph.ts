/**
 * The LLaMA decoder block as one ONNX graph: RMSNorm, RoPE (rotate-half layout), grouped-query
 * causal attention (optionally within a sliding window), SwiGLU, the biases a block carries
 * (q/k/v, o_proj, MLP), Qwen3's per-head q/k RMSNorm when the block carries it, and optional
 * per-token fake quantization of the input of every linear layer. Weights are graph inputs, so
 * one compiled session serves every block of a model. Also the head graph (final norm, lm_head, per-token NLL or logits).
 *
 * The same builder makes the deployed decoder's blocks (`formats/onnx.ts`): sizes read at run
 * time instead of fixed, RoPE from `position_ids`, a past K/V cache concatenated in front of the
 * new keys and values (returned as the present cache), the mask from `attention_mask`, and a
 * pluggable linear op (packed `MatMulNBits` layers) — so whatever a block computes reaches both.
 * @module
 */
import { DType, Graph, type Value } from "../kernels/graph.ts";
import { blockTensorShapes, type LinearName, type ModelConfig } from "./config.ts";

/** What a block graph computes besides its output. */
export interface BlockGraphOptions {
  /** Batch (windows) and sequence length the graph is built for. */
  batch: number;
  /** Tokens per window (T). */
  seqlen: number;
  /** Per-token asymmetric fake quantization of each linear's input at this many bits (≥ 16: off). */
  abits?: number;
  /** Also output the input of each linear group (`x_qkv`, `x_o`, `x_gateup`, `x_down`, [N, in]). */
  capture?: boolean;
  /**
   * Also output the Gram matrix `xᵀx` [in, in] of these linear groups' inputs, summed over the
   * rows whose `valid` input ([B·T, 1]) is 1 (a padded batch marks its padding 0).
   */
  grams?: readonly CapturePoint[];
  /** Output the block's result `y` (default true; false skips the work only `y` needs). */
  output?: boolean;
  /** Per-token fake quantization of q and k (after RoPE) and v, per head (the "KV cache"). */
  kvBits?: number;
}

/**
 * Optional block tensors the graph applies when present (keyed like the weights):
 * - `reassembly.{point}.src_a|src_b|coef_a|coef_b` [C]: channel reassembly before the
 *   activation quantizer at `x_qkv`, `x_gateup` or `x_down`: x'_k = a_k·x[i_k] + b_k·x[j_k]
 *   (indices stored as floats);
 * - `act_quant.{point}.scale|zero` [1]: static per-tensor activation quantization at any point
 *   (instead of dynamic per-token).
 */
export function reassemblyNames(point: CapturePoint): string[] {
  return ["src_a", "src_b", "coef_a", "coef_b"].map((k) => `reassembly.${point}.${k}`);
}

/** Points where a block may carry an online rotation x·R, applied at run time. */
export const ONLINE_ROTATIONS = ["x_down", "qk"] as const;
/** A point with an online rotation: down_proj's input, or q and k per head after RoPE. */
export type OnlinePoint = (typeof ONLINE_ROTATIONS)[number];

/**
 * Names of an online rotation's block tensors: signs D [n] and an orthogonal factor A [m, m], so
 * that x·R = Aᵀ·(X∘D)·H_p/√p with x viewed as m × p and H_p the Sylvester Hadamard matrix of
 * order p = n/m (algorithms/hadamard.ts builds them).
 */
export function onlineRotationNames(point: OnlinePoint): [string, string] {
  return [`rotation.${point}.signs`, `rotation.${point}.a`];
}

/**
 * Largest order of the Sylvester factor applied as a MatMul by a constant H_p/√p; above it, a
 * fast Walsh–Hadamard transform of reshapes and adds runs faster (bench/hadamard.ts) and needs no
 * p × p constant.
 */
export const SYLVESTER_MATMUL_MAX = 1024;

/** y = x·H_p/√p along the last axis of x [N, m, p] as one MatMul by a p × p constant. */
export function sylvesterMatmul(g: Graph, x: Value, p: number): Value {
  const h = new Float32Array(p * p);
  for (let i = 0; i < p; i++) {
    for (let j = 0; j < p; j++) {
      let bits = i & j, odd = 0;
      for (; bits; bits &= bits - 1) odd ^= 1;
      h[i * p + j] = (odd ? -1 : 1) / Math.sqrt(p);
    }
  }
  return g.matmul(x, g.constant(h, [p, p]));
}

/** y = x·H_p/√p along the last axis of x [N, m, p] by log2 p reshape/slice/add/sub steps. */
export function fastWalshHadamard(g: Graph, x: Value, m: number, p: number): Value {
  let v = x;
  for (let h = 1; h < p; h *= 2) {
    const pairs = g.reshape(v, [-1, m, p / (2 * h), 2, h]);
    const a = g.slice(pairs, [0], [1], [3]), b = g.slice(pairs, [1], [2], [3]);
    v = g.reshape(g.concat([g.add(a, b), g.sub(a, b)], 3), [-1, m, p]);
  }
  return g.mul(v, g.scalar(1 / Math.sqrt(p)));
}

/** y = x·H_p/√p along the last axis of x [N, m, p], whichever way runs faster at that p. */
export function walshHadamard(g: Graph, x: Value, m: number, p: number): Value {
  return p <= SYLVESTER_MATMUL_MAX ? sylvesterMatmul(g, x, p) : fastWalshHadamard(g, x, m, p);
}

/** x·R for x [N, n] (N may be unknown) from a rotation's factors (graph values). */
export function rotateByFactors(g: Graph, x: Value, signs: Value, a: Value): Value {
  const [n] = g.shapeOf(signs) as number[], [m] = g.shapeOf(a) as number[], p = n / m;
  let v = walshHadamard(g, g.reshape(g.mul(x, signs), [-1, m, p]), m, p);
  if (m > 1) v = g.transpose(g.matmul(g.transpose(v, [0, 2, 1]), a), [0, 2, 1]);
  else v = g.mul(v, g.reshape(a, [1]));
  return g.reshape(v, [-1, n]);
}

/** The block's online rotation at `point` applied to x [N, n], when the block carries one. */
function onlineRotation(g: Graph, x: Value, w: Record<string, Value>, point: OnlinePoint): Value {
  const [s, a] = onlineRotationNames(point).map((n) => w[n]);
  return a ? rotateByFactors(g, x, s, a) : x;
}

/**
 * The block tensor [1] holding the clip ratio of the per-token activation quantizers of every
 * linear input (absent: no clipping).
 */
export const ACT_CLIP = "act_quant.clip";

/** Names of a point's static activation-quantization tensors. */
export function actQuantNames(point: CapturePoint): [string, string] {
  return [`act_quant.${point}.scale`, `act_quant.${point}.zero`];
}

/** Static per-tensor asymmetric fake quantization with a given scale and zero point. */
export function fakeQuantStatic(
  g: Graph,
  x: Value,
  scale: Value,
  zero: Value,
  bits: number,
): Value {
  const q = g.op("Clip", [
    g.add(g.op("Round", [g.div(x, scale)]), zero),
    g.scalar(0),
    g.scalar(2 ** bits - 1),
  ]);
  return g.mul(g.sub(q, zero), scale);
}

/** x'[:, k] = a_k·x[:, i_k] + b_k·x[:, j_k] for x [N, C]. */
function reassembleChannels(
  g: Graph,
  x: Value,
  w: Record<string, Value>,
  point: CapturePoint,
): Value {
  const [ia, ib, ca, cb] = reassemblyNames(point).map((n) => w[n]);
  const gather = (idx: Value) => g.op("Gather", [x, g.op("Cast", [idx], { to: 7 })], { axis: 1 });
  return g.add(g.mul(gather(ia), ca), g.mul(gather(ib), cb));
}

/** Graph input names of a block's tensors (HF names relative to the layer). */
export const BLOCK_INPUTS = [
  "input_layernorm.weight",
  "self_attn.q_proj.weight",
  "self_attn.k_proj.weight",
  "self_attn.v_proj.weight",
  "self_attn.o_proj.weight",
  "post_attention_layernorm.weight",
  "mlp.gate_proj.weight",
  "mlp.up_proj.weight",
  "mlp.down_proj.weight",
] as const;

/** Columns per part of a blocked Gram matrix (see {@linkcode gramParts}). */
const GRAM_PART = 768;

/**
 * Column boundaries `[0, …, k]` of the parts a Gram matrix xᵀx over k columns is computed in:
 * only the blocks on and above the diagonal are, which saves up to half the product and the
 * output for wide inputs (a quarter of it at 2 parts, three eighths at 4). Up to 768 columns it
 * is one product.
 */
export function gramParts(k: number): number[] {
  const parts = Math.ceil(k / GRAM_PART);
  return Array.from({ length: parts + 1 }, (_, i) => Math.round((i * k) / parts));
}

/** The block graph's output holding block (a, b) of the Gram matrix of a point's inputs. */
export function gramName(p: CapturePoint, a: number, b: number): string {
  return `gram.${p}.${a}.${b}`;
}

/** Columns of a capture point's inputs. */
export function captureWidth(c: ModelConfig, p: CapturePoint): number {
  return p === "x_down" ? c.intermediate : p === "x_o" ? c.heads * c.headDim : c.hidden;
}

/** The names of the captured linear inputs, in block order. */
export const CAPTURE_POINTS = ["x_qkv", "x_o", "x_gateup", "x_down"] as const;
/** A captured linear input. */
export type CapturePoint = (typeof CAPTURE_POINTS)[number];

/** RMSNorm over the last axis: x · rsqrt(mean(x²) + eps) · w. */
export function rmsNorm(g: Graph, x: Value, w: Value, eps: number): Value {
  const ms = g.reduceMean(g.mul(x, x), [-1]);
  const inv = g.op("Reciprocal", [g.op("Sqrt", [g.add(ms, g.scalar(eps))])]);
  return g.mul(g.mul(x, inv), w);
}

/**
 * Per-token (last axis) asymmetric min-max fake quantization, the range always containing 0
 * (PROTOCOL.md §5); ONNX Round is round-half-to-even like torch.round. With `clip` (a [1] value
 * in (0, 1]), each token's range is shrunk to clip·[min, max] first and the values beyond it
 * saturate (QuaRot's activation clip ratio).
 */
export function fakeQuantPerToken(g: Graph, x: Value, bits: number, clip?: Value): Value {
  const maxq = 2 ** bits - 1;
  const zero0 = g.scalar(0);
  let xmin = g.op("Min", [g.reduceMin(x, [-1]), zero0]);
  let xmax = g.op("Max", [g.reduceMax(x, [-1]), zero0]);
  if (clip) {
    xmin = g.mul(xmin, clip);
    xmax = g.mul(xmax, clip);
  }
  const flat = g.op("And", [g.op("Equal", [xmin, zero0]), g.op("Equal", [xmax, zero0])]);
  xmin = g.op("Where", [flat, g.scalar(-1), xmin]);
  xmax = g.op("Where", [flat, g.scalar(1), xmax]);
  const scale = g.div(g.sub(xmax, xmin), g.scalar(maxq));
  const zp = g.op("Round", [g.div(g.op("Neg", [xmin]), scale)]);
  const q = g.op("Clip", [g.add(g.op("Round", [g.div(x, scale)]), zp), zero0, g.scalar(maxq)]);
  return g.mul(scale, g.sub(q, zp));
}

/** Rotate-half RoPE on [B, T, H, hd] with cos/sin given as [T, 1, hd/2]. */
export function rope(g: Graph, x: Value, cos: Value, sin: Value, headDim: number): Value {
  const h = headDim / 2;
  const x1 = g.slice(x, [0], [h], [-1]);
  const x2 = g.slice(x, [h], [headDim], [-1]);
  return g.concat([
    g.sub(g.mul(x1, cos), g.mul(x2, sin)),
    g.add(g.mul(x2, cos), g.mul(x1, sin)),
  ], -1);
}

/**
 * The sizes a block is built for: fixed numbers (the calibration graphs), or `bt`, an int64
 * value [2] holding B and T at run time (the deployed decoder; `Shape(input_ids)`).
 */
export type BlockSizes = { batch: number; seqlen: number } | { bt: Value };

/** One block's attention keys and values, [B, KV, S, hd] (after RoPE and the q/k/v quantizer). */
export interface KvPair {
  /** Keys. */
  key: Value;
  /** Values. */
  value: Value;
}

/** Reshapes x to [B, T, ...tail] with B and T read at run time from `bt`. */
function reshapeBT(g: Graph, x: Value, bt: Value, tail: number[]): Value {
  return g.op("Reshape", [x, g.concat([bt, g.int64(tail)], 0)]);
}

/** The block tensors of Qwen3's per-head RMSNorm of q and k (weights [hd]), before RoPE. */
export const QK_NORM_NAMES = ["self_attn.q_norm.weight", "self_attn.k_norm.weight"] as const;

/**
 * Causal grouped-query attention with RoPE (rotate-half) on q and k, before o_proj: q [B·T, H·hd],
 * k and v [B·T, KV·hd] → [B·T, H·hd], and the attention probabilities [B, KV, G, T, S]. When the
 * block's tensors `w` carry `q_norm`/`k_norm` weights, each head of q and k passes an RMSNorm
 * (over head_dim, the config's eps) before RoPE, as Qwen3 does. With
 * `kvBits` < 16, q and k (after RoPE) and v are fake-quantized per token and head; when the
 * block's tensors `w` carry a `qk` online rotation, q and k are rotated per head after RoPE,
 * before that quantizer.
 *
 * With static sizes, `r.mask` is [T, T] and S = T. With run-time sizes (`bt`), `r.mask` is
 * [B, 1, 1, T, S] ({@linkcode decoderMask}), `r.past` holds the earlier positions' keys and
 * values, which the new ones are appended to, and the result's `present` is the whole cache.
 */
export function attention(
  g: Graph,
  c: ModelConfig,
  o: BlockSizes & { kvBits?: number },
  q: Value,
  k: Value,
  v: Value,
  r: { cos: Value; sin: Value; mask: Value; past?: KvPair },
  w: Record<string, Value> = {},
): { out: Value; probs: Value; present?: KvPair } {
  const H = c.heads, KV = c.kvHeads, hd = c.headDim, G = H / KV;
  const kvq = (x: Value) =>
    (o.kvBits !== undefined && o.kvBits < 16) ? fakeQuantPerToken(g, x, o.kvBits) : x;
  const scaled = (scores: Value) =>
    g.op("Softmax", [g.add(g.div(scores, g.scalar(Math.sqrt(hd))), r.mask)], { axis: -1 });
  // RoPE, then the online rotation of q and k per head when the block carries one (R3); the
  // q/k norm, when present, comes before both (the rotation keeps q·kᵀ, whatever q and k are).
  const rotatesQk = w[onlineRotationNames("qk")[1]] !== undefined;
  const [qNorm, kNorm] = QK_NORM_NAMES.map((n) => w[n]);
  const normed = (x: Value, nw: Value | undefined) => nw ? rmsNorm(g, x, nw, c.rmsEps) : x;
  if ("bt" in o) {
    const heads = (x: Value, n: number) => reshapeBT(g, x, o.bt, [n, hd]);
    const roped = (x: Value, n: number, nw: Value | undefined) => {
      const y = rope(g, normed(heads(x, n), nw), r.cos, r.sin, hd);
      if (!rotatesQk) return y;
      return reshapeBT(g, onlineRotation(g, g.reshape(y, [-1, hd]), w, "qk"), o.bt, [n, hd]);
    };
    const qr = g.reshape(g.transpose(kvq(roped(q, H, qNorm)), [0, 2, 1, 3]), [0, KV, G, -1, hd]);
    const kNew = g.transpose(kvq(roped(k, KV, kNorm)), [0, 2, 1, 3]);
    const vNew = g.transpose(kvq(heads(v, KV)), [0, 2, 1, 3]);
    const key = r.past ? g.concat([r.past.key, kNew], 2) : kNew;
    const value = r.past ? g.concat([r.past.value, vNew], 2) : vNew;
    const kr = g.op("Unsqueeze", [g.transpose(key, [0, 1, 3, 2]), g.int64([2])]);
    const probs = scaled(g.matmul(qr, kr));
    const ctx = g.matmul(probs, g.op("Unsqueeze", [value, g.int64([2])]));
    const out = g.reshape(
      g.transpose(g.reshape(ctx, [0, H, -1, hd]), [0, 2, 1, 3]),
      [-1, H * hd],
    );
    return { out, probs, present: { key, value } };
  }
  const { batch: B, seqlen: T } = o;
  const heads = (x: Value, n: number) => g.reshape(x, [B, T, n, hd]);
  const qh = heads(q, H), kh = heads(k, KV), vh = heads(v, KV);
  const roped = (x: Value, n: number, nw: Value | undefined) => {
    const y = rope(g, normed(x, nw), r.cos, r.sin, hd);
    if (!rotatesQk) return y;
    return g.reshape(onlineRotation(g, g.reshape(y, [B * T * n, hd]), w, "qk"), [B, T, n, hd]);
  };
  const qr = g.reshape(g.transpose(kvq(roped(qh, H, qNorm)), [0, 2, 1, 3]), [B, KV, G, T, hd]);
  const kr = g.reshape(g.transpose(kvq(roped(kh, KV, kNorm)), [0, 2, 3, 1]), [B, KV, 1, hd, T]);
  const vr = g.reshape(g.transpose(kvq(vh), [0, 2, 1, 3]), [B, KV, 1, T, hd]);
  const probs = scaled(g.matmul(qr, kr));
  const out = g.reshape(
    g.transpose(g.reshape(g.matmul(probs, vr), [B, H, T, hd]), [0, 2, 1, 3]),
    [B * T, H * hd],
  );
  return { out, probs };
}

/**
 * The deployed decoder's additive attention mask [B, 1, 1, T, S] from `attention_mask`
 * (int64 [B, S], 1 for a real token, S = past + T): the t-th new token (index q = S − T + t)
 * sees key j when j ≤ q, the mask is 1 at j and, with a sliding `window`, j > q − window;
 * −1e30 elsewhere, as the calibration graphs' causal mask.
 */
export function decoderMask(g: Graph, attentionMask: Value, bt: Value, window?: number): Value {
  const at = (v: Value, i: number) => g.op("Gather", [v, g.int64([i], [])], { axis: 0 });
  const S = at(g.op("Shape", [attentionMask]), 1), T = at(bt, 1);
  const one = g.int64([1], []);
  const keyRange = g.op("Range", [g.int64([0], []), S, one]);
  const queryRange = g.op("Range", [g.sub(S, T), S, one]);
  const keys = g.op("Unsqueeze", [keyRange, g.int64([0])]);
  const queries = g.op("Unsqueeze", [queryRange, g.int64([1])]);
  let visible = g.op("LessOrEqual", [keys, queries]);
  if (window !== undefined) {
    const inWindow = g.op("Greater", [keys, g.sub(queries, g.int64([window], []))]);
    visible = g.op("And", [visible, inWindow]);
  }
  const real = g.op("Unsqueeze", [
    g.op("Cast", [attentionMask], { to: DType.bool }),
    g.int64([1, 2, 3]),
  ]);
  return g.op("Where", [g.op("And", [visible, real]), g.scalar(0), g.scalar(-1e30)]);
}

/**
 * A linear layer as graph ops: x [N, in] → [N, out], for the layer `name` of a block whose
 * tensors are `w`.
 */
export type LinearOp = (g: Graph, x: Value, name: LinearName, w: Record<string, Value>) => Value;

/** The calibration graphs' linear layer: `Gemm` with the block's weight (and bias) tensors. */
export function gemmLinear(
  g: Graph,
  x: Value,
  name: LinearName,
  w: Record<string, Value>,
): Value {
  const bias = w[`${name}.bias`];
  return g.op("Gemm", bias ? [x, w[`${name}.weight`], bias] : [x, w[`${name}.weight`]], {
    transB: 1,
  });
}

/**
 * The values a block reads: `x` [B,T,d], `cos`/`sin` ([T,1,hd/2], or [B,T,1,hd/2] from
 * `position_ids`), `mask` ([T,T], or [B,1,1,T,S] from {@linkcode decoderMask}), its tensors by
 * name; in the deployed decoder also the past K/V and the linear op.
 */
export interface BlockInputs {
  /** The block's input [B, T, d]. */
  x: Value;
  /** RoPE cosines. */
  cos: Value;
  /** RoPE sines. */
  sin: Value;
  /** Additive attention mask. */
  mask: Value;
  /** The block's tensors by name (weights, norms, reassembly maps, static scales). */
  w: Record<string, Value>;
  /** Keys and values of the earlier positions (run-time sizes only). */
  past?: KvPair;
  /** How each linear layer is computed (default {@linkcode gemmLinear}). */
  linear?: LinearOp;
}

/** What {@linkcode addBlock} builds: the sizes and the run-time activation quantizers. */
export type BlockBuildOptions = BlockSizes & { abits?: number; kvBits?: number };

/** Builds the block graph. Inputs: `x` [B,T,d], `cos`/`sin` [T,1,hd/2], `mask` [T,T], weights. */
export function buildBlockGraph(c: ModelConfig, o: BlockGraphOptions): Uint8Array {
  const g = new Graph();
  const { batch: B, seqlen: T } = o;
  const x = g.input("x", [B, T, c.hidden]);
  const cos = g.input("cos", [T, 1, c.headDim / 2]);
  const sin = g.input("sin", [T, 1, c.headDim / 2]);
  const mask = g.input("mask", [T, T]);
  const w: Record<string, Value> = {};
  for (const [name, shape] of Object.entries(blockTensorShapes(c))) w[name] = g.input(name, shape);
  const { y, captured } = addBlock(g, c, o, { x, cos, sin, mask, w });
  if (o.output ?? true) g.output(y, "y");
  if (o.capture) { for (const p of CAPTURE_POINTS) g.output(captured[p], p); }
  if (o.grams?.length) {
    const valid = g.input("valid", [B * T, 1]);
    for (const p of o.grams) {
      const v = captured[p];
      const bounds = gramParts(captureWidth(c, p));
      const cols = (v: Value, a: number) =>
        bounds.length === 2 ? v : g.slice(v, [bounds[a]], [bounds[a + 1]], [1]);
      const masked = g.mul(v, valid);
      for (let a = 0; a + 1 < bounds.length; a++) {
        for (let b = a; b + 1 < bounds.length; b++) {
          g.output(g.op("Gemm", [cols(masked, a), cols(v, b)], { transA: 1 }), gramName(p, a, b));
        }
      }
    }
  }
  return g.toBytes();
}

/**
 * Adds the block to `g` on the given values; returns its output [B,T,d], the (quantized)
 * input of each linear group and, with run-time sizes, the present K/V cache.
 */
export function addBlock(
  g: Graph,
  c: ModelConfig,
  o: BlockBuildOptions,
  { x, cos, sin, mask, w, past, linear: linearOp = gemmLinear }: BlockInputs,
): { y: Value; captured: Record<CapturePoint, Value>; probs: Value; present?: KvPair } {
  const d = c.hidden;
  const N = "bt" in o ? -1 : o.batch * o.seqlen;
  const quantizing = o.abits !== undefined && o.abits < 16;
  const aq = (v: Value, point: CapturePoint) => {
    let r = point === "x_down" ? onlineRotation(g, v, w, "x_down") : v;
    if (w[reassemblyNames(point)[0]]) r = reassembleChannels(g, r, w, point);
    const [sn, zn] = actQuantNames(point);
    if (quantizing) {
      r = w[sn]
        ? fakeQuantStatic(g, r, w[sn], w[zn], o.abits!)
        : fakeQuantPerToken(g, r, o.abits!, w[ACT_CLIP]);
    }
    return r;
  };
  const linear = (v: Value, name: LinearName) => linearOp(g, v, name, w);
  const captured = {} as Record<CapturePoint, Value>;

  const x2d = g.reshape(x, [N, d]);
  const hAttn = aq(rmsNorm(g, x2d, w["input_layernorm.weight"], c.rmsEps), "x_qkv");
  captured.x_qkv = hAttn;
  const { out: attn, probs, present } = attention(
    g,
    c,
    "bt" in o
      ? { bt: o.bt, kvBits: o.kvBits }
      : { batch: o.batch, seqlen: o.seqlen, kvBits: o.kvBits },
    linear(hAttn, "self_attn.q_proj"),
    linear(hAttn, "self_attn.k_proj"),
    linear(hAttn, "self_attn.v_proj"),
    { cos, sin, mask, past },
    w,
  );
  const attnQ = aq(attn, "x_o");
  captured.x_o = attnQ;
  const x1 = g.add(x2d, linear(attnQ, "self_attn.o_proj"));

  const hMlp = aq(rmsNorm(g, x1, w["post_attention_layernorm.weight"], c.rmsEps), "x_gateup");
  captured.x_gateup = hMlp;
  const gate = linear(hMlp, "mlp.gate_proj");
  const up = linear(hMlp, "mlp.up_proj");
  const act = aq(g.mul(g.mul(gate, g.op("Sigmoid", [gate])), up), "x_down");
  captured.x_down = act;
  const y = g.add(x1, linear(act, "mlp.down_proj"));
  const out = "bt" in o ? reshapeBT(g, y, o.bt, [d]) : g.reshape(y, [o.batch, o.seqlen, d]);
  return { y: out, captured, probs, present };
}

/** What the head graph returns. */
export interface HeadGraphOptions {
  /** Windows per run (B). */
  batch: number;
  /** Tokens per window (T). */
  seqlen: number;
  /** `nll`: per-token negative log-likelihood of `targets` [B, T−1]; `logits`: [B, T, V]. */
  output: "nll" | "logits";
  /**
   * With `nll`: also output `greedy` [B, T−1], 1 where the target is the most likely token
   * (the first one on ties, as ArgMax and torch's argmax pick) and 0 elsewhere.
   */
  greedy?: boolean;
}

/** Final RMSNorm + lm_head, then NLL of the next tokens or the raw logits. */
export function buildHeadGraph(c: ModelConfig, o: HeadGraphOptions): Uint8Array {
  const g = new Graph();
  const { batch: B, seqlen: T } = o;
  const x = g.input("x", [B, T, c.hidden]);
  const normW = g.input("norm", [c.hidden]);
  const head = g.input("head", [c.vocab, c.hidden]);
  const h = rmsNorm(g, g.reshape(x, [B * T, c.hidden]), normW, c.rmsEps);
  const logits = g.reshape(g.op("Gemm", [h, head], { transB: 1 }), [B, T, c.vocab]);
  if (o.output === "logits") {
    g.output(logits, "logits");
  } else {
    const targets = g.input("targets", [B, T - 1], DType.int64);
    const lp = g.op("LogSoftmax", [g.slice(logits, [0], [T - 1], [1])], { axis: -1 });
    const picked = g.op("GatherElements", [lp, g.op("Unsqueeze", [targets, g.int64([2])])], {
      axis: 2,
    });
    g.output(g.op("Neg", [g.reshape(picked, [B, T - 1])]), "nll");
    if (o.greedy) {
      const best = g.op("ArgMax", [lp], { axis: -1, keepdims: 0 });
      g.output(g.op("Cast", [g.op("Equal", [best, targets])], { to: DType.float32 }), "greedy");
    }
  }
  return g.toBytes();
}
