/**
 * Rotations (algorithms/hadamard.ts): every Hadamard construction is a ±1 matrix with
 * H·Hᵀ = m·I (exact), every rotation of the fixtures' and LLaMA widths is orthogonal
 * (Q·Qᵀ = I from its explicit matrix in float64), the factored products equal x·Q and Qᵀ·W as
 * float64 loops over the explicit Kronecker product, and the graph op computes the same rotation
 * under ONNX Runtime.
 */
import assert from "node:assert/strict";
import {
  hadamardFactors,
  rotateColumns,
  rotateGraph,
  rotateRows,
  rotation,
  sylvester,
} from "../algorithms/hadamard.ts";
import { Graph } from "../kernels/graph.ts";
import { Runtime } from "../kernels/session.ts";
import { Rng } from "../kernels/tensor.ts";

/** The explicit matrix of a rotation, Q[i, j] = D_i·A[i / p, j / p]·B[i % p, j % p]/√p. */
function explicit(n: number, seed: number | null): Float64Array {
  const r = rotation(n, seed), { m, p } = r, b = sylvester(p), q = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const v = r.a[Math.floor(i / p) * m + Math.floor(j / p)] * b[(i % p) * p + (j % p)];
      q[i * n + j] = (r.signs ? r.signs[i] : 1) * v / Math.sqrt(p);
    }
  }
  return q;
}

Deno.test("Paley and Sylvester constructions are Hadamard matrices", () => {
  for (const n of [1, 2, 4, 12, 20, 24, 36, 44, 60, 64, 68, 84, 108, 384, 1536]) {
    const f = hadamardFactors(n);
    assert.ok(f, `order ${n}`);
    const { m, a } = f;
    assert.ok(a.every((v) => v === 1 || v === -1));
    assert.equal(m * f.p, n);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < m; j++) {
        let s = 0;
        for (let k = 0; k < m; k++) s += a[i * m + k] * a[j * m + k];
        assert.equal(s, i === j ? m : 0, `A of order ${m} (n ${n}): row ${i}·row ${j}`);
      }
    }
  }
  assert.equal(hadamardFactors(172), null, "172 = 4·43: no Paley or Sylvester factorization");
  assert.equal(hadamardFactors(11008), null, "11008 = 256·43 (LLaMA-2-7B's MLP width)");
});

Deno.test("rotations of model widths are orthogonal, Hadamard where one can be built", () => {
  const cases: [number, boolean, string][] = [
    [64, true, "randomized hadamard 64"],
    [128, true, "randomized hadamard 128"],
    [192, true, "randomized hadamard 12x16"],
    [384, true, "randomized hadamard 12x32"],
    [172, false, "random orthogonal 43 x hadamard 4"],
    [16, true, "randomized hadamard 16"],
  ];
  for (const [n, hadamard, name] of cases) {
    const r = rotation(n, 3);
    assert.equal(r.hadamard, hadamard);
    assert.equal(r.name, name);
    const q = explicit(n, 3);
    let worst = 0;
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let k = 0; k < n; k++) s += q[i * n + k] * q[j * n + k];
        worst = Math.max(worst, Math.abs(s - (i === j ? 1 : 0)));
      }
    }
    assert.ok(worst < 1e-12, `order ${n}: |Q·Qᵀ − I| = ${worst}`);
  }
  // Seeds change the signs, and a large width stays cheap (11008 = 43·256).
  assert.notDeepEqual(rotation(128, 1).signs, rotation(128, 2).signs);
  assert.equal(rotation(11008, 0).name, "random orthogonal 43 x hadamard 256");
});

Deno.test("x·Q and Qᵀ·W by factors equal the explicit products", () => {
  const rng = new Rng(7);
  for (const n of [12, 64, 172, 384]) {
    const rows = 5, q = explicit(n, 11), r = rotation(n, 11);
    const x = Float64Array.from({ length: rows * n }, () => rng.normal());
    const want = new Float64Array(rows * n);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let k = 0; k < n; k++) s += x[i * n + k] * q[k * n + j];
        want[i * n + j] = s;
      }
    }
    const got = x.slice();
    rotateRows(got, rows, r);
    for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i] - want[i]) < 1e-12);
    // Qᵀ·W for W [n, cols]
    const cols = 3;
    const w = Float32Array.from({ length: n * cols }, () => rng.normal());
    const wt = w.slice();
    rotateColumns(wt, n, cols, r);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < cols; j++) {
        let s = 0;
        for (let k = 0; k < n; k++) s += q[k * n + i] * w[k * cols + j];
        assert.ok(Math.abs(wt[i * cols + j] - s) < 1e-5, `Qᵀ·W [${i}, ${j}]`);
      }
    }
  }
});

Deno.test("the graph op rotates like rotateRows under ONNX Runtime", async () => {
  const rt = new Runtime();
  try {
    const rng = new Rng(5);
    for (const n of [64, 172, 384]) {
      const r = rotation(n, 2);
      const g = new Graph();
      const x = g.input("x", ["N", n]);
      g.output(rotateGraph(g, x, r), "y");
      const rows = 7;
      const data = Float32Array.from({ length: rows * n }, () => rng.normal());
      const y = (await rt.run(g.toBytes(), { x: { data, shape: [rows, n] } })).y;
      const want = Float64Array.from(data);
      rotateRows(want, rows, r);
      assert.deepEqual(y.shape, [rows, n]);
      for (let i = 0; i < want.length; i++) {
        assert.ok(
          Math.abs(y.data[i] - want[i]) < 1e-5,
          `n ${n} [${i}]: ${y.data[i]} vs ${want[i]}`,
        );
      }
    }
  } finally {
    await rt.release();
  }
});
