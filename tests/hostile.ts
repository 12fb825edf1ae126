/**
 * The harness of the hostile-input corpus (hostile_*_test.ts, faults_test.ts): a workspace of
 * copies of the fixtures, cases that run a command in-process on a broken input and check its
 * exit code, that its error names the input, and that nothing of the user's was touched.
 */
import assert from "node:assert/strict";
import { type CommandMain, runCommand } from "../cli/flags.ts";
import { Interrupts } from "../cli/signals.ts";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";

/** A file tree's contents: relative path → sha256 (directories as "dir"). */
export type Snapshot = Map<string, string>;

async function sha(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(d.subarray(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Every file and directory under `root` with its content hash. */
export async function snapshot(root: string): Promise<Snapshot> {
  const out: Snapshot = new Map();
  const walk = async (dir: string, rel: string) => {
    for await (const e of Deno.readDir(dir)) {
      const p = `${dir}/${e.name}`, r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory) {
        out.set(r, "dir");
        await walk(p, r);
      } else if (e.isSymlink) out.set(r, `link:${await Deno.readLink(p)}`);
      else out.set(r, await sha(await Deno.readFile(p)));
    }
  };
  await walk(root, "");
  return out;
}

/** Asserts two snapshots are equal, listing what changed. */
export function assertSame(before: Snapshot, after: Snapshot, what: string): void {
  const changed: string[] = [];
  for (const [k, v] of before) if (after.get(k) !== v) changed.push(`${k} changed or removed`);
  for (const k of after.keys()) if (!before.has(k)) changed.push(`${k} appeared`);
  assert.deepEqual(changed, [], `${what}: ${changed.join(", ")}`);
}

/** Copies a directory tree (files only). */
export async function copyDir(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    if (e.isFile) {
      await Deno.copyFile(`${from}/${e.name}`, `${to}/${e.name}`);
      await Deno.chmod(`${to}/${e.name}`, 0o644);
    }
  }
}

/** Where the corpus's inputs are built. */
export interface Workspace {
  /** The case's directory (everything under it is the user's, unless a case says otherwise). */
  dir: string;
  /** A Hugging Face model (a copy of tinystories-656k). */
  model: string;
  /** A llama2.c model directory (a copy of stories260k: the .bin and tok512.bin). */
  llama: string;
  /** Calibration text (the first 24 KB of the TinyStories training sample). */
  calib: string;
  /** Evaluation text (the first 12 KB of the validation text). */
  val: string;
  /** The output path (absent at first). */
  out: string;
}

const baseText = {
  calib: (await Deno.readTextFile(fixtureText("tinystories_train_sample.txt"))).slice(0, 24000),
  val: (await Deno.readTextFile(fixtureText("tinystories_val.txt"))).slice(0, 12000),
};

/** A fresh workspace under `root`/`name`. */
export async function workspace(root: string, name: string): Promise<Workspace> {
  const dir = `${root}/${name}`;
  await Deno.mkdir(dir, { recursive: true });
  const w: Workspace = {
    dir,
    model: `${dir}/model`,
    llama: `${dir}/llama`,
    calib: `${dir}/calib.txt`,
    val: `${dir}/val.txt`,
    out: `${dir}/out`,
  };
  await copyDir(fixtureModel("tinystories-656k"), w.model);
  await copyDir(fixtureModel("stories260k"), w.llama);
  await Deno.writeTextFile(w.calib, baseText.calib);
  await Deno.writeTextFile(w.val, baseText.val);
  return w;
}

/** The flags of a small, fast run on the workspace's inputs. */
export function smallRun(w: Workspace, extra: string[] = []): string[] {
  return [
    ...["--model", w.model, "--calib", w.calib, "--eval", w.val, "--out", w.out],
    ...["--nsamples", "4", "--seqlen", "64", "--eval-windows", "2", "--quiet"],
    ...extra,
  ];
}

/** What a command did: its exit code and what it printed as an error. */
export interface Outcome {
  code: number;
  error: string;
}

/** Runs a command in-process, its stdout silenced, its error captured. */
export async function runQuiet(main: CommandMain, argv: string[]): Promise<Outcome> {
  const log = console.log, err = console.error;
  let error = "";
  console.log = () => {};
  console.error = () => {};
  try {
    const code = await runCommand(main, argv, new Interrupts(() => {}), (m) => (error += m));
    return { code, error };
  } finally {
    console.log = log;
    console.error = err;
  }
}

/** One hostile input. */
export interface Case {
  /** What is broken. */
  name: string;
  /** Breaks the workspace and returns the command and its flags. */
  setup(w: Workspace): Promise<{ main: CommandMain; argv: string[] }>;
  /** Expected exit code. */
  code: number;
  /**
   * What the error must name (the input: a file, a tensor, a flag), as substrings or patterns;
   * a function receives the workspace.
   */
  names: (w: Workspace) => (string | RegExp)[];
  /** Paths (relative to the case dir) the command may change (a successful run's output). */
  mayChange?: string[];
  /** Further checks after the command (what a successful run left). */
  check?: (w: Workspace) => Promise<void>;
}

/** Runs `cases` in a temporary root: each in a fresh workspace, checked, then removed. */
export function runCases(group: string, cases: Case[]): void {
  Deno.test(`${group}: ${cases.length} hostile inputs`, async (t) => {
    const root = await Deno.makeTempDir({ prefix: `qllm-${group.replace(/\W+/g, "-")}-` });
    try {
      for (const [i, c] of cases.entries()) {
        await t.step(c.name, async () => {
          const w = await workspace(root, `c${i}`);
          const { main, argv } = await c.setup(w);
          const before = await snapshot(w.dir);
          const r = await runQuiet(main, argv);
          if (Deno.env.get("QLLM_CORPUS_PRINT")) console.log(`${c.name}\n  ${r.code} ${r.error}`);
          assert.equal(r.code, c.code, `${c.name}: exit ${r.code}, error: ${r.error}`);
          for (const n of c.names(w)) {
            if (typeof n === "string") {
              assert.ok(r.error.includes(n), `${c.name}: "${r.error}" should name ${n}`);
            } else assert.match(r.error, n, c.name);
          }
          const after = await snapshot(w.dir);
          for (const p of c.mayChange ?? []) {
            for (const k of [...before.keys(), ...after.keys()]) {
              if (k === p || k.startsWith(`${p}/`)) {
                before.delete(k);
                after.delete(k);
              }
            }
          }
          assertSame(before, after, c.name);
          await c.check?.(w);
          await Deno.remove(w.dir, { recursive: true });
        });
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  });
}

// ---------------------------------------------------------------------------------------------
// safetensors surgery

/** A parsed safetensors file: its header object and its data section. */
export interface RawSafetensors {
  header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  data: Uint8Array;
}

/** Reads a safetensors file into its header and data. */
export async function readRaw(path: string): Promise<RawSafetensors> {
  const bytes = await Deno.readFile(path);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  return { header, data: bytes.slice(8 + n) };
}

/** Writes a header object and data section as a safetensors file. */
export async function writeRaw(path: string, raw: { header: unknown; data: Uint8Array }) {
  const json = new TextEncoder().encode(JSON.stringify(raw.header));
  const out = new Uint8Array(8 + json.length + raw.data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(raw.data, 8 + json.length);
  await Deno.writeFile(path, out);
}

/** Rewrites a safetensors file through `edit`. */
export async function editRaw(path: string, edit: (r: RawSafetensors) => void): Promise<void> {
  const r = await readRaw(path);
  edit(r);
  await writeRaw(path, r);
}

/** Sets float32 element `index` of `tensor` to `value` (F32 tensors). */
export function setF32(r: RawSafetensors, tensor: string, index: number, value: number): void {
  const begin = r.header[tensor].data_offsets[0];
  new DataView(r.data.buffer, r.data.byteOffset).setFloat32(begin + 4 * index, value, true);
}

/** Appends a zero-filled F32 tensor. */
export function addTensor(r: RawSafetensors, name: string, shape: number[]): void {
  const n = r.data.length, bytes = 4 * shape.reduce((a, b) => a * b, 1);
  r.header[name] = { dtype: "F32", shape, data_offsets: [n, n + bytes] };
  const grown = new Uint8Array(n + bytes);
  grown.set(r.data);
  r.data = grown;
}

/** Edits a JSON file. */
export async function editJson(path: string, edit: (j: Record<string, unknown>) => void) {
  const j = JSON.parse(await Deno.readTextFile(path));
  edit(j);
  await Deno.writeTextFile(path, JSON.stringify(j));
}

// ---------------------------------------------------------------------------------------------
// commands in a process of their own (signals, kills, file-size limits)

/** How a pipeline process ended. */
export interface ProcessEnd {
  /** Exit code (128 + n after signal n when the process handled it). */
  code: number;
  /** The signal that killed it, if one did. */
  signal: Deno.Signal | null;
  /** Everything it wrote to stderr. */
  stderr: string;
  /** Whether the trigger appeared (and the signal was sent). */
  triggered: boolean;
}

const PROJECT = new URL("..", import.meta.url).pathname;

/**
 * Runs `pipelines/<name>.ts` in its own process; when a stderr line matches `o.trigger`, waits
 * `o.delayMs` and sends `o.signal`. `o.fileSizeKb` runs it under `ulimit -f`.
 */
export async function runProcess(
  name: string,
  args: string[],
  o: { trigger?: RegExp; signal?: Deno.Signal; delayMs?: number; fileSizeKb?: number } = {},
): Promise<ProcessEnd> {
  const deno = [Deno.execPath(), "run", "-A", `${PROJECT}pipelines/${name}.ts`, ...args];
  const cmd = o.fileSizeKb === undefined
    ? new Deno.Command(deno[0], { args: deno.slice(1), stderr: "piped", stdout: "null" })
    : new Deno.Command("bash", {
      args: ["-c", `ulimit -f ${o.fileSizeKb}; exec "$@"`, "bash", ...deno],
      stderr: "piped",
      stdout: "null",
    });
  const child = cmd.spawn();
  let stderr = "", triggered = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const decoder = new TextDecoder();
  for await (const chunk of child.stderr) {
    stderr += decoder.decode(chunk, { stream: true });
    if (!triggered && o.trigger && o.trigger.test(stderr)) {
      triggered = true;
      const send = () => {
        try {
          child.kill(o.signal ?? "SIGKILL");
        } catch { /* already gone */ }
      };
      if (o.delayMs) timer = setTimeout(send, o.delayMs);
      else send();
    }
  }
  const status = await child.status;
  clearTimeout(timer);
  return { code: status.code, signal: status.signal, stderr, triggered };
}
