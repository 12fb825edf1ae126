import assert from "node:assert/strict";
import {
  allocateColumnBits,
  claq,
  CLAQ_DYNAMIC_OUTLIERS,
  quantizeColumnKMeans,
} from "../algorithms/claq.ts";
import { rtnWeight } from "../algorithms/quantizer.ts";
import { kmeans1d, nearestCentroid } from "../kernels/kmeans.ts";
import { gram, matmul } from "../kernels/matmul.ts";
import { Runtime } from "../kernels/session.ts";
import { Rng, type Tensor } from "../kernels/tensor.ts";

const rt = new Runtime("cpu");

/** Correlated inputs X = Z·M, H = 2/n XᵀX, and a weight with a few heavy-tailed columns. */
async function layer(rows: number, cols: number, n: number, seed: number) {
  const rng = new Rng(seed);
  const Z = rng.normalTensor([n, cols]);
  const M = rng.normalTensor([cols, cols], 1 / Math.sqrt(cols));
  for (let i = 0; i < cols; i++) M.data[i * cols + i] += 0.5;
  const X = await matmul(rt, Z, M);
  const H = (await gram(rt, X)).data.map((v) => v * 2 / n);
  const W = rng.normalTensor([rows, cols], 0.05);
  for (let k = 0; k < rows * cols / 200; k++) {
    W.data[Math.floor(rng.uniform() * rows * cols)] *= 20;
  }
  return { W, H };
}

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

Deno.test("kmeans1d: deterministic Lloyd fixed point, nearest-centroid assignment", () => {
  const rng = new Rng(1);
  const x = Float32Array.from({ length: 3000 }, (_, i) => [-4, 0, 5][i % 3] + 0.3 * rng.normal());
  const a = kmeans1d(x, 3);
  const b = kmeans1d(x, 3);
  assert.deepEqual(a, b);
  [-4, 0, 5].forEach((m, j) => assert.ok(Math.abs(a.centroids[j] - m) < 0.05));
  const k = 8;
  const f = kmeans1d(x, k);
  const sum = new Float64Array(k), cnt = new Float64Array(k);
  for (let i = 0; i < x.length; i++) {
    const c = f.assignment[i];
    assert.equal(c, nearestCentroid(x[i], f.centroids));
    for (let j = 0; j < k; j++) {
      assert.ok(Math.abs(x[i] - f.centroids[c]) <= Math.abs(x[i] - f.centroids[j]));
    }
    sum[c] += x[i];
    cnt[c]++;
  }
  for (let j = 0; j < k; j++) {
    if (j > 0) assert.ok(f.centroids[j] >= f.centroids[j - 1]);
    if (cnt[j] > 0) assert.ok(Math.abs(sum[j] / cnt[j] - f.centroids[j]) < 1e-9, `centroid ${j}`);
  }
  // A lone outlier on each side gets its own centroid (a quantile start alone merges them).
  const lone = Float32Array.from({ length: 256 }, () => 0.05 * rng.normal());
  lone[10] = 1.1;
  lone[20] = -0.7;
  const l = kmeans1d(lone, 4);
  assert.equal(l.centroids[0], Math.fround(-0.7));
  assert.equal(l.centroids[3], Math.fround(1.1));
  const few = kmeans1d([2, 2, 1, 2, 1], 4);
  assert.deepEqual(Array.from(few.centroids), [1, 2, 2, 2]);
  assert.deepEqual(Array.from(few.assignment), [1, 1, 0, 1, 0]);
});

Deno.test("quantizeColumnKMeans keeps k entries of each tail and codes the rest", () => {
  const rng = new Rng(2);
  const w = Float32Array.from({ length: 500 }, () => rng.normal());
  const q = new Float32Array(500);
  const r = quantizeColumnKMeans(w, 2, 0.01, q);
  assert.equal(r.kept, 10);
  assert.equal(r.codebook.length, 4);
  const sorted = Array.from(w).sort((a, b) => a - b);
  let exact = 0;
  for (let i = 0; i < 500; i++) {
    const isTail = w[i] <= sorted[4] || w[i] >= sorted[495];
    if (isTail) assert.equal(q[i], w[i]);
    else assert.ok(r.codebook.includes(q[i]));
    if (q[i] === w[i]) exact++;
  }
  assert.equal(exact, 10);
});

Deno.test("allocateColumnBits follows the reference split", () => {
  assert.deepEqual(allocateColumnBits(1024, 2, 2.1), { low: 2, high: 4, highCount: 51 });
  assert.deepEqual(allocateColumnBits(1024, 2, 3.12), { low: 3, high: 4, highCount: 123 });
  assert.deepEqual(allocateColumnBits(100, 3, 3.5), { low: 3, high: 5, highCount: 25 });
  assert.throws(() => allocateColumnBits(100, 2, 4.5), /out of range/);
});

Deno.test("CLAQ hits its average-bit targets and counts its overheads honestly", async () => {
  const rows = 256, cols = 320;
  const { W, H } = await layer(rows, cols, 1024, 3);
  for (const [target, actOrder] of [[2.1, false], [3.12, true]] as const) {
    const res = await claq(rt, W, H, {
      bits: 2,
      targetBits: target,
      outlierRatio: CLAQ_DYNAMIC_OUTLIERS,
      actOrder,
    });
    assert.ok(Math.abs(res.averageBits - target) <= 0.01, `average ${res.averageBits}`);
    const mean = res.columnBits.reduce((s, b) => s + b, 0) / cols;
    assert.equal(mean, res.averageBits);
    assert.ok(res.bitsPerWeight > target, `bits per weight ${res.bitsPerWeight}`);
    let storage = res.outlierCount * (16 + 8); // fp16 value + 8-bit row index (256 rows)
    for (const b of res.columnBits) storage += rows * b + 16 * 2 ** b;
    assert.ok(Math.abs(res.bitsPerWeight - storage / (rows * cols)) < 1e-12);
    // Each column's own ratio: 10% of columns keep round(256·0.014) = 4 per tail, others 1.
    assert.equal(res.outlierCount, 2 * (32 * 4 + 288 * 1));
    assert.ok(res.weight.data.every(Number.isFinite));
    res.codebooks.forEach((cb, c) => assert.equal(cb.length, 2 ** res.columnBits[c]));
    // The high-bit columns are those with most |w| ≥ 13·mean|W| entries.
    let meanAbs = 0;
    for (const v of W.data) meanAbs += Math.abs(v) / W.data.length;
    const count = (c: number) => {
      let k = 0;
      for (let r = 0; r < rows; r++) if (Math.abs(W.data[r * cols + c]) >= 13 * meanAbs) k++;
      return k;
    };
    const high = Math.max(...res.columnBits);
    const minHigh = Math.min(
      ...[...res.columnBits.keys()].filter((c) => res.columnBits[c] === high).map(count),
    );
    const maxLow = Math.max(
      ...[...res.columnBits.keys()].filter((c) => res.columnBits[c] !== high).map(count),
    );
    assert.ok(minHigh >= maxLow, `ranking: ${minHigh} < ${maxLow}`);
  }
});

Deno.test("CLAQ beats RTN at equal bits on correlated data; first column keeps its outliers", async () => {
  const rows = 256, cols = 128;
  const { W, H } = await layer(rows, cols, 1024, 4);
  for (const bits of [2, 3]) {
    const res = await claq(rt, W, H, { bits });
    const rtn = rtnWeight(W, { bits, sym: false, groupSize: 0 });
    const ec = outputError(W, res.weight.data, H), er = outputError(W, rtn.weight.data, H);
    assert.ok(ec < er, `w${bits}: claq ${ec} vs rtn ${er}`);
    assert.equal(res.outlierCount, 0);
  }
  const res = await claq(rt, W, H, { bits: 2, outlierRatio: 0.02 });
  const col0 = Array.from({ length: rows }, (_, r) => W.data[r * cols]);
  const sorted = [...col0].sort((a, b) => a - b);
  for (let r = 0; r < rows; r++) {
    const v = col0[r];
    if (v <= sorted[4] || v >= sorted[rows - 5]) assert.equal(res.weight.data[r * cols], v);
  }
});

Deno.test("release runtime", async () => {
  await rt.release();
});
