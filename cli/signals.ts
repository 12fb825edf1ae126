/**
 * What an interrupted command leaves behind: nothing of its own. A command registers the
 * temporary paths it creates (a run's partial output directory, an export's temporary file)
 * with {@linkcode Interrupts}; on SIGINT, SIGTERM or SIGHUP they are removed before the process
 * exits with 128 + the signal's number. SIGXFSZ is caught too, so that a write past the file-size
 * limit (`ulimit -f`) fails with an error that names the file instead of killing the process.
 * A kill -9 cannot be caught: the next run removes what it left (`formats/output_dir.ts`).
 * @module
 */

/** The signals a command cleans up after, with their numbers. */
const SIGNALS = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 } as const;

/** Temporary paths of a command, removed if it is interrupted. */
export class Interrupts {
  #paths = new Set<string>();
  #log: (msg: string) => void;

  /** Interrupts that report what they removed through `log` (stderr by default). */
  constructor(log: (msg: string) => void = (m) => console.error(m)) {
    this.#log = log;
  }

  /** Removes `path` (recursively) if the process is interrupted before {@linkcode release}. */
  track(path: string): void {
    this.#paths.add(path);
  }

  /** Stops tracking `path` (it was removed, or it became an output). */
  release(path: string): void {
    this.#paths.delete(path);
  }

  /** The paths tracked now. */
  get paths(): string[] {
    return [...this.#paths];
  }

  /**
   * Removes every tracked path now; returns those that existed. Each is first renamed, so that a
   * write still in flight on another thread cannot recreate a file under it, then removed (a
   * few times over, should such a write land in the renamed directory meanwhile).
   */
  removeAll(): string[] {
    const removed: string[] = [];
    for (const p of this.#paths) {
      let target = p;
      try {
        target = `${p}.removing-${crypto.randomUUID().slice(0, 8)}`;
        Deno.renameSync(p, target);
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) continue;
        target = p;
      }
      for (let attempt = 0; attempt < 5; attempt++) {
        try {
          Deno.removeSync(target, { recursive: true });
          break;
        } catch (e) {
          if (e instanceof Deno.errors.NotFound) break;
        }
      }
      removed.push(p);
    }
    this.#paths.clear();
    return removed;
  }

  /**
   * Installs the signal listeners (a no-op where signals are not supported); returns the
   * function that removes them, but for SIGXFSZ, which stays ignored for the process's life (a
   * write still in flight when a command ends must fail, not kill the process).
   */
  install(): () => void {
    const installed: [Deno.Signal, () => void][] = [];
    const add = (sig: Deno.Signal, fn: () => void) => {
      try {
        Deno.addSignalListener(sig, fn);
        installed.push([sig, fn]);
      } catch { /* not on this platform */ }
    };
    for (const [sig, n] of Object.entries(SIGNALS) as [Deno.Signal, number][]) {
      add(sig, () => {
        const removed = this.removeAll();
        this.#log(
          `interrupted by ${sig}` + (removed.length ? `; removed ${removed.join(", ")}` : ""),
        );
        Deno.exit(128 + n);
      });
    }
    const terminating = installed.length;
    add("SIGXFSZ", () => {});
    return () => {
      for (const [sig, fn] of installed.slice(0, terminating)) {
        Deno.removeSignalListener(sig, fn);
      }
    };
  }
}
