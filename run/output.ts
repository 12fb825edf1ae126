/**
 * `--out` never deletes anything the toolkit did not write. Before any work, the output path is
 * checked: a previous output of ours (it carries our marker or report) is replaced atomically
 * at the end of the run; an empty directory or a missing path is simply used; anything else — a
 * file, a directory of the user's — is refused unless `--overwrite` says so; and the working
 * directory, the root, the model, the data files and the checkpoints a run reads (or a directory
 * holding any of them) are refused whatever the flags say. Temporaries that killed runs of ours
 * left beside the output are removed.
 * @module
 */
import { dirname, resolve } from "node:path";
import { UsageError } from "../cli/flags.ts";
import {
  isEmptyDir,
  isOurOutput,
  MARKER,
  removeStaleTemps,
  replaceDir,
} from "../formats/output_dir.ts";

/** A path the run reads, with the flag that named it. */
export interface RunInput {
  /** The flag (`--model`, `--calib`, …). */
  flag: string;
  /** The path. */
  path: string;
}

/** What is at the output path before the run. */
export type OutputTarget = "nothing" | "ours" | "empty" | "replaced with --overwrite";

/** The real path of `path`, resolving symbolic links in the part that exists. */
async function realPath(path: string): Promise<string> {
  const abs = resolve(path);
  const rest: string[] = [];
  let head = abs;
  for (;;) {
    try {
      const real = await Deno.realPath(head);
      return rest.length ? resolve(real, ...rest.reverse()) : real;
    } catch {
      const i = head.lastIndexOf("/");
      if (i <= 0) return abs;
      rest.push(head.slice(i + 1));
      head = head.slice(0, i);
    }
  }
}

/** Whether `a` is `b` or a directory above it. */
function holds(a: string, b: string): boolean {
  return a === b || a === "/" || b.startsWith(a.endsWith("/") ? a : `${a}/`);
}

/**
 * Checks `--out` before any work (see the module's rules); removes stale temporaries of ours
 * beside it (except `keep`, a partial output a resumed run adopts) and says what is there.
 */
export async function checkOutput(
  out: string,
  o: { overwrite?: boolean; inputs: RunInput[]; keep?: string },
): Promise<OutputTarget> {
  if (out.trim() === "") throw new UsageError("--out: the path is empty");
  const real = await realPath(out);
  if (real === "/") throw new UsageError(`--out ${out}: refusing the root directory`);
  const cwd = await Deno.realPath(Deno.cwd());
  if (holds(real, cwd)) {
    throw new UsageError(
      `--out ${out}: is the working directory${real === cwd ? "" : " or a directory above it"}; ` +
        "refusing to replace it (choose a new directory)",
    );
  }
  for (const input of o.inputs) {
    const inReal = await realPath(input.path);
    if (holds(real, inReal)) {
      throw new UsageError(
        `--out ${out}: ${real === inReal ? "is" : "holds"} ${input.flag} ${input.path}; ` +
          "refusing to replace what the run reads",
      );
    }
  }
  await checkWritable(out, real);
  const stat = await Deno.lstat(out).catch(() => null);
  let target: OutputTarget = "nothing";
  if (stat?.isDirectory && await isOurOutput(out)) target = "ours";
  else if (stat?.isDirectory && await isEmptyDir(out)) target = "empty";
  else if (stat) {
    if (!o.overwrite) {
      const what = stat.isDirectory
        ? `a directory that is not an output of qllm-deno (no ${MARKER})`
        : stat.isSymlink
        ? "a symbolic link"
        : "a file";
      throw new UsageError(
        `--out ${out}: exists and is ${what}; refusing to replace it ` +
          "(choose another path, or pass --overwrite)",
      );
    }
    target = "replaced with --overwrite";
  }
  await removeStaleTemps(out, o.keep);
  return target;
}

/**
 * Refuses an output path that cannot be created: its nearest existing ancestor must be a
 * directory this process can create files in (probed with a file created and removed at once).
 */
async function checkWritable(out: string, real: string): Promise<void> {
  let dir = dirname(real);
  while (!(await Deno.lstat(dir).catch(() => null))) dir = dirname(dir);
  if (!(await Deno.stat(dir)).isDirectory) {
    throw new UsageError(`--out ${out}: ${dir} is not a directory`);
  }
  const probe = `${dir}/.qllm-probe-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.writeFile(probe, new Uint8Array(), { createNew: true });
  } catch (e) {
    throw new UsageError(`--out ${out}: cannot create files in ${dir} (${(e as Error).message})`);
  }
  await Deno.remove(probe);
}

/**
 * Moves the complete output `partial` to `out`, re-checking first that nothing foreign appeared
 * at `out` during the run (then `out` is left alone and the error names it).
 */
export async function commitOutput(
  partial: string,
  out: string,
  o: { overwrite?: boolean },
): Promise<void> {
  const stat = await Deno.lstat(out).catch(() => null);
  if (
    stat && !o.overwrite &&
    !(stat.isDirectory && (await isOurOutput(out) || await isEmptyDir(out)))
  ) {
    throw new UsageError(`--out ${out}: something that is not ours appeared there during the run`);
  }
  await replaceDir(partial, out);
}
