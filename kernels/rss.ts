/**
 * Peak resident memory of the process, overall and per stretch of work. Linux keeps one
 * high-water mark per process (`VmHWM`) and lets a process reset it to the current RSS (writing
 * `5` to `/proc/self/clear_refs`); {@linkcode RssMeter} resets it at the start of every measured
 * stretch and folds the mark it read into every stretch still open, so stretches may nest or
 * overlap (a stage inside the whole stream, two stages of the stream at once) and each still gets
 * its own peak, and the overall peak stays exact.
 * @module
 */

/** The kernel's high-water mark of this process (bytes), or null where it is not reported. */
function highWaterMark(): number | null {
  try {
    const m = Deno.readTextFileSync("/proc/self/status").match(/VmHWM:\s+(\d+) kB/);
    if (m) return Number(m[1]) * 1024;
  } catch { /* not Linux */ }
  return null;
}

/** Peak resident set size of this process (Linux VmHWM), else the current RSS. */
export function peakRss(): number {
  return highWaterMark() ?? Deno.memoryUsage().rss;
}

/** Resets the kernel's high-water mark to the current RSS; false where that is not possible. */
function resetHighWaterMark(): boolean {
  try {
    Deno.writeTextFileSync("/proc/self/clear_refs", "5");
    return true;
  } catch {
    return false;
  }
}

/** An open stretch of {@linkcode RssMeter.start}. */
export interface RssStretch {
  /** Ends the stretch: its peak RSS in bytes, or undefined where it cannot be measured. */
  stop(): number | undefined;
}

/**
 * Peak RSS per stretch of work, and of the whole process across the resets that this needs. One
 * meter per process is meant: a second meter's resets would hide peaks from the first.
 */
export class RssMeter {
  #overall = 0;
  #open = new Set<{ peak: number }>();
  #resettable: boolean | undefined;

  /** Folds the current mark into the overall peak and every open stretch, then resets it. */
  #fold(reset: boolean): number | null {
    const hwm = highWaterMark();
    if (hwm === null) return null;
    this.#overall = Math.max(this.#overall, hwm);
    for (const s of this.#open) s.peak = Math.max(s.peak, hwm);
    if (reset && this.#resettable !== false) this.#resettable = resetHighWaterMark();
    return hwm;
  }

  /** Starts a stretch; its `stop()` gives the peak RSS between now and then. */
  start(): RssStretch {
    const first = this.#fold(true);
    const s = { peak: 0 };
    const measurable = first !== null && this.#resettable === true;
    if (measurable) this.#open.add(s);
    return {
      stop: () => {
        if (!measurable || !this.#open.has(s)) return undefined;
        this.#fold(false);
        this.#open.delete(s);
        return s.peak;
      },
    };
  }

  /** The process's peak RSS: the highest mark seen across every reset, and the current one. */
  peak(): number {
    return Math.max(this.#overall, this.#fold(false) ?? peakRss());
  }
}
