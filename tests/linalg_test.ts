import assert from "node:assert/strict";
import {
  cholesky,
  choleskyF64,
  inverseCholeskyUpper,
  inverseCholeskyUpperInPlace,
  invertLower,
  invertLowerF64,
} from "../kernels/linalg.ts";
import { gram } from "../kernels/matmul.ts";
import { Runtime } from "../kernels/session.ts";
import { Rng } from "../kernels/tensor.ts";

/** A well-conditioned random SPD matrix XᵀX/m + I/2, in float64. */
function randomSpd(n: number, seed: number): Float64Array {
  const rng = new Rng(seed);
  const m = n + 50;
  const X = new Float64Array(m * n);
  for (let i = 0; i < X.length; i++) X[i] = rng.normal();
  const A = new Float64Array(n * n);
  for (let k = 0; k < m; k++) {
    for (let i = 0; i < n; i++) {
      const xi = X[k * n + i];
      for (let j = 0; j <= i; j++) A[i * n + j] += xi * X[k * n + j];
    }
  }
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      A[i * n + j] /= m;
      A[j * n + i] = A[i * n + j];
    }
    A[i * n + i] += 0.5;
  }
  return A;
}

/** Plain float64 Cholesky, independent of the module. */
function refCholesky(A: Float64Array, n: number): Float64Array {
  const L = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = A[i * n + j];
      for (let k = 0; k < j; k++) s -= L[i * n + k] * L[j * n + k];
      L[i * n + j] = i === j ? Math.sqrt(s) : s / L[j * n + j];
    }
  }
  return L;
}

/** Upper Cholesky factor of A⁻¹ in float64 via chol → inverse → chol, as the reference. */
function refInverseCholeskyUpper(A: Float64Array, n: number): Float64Array {
  const L = refCholesky(A, n);
  const Li = invertLowerF64(L, n);
  const inv = new Float64Array(n * n); // Li ᵀ Li
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = Math.max(i, j); k < n; k++) s += Li[k * n + i] * Li[k * n + j];
      inv[i * n + j] = s;
    }
  }
  const C = refCholesky(inv, n);
  const U = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) U[j * n + i] = C[i * n + j];
  return U;
}

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

const rt = new Runtime("cpu");

Deno.test("choleskyF64 and invertLowerF64 on a small matrix", () => {
  const A = Float64Array.from([4, 0, 0, 2, 5, 0, 2, 3, 6]); // lower triangle of an SPD matrix
  assert.equal(choleskyF64(A, 3), -1);
  const want = [2, 0, 0, 1, 2, 0, 1, 1, 2];
  want.forEach((v, i) => assert.ok(Math.abs(A[i] - v) < 1e-12));
  const X = invertLowerF64(A, 3);
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 3; j++) {
      let s = 0;
      for (let k = 0; k < 3; k++) s += A[i * 3 + k] * X[k * 3 + j];
      assert.ok(Math.abs(s - (i === j ? 1 : 0)) < 1e-12);
    }
  }
});

Deno.test("blocked cholesky / invertLower / inverseCholeskyUpper match float64", async () => {
  const n = 300;
  const A = randomSpd(n, 1);
  const A32 = Float32Array.from(A);
  const Lref = refCholesky(A, n);
  const Uref = refInverseCholeskyUpper(A, n);
  for (const block of [64, 128, 512]) {
    const r = await cholesky(rt, A32, n, block);
    assert.ok(r.ok);
    assert.ok(relErr(r.L, Lref) < 1e-5, `L block ${block}: ${relErr(r.L, Lref)}`);
    const X = await invertLower(rt, r.L, n, block);
    assert.ok(relErr(X, invertLowerF64(Lref, n)) < 1e-5, `L⁻¹ block ${block}`);
    const u = await inverseCholeskyUpper(rt, A32, n, block);
    assert.ok(u.ok);
    for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) assert.equal(u.U[i * n + j], 0);
    assert.ok(relErr(u.U, Uref) < 1e-5, `U block ${block}: ${relErr(u.U, Uref)}`);
  }
});

Deno.test("non-positive pivots are reported, never NaN", async () => {
  const n = 200;
  const A = Float32Array.from(randomSpd(n, 2));
  const bad = A.slice();
  bad[150 * n + 150] = -5;
  const r = await cholesky(rt, bad, n, 64);
  assert.ok(!r.ok);
  assert.equal(r.pivot, 150);
  const u = await inverseCholeskyUpper(rt, bad, n, 64);
  assert.ok(!u.ok);
  assert.equal(u.pivot, 150);
  const nan = A.slice();
  nan[7 * n + 3] = NaN;
  nan[3 * n + 7] = NaN;
  assert.ok(!(await cholesky(rt, nan, n)).ok);
  assert.ok(!(await inverseCholeskyUpper(rt, nan, n)).ok);
  const singular = new Float32Array(n * n); // rank 0
  assert.ok(!(await cholesky(rt, singular, n)).ok);
});

/** Same float32 bit patterns (NaN and −0 included). */
function sameBits(a: Float32Array, b: Float32Array): boolean {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return ua.length === ub.length && ua.every((v, i) => v === ub[i]);
}

Deno.test("inverseCholeskyUpperInPlace gives inverseCholeskyUpper's U bit for bit, in H", async () => {
  for (const [n, block] of [[200, 64], [300, 128], [300, 512], [130, 128]]) {
    const A = Float32Array.from(randomSpd(n, n + block));
    const want = await inverseCholeskyUpper(rt, A, n, block);
    assert.ok(want.ok);
    const H = A.slice();
    const got = await inverseCholeskyUpperInPlace(rt, H, n, block);
    assert.ok(got.ok);
    assert.equal(got.U, H, "U is H's own storage");
    assert.ok(sameBits(got.U, want.U), `n=${n} block ${block}`);
  }
});

Deno.test("inverseCholeskyUpperInPlace reports the pivot of an indefinite matrix", async () => {
  const n = 200;
  const A = Float32Array.from(randomSpd(n, 2));
  A[150 * n + 150] = -5;
  for (const block of [64, 128]) {
    const want = await inverseCholeskyUpper(rt, A, n, block);
    const got = await inverseCholeskyUpperInPlace(rt, A.slice(), n, block);
    assert.ok(!want.ok && !got.ok);
    assert.equal(got.pivot, 150);
    assert.equal(got.pivot, want.pivot);
  }
  const rng = new Rng(5);
  const sym = new Float32Array(n * n); // random symmetric: indefinite
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) sym[i * n + j] = sym[j * n + i] = rng.normal();
  }
  const want = await inverseCholeskyUpper(rt, sym, n);
  const got = await inverseCholeskyUpperInPlace(rt, sym.slice(), n);
  assert.ok(!want.ok && !got.ok);
  assert.equal(got.pivot, want.pivot);
});

Deno.test("inverseCholeskyUpper on 1024×1024 (timing)", async () => {
  const n = 1024, m = 2048;
  const rng = new Rng(4);
  const x = rng.normalTensor([m, n]);
  const H = (await gram(rt, x)).data;
  for (let i = 0; i < n; i++) H[i * n + i] += m * 0.01;
  await inverseCholeskyUpper(rt, H, 256); // warm the sessions
  const t0 = performance.now();
  const u = await inverseCholeskyUpper(rt, H, n);
  const ms = performance.now() - t0;
  assert.ok(u.ok);
  console.log(`inverseCholeskyUpper n=${n}: ${ms.toFixed(0)} ms`);
  // UᵀU·H ≈ I on a few columns.
  for (const j of [0, 511, 1023]) {
    const hj = new Float64Array(n);
    for (let i = 0; i < n; i++) hj[i] = H[i * n + j];
    const t = new Float64Array(n); // U·h
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let k = i; k < n; k++) s += u.U[i * n + k] * hj[k];
      t[i] = s;
    }
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let k = 0; k <= i; k++) s += u.U[k * n + i] * t[k];
      assert.ok(Math.abs(s - (i === j ? 1 : 0)) < 1e-3, `(UᵀUH)[${i},${j}] = ${s}`);
    }
  }
});

Deno.test("release runtime", async () => {
  await rt.release();
});
