/**
 * What every checkpoint format opens as: a {@linkcode ModelSource}, the config plus readers for
 * the embedding, one decoder block at a time, the final norm and the head. The formats
 * (`formats/`) produce it; the stream, evaluation and export consume it.
 * @module
 */
import { firstNonFinite, type Tensor } from "../kernels/tensor.ts";
import type { ModelConfig } from "./config.ts";

/**
 * One decoder block's tensors, keyed by their Hugging Face names relative to
 * `model.layers.{i}.` (`self_attn.q_proj.weight`, `input_layernorm.weight`, …).
 * Linear weights are [out, in] (y = x·Wᵀ).
 */
export type BlockWeights = Record<string, Tensor>;

/** A model whose tensors are read on demand, one block at a time. */
export interface ModelSource {
  /** The directory or file it was opened from. */
  readonly path: string;
  /**
   * `hf` for a Hugging Face directory, `llama2c` for a llama2.c checkpoint, `gptq` and
   * `compressed-tensors` for packed Hugging Face checkpoints, `gguf` for a llama.cpp file.
   */
  readonly format: "hf" | "llama2c" | "gptq" | "compressed-tensors" | "gguf";
  /** The model's shape and options. */
  readonly config: ModelConfig;
  /** The dtype its linear weights are stored in (F32 when unknown). */
  readonly dtype?: "F32" | "F16" | "BF16";
  /** Token embedding [vocab, hidden]. */
  embedding(): Promise<Tensor>;
  /** Decoder block `i`'s tensors. */
  block(i: number): Promise<BlockWeights>;
  /** Final RMSNorm weight [hidden]. */
  finalNorm(): Promise<Tensor>;
  /** Output projection [vocab, hidden] (the embedding when tied). */
  head(): Promise<Tensor>;
  /** Releases the open files; no reads after it. */
  close(): void;
}

/** Throws unless `t` has `shape`; the message names the tensor and the file. */
export function expectShape(t: Tensor, shape: number[], tensorName: string, file: string): Tensor {
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new Error(
      `${file}: tensor "${tensorName}" has shape [${t.shape.join(", ")}], ` +
        `expected [${shape.join(", ")}] from the config`,
    );
  }
  return t;
}

/** Throws unless every value of `t` is finite; the message names the tensor and the file. */
export function expectFinite(t: Tensor, tensorName: string, file: string): Tensor {
  const i = firstNonFinite(t.data);
  if (i >= 0) {
    throw new Error(
      `${file}: tensor "${tensorName}" holds a non-finite value (${t.data[i]} at index ${i})`,
    );
  }
  return t;
}
