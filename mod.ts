/**
 * qllm-deno: post-training quantization of LLaMA-family models on Deno.
 *
 * A model streams through a pipeline one decoder block at a time: a source reads a block's
 * weights, stages (Web Streams transforms of {@linkcode BlockJob}s) capture, quantize and
 * propagate, and a sink writes the block out. Heavy math runs as ONNX Runtime graphs.
 *
 * ```ts
 * import { blockSink, blockSource, ChainLink, gptqStage, propagate, runQuantization } from "./mod.ts";
 * const report = await runQuantization({
 *   method: "gptq", wbits: 4, abits: 16, groupSize: 128,
 *   model: "../shared/fixtures/models/tinystories-656k", out: "out/gptq-w4",
 *   calib: { file: "../shared/fixtures/text/tinystories_train_sample.txt", nsamples: 128, seed: 0 },
 *   eval: { files: ["../shared/fixtures/text/tinystories_val.txt"], windows: 256 },
 *   stages: () => [gptqStage({ bits: 4, groupSize: 128, actOrder: true, staticGroups: false,
 *     trueSequential: true }), propagate()],
 * });
 * ```
 * @module
 */

// Tensors, graphs and runtimes.
export { clone, Rng, sizeOf, type Tensor, tensor, transpose2d, zeros } from "./kernels/tensor.ts";
export {
  type Attr,
  type Dim,
  DType,
  type DTypeCode,
  Graph,
  type GraphConstant,
  type GraphInput,
  type GraphNode,
  type Value,
} from "./kernels/graph.ts";
export {
  type Device,
  DEVICES,
  type Feed,
  Runtime,
  type SessionOptions,
} from "./kernels/session.ts";
export { gram, matmul, matmulT } from "./kernels/matmul.ts";
export { MT19937 } from "./kernels/mt19937.ts";
export {
  GRADIENT_RULES,
  type GradientRule,
  gradients,
  type GradThunk,
  type RuleContext,
} from "./kernels/autodiff.ts";
export { evaluate, type InterpTensor } from "./kernels/interp.ts";
export {
  AdamW,
  constant,
  cosineDecay,
  linearDecay,
  NanGuard,
  type Param,
  type Schedule,
} from "./kernels/optim.ts";
export { type KMeans1D, kmeans1d, type KMeans1DAssigned } from "./kernels/kmeans.ts";

// Models: formats, configs, tokenizers, data, forward pass.
export {
  type Dtype,
  type RawData,
  type RawTensor,
  SafetensorsError,
  SafetensorsReader,
  SafetensorsWriter,
  type TensorEntry,
  type TensorInfo,
  type WritableDtype,
  writeSafetensors,
} from "./models/safetensors.ts";
export { Checkpoint, CheckpointWriter, openCheckpoint } from "./models/checkpoint.ts";
export {
  blockTensorShapes,
  LINEAR_NAMES,
  type LinearName,
  type ModelConfig,
  parseHfConfig,
  toHfConfig,
} from "./models/config.ts";
export { type BlockWeights, type ModelSource, openModel } from "./models/model.ts";
export { type ConfigExtras, ModelWriter } from "./models/writer.ts";
export {
  loadHfTokenizer,
  loadLlama2cTokenizer,
  loadTokenizer,
  type TextTokenizer,
} from "./models/tokenizer.ts";
export { type ChatMessage, readDataset, renderChat, type Windows, windows } from "./models/text.ts";
export {
  calibrationStarts,
  type CalibrationWindows,
  calibrationWindows,
} from "./models/calibration.ts";
export {
  type BlockGraphOptions,
  buildBlockGraph,
  buildHeadGraph,
  type CAPTURE_POINTS,
  type CapturePoint,
  fakeQuantPerToken,
  type HeadGraphOptions,
  rmsNorm,
  rope,
} from "./models/block_graph.ts";
export { type BlockRunOptions, embed, logits, runBlock, windowNll } from "./models/forward.ts";

// Algorithms on one weight matrix.
export {
  checkGroupSize,
  findParams,
  type QuantParams,
  type QuantSpec,
  roundHalfEven,
  type RtnResult,
  rtnWeight,
} from "./algorithms/quantizer.ts";
export {
  type ColumnQuantizer,
  type ColumnQuantizerFactory,
  gptq,
  type GptqOptions,
  type GptqResult,
  type PreparedWeight,
} from "./algorithms/gptq.ts";
export {
  claq,
  type ClaqOptions,
  type ClaqResult,
  type OutlierReservation,
} from "./algorithms/claq.ts";
export { levelBits, lwcQuant, type LwcSpec, maxLevel } from "./algorithms/lwc.ts";
export {
  ABQ_POINTS,
  applyLet,
  type LetPoint,
  OMNIQUANT_POINTS,
  smoothScale,
} from "./algorithms/let.ts";

// The block stream and its stages.
export {
  type Activations,
  type BlockJob,
  type LearnedState,
  type RunContext,
  type Stage,
  stage,
  type StageReport,
} from "./stages/job.ts";
export {
  blockSink,
  blockSource,
  ChainLink,
  runStream,
  type SinkResult,
  type SourceOptions,
} from "./stages/stream.ts";
export { capture, propagate } from "./stages/propagate.ts";
export { captureHessians, relativeOutputError } from "./stages/hessian.ts";
export {
  type LinearQuantizer,
  type QuantizedLinear,
  quantizeLinears,
} from "./stages/quantize_linears.ts";
export {
  claqStage,
  type ClaqStageOptions,
  gptqStage,
  type GptqStageOptions,
  rtn,
  type UniformOptions,
} from "./stages/weight_quant.ts";
export {
  type ChannelStats,
  channelStats,
  reconstruct,
  type ReconstructionMethod,
  type TrainOptions,
} from "./stages/reconstruct.ts";
export { FIRST_AND_LAST, omniquantMethod, type OmniQuantOptions } from "./stages/omniquant.ts";
export { loraMethod, type LoraOptions } from "./stages/lora.ts";
export {
  reassemble,
  type ReassembleOptions,
  type REASSEMBLY_POINTS,
  type ReassemblyPoint,
} from "./stages/reassemble.ts";
export { staticActivations } from "./stages/static_activations.ts";

// Pipelines.
export { perplexity, type PerplexityOptions, type PerplexityResult } from "./pipelines/eval.ts";
export { greedy, type GreedyOptions } from "./pipelines/generate.ts";
export {
  type QuantizeReport,
  type QuantizeRun,
  RunCache,
  runQuantization,
} from "./pipelines/quantize.ts";
export { type Progress } from "./pipelines/cli.ts";
export { exportOnnx, type ExportOptions } from "./pipelines/export.ts";
