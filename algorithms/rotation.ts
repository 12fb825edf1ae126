/**
 * Rotating a LLaMA-family model (QuaRot): transforms of its tensors that leave the function
 * unchanged while spreading outlier channels over all of them.
 *
 * - Each RMSNorm's weight is folded into the linears it feeds (the columns of q/k/v, of
 *   gate/up, of the head), so the norms carry weight 1 and commute with an orthogonal rotation:
 *   rms(x·Q) = rms(x).
 * - R1, one rotation Q of the residual stream: the embedding and the input side of q/k/v, gate/up
 *   and the head become E·Q and W·Q; the output side of o_proj and down_proj becomes Qᵀ·W (and
 *   their biases b·Q). Every block then reads and writes the rotated stream x·Q.
 * - R2, a rotation H of each head's values: v_proj's rows of each KV head become Hᵀ·W_v (its bias
 *   b·H), o_proj's columns of each query head W_o·H, so attention's output per head, p·(v·H),
 *   meets its own inverse.
 * - R4, a rotation of down_proj's input: W_down·R, with x·R applied to the activation at run time
 *   (block tensors `rotation.x_down.*` the block graph applies).
 * - R3, a rotation of q and k per head after RoPE at run time (`rotation.qk.*`): q·kᵀ is
 *   unchanged, and quantized keys lose less.
 * @module
 */
import type { Tensor } from "../kernels/tensor.ts";
import { type OnlinePoint, onlineRotationNames } from "../models/block_graph.ts";
import type { ModelConfig } from "../models/config.ts";
import type { BlockWeights } from "../models/source.ts";
import { rotateColumns, rotateRows, type Rotation, rotation } from "./hadamard.ts";

/** The block tensors carrying an online rotation, for the block graph to apply x·R. */
export function onlineRotationTensors(point: OnlinePoint, r: Rotation): BlockWeights {
  const [s, a] = onlineRotationNames(point);
  return {
    [s]: { data: Float32Array.from(r.signs ?? new Float64Array(r.n).fill(1)), shape: [r.n] },
    [a]: { data: Float32Array.from(r.a), shape: [r.m, r.m] },
  };
}

const copy = (t: Tensor): Tensor => ({ data: t.data.slice(), shape: [...t.shape] });

/** Multiplies column j of W [rows, cols] by s[j]. */
function scaleColumns(w: Tensor, s: Float32Array): Tensor {
  const [rows, cols] = w.shape;
  const out = w.data.slice();
  for (let r = 0; r < rows; r++) for (let j = 0; j < cols; j++) out[r * cols + j] *= s[j];
  return { data: out, shape: [rows, cols] };
}

const ones = (n: number): Tensor => ({ data: new Float32Array(n).fill(1), shape: [n] });

/**
 * The block with its two RMSNorm weights folded into the linears they feed: q/k/v and gate/up
 * columns scaled by the norm's weight, the norms set to 1.
 */
export function fuseNorms(w: BlockWeights): BlockWeights {
  const out: BlockWeights = { ...w };
  const fuse = (norm: string, linears: string[]) => {
    const s = w[`${norm}.weight`].data;
    for (const l of linears) out[`${l}.weight`] = scaleColumns(w[`${l}.weight`], s);
    out[`${norm}.weight`] = ones(s.length);
  };
  fuse("input_layernorm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]);
  fuse("post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"]);
  return out;
}

/** The rotations of a model: R1 of the stream, R2 of each head's values, R4 and R3 online. */
export interface ModelRotations {
  /** R1, order hidden. */
  residual: Rotation;
  /** R2, order head_dim. */
  head: Rotation;
  /** R4, order intermediate (null: not applied). */
  down: Rotation | null;
  /** R3, order head_dim, on q and k after RoPE (null: not applied). */
  qk: Rotation | null;
}

/**
 * A block rotated: norms fused, R1 on both sides of the stream, R2 on v/o per head, R4 folded
 * into down_proj with its online tensors, R3's online tensors. Takes a block with its norms
 * weighted as read; returns new tensors (the input is not written).
 */
export function rotateBlock(w: BlockWeights, c: ModelConfig, r: ModelRotations): BlockWeights {
  const out = fuseNorms(w);
  const q1 = r.residual, hd = c.headDim;
  for (
    const l of ["q", "k", "v"].map((x) => `self_attn.${x}_proj`).concat([
      "mlp.gate_proj",
      "mlp.up_proj",
    ])
  ) {
    const t = copy(out[`${l}.weight`]);
    rotateRows(t.data, t.shape[0], q1); // W·Q: each row (over the stream) times Q
    out[`${l}.weight`] = t;
  }
  for (const l of ["self_attn.o_proj", "mlp.down_proj"]) {
    const t = copy(out[`${l}.weight`]);
    rotateColumns(t.data, t.shape[0], t.shape[1], q1); // Qᵀ·W
    out[`${l}.weight`] = t;
    const b = out[`${l}.bias`];
    if (b) {
      const bb = copy(b);
      rotateRows(bb.data, 1, q1);
      out[`${l}.bias`] = bb;
    }
  }
  // R2: v_proj's rows of each KV head → Hᵀ·W_v[h]; o_proj's columns of each query head → W_o·H.
  const v = out["self_attn.v_proj.weight"], hidden = v.shape[1];
  const vt = copy(v);
  for (let h = 0; h < c.kvHeads; h++) {
    rotateColumns(vt.data.subarray(h * hd * hidden, (h + 1) * hd * hidden), hd, hidden, r.head);
  }
  out["self_attn.v_proj.weight"] = vt;
  const vb = out["self_attn.v_proj.bias"];
  if (vb) {
    const t = copy(vb);
    rotateRows(t.data, c.kvHeads, r.head);
    out["self_attn.v_proj.bias"] = t;
  }
  const o = copy(out["self_attn.o_proj.weight"]);
  const rowsO = o.shape[0];
  const seg = new Float64Array(hd);
  for (let i = 0; i < rowsO; i++) {
    for (let h = 0; h < c.heads; h++) {
      const at = i * c.heads * hd + h * hd;
      seg.set(o.data.subarray(at, at + hd));
      rotateRows(seg, 1, r.head);
      o.data.set(seg, at);
    }
  }
  out["self_attn.o_proj.weight"] = o;
  if (r.down) {
    const d = copy(out["mlp.down_proj.weight"]);
    rotateRows(d.data, d.shape[0], r.down); // W_down·R, the activation gets x·R at run time
    out["mlp.down_proj.weight"] = d;
    Object.assign(out, onlineRotationTensors("x_down", r.down));
  }
  if (r.qk) Object.assign(out, onlineRotationTensors("qk", r.qk));
  return out;
}

/** The embedding table [vocab, hidden] rotated: E·Q. */
export function rotateEmbedding(e: Tensor, q: Rotation): Tensor {
  const t = copy(e);
  rotateRows(t.data, t.shape[0], q);
  return t;
}

/** The head [vocab, hidden] with the final norm's weight folded in and rotated: (W∘γ)·Q. */
export function rotateHead(head: Tensor, finalNorm: Tensor, q: Rotation): Tensor {
  const t = scaleColumns(head, finalNorm.data);
  rotateRows(t.data, t.shape[0], q);
  return t;
}

/** Which rotations to apply, and the seed of their random signs. */
export interface RotateOptions {
  /** Seed of R1 (R2, R4 and R3 take the next ones). */
  seed: number;
  /** R4: rotate down_proj's input online. */
  down: boolean;
  /** R3: rotate q and k per head after RoPE online (QuaRot applies it with a quantized KV cache). */
  qk: boolean;
}

/** The rotations of a model of config `c`. */
export function modelRotations(c: ModelConfig, o: RotateOptions): ModelRotations {
  return {
    residual: rotation(c.hidden, o.seed),
    head: rotation(c.headDim, o.seed + 1),
    down: o.down ? rotation(c.intermediate, o.seed + 2) : null,
    qk: o.qk ? rotation(c.headDim, o.seed + 3) : null,
  };
}

/** What a written model records of its rotations (`quantization_config.rotation`). */
export function describeRotations(r: ModelRotations, o: RotateOptions): Record<string, unknown> {
  return {
    seed: o.seed,
    residual: r.residual.name,
    head: r.head.name,
    down_proj_input: r.down?.name ?? null,
    qk: r.qk?.name ?? null,
    online: [r.down ? "x_down" : null, r.qk ? "qk" : null].filter((p) => p),
  };
}
