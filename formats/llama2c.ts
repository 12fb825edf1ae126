/**
 * llama2.c checkpoints (the legacy `.bin` format of `export.py --version 0`): a 7 × int32
 * header, then float32 tensors in a fixed order. Tensors are read by byte range, one at a time.
 *
 * llama2.c rotates interleaved pairs (2i, 2i+1) with RoPE; Hugging Face LLaMA rotates
 * (i, i + head_dim/2). We permute the rows of wq and wk inside each head when reading, which
 * makes the two exactly equivalent (q·k is invariant under the same permutation of both), so the
 * rest of the toolkit — and every model we write — uses the Hugging Face layout.
 * @module
 */
import type { Tensor } from "../kernels/tensor.ts";
import type { ModelConfig } from "../models/config.ts";
import { type BlockWeights, expectFinite, type ModelSource } from "../models/source.ts";
import { readAt } from "./read_at.ts";

const HEADER_BYTES = 7 * 4;

/** Opens a llama2.c `.bin` checkpoint for streaming. */
export async function openLlama2c(path: string): Promise<ModelSource> {
  const file = await Deno.open(path, { read: true });
  try {
    const size = (await file.stat()).size;
    if (size < HEADER_BYTES) {
      throw new Error(`${path}: ${size} bytes is too short for a llama2.c header`);
    }
    const head = new Int32Array((await readAt(file, 0, HEADER_BYTES, path)).buffer);
    const [dim, hiddenDim, layers, heads, kvHeads, vocabSigned, seqLen] = head;
    const config = configFromHeader(path, head);
    const shared = vocabSigned > 0;
    const vocab = Math.abs(vocabSigned);
    const hd = dim / heads;
    const kv = kvHeads * hd;
    // Offsets of each section, in floats from the end of the header.
    const sections: [string, number][] = [
      ["tok_embeddings", vocab * dim],
      ["rms_att", layers * dim],
      ["wq", layers * dim * dim],
      ["wk", layers * kv * dim],
      ["wv", layers * kv * dim],
      ["wo", layers * dim * dim],
      ["rms_ffn", layers * dim],
      ["w1", layers * hiddenDim * dim],
      ["w2", layers * dim * hiddenDim],
      ["w3", layers * hiddenDim * dim],
      ["rms_final", dim],
      ["freq_cis", seqLen * hd], // legacy RoPE tables, real and imaginary halves: skipped
      ["wcls", shared ? 0 : vocab * dim],
    ];
    const offset: Record<string, number> = {};
    let at = HEADER_BYTES;
    for (const [name, n] of sections) {
      offset[name] = at;
      at += n * 4;
    }
    if (at !== size) {
      throw new Error(
        `${path}: the llama2.c header [${Array.from(head).join(", ")}] implies ${at} bytes, ` +
          `the file has ${size}` + (at > size ? " (truncated?)" : "") +
          layersHint(size, at, sections, layers),
      );
    }
    const read = async (section: string, index: number, shape: number[]): Promise<Tensor> => {
      const n = shape.reduce((a, b) => a * b, 1);
      const bytes = await readAt(file, offset[section] + index * n * 4, n * 4, path);
      const whole = ["tok_embeddings", "rms_final", "wcls"].includes(section);
      const name = whole ? section : `${section} of layer ${index}`;
      return expectFinite({ data: new Float32Array(bytes.buffer, 0, n), shape }, name, path);
    };
    const source: ModelSource = {
      path,
      format: "llama2c",
      config,
      embedding: () => read("tok_embeddings", 0, [vocab, dim]),
      async block(i: number): Promise<BlockWeights> {
        if (!(i >= 0 && i < layers)) throw new Error(`${path}: no decoder layer ${i}`);
        return {
          "input_layernorm.weight": await read("rms_att", i, [dim]),
          "self_attn.q_proj.weight": interleavedToHalf(await read("wq", i, [dim, dim]), hd),
          "self_attn.k_proj.weight": interleavedToHalf(await read("wk", i, [kv, dim]), hd),
          "self_attn.v_proj.weight": await read("wv", i, [kv, dim]),
          "self_attn.o_proj.weight": await read("wo", i, [dim, dim]),
          "post_attention_layernorm.weight": await read("rms_ffn", i, [dim]),
          "mlp.gate_proj.weight": await read("w1", i, [hiddenDim, dim]),
          "mlp.down_proj.weight": await read("w2", i, [dim, hiddenDim]),
          "mlp.up_proj.weight": await read("w3", i, [hiddenDim, dim]),
        };
      },
      finalNorm: () => read("rms_final", 0, [dim]),
      head: () => shared ? read("tok_embeddings", 0, [vocab, dim]) : read("wcls", 0, [vocab, dim]),
      close: () => file.close(),
    };
    return source;
  } catch (e) {
    file.close();
    throw e;
  }
}

function configFromHeader(path: string, h: Int32Array): ModelConfig {
  const [dim, hiddenDim, layers, heads, kvHeads, vocabSigned, seqLen] = h;
  const bad = (what: string) => new Error(`${path}: llama2.c header: ${what}`);
  if (dim <= 0 || hiddenDim <= 0 || layers <= 0 || heads <= 0 || kvHeads <= 0 || seqLen <= 0) {
    throw bad(`non-positive size in [${Array.from(h).join(", ")}]`);
  }
  if (dim % heads !== 0 || (dim / heads) % 2 !== 0) {
    throw bad(`dim ${dim} is not an even multiple of n_heads ${heads}`);
  }
  if (heads % kvHeads !== 0) {
    throw bad(`n_heads ${heads} is not a multiple of n_kv_heads ${kvHeads}`);
  }
  if (vocabSigned === 0) throw bad("vocab_size is 0");
  return {
    modelType: "llama",
    hidden: dim,
    intermediate: hiddenDim,
    layers,
    heads,
    kvHeads,
    headDim: dim / heads,
    vocab: Math.abs(vocabSigned),
    maxSeq: seqLen,
    rmsEps: 1e-5,
    ropeTheta: 10000,
    tiedEmbeddings: vocabSigned > 0,
    qkvBias: false,
    bos: 1,
    eos: 2,
  };
}

/**
 * Row r of a head-major matrix in rotate-half order (Hugging Face) is row `order[r]` of the same
 * matrix in interleaved order (llama2.c, llama.cpp): within each head, rotate-half row j < d/2 is
 * interleaved row 2j and row j ≥ d/2 is row 2(j − d/2) + 1.
 */
export function ropeRowOrder(rows: number, headDim: number): Int32Array {
  const half = headDim / 2;
  return Int32Array.from({ length: rows }, (_, r) => {
    const h = Math.floor(r / headDim), j = r % headDim;
    return h * headDim + (j < half ? 2 * j : 2 * (j - half) + 1);
  });
}

/** Rows `width` wide gathered (`out[r] = in[order[r]]`) or scattered (`out[order[r]] = in[r]`). */
export function permuteRows<T extends Float32Array | Uint8Array>(
  data: T,
  width: number,
  order: Int32Array,
  scatter: boolean,
): T {
  const out = new (data.constructor as { new (n: number): T })(data.length);
  for (let r = 0; r < order.length; r++) {
    const [to, from] = scatter ? [order[r], r] : [r, order[r]];
    out.set(data.subarray(from * width, (from + 1) * width), to * width);
  }
  return out;
}

/** Reorders the rows of each head from interleaved RoPE pairs to rotate-half pairs. */
export function interleavedToHalf(w: Tensor, headDim: number): Tensor {
  const [rows, cols] = w.shape;
  return {
    data: permuteRows(w.data, cols, ropeRowOrder(rows, headDim), false),
    shape: [rows, cols],
  };
}

/** Reorders the rows of each head from rotate-half pairs to interleaved RoPE pairs. */
export function halfToInterleaved(w: Tensor, headDim: number): Tensor {
  const [rows, cols] = w.shape;
  return {
    data: permuteRows(w.data, cols, ropeRowOrder(rows, headDim), true),
    shape: [rows, cols],
  };
}

/** When the size matches another layer count (a header that disagrees with the file), says so. */
function layersHint(
  size: number,
  at: number,
  sections: [string, number][],
  layers: number,
): string {
  const perLayer =
    sections.filter(([n]) =>
      ["rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3"].includes(n)
    ).reduce((s, [, n]) => s + n * 4, 0) / layers;
  const other = at - perLayer * layers;
  const fits = (size - other) / perLayer;
  return Number.isInteger(fits) && fits > 0
    ? `; its size fits n_layers ${fits}, not the header's ${layers}`
    : "";
}
