/**
 * qllm-deno: post-training quantization of LLaMA-family models on Deno.
 *
 * A model streams through a pipeline one decoder block at a time: a source reads a block's
 * weights, stages (Web Streams transforms of {@linkcode BlockJob}s) capture, quantize and
 * propagate, and a sink writes the block out. Heavy math runs as ONNX Runtime graphs. Each
 * method (`methods/`) chooses the stages it puts in the stream; `runQuantization` runs them.
 *
 * ```ts
 * import { gptqStage, propagate, runQuantization } from "./mod.ts";
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

// Tensors, graphs and runtimes (kernels/).
export {
  clone,
  firstNonFinite,
  Rng,
  sizeOf,
  type Tensor,
  tensor,
  transpose2d,
  zeros,
} from "./kernels/tensor.ts";
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
  createSession,
  type CreateSessionOptions,
  type Device,
  DEVICES,
  type Feed,
  type InferenceSession,
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
export { peakRss, RssMeter, type RssStretch } from "./kernels/rss.ts";

// Formats: safetensors, Hugging Face directories, llama2.c, writers, ONNX (formats/).
export {
  type Dtype,
  type RawData,
  type RawTensor,
  SafetensorsError,
  SafetensorsReader,
  type SafetensorsSnapshot,
  SafetensorsWriter,
  type TensorEntry,
  type TensorInfo,
  type WritableDtype,
  writeSafetensors,
} from "./formats/safetensors.ts";
export {
  Checkpoint,
  type CheckpointSnapshot,
  CheckpointWriter,
  openCheckpoint,
} from "./formats/checkpoint.ts";
export { modelDir, openModel, openTokenizer } from "./formats/open.ts";
export { checkAgainstConfig } from "./formats/hf.ts";
export {
  type ConfigExtras,
  copyTokenizerFiles,
  type FloatDtype,
  ModelWriter,
  type ModelWriterOptions,
  type ModelWriterSnapshot,
  partialDir,
} from "./formats/writer.ts";
export {
  claimTemp,
  isOurOutput,
  MARKER,
  type MarkerInfo,
  removeStaleTemps,
  replaceDir,
  writeMarker,
} from "./formats/output_dir.ts";
export {
  codeBits,
  gridOf,
  type GridWeight,
  openQuantized,
  type QuantizedModel,
} from "./formats/quantized.ts";
export { packedWords, packInt32, unpackInt32 } from "./formats/bitpack.ts";
export {
  checkPackable,
  type GgufGridType,
  PACKED_FORMATS,
  type PackedFormat,
  type PackRequest,
  roundGridScales,
  roundScale,
  type ScaleFormat,
  scaleFormatOf,
  toFp16,
  TOOLKIT,
} from "./formats/packed.ts";
export {
  contiguousGIdx,
  dequantizeGrid,
  type LinearCodec,
  openPackedHf,
  type PackedHfReport,
  type PackedTensor,
  writePackedHf,
} from "./formats/packed_hf.ts";
export { type GptqReport, openGptq, writeGptq } from "./formats/gptq.ts";
export { openCompressedTensors, writeCompressedTensors } from "./formats/compressed_tensors.ts";
export {
  GGML_TYPES,
  ggmlBytes,
  type GgmlType,
  ggmlType,
  gguf,
  type GgufEntry,
  GgufFile,
  type GgufMetadata,
  type GgufScalar,
  type GgufTensorInfo,
  type GgufTensorPlan,
  GgufValueType,
  type GgufValueTypeCode,
  GgufWriter,
} from "./formats/gguf.ts";
export {
  type BlockStats,
  dequantize,
  floatsToBytes,
  GRID_TYPES,
  gridToBlocks,
  type GridTypeName,
} from "./formats/ggml_blocks.ts";
export {
  GGUF_BLOCK_NAMES,
  ggufConfig,
  type GgufLinears,
  type GgufWriteOptions,
  type GgufWriteReport,
  openGguf,
  readSpmVocab,
  vocabFromGguf,
  vocabMetadata,
  writeGguf,
  writeVocabGguf,
} from "./formats/gguf_llama.ts";
export {
  halfToInterleaved,
  interleavedToHalf,
  permuteRows,
  ropeRowOrder,
} from "./formats/llama2c.ts";
export {
  ACCURACY_LEVELS,
  DTYPE_OF_BITS,
  type ExportParts,
  type ExportReport,
  ONNX_FILE_OF_DTYPE,
  type OnnxExportOptions,
  packedLinearOp,
  writeOnnxExport,
} from "./formats/onnx.ts";
export { type NBitsPacking, type PackedLinear, packGrid } from "./formats/matmul_nbits.ts";
export { INLINE_LIMIT, type OnnxFileResult, OnnxFileWriter } from "./formats/onnx_file.ts";

// Text: tokenizers, data files, chat templates, calibration windows (text/).
export {
  loadHfTokenizer,
  loadLlama2cTokenizer,
  loadTokenizer,
  type TextTokenizer,
} from "./text/tokenizer.ts";
export {
  type DatasetOptions,
  idsSha256,
  type JsonLine,
  jsonLines,
  MAX_BINARY_FRACTION,
  readDataset,
  readText,
  type Windows,
  windows,
} from "./text/dataset.ts";
export {
  spmTokenizer,
  type SpmVocab,
  spmVocabFromHf,
  spmVocabFromLlama2c,
  TokenType,
} from "./text/spm.ts";
export { type ChatMessage, encodeChat, renderChat } from "./text/chat.ts";
export {
  calibrationStarts,
  type CalibrationWindows,
  calibrationWindows,
} from "./text/calibration.ts";

// The architecture: config, the block graph, the forward pass (models/).
export {
  blockTensorShapes,
  LINEAR_NAMES,
  linearHasBias,
  type LinearName,
  type ModelConfig,
  parseHfConfig,
  readHfConfig,
  refuseUnrunnable,
  type RopeScaling,
  toHfConfig,
} from "./models/config.ts";
export { type BlockWeights, expectFinite, expectShape, type ModelSource } from "./models/source.ts";
export {
  addBlock,
  attention,
  type BlockBuildOptions,
  type BlockGraphOptions,
  type BlockInputs,
  type BlockSizes,
  buildBlockGraph,
  buildHeadGraph,
  CAPTURE_POINTS,
  type CapturePoint,
  decoderMask,
  fakeQuantPerToken,
  gemmLinear,
  type HeadGraphOptions,
  type KvPair,
  type LinearOp,
  QK_NORM_NAMES,
  rmsNorm,
  rope,
} from "./models/block_graph.ts";
export { ropeAt, ropeInvFreq, ropeTables } from "./models/rope.ts";
export { ActivationFile } from "./models/activation_file.ts";
export {
  type Activations,
  type BlockRunOptions,
  embed,
  embedToFile,
  HEAD_LOGIT_BYTES,
  logits,
  type NextTokenScores,
  nextTokenScores,
  runBlock,
  windowNll,
} from "./models/forward.ts";

// Algorithms on tensors (algorithms/).
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
export {
  levelBits,
  type LwcGrid,
  lwcGrid,
  lwcQuant,
  type LwcSpec,
  maxLevel,
} from "./algorithms/lwc.ts";
export {
  type ModelRotations,
  modelRotations,
  rotateBlock,
  type RotateOptions,
} from "./algorithms/rotation.ts";
export { type Rotation, rotation } from "./algorithms/hadamard.ts";
export {
  ABQ_POINTS,
  applyLet,
  type LetPoint,
  letPointsFor,
  OMNIQUANT_POINTS,
  smoothScale,
} from "./algorithms/let.ts";
export {
  type ChannelMap,
  channelMap,
  choosePoint,
  POINT_RULES,
  type PointChoice,
  type PointReport,
  type PointRule,
  type PointStats,
  REASSEMBLY_POINTS,
  type ReassemblyPlan,
  type ReassemblyPoint,
  type RopeInputs,
} from "./algorithms/reassembly.ts";

// The block stream: jobs, source and sink, the engines and the chain stages (stages/).
export {
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
  type BlockOutput,
  type ChannelStats,
  channelStats,
  learnedOutput,
  type LossInputs,
  mseLoss,
  reconstruct,
  type ReconstructionLoss,
  type ReconstructionMethod,
  type TrainOptions,
} from "./stages/reconstruct.ts";
export { reassemble, type ReassembleOptions } from "./stages/reassemble.ts";
export { staticActivations } from "./stages/static_activations.ts";
export { type CheckpointProgress, LayerwiseCheckpoints } from "./stages/checkpoint.ts";

// Methods: one file each, its flags, options and stages (methods/).
export type { Method, MethodOptions, MethodRun } from "./methods/method.ts";
export type { ActivationOptions } from "./methods/flags.ts";
export { checkBatch, checkGroups } from "./methods/flags.ts";
export { type CommandMain, type Options, runCommand, runMain, UsageError } from "./cli/flags.ts";
export { Interrupts } from "./cli/signals.ts";
export { RTN, rtn, type RtnMethodOptions, type UniformOptions } from "./methods/rtn.ts";
export { GPTQ, type GptqMethodOptions, gptqStage, type GptqStageOptions } from "./methods/gptq.ts";
export {
  CLAQ,
  claqBaseBits,
  type ClaqMethodOptions,
  claqStage,
  type ClaqStageOptions,
} from "./methods/claq.ts";
export {
  FIRST_AND_LAST,
  type LearnedOptions,
  OMNIQUANT,
  omniquantMethod,
  type OmniQuantOptions,
} from "./methods/omniquant.ts";
export { ABQ, abqLoss, abqMethod, type AbqMethodOptions } from "./methods/abq.ts";
export { loraMethod, type LoraOptions, QLLM, type QllmMethodOptions } from "./methods/qllm.ts";

// An exported decoder: its session and KV cache, sampling, generation, the server (serve/).
export {
  type DecoderOptions,
  type KvCache,
  OnnxDecoder,
  type OrtTensor,
  type StepInput,
} from "./serve/decoder.ts";
export {
  argmax,
  checkSampling,
  Sampler,
  samplingDistribution,
  type SamplingOptions,
} from "./serve/sampling.ts";
export {
  type FinishReason,
  generate,
  type GenerateOptions,
  type GenerateTimings,
  type Generation,
  leftPad,
  type PaddedBatch,
} from "./serve/generate.ts";
export {
  openAIHandler,
  type RunningServer,
  serveOpenAI,
  type ServerOptions,
} from "./serve/server.ts";
export { ApiError, type Job, readRequest, type RequestContext } from "./serve/requests.ts";
export { Slots } from "./serve/slots.ts";

// Evaluation (eval/).
export {
  EVAL_OFFLOAD_BYTES,
  onnxPerplexity,
  perplexity,
  type PerplexityOptions,
  type PerplexityResult,
} from "./eval/perplexity.ts";
export { greedy, type GreedyOptions } from "./eval/generate.ts";
export {
  blockGraphLoglikelihood,
  type BlockGraphScorerOptions,
  type LogLikelihood,
  type LoglikelihoodRequest,
  type LoglikelihoodResult,
  type ScoredSequence,
  scoredSequence,
  windowLength,
} from "./eval/loglikelihood.ts";
export {
  type ChoiceRequest,
  detectFormat,
  hellaswagPreprocess,
  parseTask,
  type Question,
  readTask,
  type ReadTaskOptions,
  TARGET_DELIMITER,
  type Task,
  type TaskFormat,
  type TaskMetric,
} from "./eval/tasks.ts";
export {
  encodePair,
  evaluateTasks,
  type EvaluateTasksOptions,
  formatTaskResult,
  meanStderr,
  scoreTasks,
  taskMetrics,
  type TaskResult,
  type TaskScores,
} from "./eval/zero_shot.ts";

// Runs: a whole quantization run, its report, a method's command (run/, cli/).
export { type QuantizeRun, RunCache, runQuantization } from "./run/quantize.ts";
export { printReport, type QuantizeReport, taskReport, writeAtomically } from "./run/report.ts";
export { htmlPage, reportHtml, runLabel } from "./run/report_html.ts";
export { compareHtml, readRuns, type RunEntry } from "./run/compare.ts";
export {
  methodMain,
  packedFormatFlag,
  planFromFlags,
  type RunDefaults,
  withPacking,
} from "./run/main.ts";
export {
  checkPackShapes,
  evaluatePacked,
  packAndEvaluate,
  packModel,
  type PackOptions,
  packRequestOf,
  type PackResult,
  q8Grid,
} from "./run/pack.ts";
export { exportModel, type ExportRun, TABLE_BLOCK, tableGrid8 } from "./run/export.ts";
export { checkOutput, commitOutput, type OutputTarget, type RunInput } from "./run/output.ts";
export {
  checkDisk,
  checkMemory,
  checkTokenIds,
  formatBytes,
  type Need,
  parameterCount,
} from "./run/preflight.ts";
export {
  checkResume,
  differences,
  type Fingerprint,
  fingerprint,
  type FingerprintInputs,
  prepareCheckpointDir,
  removeCheckpointDir,
} from "./run/fingerprint.ts";
export { Progress } from "./cli/progress.ts";
