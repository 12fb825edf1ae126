/**
 * ABQ-LLM's additions to OmniQuant: bit balance (2^b + 1 levels for b ≤ 2, so a bit-balanced
 * 2-bit weight carries log2 5 ≈ 2.32 bits and is reported so, never as 2) and the rank-1
 * compensation of down_proj in the first and last blocks only. End to end through
 * pipelines/abq.ts on stories260k (5 blocks, so "first and last" is not "every"): 1 epoch over
 * 8 calibration windows, then the written model and `learned.safetensors` are read back.
 */
import assert from "node:assert/strict";
import { levelBits, lwcQuant, type LwcSpec, maxLevel } from "../algorithms/lwc.ts";
import { fixtureModel } from "../fixtures/paths.ts";
import { Graph } from "../kernels/graph.ts";
import { Runtime } from "../kernels/session.ts";
import { Rng } from "../kernels/tensor.ts";
import { LINEAR_NAMES, linearShape } from "../models/config.ts";
import { openModel } from "../formats/open.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import { UsageError } from "../cli/flags.ts";
import { abqMain } from "../pipelines/abq.ts";

const LOG2_5 = Math.log2(5);

/** Distinct values in each row of a [rows, cols] matrix. */
function distinctPerRow(data: Float32Array, rows: number, cols: number): number[] {
  return Array.from(
    { length: rows },
    (_, r) => new Set(data.subarray(r * cols, (r + 1) * cols)).size,
  );
}

Deno.test("bit balance: 2^b + 1 levels for b ≤ 2, log2 of the level count as the bits", () => {
  const spec = (bits: number, bitBalance?: boolean): LwcSpec => ({
    bits,
    groupSize: 0,
    bitBalance,
  });
  assert.equal(maxLevel(spec(2, true)), 4);
  assert.equal(levelBits(spec(2, true)), LOG2_5);
  assert.ok(Math.abs(levelBits(spec(2, true)) - 2.321928) < 1e-6);
  assert.equal(maxLevel(spec(1, true)), 2);
  assert.equal(levelBits(spec(1, true)), Math.log2(3));
  // without bit balance, or above 2 bits, the usual 2^b levels
  assert.equal(maxLevel(spec(2)), 3);
  assert.equal(levelBits(spec(2)), 2);
  assert.equal(maxLevel(spec(2, false)), 3);
  assert.equal(maxLevel(spec(3, true)), 7);
  assert.equal(levelBits(spec(3, true)), 3);
  assert.equal(levelBits(spec(4)), 4);
});

Deno.test("lwcQuant with bit balance gives 5 levels per row at 2 bits (4 without)", async () => {
  const rt = new Runtime();
  try {
    const rows = 16, cols = 64;
    const w = new Rng(3).normalTensor([rows, cols], 1);
    for (const [bitBalance, levels] of [[true, 5], [false, 4]] as const) {
      const g = new Graph();
      const x = g.input("w", [rows, cols]);
      g.output(lwcQuant(g, x, null, null, rows, cols, { bits: 2, groupSize: 0, bitBalance }), "q");
      const q = (await rt.run(g.toBytes(), { w })).q.data;
      const counts = distinctPerRow(q, rows, cols);
      // min-max over 64 normal values reaches every level of the grid
      assert.deepEqual(counts, new Array(rows).fill(levels), `bitBalance ${bitBalance}`);
    }
  } finally {
    await rt.release();
  }
});

Deno.test("bit-balanced 2-bit ABQ-LLM: ≥ log2 5 bits per weight, 5 levels, compensation on first and last blocks", async () => {
  const tmp = await Deno.makeTempDir();
  const src = fixtureModel("stories260k");
  const out = `${tmp}/abq-w2`;
  try {
    await assert.rejects(
      () => abqMain(["--wbits", "3", "--bit-balance", "--out", out, "--quiet"]),
      UsageError,
    );
    const report = await abqMain([
      "--model",
      src,
      "--out",
      out,
      "--wbits",
      "2",
      "--bit-balance",
      "--lwc",
      "--let",
      "--epochs",
      "1",
      "--nsamples",
      "8",
      "--eval-windows",
      "8",
      "--quiet",
    ]);
    assert.ok(report);
    assert.equal(report.method, "abq");
    assert.equal(report.wbits, LOG2_5);
    assert.ok(report.bits_per_weight >= LOG2_5, `bits_per_weight ${report.bits_per_weight}`);
    assert.notEqual(report.bits_per_weight, 2);
    // log2 5 per weight, plus an fp16 scale and a 3-bit zero point (0..4) per output channel
    const m0 = await openModel(src);
    const c = m0.config;
    m0.close();
    let bits = 0, n = 0;
    for (const l of LINEAR_NAMES) {
      const [rows, cols] = linearShape(c, l);
      bits += rows * cols * LOG2_5 + rows * (16 + 3);
      n += rows * cols;
    }
    assert.ok(Math.abs(report.bits_per_weight - bits / n) < 1e-9, `${report.bits_per_weight}`);
    const ppl = report.eval["tinystories_val.txt"].quant;
    assert.ok(Number.isFinite(ppl), `perplexity ${ppl}`);
    const blocks = report.blocks.filter((b) => b.stage === "abq");
    assert.equal(blocks.length, c.layers);
    for (const b of blocks) assert.ok((b.fold_rel_error as number) < 1e-5, `block ${b.block}`);

    // The written weights: at most 5 distinct values in every row of every linear, and the
    // grid's 5 levels are used (a 2-bit grid has only 4).
    const m = await openModel(out);
    try {
      for (let i = 0; i < c.layers; i++) {
        const w = await m.block(i);
        for (const l of LINEAR_NAMES) {
          const t = w[`${l}.weight`];
          const counts = distinctPerRow(t.data, t.shape[0], t.shape[1]);
          assert.ok(Math.max(...counts) <= 5, `block ${i} ${l}: ${Math.max(...counts)} values`);
          if (l === "self_attn.q_proj") {
            assert.equal(Math.max(...counts), 5, `block ${i} ${l}: at most 4 values per row`);
          }
        }
      }
    } finally {
      m.close();
    }

    // The learned state: compensation factors in blocks 0 and 4 only; LET and LWC everywhere.
    const learned = await SafetensorsReader.open(`${out}/learned.safetensors`);
    try {
      const [rows, cols] = linearShape(c, "mlp.down_proj");
      for (let i = 0; i < c.layers; i++) {
        const p = `model.layers.${i}.`;
        const comp = i === 0 || i === c.layers - 1;
        for (const k of ["comp_a", "comp_b"]) {
          assert.equal(learned.has(`${p}mlp.down_proj.${k}`), comp, `block ${i} ${k}`);
        }
        if (comp) {
          const a = await learned.readF32(`${p}mlp.down_proj.comp_a`);
          const b = await learned.readF32(`${p}mlp.down_proj.comp_b`);
          assert.deepEqual(a.shape, [rows, 1]);
          assert.deepEqual(b.shape, [1, cols]);
          // trained: a starts at 0
          assert.ok(a.data.some((v) => v !== 0), `block ${i}: comp_a never moved`);
        }
        for (const k of ["let.qkv", "let.fc1", "let.out", "let.fc2", "let.qk"]) {
          assert.ok(learned.has(`${p}${k}`), `block ${i}: no ${k}`);
        }
        assert.ok(learned.has(`${p}mlp.down_proj.lwc_gamma`), `block ${i}: no LWC`);
      }
    } finally {
      learned.close();
    }
  } finally {
    await Deno.remove(tmp, { recursive: true }); // with the checkpoints, <out>.ckpt
  }
});
