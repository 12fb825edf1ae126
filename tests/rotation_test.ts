/**
 * Rotating a model's tensors (algorithms/rotation.ts) keeps its function: a real block with its
 * norms fused and R1/R2 applied — and with R4 on down_proj's input and R3 on q/k applied online
 * by the block graph — fed x·Q, outputs y·Q (ONNX Runtime, relative error < 1e-5) on both
 * fixtures (tinystories-656k: GQA, 128 wide, 384-wide MLP = 12·32; stories260k: 64 wide, a
 * 172-wide MLP = 43·4 with a random orthogonal factor), and the rotated head gives the original
 * logits.
 */
import assert from "node:assert/strict";
import { rotateRows, rotation } from "../algorithms/hadamard.ts";
import { rotateBlock, rotateEmbedding, rotateHead } from "../algorithms/rotation.ts";
import { fixtureModel } from "../fixtures/paths.ts";
import { openModel } from "../formats/open.ts";
import { Runtime } from "../kernels/session.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { Rng } from "../kernels/tensor.ts";
import { logits, runBlock } from "../models/forward.ts";

function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

for (const name of ["tinystories-656k", "stories260k"]) {
  Deno.test(`${name}: a rotated block and head compute the original function`, async () => {
    const rt = new Runtime();
    const model = await openModel(fixtureModel(name));
    try {
      const c = model.config;
      const r1 = rotation(c.hidden, 0);
      const rots = { residual: r1, head: rotation(c.headDim, 1), down: null, qk: null };
      const online = { ...rots, down: rotation(c.intermediate, 2), qk: rotation(c.headDim, 3) };
      const rng = new Rng(3);
      const T = 32;
      const x: Tensor = rng.normalTensor([2, T, c.hidden], 1);
      const xq: Tensor = { data: x.data.slice(), shape: x.shape };
      rotateRows(xq.data, 2 * T, r1);
      for (let i = 0; i < c.layers; i++) {
        const w = await model.block(i);
        const y = await runBlock(rt, c, w, x);
        const want = y.data.slice();
        rotateRows(want, 2 * T, r1);
        for (const [what, r] of [["R1 R2", rots], ["R1 R2 R3 R4", online]] as const) {
          const yq = await runBlock(rt, c, rotateBlock(w, c, r), xq);
          const e = relErr(yq.data, want);
          assert.ok(e < 1e-5, `block ${i} ${what}: relative error ${e}`);
        }
      }
      const [norm, head] = [await model.finalNorm(), await model.head()];
      const ones = { data: new Float32Array(c.hidden).fill(1), shape: [c.hidden] };
      const l = await logits(rt, c, norm, head, x);
      const lq = await logits(rt, c, ones, rotateHead(head, norm, r1), xq);
      assert.ok(relErr(lq.data, l.data) < 1e-5, `logits: ${relErr(lq.data, l.data)}`);
      // The rotated embedding of a token is its original row times Q.
      const e = await model.embedding(), eq = rotateEmbedding(e, r1);
      const row = e.data.slice(5 * c.hidden, 6 * c.hidden);
      rotateRows(row, 1, r1);
      assert.ok(relErr(eq.data.subarray(5 * c.hidden, 6 * c.hidden), row) < 1e-7);
    } finally {
      model.close();
      await rt.release();
    }
  });
}
