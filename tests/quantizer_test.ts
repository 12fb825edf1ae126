import assert from "node:assert/strict";
import {
  checkGroupSize,
  fakeQuantPerToken,
  findParams,
  MSE_SEARCH,
  quantizeRow,
  roundHalfEven,
  rtnWeight,
} from "../algorithms/quantizer.ts";
import { Rng } from "../kernels/tensor.ts";

/**
 * Float64 min-max quantizer of one row, written from PROTOCOL §5 (round half to even). Where
 * x/scale is within 1e-5 of a .5 tie, float32 and float64 may round differently: `alt` holds the
 * other candidate there (NaN elsewhere).
 */
function refRowTies(
  x: ArrayLike<number>,
  bits: number,
  sym: boolean,
): { want: number[]; alt: number[] } {
  const maxq = 2 ** bits - 1;
  let lo = 0, hi = 0;
  for (let j = 0; j < x.length; j++) {
    lo = Math.min(lo, x[j]);
    hi = Math.max(hi, x[j]);
  }
  if (sym) {
    hi = Math.max(-lo, hi);
    if (lo < 0) lo = -hi;
  }
  if (lo === 0 && hi === 0) [lo, hi] = [-1, 1];
  const scale = (hi - lo) / maxq;
  const zero = sym ? (maxq + 1) / 2 : rhe(-lo / scale);
  const deq = (k: number) => scale * (Math.min(Math.max(k + zero, 0), maxq) - zero);
  const want = Array.from(x, (v) => deq(rhe(v / scale)));
  const alt = Array.from(x, (v) => {
    const t = v / scale;
    if (Math.abs(t - Math.floor(t) - 0.5) > 1e-5) return NaN;
    return deq(rhe(t) === Math.floor(t) ? Math.floor(t) + 1 : Math.floor(t));
  });
  return { want, alt };
}

function refRow(x: ArrayLike<number>, bits: number, sym: boolean): number[] {
  return refRowTies(x, bits, sym).want;
}

function rhe(v: number): number {
  const f = Math.floor(v), d = v - f;
  return d < 0.5 ? f : d > 0.5 ? f + 1 : f % 2 === 0 ? f : f + 1;
}

function randomRows(rng: Rng, rows: number, cols: number): Float32Array {
  const x = new Float32Array(rows * cols);
  for (let i = 0; i < x.length; i++) x[i] = rng.normal() * (1 + (i % 7));
  return x;
}

function assertClose(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  tol: number,
  what: string,
  alt?: ArrayLike<number>,
) {
  assert.equal(a.length, b.length, what);
  for (let i = 0; i < a.length; i++) {
    const ok = Math.abs(a[i] - b[i]) <= tol ||
      (alt !== undefined && Math.abs(a[i] - alt[i]) <= tol);
    assert.ok(ok, `${what}[${i}]: ${a[i]} vs ${b[i]}`);
  }
}

Deno.test("roundHalfEven matches torch.round on ties", () => {
  const cases: [number, number][] = [
    [0.5, 0],
    [1.5, 2],
    [2.5, 2],
    [3.5, 4],
    [-0.5, 0],
    [-1.5, -2],
    [-2.5, -2],
    [2.4999, 2],
    [-2.5001, -3],
    [7, 7],
  ];
  for (const [x, want] of cases) assert.equal(roundHalfEven(x) + 0, want, `round(${x})`);
});

Deno.test("findParams / quantizeRow match a float64 loop (asym and sym, 2..8 bits)", () => {
  const rng = new Rng(3);
  const rows = 12, cols = 40;
  const x = randomRows(rng, rows, cols);
  for (let r = 0; r < cols; r++) x[3 * cols + r] = Math.abs(x[3 * cols + r]); // all ≥ 0 row
  for (const sym of [false, true]) {
    for (let bits = 2; bits <= 8; bits++) {
      const p = findParams(x, rows, cols, bits, sym);
      for (let r = 0; r < rows; r++) {
        const got = new Float32Array(cols);
        quantizeRow(x, got, p.scale[r], p.zero[r], p.maxq, cols, r * cols);
        const { want, alt } = refRowTies(x.subarray(r * cols, (r + 1) * cols), bits, sym);
        const tol = 1e-5 * p.scale[r] * p.maxq;
        assertClose(got, want, tol, `sym=${sym} bits=${bits} row ${r}`, alt);
      }
    }
  }
});

Deno.test("exact .5 ties round to even; all-zero rows use [-1, 1]", () => {
  // 2 bits, range [-1, 2]: scale 1, zero 1; 0.5 → 0 and 1.5 → 2 (Math.round would give 1, 2).
  const row = Float32Array.from([-1, 2, 0.5, 1.5, -0.5, 2.5 - 1]);
  const p = findParams(row, 1, row.length, 2, false);
  assert.equal(p.scale[0], 1);
  assert.equal(p.zero[0], 1);
  const got = new Float32Array(row.length);
  quantizeRow(row, got, p.scale[0], p.zero[0], p.maxq);
  assert.deepEqual(Array.from(got, (v) => v + 0), [-1, 2, 0, 2, 0, 2]);

  const zeros = new Float32Array(8);
  const z = findParams(zeros, 1, 8, 4, false);
  assert.equal(z.scale[0], Math.fround(2 / 15));
  assert.equal(z.zero[0], roundHalfEven(Math.fround(1 / z.scale[0])));
  const zq = new Float32Array(8);
  quantizeRow(zeros, zq, z.scale[0], z.zero[0], z.maxq);
  assert.ok(zq.every((v) => v === 0));
  const zs = findParams(zeros, 1, 8, 4, true);
  assert.equal(zs.zero[0], 8);
});

Deno.test("rtnWeight per channel and per group (short last group) match the loop", () => {
  const rng = new Rng(5);
  const rows = 8, cols = 100;
  const W = { data: randomRows(rng, rows, cols), shape: [rows, cols] };
  for (const groupSize of [0, 32]) {
    for (const bits of [3, 4]) {
      const res = rtnWeight(W, { bits, sym: false, groupSize });
      const g = groupSize || cols;
      assert.equal(res.nGroups, Math.ceil(cols / g));
      assert.equal(res.scale.length, rows * res.nGroups);
      for (let r = 0; r < rows; r++) {
        for (let c0 = 0; c0 < cols; c0 += g) {
          const c1 = Math.min(c0 + g, cols);
          const want = refRow(W.data.subarray(r * cols + c0, r * cols + c1), bits, false);
          const got = res.weight.data.subarray(r * cols + c0, r * cols + c1);
          assertClose(got, want, 1e-4, `g=${groupSize} bits=${bits} row ${r} col ${c0}`);
        }
      }
    }
  }
  const off = rtnWeight(W, { bits: 16, sym: false, groupSize: 0 });
  assert.deepEqual(off.weight.data, W.data);
  assert.throws(() => rtnWeight(W, { bits: 1, sym: false, groupSize: 0 }), /--bits/);
});

Deno.test("checkGroupSize names the tensor and the flag", () => {
  checkGroupSize(4096, 128, "q_proj");
  checkGroupSize(172, 0, "down_proj");
  assert.throws(
    () => checkGroupSize(172, 32, "layers.0.mlp.down_proj"),
    (e: Error) => /layers\.0\.mlp\.down_proj/.test(e.message) && /--group-size 32/.test(e.message),
  );
  assert.throws(() => checkGroupSize(64, -1, "w"), /--group-size/);
});

Deno.test("MSE grid search never does worse than min-max (Σ|q−x|^2.4)", () => {
  const rng = new Rng(9);
  const rows = 16, cols = 64;
  const x = randomRows(rng, rows, cols);
  for (let r = 0; r < rows; r++) x[r * cols + (r % cols)] *= 8; // one outlier per row
  const err = (p: ReturnType<typeof findParams>, r: number) => {
    const q = new Float32Array(cols);
    quantizeRow(x, q, p.scale[r], p.zero[r], p.maxq, cols, r * cols);
    let s = 0;
    for (let j = 0; j < cols; j++) s += Math.abs(q[j] - x[r * cols + j]) ** MSE_SEARCH.norm;
    return s;
  };
  for (const sym of [false, true]) {
    for (const bits of [2, 3, 4]) {
      const mm = findParams(x, rows, cols, bits, sym);
      const ms = findParams(x, rows, cols, bits, sym, true);
      let better = 0;
      for (let r = 0; r < rows; r++) {
        assert.ok(err(ms, r) <= err(mm, r) * (1 + 1e-6), `row ${r} bits ${bits} sym ${sym}`);
        if (err(ms, r) < err(mm, r) * 0.999) better++;
      }
      assert.ok(better > 0, "the search should shrink some outlier rows");
    }
  }
});

Deno.test("fakeQuantPerToken quantizes each row asymmetrically", () => {
  const rng = new Rng(11);
  const rows = 5, cols = 33;
  const x = randomRows(rng, rows, cols);
  for (const bits of [4, 8]) {
    const got = fakeQuantPerToken(x, rows, cols, bits);
    for (let r = 0; r < rows; r++) {
      const want = refRow(x.subarray(r * cols, (r + 1) * cols), bits, false);
      assertClose(got.subarray(r * cols, (r + 1) * cols), want, 1e-4, `bits ${bits} row ${r}`);
    }
  }
  assert.deepEqual(fakeQuantPerToken(x, rows, cols, 16), x);
});
