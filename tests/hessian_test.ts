/**
 * The block stream's data path at scale: Hessians from Gram matrices computed inside the block
 * graph (padded batches, float64 sums) against a float64 sum over the raw captured inputs, and
 * activations offloaded to a file against the same pass in memory, bit for bit.
 */
import assert from "node:assert/strict";
import { fixtureModel } from "../fixtures/paths.ts";
import { collectGarbage } from "../kernels/garbage.ts";
import { Graph } from "../kernels/graph.ts";
import { Runtime } from "../kernels/session.ts";
import { Rng, type Tensor } from "../kernels/tensor.ts";
import { ActivationFile } from "../models/activation_file.ts";
import { CAPTURE_POINTS, type CapturePoint, gramParts } from "../models/block_graph.ts";
import type { ModelConfig } from "../models/config.ts";
import { runBlock } from "../models/forward.ts";
import type { BlockWeights } from "../models/source.ts";
import { openModel } from "../formats/open.ts";
import { captureHessians } from "../stages/hessian.ts";
import type { RunContext } from "../stages/job.ts";

const rt = new Runtime();
const model = await openModel(fixtureModel("tinystories-656k"));
const rng = new Rng(7);
// q/k/v biases make the padding rows of a short last batch non-zero at every capture point,
// so a Gram matrix that counted them would be visibly wrong.
const config = { ...model.config, qkvBias: true };
const weights: BlockWeights = { ...(await model.block(0)) };
for (const p of ["q", "k", "v"]) {
  const n = weights[`self_attn.${p}_proj.weight`].shape[0];
  weights[`self_attn.${p}_proj.bias`] = rng.normalTensor([n], 0.5);
}
// A second block with a wide MLP: its x_down Gram matrix is computed in 3 column parts.
const wideConfig = { ...config, intermediate: 1600 };
const wideWeights: BlockWeights = { ...weights };
wideWeights["mlp.gate_proj.weight"] = rng.normalTensor([1600, config.hidden], 0.1);
wideWeights["mlp.up_proj.weight"] = rng.normalTensor([1600, config.hidden], 0.1);
wideWeights["mlp.down_proj.weight"] = rng.normalTensor([config.hidden, 1600], 0.1);
const W = 5, T = 48, d = config.hidden;
const x: Tensor = rng.normalTensor([W, T, d]);
const ctx: RunContext = { rt, config, seqlen: T, abits: 16, log: () => {} };

/** 2/n Σ xxᵀ over the raw captured inputs, in float64. */
async function referenceHessians(
  config: ModelConfig,
  weights: BlockWeights,
): Promise<Map<CapturePoint, Float64Array>> {
  const sums = new Map<CapturePoint, Float64Array>();
  await runBlock(rt, config, weights, x, {
    batch: W,
    onCapture: (cap) => {
      for (const p of CAPTURE_POINTS) {
        const [n, k] = cap[p].shape, v = cap[p].data;
        const s = new Float64Array(k * k);
        for (let r = 0; r < n; r++) {
          for (let i = 0; i < k; i++) {
            const a = v[r * k + i];
            for (let j = 0; j < k; j++) s[i * k + j] += a * v[r * k + j];
          }
        }
        sums.set(p, s.map((e) => (e * 2) / W));
      }
    },
  });
  return sums;
}

for (
  const [name, c, w] of [["", config, weights], [
    " (3 column parts)",
    wideConfig,
    wideWeights,
  ]] as const
) {
  Deno.test(`Hessians from in-graph Gram matrices (padded last batch) match a float64 sum${name}`, async () => {
    assert.equal(gramParts(c.intermediate).length - 1, name ? 3 : 1);
    const ref = await referenceHessians(c, w);
    // Batches of 2 windows: the third batch holds one window and one window of padding.
    const H = await captureHessians({ ...ctx, config: c }, w, x, new Set(CAPTURE_POINTS), {
      batch: 2,
    });
    for (const p of CAPTURE_POINTS) {
      const h = H.get(p)!, r = ref.get(p)!;
      let num = 0, den = 0, asym = 0;
      const k = Math.sqrt(h.length);
      for (let i = 0; i < h.length; i++) {
        num += (h[i] - r[i]) ** 2;
        den += r[i] ** 2;
        asym = Math.max(asym, Math.abs(h[i] - h[(i % k) * k + Math.floor(i / k)]));
      }
      assert.ok(Math.sqrt(num / den) < 1e-5, `${p}: relative error ${Math.sqrt(num / den)}`);
      assert.equal(asym, 0, `${p} is symmetric`);
    }
  });
}

Deno.test("offloaded activations: the same Hessians and outputs as in memory, bit for bit", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = ActivationFile.create(`${dir}/x.f32`, [W, T, d]);
    file.writeTensor(x);
    const points = new Set<CapturePoint>(["x_qkv", "x_down"]);
    const inMemory = await captureHessians(ctx, weights, x, points, { batch: 2 });
    const offloaded = await captureHessians(ctx, weights, file, points, { batch: 2 });
    for (const p of points) assert.deepEqual(offloaded.get(p), inMemory.get(p), p);

    const y = await runBlock(rt, config, weights, { data: x.data.slice(), shape: x.shape }, {
      batch: 2,
      inPlace: true,
    });
    const same = await runBlock(rt, config, weights, file, { batch: 2, inPlace: true });
    assert.equal(same, file, "offloaded activations are updated in place");
    assert.deepEqual(file.read(0, W), y.data);
    assert.throws(() => file.read(W, 1), /ended at window 5/);
    file.close();
    assert.throws(() => Deno.statSync(`${dir}/x.f32`), Deno.errors.NotFound);
    assert.throws(() => file.read(0, 1), /already released/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a graph keeps only the nodes and constants its outputs need", () => {
  const g = new Graph();
  const a = g.input("a", [2]);
  const used = g.add(a, g.constant([1, 2]));
  g.mul(a, g.constant([3, 4, 5, 6], [2, 2])); // dead branch
  g.output(used, "y");
  const bytes = new TextDecoder("latin1").decode(g.toBytes());
  assert.ok(bytes.includes("Add"));
  assert.ok(!bytes.includes("Mul"), "the dead Mul is pruned");
  assert.equal(g.nodes().filter((n) => n.type === "Mul").length, 1, "the builder keeps it");
});

Deno.test("collectGarbage frees unreachable output buffers at once", () => {
  collectGarbage();
  const before = Deno.memoryUsage().external;
  let big: Float32Array | null = new Float32Array(32 * 2 ** 20);
  big.fill(1);
  assert.ok(Deno.memoryUsage().external - before >= 120 * 2 ** 20);
  big = null;
  collectGarbage();
  assert.ok(Deno.memoryUsage().external - before < 8 * 2 ** 20);
});

Deno.test("release runtime", async () => {
  model.close();
  await rt.release();
});
