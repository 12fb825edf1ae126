/**
 * Learnable equivalent transformation (OmniQuant's LET, with ABQ-LLM's up→down pair), as graph
 * ops: channel scales moved between a producer (an RMSNorm weight, `v_proj` rows, `up_proj` rows,
 * `q_proj` rows) and the consumers of that channel, which leaves the block's function unchanged
 * before quantization and makes its activations easier to quantize after.
 *
 * Two corrections to the reference code: `v→o` and `q/k` scales are sized by the KV heads and
 * expanded over each query group (grouped-query attention), and the q/k scale is shared by the
 * two members of every rotary pair (i, i + hd/2), so it commutes with RoPE.
 *
 * Biases: a scale on a linear's input (the norm → q/k/v and gate/up pairs, v → o's o_proj side,
 * up → down's down_proj side) leaves that linear's bias alone; a scale on a linear's output rows
 * (v_proj, up_proj, q_proj, k_proj) scales its bias with them. (No shift δ is learned, so no
 * bias absorbs W·δ.)
 * @module
 */
import type { Graph, Value } from "../kernels/graph.ts";
import type { ModelConfig } from "../models/config.ts";

/** Where a LET scale sits. */
export type LetPoint = "qkv" | "fc1" | "out" | "fc2" | "qk";

/** The pairs each method learns: OmniQuant (LLaMA) and ABQ-LLM (adds up→down). */
export const OMNIQUANT_POINTS: readonly LetPoint[] = ["qkv", "fc1", "out", "qk"];
/** ABQ-LLM's pairs. */
export const ABQ_POINTS: readonly LetPoint[] = ["qkv", "fc1", "out", "fc2", "qk"];

/**
 * The pairs of `points` that are exact for a model: the q/k pair is left out when q and k pass
 * Qwen3's per-head RMSNorm, which would undo a scale on q_proj's or k_proj's rows.
 */
export function letPointsFor(c: ModelConfig, points: readonly LetPoint[]): LetPoint[] {
  return points.filter((p) => !(p === "qk" && c.qkNorm));
}

/** Length of each scale vector. */
export function letSize(c: ModelConfig, p: LetPoint): number {
  switch (p) {
    case "qkv":
    case "fc1":
      return c.hidden;
    case "out":
      return c.kvHeads * c.headDim;
    case "fc2":
      return c.intermediate;
    case "qk":
      return (c.kvHeads * c.headDim) / 2;
  }
}

/**
 * Truncates a scale away from zero, keeping its sign (|s| ≥ 1e-2, as OmniQuant's
 * `truncate_number`); the gradient passes where the scale is not truncated.
 */
export function truncateScale(g: Graph, s: Value): Value {
  const pos = g.op("GreaterOrEqual", [s, g.scalar(0)]);
  return g.op("Where", [
    pos,
    g.op("Max", [s, g.scalar(1e-2)]),
    g.op("Min", [s, g.scalar(-1e-2)]),
  ]);
}

/** Repeats a per-KV-head vector [KV·hd] over each group of query heads → [H·hd]. */
export function expandOverGroups(g: Graph, c: ModelConfig, s: Value): Value {
  const G = c.heads / c.kvHeads;
  if (G === 1) return s;
  const per = g.reshape(s, [c.kvHeads, 1, c.headDim]);
  return g.reshape(g.op("Expand", [per, g.int64([c.kvHeads, G, c.headDim])]), [
    c.heads * c.headDim,
  ]);
}

/** The q/k scale [KV·hd/2] as a per-row vector of k_proj [KV·hd]: each value on both pair members. */
export function rotaryPairs(g: Graph, c: ModelConfig, s: Value): Value {
  const half = g.reshape(s, [c.kvHeads, c.headDim / 2]);
  return g.reshape(g.concat([half, half], 1), [c.kvHeads * c.headDim]);
}

const col = (g: Graph, w: Value, s: Value) => g.mul(w, s); // [out, in] · [in]: scales columns
const row = (g: Graph, w: Value, s: Value, n: number) => g.mul(w, g.reshape(s, [n, 1]));
const rowDiv = (g: Graph, w: Value, s: Value, n: number) => g.div(w, g.reshape(s, [n, 1]));

/**
 * Applies the scales in `scales` (raw parameters; truncated here) to a block's weights, given as
 * graph values keyed by their HF names; returns the transformed weights (norm weights included).
 */
export function applyLet(
  g: Graph,
  c: ModelConfig,
  w: Record<string, Value>,
  scales: Partial<Record<LetPoint, Value>>,
): Record<string, Value> {
  const out = { ...w };
  const kv = c.kvHeads * c.headDim, q = c.heads * c.headDim;
  const s = (p: LetPoint) => scales[p] ? truncateScale(g, scales[p]!) : null;
  const s1 = s("qkv"), s2 = s("fc1"), s3 = s("out"), s4 = s("fc2"), s5 = s("qk");
  if (s1) {
    out["input_layernorm.weight"] = g.div(out["input_layernorm.weight"], s1);
    for (const p of ["q", "k", "v"]) {
      out[`self_attn.${p}_proj.weight`] = col(g, out[`self_attn.${p}_proj.weight`], s1);
    }
  }
  if (s2) {
    out["post_attention_layernorm.weight"] = g.div(out["post_attention_layernorm.weight"], s2);
    for (const n of ["mlp.gate_proj.weight", "mlp.up_proj.weight"]) out[n] = col(g, out[n], s2);
  }
  if (s3) {
    out["self_attn.v_proj.weight"] = rowDiv(g, out["self_attn.v_proj.weight"], s3, kv);
    if (out["self_attn.v_proj.bias"]) {
      out["self_attn.v_proj.bias"] = g.div(out["self_attn.v_proj.bias"], s3);
    }
    out["self_attn.o_proj.weight"] = col(
      g,
      out["self_attn.o_proj.weight"],
      expandOverGroups(g, c, s3),
    );
  }
  if (s4) {
    out["mlp.up_proj.weight"] = rowDiv(g, out["mlp.up_proj.weight"], s4, c.intermediate);
    if (out["mlp.up_proj.bias"]) out["mlp.up_proj.bias"] = g.div(out["mlp.up_proj.bias"], s4);
    out["mlp.down_proj.weight"] = col(g, out["mlp.down_proj.weight"], s4);
  }
  if (s5) {
    const sk = rotaryPairs(g, c, s5);
    const sq = expandOverGroups(g, c, sk);
    out["self_attn.k_proj.weight"] = row(g, out["self_attn.k_proj.weight"], sk, kv);
    out["self_attn.q_proj.weight"] = rowDiv(g, out["self_attn.q_proj.weight"], sq, q);
    if (out["self_attn.k_proj.bias"]) {
      out["self_attn.k_proj.bias"] = g.mul(out["self_attn.k_proj.bias"], sk);
    }
    if (out["self_attn.q_proj.bias"]) {
      out["self_attn.q_proj.bias"] = g.div(out["self_attn.q_proj.bias"], sq);
    }
  }
  return out;
}

/**
 * SmoothQuant's initial scale per channel: max|x_c|^α / max|w_c|^(1−α), at least 1e-5, where
 * `actMax` is the channel's max |activation| over the calibration tokens and `weightMax` the
 * max |weight| over the consumers' column c.
 */
export function smoothScale(
  actMax: ArrayLike<number>,
  weightMax: ArrayLike<number>,
  alpha = 0.5,
): Float32Array {
  return Float32Array.from(actMax, (a, i) => {
    const s = Math.max(a, 1e-5) ** alpha / Math.max(weightMax[i], 1e-5) ** (1 - alpha);
    return Math.max(s, 1e-5);
  });
}
