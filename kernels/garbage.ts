/**
 * Prompt release of ONNX Runtime's output buffers. Every run hands its outputs back as fresh
 * typed arrays; V8 frees them only when its own heuristics run a full collection, by which time
 * a loop over large products (Gram matrices, GPTQ's lazy updates) has piled up hundreds of MB of
 * dead buffers. {@linkcode GarbageMeter} counts output bytes and collects once a budget of them
 * has been handed out, which bounds the dead memory at about that budget.
 * @module
 */
import v8 from "node:v8";
import vm from "node:vm";

type Collect = () => void;

let collector: Collect | null | undefined;

/** V8's `gc()`, made available at run time; null where the runtime refuses the flag. */
function gcFunction(): Collect | null {
  if (collector !== undefined) return collector;
  try {
    v8.setFlagsFromString("--expose-gc");
    const gc = vm.runInNewContext("gc");
    collector = typeof gc === "function" ? () => gc() : null;
  } catch {
    collector = null;
  }
  return collector;
}

/** Runs a full garbage collection now (a no-op where V8's `gc` cannot be reached). */
export function collectGarbage(): void {
  gcFunction()?.();
}

let trim: (() => void) | null | undefined;

/** glibc's `malloc_trim(0)`, where the C library has it and FFI is allowed; else null. */
function mallocTrim(): (() => void) | null {
  if (trim !== undefined) return trim;
  trim = null;
  try {
    if (
      Deno.build.os === "linux" && Deno.permissions.querySync({ name: "ffi" }).state === "granted"
    ) {
      const libc = Deno.dlopen("libc.so.6", {
        malloc_trim: { parameters: ["usize"], result: "i32" },
      });
      trim = () => void libc.symbols.malloc_trim(0n);
    }
  } catch { /* not glibc */ }
  return trim;
}

/**
 * Collects garbage, then hands the C heap's free pages back to the system. ONNX Runtime's arena
 * and the typed arrays both live on the C heap, where freed blocks below the top of the heap
 * stay resident until trimmed: after a pass over a large graph, tens of MB would.
 */
export function releaseMemory(): void {
  collectGarbage();
  mallocTrim()?.();
}

/** Collects garbage after every `budget` bytes of buffers handed out. */
export class GarbageMeter {
  /** Bytes handed out between collections. */
  readonly budget: number;
  #since = 0;

  /** A meter collecting after `budget` bytes (32 MiB by default). */
  constructor(budget = 32 * 2 ** 20) {
    this.budget = budget;
  }

  /** Counts `bytes` newly handed out; collects when the budget is spent. */
  add(bytes: number): void {
    this.#since += bytes;
    if (this.#since >= this.budget) {
      this.#since = 0;
      collectGarbage();
    }
  }
}
