/**
 * A method's command: the flags every quantization pipeline shares, the method's own flags, and
 * the run they make (`methodMain`). Defaults that point at files — the model, the calibration
 * text, named evaluation texts — come from the command that calls it, never from here.
 * @module
 */
import { deviceFlag, intFlag, type Options, parseFlags, UsageError } from "../cli/flags.ts";
import type { RotateOptions } from "../algorithms/rotation.ts";
import { ROTATION_FLAGS, ROTATION_USAGE, rotationFlags } from "../methods/flags.ts";
import {
  checkPackable,
  PACKED_FORMATS,
  type PackedFormat,
  scaleFormatOf,
} from "../formats/packed.ts";
import type { Interrupts } from "../cli/signals.ts";
import type { Method, MethodOptions, MethodRun } from "../methods/method.ts";
import { capture, propagate } from "../stages/propagate.ts";
import { clipActivations, rotate } from "../stages/rotate.ts";
import { staticActivations } from "../stages/static_activations.ts";
import { type QuantizeRun, runQuantization } from "./quantize.ts";
import { printReport, type QuantizeReport } from "./report.ts";

/** What a command fills in when a flag is absent. */
export interface RunDefaults {
  /** The model (`--model`). */
  model: string;
  /** The calibration text (`--calib`). */
  calib: string;
  /** Evaluation texts by name (`--eval val,wikitext2`); `val` is the default. */
  evalTexts: Record<string, string>;
}

/** The flags of the layer-wise pipelines (RTN, GPTQ, CLAQ) that place the activations. */
export const OFFLOAD_FLAGS = {
  "offload-activations": { type: "boolean" },
  "keep-activations": { type: "boolean" },
} as const satisfies Options;

/** Usage text of {@linkcode OFFLOAD_FLAGS}. */
export const OFFLOAD_USAGE = `  --offload-activations
                       keep the calibration activations (nsamples·seqlen·hidden·4 bytes) in a
                       file inside the output's temporary directory, read a batch at a time
                       (default when they exceed 64 MiB)
  --keep-activations   keep them in memory whatever their size`;

/** Reads {@linkcode OFFLOAD_FLAGS}: true, false, or "auto" when neither is given. */
export function offloadFlag(f: Record<string, unknown>): boolean | "auto" {
  if (f["offload-activations"] && f["keep-activations"]) {
    throw new UsageError("--offload-activations and --keep-activations exclude each other");
  }
  return f["offload-activations"] ? true : f["keep-activations"] ? false : "auto";
}

/** Flags every quantization pipeline accepts. */
export const COMMON_FLAGS = {
  model: { type: "string" },
  out: { type: "string" },
  overwrite: { type: "boolean" },
  resume: { type: "string" },
  calib: { type: "string" },
  nsamples: { type: "string" },
  seqlen: { type: "string" },
  seed: { type: "string" },
  eval: { type: "string" },
  "eval-windows": { type: "string" },
  tasks: { type: "string" },
  "task-limit": { type: "string" },
  device: { type: "string" },
  format: { type: "string" },
  json: { type: "boolean" },
  quiet: { type: "boolean" },
  help: { type: "boolean" },
} as const satisfies Options;

/** Usage text of the common flags. */
export const COMMON_USAGE = `common flags:
  --model DIR          Hugging Face or llama2.c model (default: the tinystories-656k fixture)
  --out DIR            output directory (default: out/<method>); an earlier output of ours
                       there is replaced atomically at the end, anything else is refused
  --overwrite          replace a file or a directory that is not ours at --out
  --resume DIR         continue a killed run from its checkpoints (<out>.ckpt), which must
                       come from the same model, data and settings
  --calib FILE         calibration text: .txt, .jsonl (text) or chat .jsonl (messages)
                       (default: the fixture tinystories_train_sample.txt)
  --nsamples N         calibration windows (128)      --seqlen N   window length (256)
  --seed N             calibration seed (0)
  --eval A,B           evaluation files or val | wikitext2 | c4 (default: val); none: no
                       evaluation
  --eval-windows N     evaluate the first N windows only (PROTOCOL.md's tables use 256)
  --tasks A,B          zero-shot accuracy before and after on these task files (JSON lines:
                       {"context", "choices", "gold"}, PIQA, ARC, HellaSwag, WinoGrande, BoolQ)
  --task-limit N       only the first N questions of each task
  --device D           cpu | webgpu | cuda (default cpu)
  --format F           also write the model packed for other runtimes: gptq, compressed-tensors
                       (directories beside the output) or gguf (model-Q4_0.gguf, …); scales are
                       fp16 from the start, and the report gives the packed model's perplexity
                       (RTN and GPTQ; see pipelines/export.ts for other methods' outputs)
  --json               print the report as one JSON object on stdout
  --quiet              no progress on stderr`;

/** The part of a run the common flags decide. */
export type CommonRun = Pick<
  QuantizeRun,
  "model" | "out" | "calib" | "eval" | "device" | "quiet" | "pack" | "overwrite" | "resume"
>;

/** The `--format` flag: a packed format, or undefined. */
export function packedFormatFlag(v: unknown): PackedFormat | undefined {
  if (v === undefined) return undefined;
  if (!(PACKED_FORMATS as readonly unknown[]).includes(v)) {
    throw new UsageError(`--format ${v}: expected one of ${PACKED_FORMATS.join(", ")}`);
  }
  return v as PackedFormat;
}

/** Reads the common flags; `d` fills in what they leave out. */
export function commonRun(f: Record<string, unknown>, method: string, d: RunDefaults): CommonRun {
  const evalFile = (name: string) => d.evalTexts[name] ?? name;
  return {
    model: (f.model as string | undefined) ?? d.model,
    out: ((f.out as string | undefined) ?? `out/${method}`).replace(/(.)\/+$/, "$1"),
    overwrite: !!f.overwrite,
    ...(f.resume !== undefined ? { resume: f.resume as string } : {}),
    calib: {
      file: (f.calib as string | undefined) ?? d.calib,
      nsamples: intFlag(f.nsamples, "--nsamples", 128),
      seqlen: f.seqlen === undefined ? undefined : intFlag(f.seqlen, "--seqlen", 256, 2),
      seed: intFlag(f.seed, "--seed", 0, 0),
    },
    eval: {
      files: ((f.eval as string | undefined) ?? "val").split(",")
        .filter((s) => s && s !== "none").map(evalFile),
      windows: f["eval-windows"] === undefined
        ? undefined
        : intFlag(f["eval-windows"], "--eval-windows"),
      tasks: ((f.tasks as string | undefined) ?? "").split(",").filter((s) => s),
      taskLimit: f["task-limit"] === undefined
        ? undefined
        : intFlag(f["task-limit"], "--task-limit"),
    },
    device: deviceFlag(f.device),
    quiet: !!f.quiet,
    pack: packedFormatFlag(f.format),
  };
}

/**
 * A method's options with the scales a packed format stores, refusing before any work what the
 * format cannot hold or a method whose quantizer cannot round its scales from the start.
 */
export function withPacking<O extends MethodOptions>(
  m: Method<O>,
  o: O,
  format: PackedFormat | undefined,
): O {
  if (!format) return o;
  if (!m.packRequest) {
    throw new UsageError(
      `--format ${format}: ${m.name} is not packed during the run (its grid is learned with ` +
        `float32 scales); quantize with pipelines/rtn.ts or gptq.ts --format ${format}, or pack ` +
        `this method's output with pipelines/export.ts --format ${format} (scales rounded to ` +
        `fp16, the packed model's perplexity reported)`,
    );
  }
  try {
    return { ...o, scaleFormat: scaleFormatOf(checkPackable(format, m.packRequest(o))) };
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/**
 * The stages a method's run puts in the stream: `rotate()` first when the model is rotated, the
 * activation clip ratio, `capture()` when it keeps a teacher chain, then the method's own, the
 * static activation ranges when asked for, and `propagate()` last.
 */
export function streamStages(
  plan: MethodRun,
  o: MethodOptions,
  rotation: RotateOptions | null,
): MethodRun["stages"] {
  const clip = o.activations.clip;
  return (ctx) => [
    ...(rotation ? [rotate()] : []),
    ...(clip !== undefined ? [clipActivations(clip)] : []),
    ...(plan.teacher ? [capture()] : []),
    ...plan.stages(ctx),
    ...(o.activations.staticActs ? [staticActivations()] : []),
    propagate(),
  ];
}

/**
 * A method's run from parsed flags: its plan with the run-wide stages and the rotation, its
 * scales rounded for a packed format when `pack` asks.
 */
function methodRun<O extends MethodOptions>(
  m: Method<O>,
  f: Record<string, unknown>,
  out: string,
  pack: PackedFormat | undefined,
): MethodRun & { rotation?: RotateOptions; fingerprintExtras: Record<string, unknown> } {
  const o = withPacking(m, m.options(f), pack);
  const rotation = rotationFlags(f);
  if (rotation && pack) {
    throw new UsageError(
      `--format ${pack} cannot hold --rotate's online rotations (down_proj's input, q/k); ` +
        "export a rotated model with pipelines/export.ts (ONNX), which applies them",
    );
  }
  const plan = m.plan(o, out);
  return {
    ...plan,
    settings: { ...plan.settings, ...(rotation ? { rotate: rotation } : {}) },
    stages: streamStages(plan, o, rotation),
    ...(rotation ? { rotation } : {}),
    fingerprintExtras: { activations: o.activations },
  };
}

/**
 * A method's run from its own flags alone (no common flags): what a benchmark or a test row
 * means by `--wbits 4 --act-order`, exactly as the command reads it; `pack` rounds its scales
 * for a packed format, as `--format` does.
 */
export function planFromFlags<O extends MethodOptions>(
  m: Method<O>,
  argv: string[],
  out: string,
  pack?: PackedFormat,
): MethodRun {
  return methodRun(m, parseFlags(argv, { ...m.flags, ...ROTATION_FLAGS }, usageOf(m)), out, pack);
}

/** The usage text of a method's command. */
export function usageOf(m: Method): string {
  return `usage: deno run -A pipelines/${m.name}.ts ${m.synopsis} [--rotate] [common flags]
${m.usage}
${ROTATION_USAGE}
${COMMON_USAGE}${m.layerwise ? `\n${OFFLOAD_USAGE}` : ""}`;
}

/** Runs a method from command-line flags; prints and returns its report (nothing for --help). */
export async function methodMain<O extends MethodOptions>(
  m: Method<O>,
  argv: string[],
  defaults: RunDefaults,
  interrupts?: Interrupts,
): Promise<QuantizeReport | undefined> {
  const usage = usageOf(m);
  const f = parseFlags(argv, {
    ...COMMON_FLAGS,
    ...(m.layerwise ? OFFLOAD_FLAGS : {}),
    ...ROTATION_FLAGS,
    ...m.flags,
  }, usage);
  if (f.help) {
    console.log(usage);
    return;
  }
  const common = commonRun(f, m.name, defaults);
  const report = await runQuantization({
    ...common,
    ...methodRun(m, f, common.out, common.pack),
    offloadActivations: m.layerwise ? offloadFlag(f) : false,
    interrupts,
  });
  printReport(report, !!f.json);
  return report;
}
