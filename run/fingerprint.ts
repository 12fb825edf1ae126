/**
 * A run's fingerprint: what decides its results — the model's files, the method and every
 * setting it reports, the run-time activation scheme and the calibration windows themselves —
 * stored as `fingerprint.json` beside the run's checkpoints (`<out>.ckpt/`), so that `--resume`
 * refuses checkpoints made under anything else and says what differs. Where the output goes,
 * the evaluation and where the activations live do not change results and are not part of it.
 * @module
 */
import { UsageError } from "../cli/flags.ts";

/** The fingerprint file inside a checkpoint directory. */
export const FINGERPRINT_FILE = "fingerprint.json";

/** A run's fingerprint (JSON). */
export type Fingerprint = Record<string, unknown>;

const SAMPLE_BYTES = 1 << 20;

async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Size and a sha256 of the first and last MiB of a file (a 13 GB model is not read whole). */
async function fileIdentity(path: string): Promise<{ bytes: number; sample_sha256: string }> {
  const f = await Deno.open(path, { read: true });
  try {
    const size = (await f.stat()).size;
    const take = async (at: number, n: number) => {
      const buf = new Uint8Array(n);
      await f.seek(at, Deno.SeekMode.Start);
      for (let got = 0; got < n;) {
        const k = await f.read(buf.subarray(got));
        if (k === null) break;
        got += k;
      }
      return buf;
    };
    const head = await take(0, Math.min(size, SAMPLE_BYTES));
    const tailAt = Math.max(head.length, size - SAMPLE_BYTES);
    const tail = await take(tailAt, size - tailAt);
    const both = new Uint8Array(head.length + tail.length);
    both.set(head);
    both.set(tail, head.length);
    return { bytes: size, sample_sha256: await sha256(both) };
  } finally {
    f.close();
  }
}

/** The identity of a model's files: config and weights (a directory) or the checkpoint file. */
async function modelIdentity(path: string): Promise<Record<string, unknown>> {
  const st = await Deno.stat(path);
  if (st.isFile) return { [path.replace(/^.*\//, "")]: await fileIdentity(path) };
  const files: Record<string, unknown> = {};
  const names: string[] = [];
  for await (const e of Deno.readDir(path)) {
    if (e.isFile && /^(config\.json|.*\.safetensors|.*\.index\.json|.*\.bin)$/.test(e.name)) {
      names.push(e.name);
    }
  }
  for (const n of names.sort()) files[n] = await fileIdentity(`${path}/${n}`);
  return files;
}

/** What a fingerprint is made of. */
export interface FingerprintInputs {
  /** The model path. */
  model: string;
  /** The method and its settings (as the report echoes them). */
  method: Record<string, unknown>;
  /** The calibration windows' token ids `[nsamples, seqlen]` and how they were drawn. */
  calibration: { ids: Int32Array; nsamples: number; seqlen: number; seed: number };
}

/** Settings that do not change results (where checkpoints go, where a run resumes from). */
const NOT_RESULTS = new Set(["resume", "checkpointDir"]);

/** The fingerprint of a run. */
export async function fingerprint(i: FingerprintInputs): Promise<Fingerprint> {
  const method = JSON.parse(
    JSON.stringify(i.method, (k, v) => NOT_RESULTS.has(k) ? undefined : v),
  );
  const c = i.calibration;
  return {
    version: 1,
    ...method,
    model: await modelIdentity(i.model),
    calibration: {
      nsamples: c.nsamples,
      seqlen: c.seqlen,
      seed: c.seed,
      windows_sha256: await sha256(new Uint8Array(c.ids.slice().buffer)),
    },
  };
}

/** A short hash of a fingerprint (recorded in layer-wise progress files). */
export async function fingerprintHash(fp: Fingerprint): Promise<string> {
  return (await sha256(new TextEncoder().encode(JSON.stringify(fp)))).slice(0, 16);
}

/** Files a checkpoint directory holds (and their temporaries). */
const CHECKPOINT_FILE =
  /^(fingerprint\.json|progress\.json|block-\d+\.safetensors|chain-\d+\.f32)(\.tmp.*|\.data-.*)?$/;

/** A checkpoint file's temporary, which a kill may leave and nothing reads. */
const isTemporary = (e: Deno.DirEntry) =>
  e.isFile && CHECKPOINT_FILE.test(e.name) && /\.tmp|\.data-/.test(e.name);

/**
 * Makes `dir` ready for this run's checkpoints. Resuming from it, only the temporary files a
 * kill left are removed; otherwise the checkpoints of an earlier run there are removed — but a
 * directory holding anything else is refused and left alone.
 */
export async function prepareCheckpointDir(dir: string, o: { resuming: boolean }): Promise<void> {
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    throw new UsageError(
      `--out: cannot read the checkpoint directory ${dir} (${(e as Error).message})`,
    );
  }
  const foreign = entries.filter((e) => !e.isFile || !CHECKPOINT_FILE.test(e.name));
  if (foreign.length) {
    throw new UsageError(
      `--out: ${dir} holds files that are not checkpoints of this toolkit ` +
        `(${foreign.slice(0, 3).map((e) => e.name).join(", ")}); move them away`,
    );
  }
  for (const e of entries) {
    if (!o.resuming || isTemporary(e)) await Deno.remove(`${dir}/${e.name}`);
  }
}

/** `obj` flattened to dotted keys → JSON values. */
function flatten(obj: unknown, prefix = "", out = new Map<string, string>()): Map<string, string> {
  if (obj !== null && typeof obj === "object" && !Array.isArray(obj)) {
    for (const [k, v] of Object.entries(obj)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else out.set(prefix, JSON.stringify(obj));
  return out;
}

/** The differences between two fingerprints, as `key: was A, now B` (empty when equal). */
export function differences(was: Fingerprint, now: Fingerprint): string[] {
  const a = flatten(was), b = flatten(now);
  // In the fingerprint's order: the method and its settings before the model and the data.
  const keys = [...new Set([...b.keys(), ...a.keys()])];
  return keys.filter((k) => a.get(k) !== b.get(k)).map((k) =>
    `${k}: was ${a.get(k) ?? "absent"}, now ${b.get(k) ?? "absent"}`
  );
}

/** Writes `fp` into the checkpoint directory `dir` (created if missing). */
export async function saveFingerprint(dir: string, fp: Fingerprint): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const tmp = `${dir}/${FINGERPRINT_FILE}.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(fp, null, 2) + "\n");
  await Deno.rename(tmp, `${dir}/${FINGERPRINT_FILE}`);
}

/**
 * Removes a checkpoint directory with its fingerprint last, so that a kill on the way never
 * leaves checkpoints without the fingerprint that vouches for them.
 */
export async function removeCheckpointDir(dir: string): Promise<void> {
  const entries = await Array.fromAsync(Deno.readDir(dir)).catch(() => []);
  for (const e of entries) {
    if (e.name !== FINGERPRINT_FILE) await Deno.remove(`${dir}/${e.name}`, { recursive: true });
  }
  await Deno.remove(`${dir}/${FINGERPRINT_FILE}`).catch(() => {});
  await Deno.remove(dir).catch(() => {});
}

/**
 * Checks that `--resume dir` holds checkpoints of this very run: the directory exists and its
 * fingerprint equals `fp`; the error names the flag and what differs. A directory a kill left
 * before its fingerprint was written, or after the rest was removed (empty, or temporaries
 * only), holds nothing to resume: `false`, and the run starts from the first block.
 */
export async function checkResume(dir: string, fp: Fingerprint): Promise<boolean> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(dir);
  } catch {
    throw new UsageError(`--resume ${dir}: no such directory`);
  }
  if (!st.isDirectory) throw new UsageError(`--resume ${dir}: not a directory`);
  let was: Fingerprint;
  try {
    was = JSON.parse(await Deno.readTextFile(`${dir}/${FINGERPRINT_FILE}`));
  } catch {
    const entries = await Array.fromAsync(Deno.readDir(dir)).catch(() => null);
    if (entries?.every(isTemporary)) return false;
    throw new UsageError(
      `--resume ${dir}: no readable ${FINGERPRINT_FILE}; not a checkpoint directory of this ` +
        "toolkit (or one from before fingerprints)",
    );
  }
  const diff = differences(was, fp);
  if (diff.length) {
    const shown = diff.slice(0, 6).join("; ") + (diff.length > 6 ? `; … (${diff.length})` : "");
    throw new UsageError(
      `--resume ${dir}: the checkpoints were made by a different run (${shown}); ` +
        "refusing to mix them into this one",
    );
  }
  return true;
}
