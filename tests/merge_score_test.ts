/**
 * Channel-merge scores of the reassembly stage against float64 loops: the reference's
 * ((Σ_o W_a + Σ_o W_b)·‖x_a − x_b‖)² and the error bound ‖W_a − W_b‖²·‖x_a − x_b‖².
 */
import assert from "node:assert/strict";
import { Runtime } from "../kernels/session.ts";
import { Rng } from "../kernels/tensor.ts";
import { mergeScores } from "../algorithms/reassembly.ts";

Deno.test("merge scores match float64 loops for both kinds", async () => {
  const rt = new Runtime();
  try {
    const rng = new Rng(7);
    const T = 9, C = 7;
    const feat = rng.normalTensor([T, C]);
    const ws = [rng.normalTensor([5, C]), rng.normalTensor([3, C])];
    const col = (c: number) =>
      ws.flatMap((w) => Array.from({ length: w.shape[0] }, (_, r) => w.data[r * C + c]));
    const xdist2 = (a: number, b: number) => {
      let s = 0;
      for (let t = 0; t < T; t++) s += (feat.data[t * C + a] - feat.data[t * C + b]) ** 2;
      return s;
    };
    for (const kind of ["reference", "error"] as const) {
      const { scores, nA, nB } = await mergeScores(rt, feat, ws, kind);
      assert.equal(nA, 4);
      assert.equal(nB, 3);
      for (let i = 0; i < nA; i++) {
        for (let j = 0; j < nB; j++) {
          const a = col(2 * i), b = col(2 * j + 1);
          const want = kind === "reference"
            ? (a.reduce((p, v) => p + v, 0) + b.reduce((p, v) => p + v, 0)) ** 2 *
              xdist2(2 * i, 2 * j + 1)
            : a.reduce((p, v, k) => p + (v - b[k]) ** 2, 0) * xdist2(2 * i, 2 * j + 1);
          const got: number = scores[i * nB + j];
          assert.ok(
            Math.abs(got - want) <= 1e-4 * Math.max(1, Math.abs(want)),
            `${kind} [${i},${j}]: ${got} vs ${want}`,
          );
        }
      }
    }
  } finally {
    await rt.release();
  }
});
