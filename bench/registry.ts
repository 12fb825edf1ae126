/**
 * Every benchmark `bench/run.ts` knows, in run order. Adding one is one entry here: a name, a
 * line of description and a function `(ctx: BenchContext) => Promise<BenchRecord>` (see
 * `types.ts`) in its own module under `bench/`.
 * @module
 */
import { benchClaq } from "./claq.ts";
import { benchDeploy } from "./deploy.ts";
import { benchEval } from "./eval.ts";
import { benchFormats } from "./formats.ts";
import { benchGptq } from "./gptq.ts";
import { benchHadamard } from "./hadamard.ts";
import { benchLearned } from "./learned.ts";
import { benchMatmul } from "./matmul.ts";
import { benchMemory } from "./memory.ts";
import { benchQllm } from "./qllm.ts";
import { benchRotation } from "./rotation.ts";
import { benchScale } from "./scale.ts";
import type { Benchmark } from "./types.ts";

/** The registered benchmarks. */
export const BENCHMARKS: readonly Benchmark[] = [
  {
    name: "matmul",
    description: "MatMul GFLOP/s, kernels/matmul.ts vs a raw onnxruntime session",
    run: benchMatmul,
  },
  {
    name: "eval",
    description: "perplexity tokens/s on all val windows vs the reference",
    run: benchEval,
  },
  { name: "memory", description: "GPTQ peak RSS at 2, 8 and 32 layers", run: benchMemory },
  { name: "gptq", description: "GPTQ time vs the reference; 1024×8 LLaMA", run: benchGptq },
  { name: "claq", description: "CLAQ 2.1/3.12 bits vs GPTQ/RTN W2/W3", run: benchClaq },
  {
    name: "learned",
    description:
      "RTN vs OmniQuant vs ABQ-LLM, W4A16…W4A4, with and without outliers (README table)",
    run: benchLearned,
  },
  {
    name: "qllm",
    description: "QLLM ablation: RTN, reassembly, LoRA, both, OmniQuant at W4A4/W4A8/W6A6 (README)",
    run: benchQllm,
  },
  {
    name: "formats",
    description:
      "GGUF Q4_0/Q4_1/Q8_0: ours (RTN, GPTQ) vs llama-quantize by llama-perplexity and ours; " +
      "decode tokens/s (README table)",
    run: benchFormats,
  },
  {
    name: "rotation",
    description:
      "Rotation (QuaRot) beside every method at W4A4/W4A4KV4/W4A8/W4A16, three seeds (README)",
    run: benchRotation,
  },
  {
    name: "hadamard",
    description: "online rotation: Sylvester factor as MatMul vs fast Walsh–Hadamard (README)",
    run: benchHadamard,
  },
  {
    name: "deploy",
    description:
      "ONNX exports (MatMulNBits, KV cache): size, RSS, prefill/decode tokens/s, perplexity",
    run: benchDeploy,
  },
  {
    name: "scale",
    description:
      "GPTQ W4 g128 on a LLaMA-2-7B-shaped bf16 checkpoint (~13 GB, generated and cached): " +
      "peak RSS, s/block, GFLOP/s vs ORT MatMul (takes hours)",
    run: benchScale,
  },
];
