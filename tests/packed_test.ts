/**
 * Packed formats end to end: a run with `--format` writes GPTQ / compressed-tensors / GGUF
 * whose linears, read back through `openModel`, equal the fake-quantized weights we evaluated
 * bit for bit (every format and bit width); embeddings and norms are F32 in GGUF and the fp16
 * rounding of the originals in the Hugging Face formats. GPTQ's v1/v2 zero points and its
 * word layout on a hand-made model; what a format cannot hold is refused before any work;
 * `export.ts --format` rounds float32 scales and says so.
 */
import assert from "node:assert/strict";
import { fixtureModel } from "../fixtures/paths.ts";
import { writeCompressedTensors } from "../formats/compressed_tensors.ts";
import { openModel } from "../formats/open.ts";
import { toFp16 } from "../formats/packed.ts";
import { openQuantized, type QuantizedModel } from "../formats/quantized.ts";
import { writeGptq } from "../formats/gptq.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import { LINEAR_NAMES, type ModelConfig } from "../models/config.ts";
import type { ModelSource } from "../models/source.ts";
import { claqMain } from "../pipelines/claq.ts";
import { gptqMain } from "../pipelines/gptq.ts";
import { omniquantMain } from "../pipelines/omniquant.ts";
import { rtnMain } from "../pipelines/rtn.ts";
import type { QuantizeReport } from "../run/report.ts";
import { packModel } from "../run/pack.ts";

const RUN = [
  "--model",
  fixtureModel("tinystories-656k"),
  "--nsamples",
  "4",
  "--eval",
  "",
  "--quiet",
];

/** How a packed model stores a kind of tensor: exactly, or rounded to fp16. */
type Stored = "exact" | "fp16";

/** Compares every tensor of the packed model with the source; returns linears compared. */
async function samePacked(
  src: string,
  packed: string,
  o: { linears: Stored; norms: Stored; embedding: Stored },
) {
  const a = await openModel(src), b = await openModel(packed);
  let linears = 0;
  try {
    assert.deepEqual(b.config.layers, a.config.layers);
    const same = (x: Float32Array, y: Float32Array, what: string, how: Stored) => {
      assert.equal(x.length, y.length, what);
      for (let i = 0; i < x.length; i++) {
        const want = how === "exact" ? x[i] : toFp16(x[i]);
        if (want !== y[i]) assert.fail(`${what}[${i}]: ${y[i]} ≠ ${want}`);
      }
    };
    for (let i = 0; i < a.config.layers; i++) {
      const wa = await a.block(i), wb = await b.block(i);
      for (const [name, t] of Object.entries(wa)) {
        const lin = LINEAR_NAMES.some((l) => name === `${l}.weight`);
        same(t.data, wb[name].data, `block ${i} ${name}`, lin ? o.linears : o.norms);
        if (lin) linears++;
      }
    }
    same((await a.embedding()).data, (await b.embedding()).data, "embedding", o.embedding);
    same((await a.finalNorm()).data, (await b.finalNorm()).data, "norm", o.norms);
  } finally {
    a.close();
    b.close();
  }
  return linears;
}

const GGUF_STORED = { linears: "exact", norms: "exact", embedding: "exact" } as const;
const HF_STORED = { linears: "exact", norms: "fp16", embedding: "fp16" } as const;

Deno.test("every format and bit width: packed linears equal the evaluated ones bit for bit", async (t) => {
  const tmp = await Deno.makeTempDir();
  try {
    const cases: [string, typeof rtnMain, string[], string, "exact" | "fp16"][] = [
      ["gguf Q4_0", rtnMain, ["--wbits", "4", "--group-size", "32", "--sym"], "gguf", "exact"],
      ["gguf Q4_1", rtnMain, ["--wbits", "4", "--group-size", "32"], "gguf", "exact"],
      ["gguf Q8_0", rtnMain, ["--wbits", "8", "--group-size", "32", "--sym"], "gguf", "exact"],
      ["gptq 2-bit g32", rtnMain, ["--wbits", "2", "--group-size", "32"], "gptq", "fp16"],
      ["gptq 3-bit per channel", rtnMain, ["--wbits", "3"], "gptq", "fp16"],
      ["gptq 8-bit sym", rtnMain, ["--wbits", "8", "--sym"], "gptq", "fp16"],
      [
        "gptq 4-bit act-order",
        gptqMain,
        [
          "--wbits",
          "4",
          "--group-size",
          "32",
          "--act-order",
        ],
        "gptq",
        "fp16",
      ],
      [
        "compressed-tensors 4-bit act-order",
        gptqMain,
        [
          "--wbits",
          "4",
          "--group-size",
          "64",
          "--act-order",
        ],
        "compressed-tensors",
        "fp16",
      ],
      [
        "compressed-tensors 8-bit sym per channel",
        rtnMain,
        ["--wbits", "8", "--sym"],
        "compressed-tensors",
        "fp16",
      ],
    ];
    for (const [name, main, flags, format, floats] of cases) {
      await t.step(name, async () => {
        const out = `${tmp}/${name.replaceAll(" ", "_")}`;
        // One case also evaluates: the packed model's perplexity is the evaluated one.
        const evalFlags = name === "gguf Q4_0" ? ["--eval", "val", "--eval-windows", "4"] : [];
        const argv = [...RUN, ...flags, "--format", format, "--out", out, ...evalFlags];
        const r = await main(argv) as QuantizeReport;
        const p = r.packed!;
        if (evalFlags.length) {
          assert.equal(p.eval!["tinystories_val.txt"], r.eval["tinystories_val.txt"].quant);
        }
        assert.equal(p.linears_exact, true);
        assert.equal(p.rounded_scales, 0);
        const stored = floats === "exact" ? GGUF_STORED : HF_STORED;
        assert.equal(await samePacked(out, p.path, stored), 14);
        if (format === "gptq") assert.equal(p.checkpoint_format, "gptq");
        if (name === "gguf Q4_1") assert.equal(p.inexact_mins, 0);
      });
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

/** A one-block model of 32-wide layers whose grids are given. */
function handMade(codes: (r: number, c: number) => number, zero: number): {
  model: ModelSource;
  q: QuantizedModel;
} {
  const d = 32,
    c: ModelConfig = {
      modelType: "llama",
      hidden: d,
      intermediate: d,
      layers: 1,
      heads: 2,
      kvHeads: 2,
      headDim: 16,
      vocab: 4,
      maxSeq: 8,
      rmsEps: 1e-6,
      ropeTheta: 10000,
      tiedEmbeddings: true,
      qkvBias: false,
      bos: 1,
      eos: 2,
    };
  const ones = (n: number) => ({ data: new Float32Array(n).fill(1), shape: [n] });
  const scales = new Float32Array(d).fill(0.5);
  const zeros = new Float32Array(d).fill(zero);
  const grid = () => ({
    rows: d,
    cols: d,
    maxq: 15,
    groupSize: 0,
    codes: Uint8Array.from({ length: d * d }, (_, i) => codes(i / d | 0, i % d)),
    scales,
    zeros,
    gIdx: new Int32Array(d),
    contiguous: true,
  });
  const w = () => ({
    data: Float32Array.from(grid().codes, (x, i) => 0.5 * (x - zeros[i / d | 0])),
    shape: [d, d],
  });
  const model: ModelSource = {
    path: fixtureModel("tinystories-656k"),
    format: "hf",
    config: c,
    embedding: () => Promise.resolve({ data: new Float32Array(4 * d), shape: [4, d] }),
    block: () =>
      Promise.resolve({
        "input_layernorm.weight": ones(d),
        "post_attention_layernorm.weight": ones(d),
        ...Object.fromEntries(LINEAR_NAMES.map((l) => [`${l}.weight`, w()])),
      }),
    finalNorm: () => Promise.resolve(ones(d)),
    head: () => Promise.resolve({ data: new Float32Array(4 * d), shape: [4, d] }),
    close: () => {},
  };
  const q: QuantizedModel = {
    quant: { quant_method: "qllm-deno/rtn", bits: 4, group_size: -1 },
    maxq: 15,
    notUniform: null,
    grids: () =>
      Promise.resolve(
        Object.fromEntries(LINEAR_NAMES.map((l) => [l, grid()])) as Awaited<
          ReturnType<QuantizedModel["grids"]>
        >,
      ),
    close: () => {},
  };
  return { model, q };
}

Deno.test("GPTQ words by hand; a zero point of 0 makes the checkpoint gptq_v2", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    // code[n, k] = (k + n) % 16, zero 1: v1 stores zero − 1 = 0.
    const a = handMade((r, c) => (c + r) % 16, 1);
    const v1 = await writeGptq(`${tmp}/v1`, a.model, a.q);
    assert.equal(v1.checkpointFormat, "gptq");
    const st = await SafetensorsReader.open(`${tmp}/v1/model.safetensors`);
    const qw = (await st.readRaw("model.layers.0.self_attn.q_proj.qweight")).data as Int32Array;
    const qz = (await st.readRaw("model.layers.0.self_attn.q_proj.qzeros")).data as Int32Array;
    st.close();
    // qweight [K/8, N]: word [0, n=1] holds k = 0..7 of column n = 1: codes 1..8.
    assert.equal(qw[1], 0x87654321 | 0);
    assert.equal(qz[0], 0); // eight zero points of 1, stored minus one
    const m1 = await openModel(`${tmp}/v1`);
    assert.equal((await m1.block(0))["mlp.up_proj.weight"].data[1], 0.5 * (1 - 1));
    m1.close();

    const b = handMade((r, c) => (c * 3 + r) % 16, 0);
    const v2 = await writeGptq(`${tmp}/v2`, b.model, b.q);
    assert.equal(v2.checkpointFormat, "gptq_v2");
    const cfg = JSON.parse(await Deno.readTextFile(`${tmp}/v2/config.json`));
    assert.equal(cfg.quantization_config.checkpoint_format, "gptq_v2");
    assert.deepEqual(
      [cfg.quantization_config.quant_method, cfg.quantization_config.bits],
      ["gptq", 4],
    );
    assert.match(cfg.quantization_config.meta.quantizer[0], /^qllm-deno:/);
    // compressed-tensors: codes along K per row, zero points (all 1) along N.
    await writeCompressedTensors(`${tmp}/ct`, a.model, a.q);
    const ct = await SafetensorsReader.open(`${tmp}/ct/model.safetensors`);
    const p = "model.layers.0.mlp.gate_proj";
    const wp = (await ct.readRaw(`${p}.weight_packed`)).data as Int32Array;
    assert.deepEqual([wp[0], wp[4]], [0x76543210, 0x87654321 | 0]); // row 0 k 0..7, row 1 k 0..7
    assert.equal(((await ct.readRaw(`${p}.weight_zero_point`)).data as Int32Array)[0], 0x11111111);
    assert.deepEqual([...(await ct.readRaw(`${p}.weight_shape`)).data as BigInt64Array], [
      32n,
      32n,
    ]);
    ct.close();
    const m2 = await openModel(`${tmp}/v2`);
    const w = (await m2.block(0))["self_attn.o_proj.weight"].data;
    for (let i = 0; i < 32 * 32; i++) assert.equal(w[i], 0.5 * (((i % 32) * 3 + (i >> 5)) % 16));
    m2.close();
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("what a format cannot hold is refused before any work, naming the formats that can", async () => {
  const refuse = async (main: typeof rtnMain, flags: string[], re: RegExp) =>
    await assert.rejects(() => main([...RUN, ...flags, "--out", "/nonexistent/x"]), re);
  await refuse(
    rtnMain,
    ["--wbits", "3", "--format", "compressed-tensors"],
    /--format gptq holds 2, 3/,
  );
  await refuse(
    rtnMain,
    ["--wbits", "4", "--group-size", "64", "--format", "gguf"],
    /groups of 32.*--format gptq/,
  );
  await refuse(
    gptqMain,
    ["--wbits", "4", "--group-size", "32", "--act-order", "--format", "gguf"],
    /--static-groups/,
  );
  await refuse(claqMain, ["--target-bits", "2.1", "--format", "gptq"], /claq.*export\.ts/);
  await refuse(omniquantMain, ["--wbits", "4", "--format", "gguf"], /rtn\.ts or gptq\.ts/);
  await refuse(rtnMain, ["--wbits", "8", "--group-size", "32", "--format", "gguf"], /Q8_0.*--sym/);
  await refuse(rtnMain, ["--wbits", "4", "--abits", "8", "--format", "gptq"], /8-bit activations/);
  await refuse(
    rtnMain,
    ["--model", fixtureModel("stories260k"), "--wbits", "4", "--format", "gptq"],
    /gate_proj is \[172, 64\].*compressed-tensors/,
  );
});

Deno.test("export --format on float32 scales: rounded to fp16, codes kept, said so", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    await rtnMain([...RUN, "--wbits", "4", "--group-size", "32", "--sym", "--out", `${tmp}/o`]);
    const p = await packModel(`${tmp}/o`, { format: "gguf", out: `${tmp}/o.gguf` });
    assert.equal(p.gguf_type, "Q4_0");
    assert.ok(p.rounded_scales > 0);
    assert.equal(p.linears_exact, false);
    // Reference: the saved grid with fp16 scales, dequantized here in float64 then rounded once.
    const q = await openQuantized(`${tmp}/o`), src = await openModel(`${tmp}/o`);
    const packed = await openModel(p.path);
    const grids = await q.grids(0, await src.block(0));
    const g = grids["mlp.down_proj"], got = (await packed.block(0))["mlp.down_proj.weight"].data;
    for (let i = 0; i < g.rows * g.cols; i++) {
      const k = Math.floor(i / g.cols) * (g.cols / 32) + ((i % g.cols) >> 5);
      assert.equal(got[i], Math.fround(toFp16(g.scales[k]) * (g.codes[i] - 8)));
    }
    q.close();
    src.close();
    packed.close();
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("GGUF F32/F16 of an unquantized model; pipelines take a GGUF file as --model", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const src = fixtureModel("stories260k");
    for (const type of ["F32", "F16"] as const) {
      const out = `${tmp}/m-${type}.gguf`;
      const p = await packModel(src, { format: "gguf", out, floatType: type });
      const stored = type === "F32"
        ? GGUF_STORED
        : { linears: "fp16", norms: "exact", embedding: "fp16" } as const;
      assert.equal(await samePacked(src, p.path, stored), 35);
    }
    // Quantizing the GGUF file (its own vocabulary) gives what quantizing the original gives.
    const flags = ["--wbits", "4", "--nsamples", "4", "--eval", "val", "--eval-windows", "4"];
    const a = await rtnMain([...flags, "--model", src, "--out", `${tmp}/a`, "--quiet"]);
    const gguf = `${tmp}/m-F32.gguf`;
    const b = await rtnMain([...flags, "--model", gguf, "--out", `${tmp}/b`, "--quiet"]);
    assert.deepEqual(b!.eval, a!.eval);
    await Deno.stat(`${tmp}/b/tokenizer.gguf`);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
