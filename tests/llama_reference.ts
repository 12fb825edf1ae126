/**
 * An independent float64 LLaMA decoder block written from PROTOCOL.md §1 and §5 (RMSNorm, RoPE
 * in either layout, grouped-query causal attention, SwiGLU, per-token activation fake
 * quantization) and from transformers' modeling code for the families (`rope_scaling` linear
 * and llama3 as `modeling_rope_utils.py` defines them, biases on any linear, Qwen3's per-head
 * q/k RMSNorm before RoPE, Mistral's sliding window `kv_idx > q_idx − sliding_window`); nothing
 * here calls the graph code. Shared by the tests that check our graphs.
 */
import type { Tensor } from "../kernels/tensor.ts";
import { CAPTURE_POINTS, type CapturePoint } from "../models/block_graph.ts";
import type { ModelConfig } from "../models/config.ts";
import type { BlockWeights, ModelSource } from "../models/source.ts";

/** ‖a − b‖ / ‖b‖, how the tests compare a graph's output with the reference's. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

/** torch.round: round half to even. */
export function roundHalfEven(v: number): number {
  const r = Math.round(v); // ties go towards +inf
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Distance of v from the nearest rounding boundary (k + 0.5), in units of v. */
export function distanceToTie(v: number): number {
  return Math.abs(v - Math.floor(v) - 0.5);
}

/** Which layout RoPE rotates: HF `half` pairs (i, i+hd/2) or llama2.c `interleaved` (2i, 2i+1). */
export type RopeLayout = "half" | "interleaved";

/** Per-token fake quantization of one reference capture point, with what a comparison needs. */
export interface RefCapture {
  /** The linear's input after fake quantization (or unchanged when off), [rows, cols]. */
  values: Float64Array;
  /** Quantization step of each row (0 when quantization is off). */
  scale: Float64Array;
  cols: number;
}

/** Statistics of following the graph's rounding decisions at exact ties (see `snapTo`). */
export interface SnapStats {
  /** Quantized values where the graph rounded the other way at a tie (adopted). */
  tieFlips: number;
  /** Quantized values that differ from the graph without being at a tie (kept). */
  mismatches: number;
  /** Quantized values compared. */
  total: number;
}

export interface RefOptions {
  rope: RopeLayout;
  abits?: number;
  /**
   * The graph's captured (quantized) linear inputs. Where the graph's value is one step away
   * from the reference's and the reference value sits within `tieTol` steps of a rounding
   * boundary, the reference adopts the graph's value, so one rounding tie flipped by float32
   * versus float64 arithmetic does not spread through the rest of the block.
   */
  snapTo?: Record<CapturePoint, Float32Array>;
  tieTol?: number;
  stats?: SnapStats;
}

export interface RefResult {
  y: Float64Array;
  captures: Record<CapturePoint, RefCapture>;
}

/**
 * Quantizes rows [r0, r0+rows) of `x` (cols wide) in place as PROTOCOL §5 (asymmetric min-max
 * including 0, round half to even), writing the step of each row into `scale`.
 */
export function fakeQuantRows(
  x: Float64Array,
  cols: number,
  bits: number,
  scale: Float64Array,
  rowOffset: number,
  snap: Float32Array | undefined,
  o: RefOptions,
): void {
  const maxq = 2 ** bits - 1;
  const rows = x.length / cols;
  for (let r = 0; r < rows; r++) {
    let xmin = 0, xmax = 0;
    for (let j = 0; j < cols; j++) {
      xmin = Math.min(xmin, x[r * cols + j]);
      xmax = Math.max(xmax, x[r * cols + j]);
    }
    if (xmin === 0 && xmax === 0) [xmin, xmax] = [-1, 1];
    const s = (xmax - xmin) / maxq;
    const zero = roundHalfEven(-xmin / s);
    scale[rowOffset + r] = s;
    for (let j = 0; j < cols; j++) {
      const u = x[r * cols + j] / s;
      const q = Math.min(maxq, Math.max(0, roundHalfEven(u) + zero));
      let v = s * (q - zero);
      if (snap) {
        const g = snap[(rowOffset + r) * cols + j];
        const steps = Math.abs(g - v) / s;
        o.stats!.total++;
        if (steps > 0.5) {
          const atTie = distanceToTie(u) < o.tieTol! || distanceToTie(-xmin / s) < o.tieTol!;
          if (steps < 1.5 && atTie) {
            o.stats!.tieFlips++;
            v = g;
          } else {
            o.stats!.mismatches++;
          }
        }
      }
      x[r * cols + j] = v;
    }
  }
}

/** y[t, o] = Σ_j x[t, j] · W[o, j] + b[o] (W is [out, in]). */
export function linear(x: Float64Array, rows: number, w: Tensor, b?: Tensor): Float64Array {
  const [nOut, nIn] = w.shape;
  const y = new Float64Array(rows * nOut);
  for (let t = 0; t < rows; t++) {
    for (let o = 0; o < nOut; o++) {
      let s = b ? b.data[o] : 0;
      for (let j = 0; j < nIn; j++) s += x[t * nIn + j] * w.data[o * nIn + j];
      y[t * nOut + o] = s;
    }
  }
  return y;
}

/** RMSNorm of each row: x · 1/sqrt(mean(x²) + eps) · w. */
export function rmsNormRows(x: Float64Array, cols: number, w: Tensor, eps: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let r = 0; r < x.length / cols; r++) {
    let ss = 0;
    for (let j = 0; j < cols; j++) ss += x[r * cols + j] ** 2;
    const inv = 1 / Math.sqrt(ss / cols + eps);
    for (let j = 0; j < cols; j++) y[r * cols + j] = x[r * cols + j] * inv * w.data[j];
  }
  return y;
}

/**
 * The inverse frequencies in float64, rounded to float32 once at the end (the model's buffer):
 * 1/θ^(2i/hd), then `rope_scaling` as transformers defines it — linear: f/factor; llama3: with
 * wavelength λ = 2π/f, λ < original/high_freq_factor keeps f, λ > original/low_freq_factor gives
 * f/factor, in between s = (original/λ − low)/(high − low) gives (1 − s)·f/factor + s·f.
 */
export function referenceInvFreq(c: ModelConfig): Float64Array {
  const hd = c.headDim, half = hd / 2, r = c.ropeScaling;
  const out = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    let f = 1 / Math.pow(c.ropeTheta, (2 * i) / hd);
    if (r?.type === "linear") f /= r.factor;
    if (r?.type === "llama3") {
      const wavelen = (2 * Math.PI) / f;
      const lowWavelen = r.originalMaxPositions / r.lowFreqFactor;
      const highWavelen = r.originalMaxPositions / r.highFreqFactor;
      if (wavelen > lowWavelen) f /= r.factor;
      else if (wavelen >= highWavelen) {
        const s = (r.originalMaxPositions / wavelen - r.lowFreqFactor) /
          (r.highFreqFactor - r.lowFreqFactor);
        f = (1 - s) * f / r.factor + s * f;
      }
    }
    out[i] = Math.fround(f);
  }
  return out;
}

/**
 * RMSNorm in place over each head of [T, heads·hd] with one weight [hd] for every head (Qwen3's
 * q_norm / k_norm).
 */
export function headNorm(x: Float64Array, hd: number, w: Tensor, eps: number) {
  for (let r = 0; r < x.length / hd; r++) {
    let ss = 0;
    for (let j = 0; j < hd; j++) ss += x[r * hd + j] ** 2;
    const inv = 1 / Math.sqrt(ss / hd + eps);
    for (let j = 0; j < hd; j++) x[r * hd + j] = x[r * hd + j] * inv * w.data[j];
  }
}

/** RoPE in place on [T, heads·hd] (rows are positions 0..T−1), angles in float32 (§1). */
export function applyRope(
  x: Float64Array,
  T: number,
  heads: number,
  c: ModelConfig,
  layout: RopeLayout,
) {
  const hd = c.headDim, half = hd / 2;
  const invFreq = referenceInvFreq(c);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < half; i++) {
      const inv = invFreq[i];
      const angle = Math.fround(t * inv);
      const cos = Math.cos(angle), sin = Math.sin(angle);
      for (let h = 0; h < heads; h++) {
        const base = t * heads * hd + h * hd;
        const [a, b] = layout === "half"
          ? [base + i, base + i + half]
          : [base + 2 * i, base + 2 * i + 1];
        const xa = x[a], xb = x[b];
        x[a] = xa * cos - xb * sin;
        x[b] = xb * cos + xa * sin;
      }
    }
  }
}

/**
 * Causal grouped-query attention of one window: q [T, H·hd], k/v [T, KV·hd] → [T, H·hd]; with a
 * sliding window W, position t sees keys j with t − W < j ≤ t.
 */
export function attention(
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  T: number,
  c: ModelConfig,
) {
  const { heads: H, kvHeads: KV, headDim: hd } = c;
  const out = new Float64Array(T * H * hd);
  const p = new Float64Array(T);
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / (H / KV));
    for (let t = 0; t < T; t++) {
      const first = c.slidingWindow === undefined ? 0 : Math.max(0, t - c.slidingWindow + 1);
      let max = -Infinity;
      for (let j = first; j <= t; j++) {
        let s = 0;
        for (let i = 0; i < hd; i++) s += q[t * H * hd + h * hd + i] * k[j * KV * hd + g * hd + i];
        p[j] = s / Math.sqrt(hd);
        max = Math.max(max, p[j]);
      }
      let z = 0;
      for (let j = first; j <= t; j++) z += p[j] = Math.exp(p[j] - max);
      for (let i = 0; i < hd; i++) {
        let s = 0;
        for (let j = first; j <= t; j++) s += p[j] * v[j * KV * hd + g * hd + i];
        out[t * H * hd + h * hd + i] = s / z;
      }
    }
  }
  return out;
}

/** The decoder block in float64, window by window, on x [W, T, d] (float32 or float64). */
export function referenceBlock(
  c: ModelConfig,
  w: BlockWeights,
  x: { data: Float32Array | Float64Array; shape: number[] },
  o: RefOptions,
): RefResult {
  const [W, T, d] = x.shape;
  const qd = c.heads * c.headDim, F = c.intermediate;
  const y = new Float64Array(W * T * d);
  const cols: Record<CapturePoint, number> = { x_qkv: d, x_o: qd, x_gateup: d, x_down: F };
  const captures = {} as Record<CapturePoint, RefCapture>;
  for (const p of CAPTURE_POINTS) {
    captures[p] = {
      values: new Float64Array(W * T * cols[p]),
      scale: new Float64Array(W * T),
      cols: cols[p],
    };
  }
  const quant = (p: CapturePoint, v: Float64Array, win: number) => {
    if (o.abits !== undefined && o.abits < 16) {
      fakeQuantRows(v, cols[p], o.abits, captures[p].scale, win * T, o.snapTo?.[p], o);
    }
    captures[p].values.set(v, win * T * cols[p]);
    return v;
  };
  const lin = (v: Float64Array, name: string) =>
    linear(v, T, w[`${name}.weight`], w[`${name}.bias`]);
  for (let win = 0; win < W; win++) {
    const xw = Float64Array.from(x.data.subarray(win * T * d, (win + 1) * T * d));
    const hA = quant("x_qkv", rmsNormRows(xw, d, w["input_layernorm.weight"], c.rmsEps), win);
    const q = lin(hA, "self_attn.q_proj");
    const k = lin(hA, "self_attn.k_proj");
    const v = lin(hA, "self_attn.v_proj");
    if (c.qkNorm) {
      headNorm(q, c.headDim, w["self_attn.q_norm.weight"], c.rmsEps);
      headNorm(k, c.headDim, w["self_attn.k_norm.weight"], c.rmsEps);
    }
    applyRope(q, T, c.heads, c, o.rope);
    applyRope(k, T, c.kvHeads, c, o.rope);
    const attn = quant("x_o", attention(q, k, v, T, c), win);
    const o1 = lin(attn, "self_attn.o_proj");
    const x1 = xw.map((val, i) => val + o1[i]);
    const hM = quant(
      "x_gateup",
      rmsNormRows(x1, d, w["post_attention_layernorm.weight"], c.rmsEps),
      win,
    );
    const gate = lin(hM, "mlp.gate_proj");
    const up = lin(hM, "mlp.up_proj");
    const act = quant("x_down", gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]), win);
    const down = lin(act, "mlp.down_proj");
    for (let i = 0; i < x1.length; i++) y[win * T * d + i] = x1[i] + down[i];
  }
  return { y, captures };
}

/** Per position t of a token sequence: the float64 reference's view of token t + 1. */
export interface ReferenceNextToken {
  /** log p(token t+1 | tokens ≤ t). */
  logprob: number;
  /** Whether token t+1 is the most likely next token. */
  greedy: boolean;
  /** |best logit − the best other logit| (how near the argmax is to a tie). */
  margin: number;
}

/** A whole model in float64 (all its weights in memory: for the small fixture models). */
export interface ReferenceModel {
  /**
   * Next-token log-probabilities along `tokens` (positions 0 … n − 2), with per-token activation
   * quantization at `abits`; `snapTo` (per block, the graph's quantized linear inputs) makes the
   * reference follow the graph's rounding at ties, counted in `stats` (see {@linkcode RefOptions}).
   */
  nextTokens(
    tokens: readonly number[],
    o?: { abits?: number; snapTo?: Record<CapturePoint, Float32Array>[]; stats?: SnapStats },
  ): ReferenceNextToken[];
}

/** Loads every tensor of `model` for {@linkcode ReferenceModel}. */
export async function referenceModel(model: ModelSource): Promise<ReferenceModel> {
  const c = model.config;
  const table = await model.embedding(), norm = await model.finalNorm(), head = await model.head();
  const blocks: BlockWeights[] = [];
  for (let i = 0; i < c.layers; i++) blocks.push(await model.block(i));
  return {
    nextTokens(tokens, o = {}) {
      const T = tokens.length - 1, d = c.hidden, V = c.vocab;
      let x: Float64Array = new Float64Array(T * d);
      for (let t = 0; t < T; t++) {
        for (let j = 0; j < d; j++) x[t * d + j] = table.data[tokens[t] * d + j];
      }
      blocks.forEach((w, i) => {
        x = referenceBlock(c, w, { data: x, shape: [1, T, d] }, {
          rope: "half",
          abits: o.abits,
          snapTo: o.snapTo?.[i],
          tieTol: 2e-3,
          stats: o.stats,
        }).y;
      });
      const h = rmsNormRows(x, d, norm, c.rmsEps);
      const logits = linear(h, T, head);
      const out: ReferenceNextToken[] = [];
      for (let t = 0; t < T; t++) {
        const row = logits.subarray(t * V, (t + 1) * V);
        let best = 0;
        for (let v = 1; v < V; v++) if (row[v] > row[best]) best = v;
        let z = 0, other = -Infinity;
        for (let v = 0; v < V; v++) {
          z += Math.exp(row[v] - row[best]);
          if (v !== best) other = Math.max(other, row[v]);
        }
        const target = tokens[t + 1];
        out.push({
          logprob: row[target] - row[best] - Math.log(z),
          greedy: target === best,
          margin: row[best] - other,
        });
      }
      return out;
    },
  };
}
