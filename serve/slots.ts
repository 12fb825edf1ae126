/**
 * Generation slots and the bounded queue in front of them: a request waits for a slot, a full
 * queue refuses it (503), and a request whose client goes away while it waits leaves the queue.
 * @module
 */
import { ApiError } from "./requests.ts";

/** Generation slots and the queue in front of them. */
export class Slots {
  #free: number;
  #maxQueue: number;
  #waiting: { grant: () => void; signal?: AbortSignal }[] = [];

  /** `max` slots, at most `maxQueue` waiting. */
  constructor(max: number, maxQueue: number) {
    this.#free = max;
    this.#maxQueue = maxQueue;
  }

  /** Requests waiting. */
  get queued(): number {
    return this.#waiting.length;
  }

  /** Free slots. */
  get free(): number {
    return this.#free;
  }

  /**
   * Waits for a slot; returns its release. Throws a 503 when the queue is full, and rejects
   * when `signal` aborts first (the request then leaves the queue).
   */
  acquire(signal?: AbortSignal): Promise<() => void> {
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      const next = this.#waiting.shift();
      if (next) next.grant();
      else this.#free++;
    };
    if (this.#free > 0) {
      this.#free--;
      return Promise.resolve(release);
    }
    if (this.#waiting.length >= this.#maxQueue) {
      return Promise.reject(
        new ApiError(503, `the server is busy (${this.#maxQueue} requests waiting)`, {
          code: "server_busy",
        }),
      );
    }
    return new Promise((resolve, reject) => {
      const entry = { grant: () => resolve(release), signal };
      this.#waiting.push(entry);
      signal?.addEventListener("abort", () => {
        const i = this.#waiting.indexOf(entry);
        if (i >= 0) {
          this.#waiting.splice(i, 1);
          reject(new ApiError(499, "the client went away"));
        }
      }, { once: true });
    });
  }
}
