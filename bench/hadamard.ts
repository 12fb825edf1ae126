/**
 * The online rotation x·R of the block graph (R4 on down_proj's input, R3 on q/k): its Sylvester
 * factor H_p/√p as a MatMul by a p × p constant, or as a fast Walsh–Hadamard transform of
 * log2 p reshape/slice/add/subtract steps; the factor A is one small MatMul either way. Timed
 * under ONNX Runtime on the widths that matter (tinystories-656k's MLP 384 = 12·32, a head of
 * 128, LLaMA-2-7B's MLP 11008 = 43·256, Llama-3.2-1B's 8192 and Llama-3-8B's 14336 = 7·2048),
 * checked to agree. The block graph takes the MatMul up to p = SYLVESTER_MATMUL_MAX.
 * @module
 */
import { rotation } from "../algorithms/hadamard.ts";
import { Graph } from "../kernels/graph.ts";
import { Rng } from "../kernels/tensor.ts";
import { fastWalshHadamard, SYLVESTER_MATMUL_MAX, sylvesterMatmul } from "../models/block_graph.ts";
import { writeReadmeSection } from "./readme.ts";
import { markdownTable } from "./rows.ts";
import { timeAlternating } from "./timing.ts";
import type { BenchContext, BenchRecord } from "./types.ts";

/** x [N, n] → x·R with the Sylvester factor applied as a MatMul or as the transform. */
function graph(n: number, how: "matmul" | "fwht"): Uint8Array {
  const r = rotation(n, 0);
  const g = new Graph();
  const x = g.input("x", ["N", n]);
  let v = g.reshape(g.mul(x, g.constant(Float32Array.from(r.signs!), [n])), [-1, r.m, r.p]);
  v = how === "matmul" ? sylvesterMatmul(g, v, r.p) : fastWalshHadamard(g, v, r.m, r.p);
  const a = g.constant(Float32Array.from(r.a), [r.m, r.m]);
  if (r.m > 1) v = g.transpose(g.matmul(g.transpose(v, [0, 2, 1]), a), [0, 2, 1]);
  else v = g.mul(v, g.reshape(a, [1]));
  g.output(g.reshape(v, [-1, n]), "y");
  return g.toBytes();
}

/** Runs the comparison. */
export async function benchHadamard(ctx: BenchContext): Promise<BenchRecord> {
  const cases: [string, number, number][] = [
    ["tinystories-656k MLP", 384, 2048],
    ["head (R3)", 128, 8192],
    ["LLaMA-2-7B MLP", 11008, 512],
    ["Llama-3.2-1B MLP", 8192, 512],
    ["Llama-3-8B MLP", 14336, 256],
  ];
  const rows = [];
  const rng = new Rng(1);
  for (const [label, n, tokens] of cases) {
    const mm = graph(n, "matmul"), fw = graph(n, "fwht");
    const data = Float32Array.from({ length: tokens * n }, () => rng.normal());
    const x = { data, shape: [tokens, n] };
    const a = (await ctx.rt.run(mm, { x })).y, b = (await ctx.rt.run(fw, { x })).y;
    let diff = 0;
    for (let i = 0; i < a.data.length; i++) diff = Math.max(diff, Math.abs(a.data[i] - b.data[i]));
    if (!(diff < 1e-3)) throw new Error(`${label}: the two rotations differ by ${diff}`);
    const t = await timeAlternating({
      matmul: () => ctx.rt.run(mm, { x }),
      fwht: () => ctx.rt.run(fw, { x }),
    }, { rounds: 3, warmup: 2, minReps: 5, minSeconds: 0.5, maxReps: 50 });
    const r = rotation(n, 0);
    const row = {
      label,
      n,
      p: r.p,
      tokens,
      factors: r.name,
      matmul_ms: t.matmul.median * 1e3,
      fwht_ms: t.fwht.median * 1e3,
      used: r.p <= SYLVESTER_MATMUL_MAX ? "MatMul" : "FWHT",
      max_abs_diff: diff,
    };
    ctx.log(
      `hadamard: ${label}: MatMul ${row.matmul_ms.toFixed(2)} ms, FWHT ${
        row.fwht_ms.toFixed(2)
      } ms`,
    );
    rows.push(row);
  }
  const markdown = [
    "Online rotation x·R of `tokens` rows (median of alternating timed blocks): the Sylvester " +
    "factor H_p/√p as a MatMul by a p × p constant or as a fast Walsh–Hadamard transform of " +
    "log2 p reshape/slice/add/sub steps (the factor A is one small MatMul in both). The block " +
    `graph uses the MatMul up to p = ${SYLVESTER_MATMUL_MAX} and the transform above.`,
    "",
    markdownTable(
      ["width", "factors", "tokens", "MatMul, ms", "FWHT, ms", "block graph"],
      rows.map((r) => [
        `${r.label} (${r.n})`,
        r.factors,
        String(r.tokens),
        r.matmul_ms.toFixed(2),
        r.fwht_ms.toFixed(2),
        r.used,
      ]),
      [false, false, true, true, true, false],
    ),
  ].join("\n");
  await writeReadmeSection("hadamard", markdown);
  return {
    rows,
    markdown,
    summary: rows.map((r) => ({
      label: `${r.label} ${r.n}`,
      value: Number(r.matmul_ms.toFixed(3)),
      unit: "ms MatMul",
      note: `FWHT ${r.fwht_ms.toFixed(3)} ms (block graph: ${r.used})`,
    })),
  };
}
