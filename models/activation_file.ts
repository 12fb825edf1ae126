/**
 * Calibration activations kept on disk: the chain of block inputs `[windows, seqlen, hidden]`
 * as raw float32 in a file, read and written a batch of windows at a time, so a run's memory
 * does not grow with the calibration set (`--offload-activations`). The block passes of the
 * layer-wise methods read each window once per pass, in order, which the page cache serves at
 * memory speed.
 * @module
 */
import type { Tensor } from "../kernels/tensor.ts";

/** Activations `[windows, seqlen, hidden]` in a file of their own, removed by `close()`. */
export class ActivationFile {
  /** `[windows, seqlen, hidden]`. */
  readonly shape: [number, number, number];
  /** Where the values live. */
  readonly path: string;
  #file: Deno.FsFile | null;
  #windowBytes: number;

  private constructor(path: string, shape: [number, number, number], file: Deno.FsFile) {
    this.path = path;
    this.shape = shape;
    this.#file = file;
    this.#windowBytes = shape[1] * shape[2] * 4;
  }

  /** Creates (or truncates) `path` for activations of `shape`, zero-filled. */
  static create(path: string, shape: [number, number, number]): ActivationFile {
    let file: Deno.FsFile;
    try {
      file = Deno.openSync(path, { read: true, write: true, create: true, truncate: true });
    } catch (e) {
      throw new Error(`--offload-activations: cannot create ${path}: ${(e as Error).message}`);
    }
    try {
      file.truncateSync(shape[0] * shape[1] * shape[2] * 4);
    } catch (e) {
      file.close();
      throw new Error(`${path}: cannot size the activation file (${(e as Error).message})`);
    }
    return new ActivationFile(path, shape, file);
  }

  /** Opens an existing activation file of `shape` (its size must match). */
  static open(path: string, shape: [number, number, number]): ActivationFile {
    const file = Deno.openSync(path, { read: true, write: true });
    const want = shape[0] * shape[1] * shape[2] * 4, size = file.statSync().size;
    if (size !== want) {
      file.close();
      throw new Error(`${path}: ${size} bytes, expected ${want} for [${shape.join(", ")}]`);
    }
    return new ActivationFile(path, shape, file);
  }

  /** Windows `[w0, w0 + count)` as one float32 array (into `out` when given). */
  read(w0: number, count: number, out?: Float32Array): Float32Array {
    const f = this.#open();
    const n = (count * this.#windowBytes) / 4;
    const dst = out ? out.subarray(0, n) : new Float32Array(n);
    const bytes = new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength);
    f.seekSync(w0 * this.#windowBytes, Deno.SeekMode.Start);
    for (let done = 0; done < bytes.length;) {
      const r = f.readSync(bytes.subarray(done));
      if (r === null || r === 0) throw new Error(`${this.path}: ended at window ${w0}`);
      done += r;
    }
    return dst;
  }

  /** Writes whole windows starting at window `w0`. */
  write(w0: number, values: Float32Array): void {
    const f = this.#open();
    f.seekSync(w0 * this.#windowBytes, Deno.SeekMode.Start);
    const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    try {
      for (let done = 0; done < bytes.length;) done += f.writeSync(bytes.subarray(done));
    } catch (e) {
      throw new Error(`${this.path}: writing activations failed (${(e as Error).message})`);
    }
  }

  /** Copies the windows of `x` (same shape) into the file. */
  writeTensor(x: Tensor): void {
    this.write(0, x.data);
  }

  /** Closes and deletes the file. */
  close(): void {
    if (!this.#file) return;
    this.#file.close();
    this.#file = null;
    try {
      Deno.removeSync(this.path);
    } catch { /* already gone */ }
  }

  #open(): Deno.FsFile {
    if (!this.#file) throw new Error(`${this.path}: activations already released`);
    return this.#file;
  }
}
