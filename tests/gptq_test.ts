import assert from "node:assert/strict";
import { argsortDescending, gptq, type GptqOptions } from "../algorithms/gptq.ts";
import { rtnWeight } from "../algorithms/quantizer.ts";
import { gram, matmul } from "../kernels/matmul.ts";
import { Runtime } from "../kernels/session.ts";
import { Rng, type Tensor } from "../kernels/tensor.ts";

const rt = new Runtime("cpu");

// ---- float64 reference pieces, written from PROTOCOL §5–§6 ----

function rhe(v: number): number {
  const f = Math.floor(v), d = v - f;
  return d < 0.5 ? f : d > 0.5 ? f + 1 : f % 2 === 0 ? f : f + 1;
}

interface Params {
  scale: number;
  zero: number;
}

function refParams(values: number[], maxq: number): Params {
  let lo = Math.min(0, ...values), hi = Math.max(0, ...values);
  if (lo === 0 && hi === 0) [lo, hi] = [-1, 1];
  const scale = (hi - lo) / maxq;
  return { scale, zero: rhe(-lo / scale) };
}

function refQuant(x: number, p: Params, maxq: number): number {
  return p.scale * (Math.min(Math.max(rhe(x / p.scale) + p.zero, 0), maxq) - p.zero);
}

function cholesky64(A: Float64Array, n: number): Float64Array {
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

function inverse64(A: Float64Array, n: number): Float64Array {
  const L = cholesky64(A, n);
  const Li = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    Li[j * n + j] = 1 / L[j * n + j];
    for (let i = j + 1; i < n; i++) {
      let s = 0;
      for (let k = j; k < i; k++) s += L[i * n + k] * Li[k * n + j];
      Li[i * n + j] = -s / L[i * n + i];
    }
  }
  const inv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = Math.max(i, j); k < n; k++) s += Li[k * n + i] * Li[k * n + j];
      inv[i * n + j] = s;
    }
  }
  return inv;
}

/** Float64 GPTQ exactly as PROTOCOL §6 describes `fasterquant` (blocked, block-level groups). */
function refGptq(W: Tensor, Hin: Float32Array, o: GptqOptions): Float64Array {
  const [rows, cols] = W.shape;
  const maxq = 2 ** o.bits - 1, g = o.groupSize, B = o.blockSize ?? 128;
  const at = (M: Float64Array, r: number, c: number) => M[r * cols + c];
  const Wm = Float64Array.from(W.data);
  const rowParams = (M: Float64Array, c0: number, c1: number) =>
    Array.from(
      { length: rows },
      (_, r) => refParams(Array.from(M.subarray(r * cols + c0, r * cols + c1)), maxq),
    );
  const channel = rowParams(Wm, 0, cols);
  const H = Float64Array.from(Hin);
  for (let i = 0; i < cols; i++) {
    if (H[i * cols + i] === 0) {
      H[i * cols + i] = 1;
      for (let r = 0; r < rows; r++) Wm[r * cols + i] = 0;
    }
  }
  const fixed: Params[][] = [];
  if (o.staticGroups) {
    for (let c = 0; c < cols; c += g) fixed.push(rowParams(Wm, c, Math.min(c + g, cols)));
  }
  const perm = Array.from({ length: cols }, (_, i) => i);
  if (o.actOrder) perm.sort((a, b) => H[b * cols + b] - H[a * cols + a]);
  const Wp = new Float64Array(rows * cols), Hp = new Float64Array(cols * cols);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < cols; j++) Wp[r * cols + j] = at(Wm, r, perm[j]);
  }
  for (let i = 0; i < cols; i++) {
    for (let j = 0; j < cols; j++) Hp[i * cols + j] = H[perm[i] * cols + perm[j]];
  }
  let mean = 0;
  for (let i = 0; i < cols; i++) mean += Hp[i * cols + i] / cols;
  for (let i = 0; i < cols; i++) Hp[i * cols + i] += 0.01 * mean;
  const C = cholesky64(inverse64(Hp, cols), cols); // lower; U = Cᵀ
  const U = (i: number, j: number) => C[j * cols + i];
  const Q = new Float64Array(rows * cols);
  let params = channel;
  for (let i1 = 0; i1 < cols; i1 += B) {
    const i2 = Math.min(i1 + B, cols);
    const W1 = Wp.slice();
    const err = new Float64Array(rows * cols);
    for (let idx = i1; idx < i2; idx++) {
      if (g > 0) {
        if (o.staticGroups) params = fixed[Math.floor(perm[idx] / g)];
        else if (idx % g === 0) params = rowParams(Wp, idx, Math.min(idx + g, cols)); // block-level W
      }
      for (let r = 0; r < rows; r++) {
        const w = W1[r * cols + idx];
        const q = refQuant(w, params[r], maxq);
        Q[r * cols + idx] = q;
        const e = (w - q) / U(idx, idx);
        err[r * cols + idx] = e;
        for (let j = idx + 1; j < i2; j++) W1[r * cols + j] -= e * U(idx, j);
      }
    }
    for (let r = 0; r < rows; r++) {
      for (let j = i2; j < cols; j++) {
        let s = 0;
        for (let k = i1; k < i2; k++) s += err[r * cols + k] * U(k, j);
        Wp[r * cols + j] -= s;
      }
    }
  }
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < cols; j++) out[r * cols + perm[j]] = Q[r * cols + j];
  }
  return out;
}

// ---- helpers ----

/** Correlated inputs X = Z·M with unequal feature scales, and H = 2/n XᵀX. */
async function correlatedLayer(rows: number, cols: number, n: number, seed: number) {
  const rng = new Rng(seed);
  const Z = rng.normalTensor([n, cols]);
  const M = rng.normalTensor([cols, cols], 1 / Math.sqrt(cols));
  for (let i = 0; i < cols; i++) M.data[i * cols + i] += 0.5;
  const X = await matmul(rt, Z, M);
  for (let j = 0; j < cols; j++) {
    const s = Math.exp(0.7 * rng.normal());
    for (let t = 0; t < n; t++) X.data[t * cols + j] *= s;
  }
  const H = (await gram(rt, X)).data.map((v) => v * 2 / n);
  const W = rng.normalTensor([rows, cols], 0.05);
  return { W, H };
}

/** Σ_r (W−Ŵ)_r H (W−Ŵ)_rᵀ: the output error the Hessian measures. */
function outputError(W: Tensor, Wq: ArrayLike<number>, H: Float32Array): number {
  const [rows, cols] = W.shape;
  let total = 0;
  const d = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < cols; j++) d[j] = W.data[r * cols + j] - Wq[r * cols + j];
    for (let i = 0; i < cols; i++) {
      let s = 0;
      for (let j = 0; j < cols; j++) s += H[i * cols + j] * d[j];
      total += d[i] * s;
    }
  }
  return total;
}

const base = { sym: false, actOrder: false, staticGroups: false };

// ---- tests ----

Deno.test("GPTQ beats RTN on correlated inputs (3/4 bits, pc/g32, act-order, static groups)", async () => {
  const { W, H } = await correlatedLayer(96, 256, 2048, 1);
  const configs: [string, Partial<GptqOptions>][] = [
    ["pc", { groupSize: 0 }],
    ["pc ao", { groupSize: 0, actOrder: true }],
    ["g32", { groupSize: 32 }],
    ["g32 ao", { groupSize: 32, actOrder: true }],
    ["g32 ao sg", { groupSize: 32, actOrder: true, staticGroups: true }],
  ];
  for (const bits of [3, 4]) {
    for (const [name, cfg] of configs) {
      const opts = { ...base, bits, groupSize: 0, ...cfg };
      const res = await gptq(rt, W, H, opts);
      const rtn = rtnWeight(W, { bits, sym: false, groupSize: opts.groupSize });
      const eg = outputError(W, res.weight.data, H), er = outputError(W, rtn.weight.data, H);
      assert.ok(res.weight.data.every(Number.isFinite));
      assert.ok(!res.fellBack);
      assert.ok(eg < 0.8 * er, `w${bits} ${name}: gptq ${eg} vs rtn ${er}`);
    }
  }
});

Deno.test("GPTQ matches a float64 port of the reference (block-level dynamic groups)", async () => {
  // 200 columns, groups of 48: group 2 (columns 96..143) straddles the 128-column block edge.
  const { W, H } = await correlatedLayer(24, 200, 512, 2);
  const configs: Partial<GptqOptions>[] = [
    { groupSize: 0 },
    { groupSize: 0, actOrder: true },
    { groupSize: 48 },
    { groupSize: 48, actOrder: true },
    { groupSize: 48, actOrder: true, staticGroups: true },
  ];
  for (const cfg of configs) {
    const opts = { ...base, bits: 3, groupSize: 0, ...cfg };
    const got = (await gptq(rt, W, H, opts)).weight.data;
    const want = refGptq(W, H, opts);
    let same = 0;
    for (let i = 0; i < want.length; i++) if (Math.abs(got[i] - want[i]) < 1e-5) same++;
    assert.ok(same / want.length > 0.99, `${JSON.stringify(cfg)}: ${same}/${want.length} equal`);
  }
});

Deno.test("two columns: the closed-form optimal brain quantizer update", async () => {
  const rows = 16;
  const rng = new Rng(7);
  const W = rng.normalTensor([rows, 2]);
  const H = Float32Array.from([2, 0.9, 0.9, 1]);
  const res = await gptq(rt, W, H, { ...base, bits: 3, groupSize: 0 });
  const damp = 0.01 * 1.5;
  const Hd = Float64Array.from([2 + damp, 0.9, 0.9, 1 + damp]);
  const det = Hd[0] * Hd[3] - Hd[1] * Hd[2];
  const inv = [Hd[3] / det, -Hd[1] / det, -Hd[2] / det, Hd[0] / det];
  const u00 = Math.sqrt(inv[0]), u11 = Math.sqrt(inv[3] - inv[1] ** 2 / inv[0]);
  let loss = 0;
  for (let r = 0; r < rows; r++) {
    const w0 = W.data[2 * r], w1 = W.data[2 * r + 1];
    const p = refParams([w0, w1], 7);
    const q0 = refQuant(w0, p, 7);
    const w1u = w1 - (w0 - q0) * inv[1] / inv[0];
    const q1 = refQuant(w1u, p, 7);
    assert.ok(Math.abs(res.weight.data[2 * r] - q0) < 1e-6, `row ${r} col 0`);
    assert.ok(Math.abs(res.weight.data[2 * r + 1] - q1) < 1e-6, `row ${r} col 1`);
    loss += ((w0 - q0) ** 2 / u00 ** 2 + (w1u - q1) ** 2 / u11 ** 2) / 2;
  }
  assert.ok(Math.abs(res.error - loss) < 1e-4 * loss, `error ${res.error} vs ${loss}`);
  assert.ok(Math.abs(res.damp - damp) < 1e-7);
});

Deno.test("dead inputs give zero columns; g_idx and perm follow the reference", async () => {
  const { W, H } = await correlatedLayer(16, 64, 256, 3);
  for (let j = 0; j < 64; j++) H[5 * 64 + j] = H[j * 64 + 5] = 0;
  const Wc = W.data.slice(), Hc = H.slice();
  for (const actOrder of [false, true]) {
    for (const staticGroups of [false, true]) {
      const res = await gptq(rt, W, H, { ...base, bits: 4, groupSize: 16, actOrder, staticGroups });
      for (let r = 0; r < 16; r++) assert.equal(res.weight.data[r * 64 + 5], 0);
      assert.ok(res.weight.data.every(Number.isFinite));
      assert.equal(res.nGroups, 4);
      if (actOrder) {
        const perm = res.perm!;
        assert.deepEqual(
          perm,
          argsortDescending(Array.from({ length: 64 }, (_, i) => i === 5 ? 1 : H[i * 65])),
        );
        for (let idx = 0; idx < 64; idx++) {
          assert.equal(res.gIdx[perm[idx]], Math.floor((staticGroups ? perm[idx] : idx) / 16));
        }
      } else {
        assert.equal(res.perm, null);
        res.gIdx.forEach((k, c) => assert.equal(k, Math.floor(c / 16)));
      }
    }
  }
  assert.deepEqual(W.data, Wc, "W not modified");
  assert.deepEqual(H, Hc, "H not modified");
});

Deno.test("stable descending argsort keeps tie order", () => {
  assert.deepEqual(Array.from(argsortDescending([1, 3, 3, 2, 3, NaN])), [5, 1, 2, 4, 3, 0]);
});

Deno.test("indefinite, singular or NaN Hessians never produce NaN", async () => {
  const rows = 8, cols = 32;
  const rng = new Rng(9);
  const W = rng.normalTensor([rows, cols]);
  const opts = { ...base, bits: 3, groupSize: 0 };

  const sym = new Float32Array(cols * cols); // random symmetric, indefinite
  for (let i = 0; i < cols; i++) {
    for (let j = 0; j <= i; j++) sym[i * cols + j] = sym[j * cols + i] = rng.normal();
  }
  const a = await gptq(rt, W, sym, opts);
  assert.ok(a.weight.data.every(Number.isFinite));
  assert.ok(a.fellBack || a.damp > 0);

  const X = rng.normalTensor([4, cols]); // rank 4
  const singular = (await gram(rt, X)).data;
  const b = await gptq(rt, W, singular, opts);
  assert.ok(b.weight.data.every(Number.isFinite));
  assert.ok(!b.fellBack);

  const nan = singular.slice();
  nan[3] = NaN;
  const c = await gptq(rt, W, nan, opts);
  assert.ok(c.fellBack && c.warning);
  assert.deepEqual(c.weight.data, rtnWeight(W, { bits: 3, sym: false, groupSize: 0 }).weight.data);
});

Deno.test("release runtime", async () => {
  await rt.release();
});
