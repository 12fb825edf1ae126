/**
 * The file-system side of an output directory: the marker that says a directory is ours, the
 * temporary siblings a writer fills (`<out>.partial-<id>`, with the process that owns them),
 * the atomic replacement of a previous output, and the removal of what a killed process left.
 *
 * Replacing is one `renameat2(RENAME_EXCHANGE)` on Linux (through FFI): the complete new
 * directory and the old output swap names in one step, so a kill at any moment leaves either
 * the old output or the new one at the path; the old one, now under the temporary name, is
 * removed afterwards (or by the next run, if a kill comes first). Where the exchange is not
 * available the old output is first renamed aside (`<out>.old-<id>`), and a run that finds an
 * `.old-` sibling without the output puts it back.
 * @module
 */
import { resolve } from "node:path";

/** The marker file every output of ours carries. */
export const MARKER = ".qllm-output.json";
/** The owner file of a temporary directory: the process writing it. */
const OWNER = ".qllm-partial.json";
/** A temporary directory without an owner file is stale once it is this old. */
const ORPHAN_SECONDS = 60;

/** What the marker records. */
export interface MarkerInfo {
  /** `model` (a written checkpoint), `run` (a quantization run's output), … */
  kind: string;
  /** Anything else worth recording (the method, …). */
  [key: string]: unknown;
}

/** Writes the marker into `dir`. */
export async function writeMarker(dir: string, info: MarkerInfo): Promise<void> {
  await Deno.writeTextFile(
    `${dir}/${MARKER}`,
    JSON.stringify({ tool: "qllm-deno", ...info }, null, 2) + "\n",
  );
}

async function readJson(path: string): Promise<Record<string, unknown> | null> {
  try {
    const v = JSON.parse(await Deno.readTextFile(path));
    return v && typeof v === "object" && !Array.isArray(v) ? v : null;
  } catch {
    return null;
  }
}

/**
 * Whether `dir` is an output this toolkit wrote: it carries the marker, or (outputs written
 * before the marker) our run report or a config that names our generator or quantizer.
 */
export async function isOurOutput(dir: string): Promise<boolean> {
  const marker = await readJson(`${dir}/${MARKER}`);
  if (marker?.tool === "qllm-deno") return true;
  const report = await readJson(`${dir}/report.json`);
  if (report && "bits_per_weight" in report && "blocks" in report && "method" in report) {
    return true;
  }
  const config = await readJson(`${dir}/config.json`);
  const gen = config?.generated as Record<string, unknown> | undefined;
  if (gen?.generator === "fixtures/generate.ts") return true;
  const qc = config?.quantization_config as Record<string, unknown> | undefined;
  return typeof qc?.quant_method === "string" && qc.quant_method.startsWith("qllm-deno/");
}

/** Whether a directory has no entries. */
export async function isEmptyDir(dir: string): Promise<boolean> {
  for await (const _ of Deno.readDir(dir)) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// owners of temporary directories

/** The start time of process `pid` (clock ticks since boot, /proc), or null when it is gone. */
function processStart(pid: number | "self"): string | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? null;
  } catch {
    return null;
  }
}

/** Records this process as the owner of the temporary directory `dir`. */
export async function claimTemp(dir: string): Promise<void> {
  await Deno.writeTextFile(
    `${dir}/${OWNER}`,
    JSON.stringify({ pid: Deno.pid, start: processStart("self") }) + "\n",
  );
}

/** Whether the temporary directory `dir` was left by a process that is gone. */
async function isStale(dir: string): Promise<boolean> {
  const owner = await readJson(`${dir}/${OWNER}`);
  if (owner === null) {
    const st = await Deno.stat(dir).catch(() => null);
    const age = st?.mtime ? (Date.now() - st.mtime.getTime()) / 1000 : Infinity;
    return age > ORPHAN_SECONDS;
  }
  if (typeof owner.pid !== "number") return true;
  if (Deno.build.os !== "linux") return false;
  const start = processStart(owner.pid);
  return start === null || (owner.start !== null && start !== owner.start);
}

function split(path: string): { parent: string; base: string } {
  const clean = path.replace(/\/+$/, "") || "/";
  const i = clean.lastIndexOf("/");
  return i < 0
    ? { parent: ".", base: clean }
    : { parent: i === 0 ? "/" : clean.slice(0, i), base: clean.slice(i + 1) };
}

const TEMP_SUFFIX = /^\.(partial|old)-[0-9a-f]{8}$/;

/**
 * Cleans up after killed runs writing `out`: removes `<out>.partial-<id>` directories whose
 * process is gone, and `<out>.old-<id>` leftovers of an interrupted replacement (putting the old
 * output back when the new one never arrived). Returns the paths removed or restored; `keep` (a
 * partial output a resumed run adopts) is left alone.
 */
export async function removeStaleTemps(out: string, keep?: string): Promise<string[]> {
  const { parent, base } = split(out);
  const done: string[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(parent));
  } catch {
    return done; // no parent yet: nothing was left
  }
  const outExists = entries.some((e) => e.name === base);
  for (const e of entries) {
    if (!e.name.startsWith(base) || !TEMP_SUFFIX.test(e.name.slice(base.length))) continue;
    const path = `${parent}/${e.name}`;
    if (keep !== undefined && resolve(path) === resolve(keep)) continue;
    if (!e.isDirectory || !(await isStale(path))) continue;
    if (e.name.slice(base.length).startsWith(".old-") && !outExists) {
      await Deno.rename(path, `${parent}/${base}`);
      done.push(`${path} → ${parent}/${base}`);
      continue;
    }
    await Deno.remove(path, { recursive: true });
    done.push(path);
  }
  return done;
}

// ---------------------------------------------------------------------------------------------
// atomic replacement

type Exchange = (a: string, b: string) => boolean;
let exchangeFn: Exchange | null | undefined;

/** `renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)` where glibc and FFI allow; else null. */
function exchange(): Exchange | null {
  if (exchangeFn !== undefined) return exchangeFn;
  exchangeFn = null;
  try {
    if (
      Deno.build.os === "linux" && Deno.permissions.querySync({ name: "ffi" }).state === "granted"
    ) {
      const libc = Deno.dlopen("libc.so.6", {
        renameat2: { parameters: ["i32", "buffer", "i32", "buffer", "u32"], result: "i32" },
      });
      const cstr = (s: string) => new TextEncoder().encode(s + "\0");
      const AT_FDCWD = -100, RENAME_EXCHANGE = 2;
      exchangeFn = (a, b) =>
        libc.symbols.renameat2(AT_FDCWD, cstr(a), AT_FDCWD, cstr(b), RENAME_EXCHANGE) === 0;
    }
  } catch { /* no glibc renameat2 */ }
  return exchangeFn;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * Moves the complete directory `tmp` to `out`. A missing `out` is a plain rename; an existing
 * one (the caller has decided it may go) is swapped with `tmp` in one step and then removed, so
 * the path holds the old or the new output at every moment.
 */
export async function replaceDir(tmp: string, out: string): Promise<void> {
  await Deno.remove(`${tmp}/${OWNER}`).catch(() => {}); // the output is no temporary directory
  if (!(await exists(out))) {
    await Deno.rename(tmp, out);
    return;
  }
  const swap = exchange();
  if (swap && swap(tmp, out)) {
    await Deno.remove(tmp, { recursive: true }); // the old output, under the temporary name
    return;
  }
  const aside = `${out.replace(/\/+$/, "")}.old-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.rename(out, aside);
  await claimTemp(aside).catch(() => {}); // a file moved aside has no owner file: ages out
  await Deno.rename(tmp, out);
  await Deno.remove(aside, { recursive: true });
}
