/**
 * Optimizers for the small learned tensors of block-wise reconstruction (clipping factors,
 * equivalent-transform scales, low-rank factors): AdamW in TypeScript, learning-rate schedules,
 * and a guard that stops on a non-finite loss or gradient and restores the last good values.
 * @module
 */

/** A named learnable tensor. */
export interface Param {
  /** Name for errors and checkpoints. */
  name: string;
  /** The values, updated in place by the optimizer. */
  data: Float32Array;
  /** Shape of `data` (row-major). */
  shape: number[];
  /** Learning rate of this parameter group (the schedule multiplies it). */
  lr: number;
  /** Decoupled weight decay (AdamW); 0 by default. */
  weightDecay?: number;
}

/** Learning-rate multiplier at step `t` of `total` (t from 0). */
export type Schedule = (t: number, total: number) => number;

/** Constant learning rate. */
export const constant: Schedule = (): number => 1;

/** Linear decay from 1 to 0 over the run after `warmup` linear warm-up steps (HF "linear"). */
export function linearDecay(warmup = 0): Schedule {
  return (t, total) => {
    if (t < warmup) return (t + 1) / warmup;
    return Math.max(0, (total - t) / Math.max(1, total - warmup));
  };
}

/** Cosine decay from 1 to `floor`. */
export function cosineDecay(floor = 0): Schedule {
  return (t, total) =>
    floor + (1 - floor) * 0.5 * (1 + Math.cos((Math.PI * t) / Math.max(1, total)));
}

/** AdamW (Loshchilov & Hutter) with torch's defaults: β = (0.9, 0.999), ε = 1e-8. */
export class AdamW {
  /** The parameters it updates, in the order of the gradients given to {@linkcode step}. */
  readonly params: Param[];
  #m: Float64Array[];
  #v: Float64Array[];
  #t = 0;
  #beta1: number;
  #beta2: number;
  #eps: number;

  /** Optimizes `params`; `o` overrides β1 (0.9), β2 (0.999) and ε (1e-8). */
  constructor(params: Param[], o: { beta1?: number; beta2?: number; eps?: number } = {}) {
    this.params = params;
    this.#m = params.map((p) => new Float64Array(p.data.length));
    this.#v = params.map((p) => new Float64Array(p.data.length));
    this.#beta1 = o.beta1 ?? 0.9;
    this.#beta2 = o.beta2 ?? 0.999;
    this.#eps = o.eps ?? 1e-8;
  }

  /** Steps taken. */
  get steps(): number {
    return this.#t;
  }

  /** One update with gradients `grads[i]` for `params[i]`, learning rates scaled by `lrScale`. */
  step(grads: ArrayLike<number>[], lrScale = 1): void {
    this.#t++;
    const b1 = this.#beta1, b2 = this.#beta2;
    const c1 = 1 - b1 ** this.#t, c2 = 1 - b2 ** this.#t;
    this.params.forEach((p, i) => {
      const g = grads[i], m = this.#m[i], v = this.#v[i], x = p.data;
      if (g.length !== x.length) {
        throw new Error(
          `AdamW: gradient of ${p.name} has ${g.length} values, parameter ${x.length}`,
        );
      }
      const lr = p.lr * lrScale, wd = p.weightDecay ?? 0;
      for (let j = 0; j < x.length; j++) {
        if (wd) x[j] -= lr * wd * x[j];
        m[j] = b1 * m[j] + (1 - b1) * g[j];
        v[j] = b2 * v[j] + (1 - b2) * g[j] * g[j];
        x[j] -= (lr * (m[j] / c1)) / (Math.sqrt(v[j] / c2) + this.#eps);
      }
    });
  }

  /** Optimizer state, for saving with the parameters. */
  state(): { t: number; m: Float64Array[]; v: Float64Array[] } {
    return { t: this.#t, m: this.#m.map((a) => a.slice()), v: this.#v.map((a) => a.slice()) };
  }

  /** Restores a state saved by {@linkcode state}. */
  restore(s: { t: number; m: Float64Array[]; v: Float64Array[] }): void {
    this.#t = s.t;
    this.#m = s.m.map((a) => a.slice());
    this.#v = s.v.map((a) => a.slice());
  }
}

/** True when every value is finite. */
export function allFinite(values: ArrayLike<number>): boolean {
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i])) return false;
  return true;
}

/**
 * Keeps the last parameter values that gave a finite loss and finite gradients, so a block's
 * training can stop on NaN/Inf and go back to them.
 */
export class NanGuard {
  #good: Float32Array[];
  #params: Param[];
  /** Step at which training was stopped, if it was. */
  stoppedAt: number | null = null;
  /** Why training was stopped (`loss NaN`, `non-finite gradient of …`); `""` while it runs. */
  reason = "";

  /** Guards `params`, taking their current values as the first good ones. */
  constructor(params: Param[]) {
    this.#params = params;
    this.#good = params.map((p) => p.data.slice());
  }

  /**
   * Checks a step's loss and gradients: when all are finite, the current values become the last
   * good ones and it returns true; otherwise it restores the last good values and returns false.
   */
  check(step: number, loss: number, grads: ArrayLike<number>[]): boolean {
    const bad = !Number.isFinite(loss)
      ? `loss ${loss}`
      : grads.findIndex((g) => !allFinite(g)) >= 0
      ? `non-finite gradient of ${this.#params[grads.findIndex((g) => !allFinite(g))].name}`
      : "";
    if (!bad) {
      this.#params.forEach((p, i) => this.#good[i].set(p.data));
      return true;
    }
    this.#params.forEach((p, i) => p.data.set(this.#good[i]));
    this.stoppedAt = step;
    this.reason = bad;
    return false;
  }
}
