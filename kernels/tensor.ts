/**
 * A dense float32 tensor in row-major order. The toolkit's currency between stages,
 * graphs and files: small enough to be a plain object, explicit about its shape.
 * @module
 */

/** A row-major float32 tensor. */
export interface Tensor {
  /** The values, row-major; length is the product of `shape`. */
  data: Float32Array;
  /** Dimensions, outermost first (`[]` for a scalar). */
  shape: number[];
}

/** Number of elements of a shape. */
export function sizeOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Index of the first NaN or ±Infinity in `data`, or -1 when every value is finite. */
export function firstNonFinite(data: Float32Array): number {
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (v - v !== 0) return i; // NaN − NaN and ∞ − ∞ are NaN
  }
  return -1;
}

/** Makes a tensor, checking that the data length matches the shape. */
export function tensor(data: Float32Array, shape: number[]): Tensor {
  if (data.length !== sizeOf(shape)) {
    throw new Error(`tensor: ${data.length} values do not fill shape [${shape.join(", ")}]`);
  }
  return { data, shape };
}

/** A zero-filled tensor. */
export function zeros(shape: number[]): Tensor {
  return { data: new Float32Array(sizeOf(shape)), shape };
}

/** A deep copy. */
export function clone(t: Tensor): Tensor {
  return { data: t.data.slice(), shape: [...t.shape] };
}

/** The transpose of a 2-D tensor. */
export function transpose2d(t: Tensor): Tensor {
  const [r, c] = t.shape;
  const out = new Float32Array(r * c);
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < c; j++) out[j * r + i] = t.data[i * c + j];
  }
  return { data: out, shape: [c, r] };
}

/** Deterministic pseudo-random numbers (xorshift128+, seeded) for tests and generated models. */
export class Rng {
  #s0: number;
  #s1: number;
  #spare: number | null = null;
  /** A generator seeded with `seed` (1 by default); equal seeds give equal sequences. */
  constructor(seed = 1) {
    this.#s0 = (seed ^ 0x9e3779b9) >>> 0 || 1;
    this.#s1 = (Math.imul(seed, 0x85ebca6b) ^ 0xc2b2ae35) >>> 0 || 2;
    for (let i = 0; i < 16; i++) this.uint32();
  }
  /** A uniform 32-bit unsigned integer. */
  uint32(): number {
    let s1 = this.#s0;
    const s0 = this.#s1;
    this.#s0 = s0;
    s1 ^= s1 << 23;
    s1 ^= s1 >>> 17;
    s1 ^= s0;
    s1 ^= s0 >>> 26;
    this.#s1 = s1 >>> 0;
    return (this.#s0 + this.#s1) >>> 0;
  }
  /** Uniform in [0, 1). */
  uniform(): number {
    return this.uint32() / 4294967296;
  }
  /** Standard normal (Box–Muller). */
  normal(): number {
    if (this.#spare !== null) {
      const v = this.#spare;
      this.#spare = null;
      return v;
    }
    let u = 0;
    while (u === 0) u = this.uniform();
    const v = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    this.#spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
  /** A tensor of normal values with the given standard deviation. */
  normalTensor(shape: number[], std = 1): Tensor {
    const t = zeros(shape);
    for (let i = 0; i < t.data.length; i++) t.data[i] = this.normal() * std;
    return t;
  }
}
