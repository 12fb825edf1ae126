/**
 * AdamW against torch.optim.AdamW's update written out by hand, schedules at their ends, and the
 * NaN guard restoring the last good parameters.
 */
import assert from "node:assert/strict";
import { AdamW, linearDecay, NanGuard, type Param } from "../kernels/optim.ts";

Deno.test("AdamW matches torch's update rule step by step", () => {
  const p: Param = {
    name: "w",
    data: Float32Array.from([1, -2, 0.5]),
    shape: [3],
    lr: 0.1,
    weightDecay: 0.01,
  };
  const opt = new AdamW([p]);
  // Reference in float64: torch.optim.AdamW, amsgrad=False.
  const x = [1, -2, 0.5], m = [0, 0, 0], v = [0, 0, 0];
  for (let t = 1; t <= 5; t++) {
    const g = x.map((xi) => 2 * xi - 1); // gradient of Σ (x² − x)
    opt.step([Float32Array.from(p.data, (xi) => 2 * xi - 1)]);
    for (let j = 0; j < 3; j++) {
      x[j] *= 1 - 0.1 * 0.01;
      m[j] = 0.9 * m[j] + 0.1 * g[j];
      v[j] = 0.999 * v[j] + 0.001 * g[j] * g[j];
      const mh = m[j] / (1 - 0.9 ** t), vh = v[j] / (1 - 0.999 ** t);
      x[j] -= (0.1 * mh) / (Math.sqrt(vh) + 1e-8);
    }
    for (let j = 0; j < 3; j++) {
      assert.ok(Math.abs(p.data[j] - x[j]) < 1e-5, `step ${t}: ${p.data[j]} vs ${x[j]}`);
    }
  }
  // The first step moves each coordinate by lr·sign(g) (bias-corrected m/√v = ±1).
  const q: Param = { name: "q", data: Float32Array.from([3]), shape: [1], lr: 0.01 };
  new AdamW([q]).step([[5]]);
  assert.ok(Math.abs(q.data[0] - 2.99) < 1e-6);
});

Deno.test("AdamW minimises a quadratic", () => {
  const p: Param = { name: "w", data: new Float32Array([5, -5]), shape: [2], lr: 0.1 };
  const opt = new AdamW([p]);
  for (let t = 0; t < 500; t++) opt.step([Float32Array.from(p.data, (x, i) => 2 * (x - i))]);
  assert.ok(Math.abs(p.data[0]) < 1e-2 && Math.abs(p.data[1] - 1) < 1e-2, `${p.data}`);
});

Deno.test("linear decay goes from 1 to 0, with warm-up", () => {
  const s = linearDecay();
  assert.equal(s(0, 10), 1);
  assert.ok(Math.abs(s(5, 10) - 0.5) < 1e-12);
  assert.equal(s(10, 10), 0);
  const w = linearDecay(4);
  assert.equal(w(0, 10), 0.25);
  assert.equal(w(3, 10), 1);
});

Deno.test("NaN guard restores the last good parameters and reports the step", () => {
  const p: Param = { name: "w", data: new Float32Array([1, 2]), shape: [2], lr: 0.1 };
  const guard = new NanGuard([p]);
  assert.equal(guard.check(0, 1.5, [[0.1, 0.2]]), true);
  p.data.set([7, 8]);
  assert.equal(guard.check(1, 1.0, [[0.1, 0.2]]), true);
  p.data.set([NaN, 9]);
  assert.equal(guard.check(2, NaN, [[0.1, 0.2]]), false);
  assert.deepEqual([...p.data], [7, 8]);
  assert.equal(guard.stoppedAt, 2);
  p.data.set([1, 1]);
  assert.equal(guard.check(3, 0.5, [[Infinity, 0]]), false);
  assert.match(guard.reason, /gradient of w/);
  assert.deepEqual([...p.data], [7, 8]);
});
