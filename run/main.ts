/**
 * A method's command: the flags every quantization pipeline shares, the method's own flags, and
 * the run they make (`methodMain`). Defaults that point at files — the model, the calibration
 * text, named evaluation texts — come from the command that calls it, never from here.
 * @module
 */
import { deviceFlag, intFlag, type Options, parseFlags, UsageError } from "../cli/flags.ts";
import type { Interrupts } from "../cli/signals.ts";
import type { Method, MethodOptions, MethodRun } from "../methods/method.ts";
import { capture, propagate } from "../stages/propagate.ts";
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
  device: { type: "string" },
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
  --eval A,B           evaluation files or val | wikitext2 | c4 (default: val)
  --eval-windows N     evaluate the first N windows only (PROTOCOL.md's tables use 256)
  --device D           cpu | webgpu | cuda (default cpu)
  --json               print the report as one JSON object on stdout
  --quiet              no progress on stderr`;

/** The part of a run the common flags decide. */
export type CommonRun = Pick<
  QuantizeRun,
  "model" | "out" | "calib" | "eval" | "device" | "quiet" | "overwrite" | "resume"
>;

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
      files: ((f.eval as string | undefined) ?? "val").split(",").filter((s) => s).map(evalFile),
      windows: f["eval-windows"] === undefined
        ? undefined
        : intFlag(f["eval-windows"], "--eval-windows"),
    },
    device: deviceFlag(f.device),
    quiet: !!f.quiet,
  };
}

/**
 * The stages a method's run puts in the stream: `capture()` first when it keeps a teacher
 * chain, then the method's own, the static activation ranges when asked for, and
 * `propagate()` last.
 */
export function streamStages(plan: MethodRun, o: MethodOptions): MethodRun["stages"] {
  return (ctx) => [
    ...(plan.teacher ? [capture()] : []),
    ...plan.stages(ctx),
    ...(o.activations.staticActs ? [staticActivations()] : []),
    propagate(),
  ];
}

/**
 * A method's run from its own flags alone (no common flags): what a benchmark or a test row
 * means by `--wbits 4 --act-order`, exactly as the command reads it.
 */
export function planFromFlags<O extends MethodOptions>(
  m: Method<O>,
  argv: string[],
  out: string,
): MethodRun {
  const f = parseFlags(argv, m.flags, usageOf(m));
  const o = m.options(f);
  const plan = m.plan(o, out);
  return { ...plan, stages: streamStages(plan, o) };
}

/** The usage text of a method's command. */
export function usageOf(m: Method): string {
  return `usage: deno run -A pipelines/${m.name}.ts ${m.synopsis} [common flags]
${m.usage}
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
    ...m.flags,
  }, usage);
  if (f.help) {
    console.log(usage);
    return;
  }
  const o = m.options(f);
  const common = commonRun(f, m.name, defaults);
  const plan = m.plan(o, common.out);
  const report = await runQuantization({
    ...common,
    ...plan,
    stages: streamStages(plan, o),
    offloadActivations: m.layerwise ? offloadFlag(f) : false,
    fingerprintExtras: { activations: o.activations },
    interrupts,
  });
  printReport(report, !!f.json);
  return report;
}
