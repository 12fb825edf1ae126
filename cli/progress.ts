/**
 * Progress lines on stderr: elapsed time and resident memory before every line, so a long run
 * shows where it is and what it holds.
 * @module
 */

/** Progress lines on stderr, with elapsed time. */
export class Progress {
  #t0 = performance.now();
  #quiet: boolean;
  /** Starts the clock; `quiet` suppresses every line. */
  constructor(quiet = false) {
    this.#quiet = quiet;
  }
  /** Seconds since this progress started. */
  elapsed(): number {
    return (performance.now() - this.#t0) / 1000;
  }
  /** Prints one progress line. */
  log(msg: string): void {
    if (this.#quiet) return;
    const rss = (Deno.memoryUsage().rss / 2 ** 20).toFixed(0);
    console.error(`[${this.elapsed().toFixed(1).padStart(6)} s ${rss.padStart(5)} MiB] ${msg}`);
  }
  /** Estimated seconds left after `done` of `total` equal steps. */
  eta(done: number, total: number): string {
    if (done === 0) return "";
    const left = (this.elapsed() / done) * (total - done);
    return `, ~${left.toFixed(0)} s left`;
  }
}
