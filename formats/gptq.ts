/**
 * GPTQ checkpoints as AutoGPTQ, GPTQModel, transformers and vLLM read them. Each linear layer
 * `[N, K]` (out, in) is stored as
 *
 * - `qweight` int32 `[K·bits/32, N]`: the codes packed along K, lowest bits first (3 bits: 32
 *   values in three words, two of them straddling words);
 * - `qzeros` int32 `[groups, N·bits/32]`: the zero points packed along N the same way, minus one
 *   in `checkpoint_format` `gptq` (v1, the widely read default) or as they are in `gptq_v2`;
 * - `scales` fp16 `[groups, N]`; `g_idx` int32 `[K]`, the group of every input column;
 *
 * and W[n, k] = scales[g, n]·(q[k, n] − zero[g, n]) with g = g_idx[k]. Everything else is fp16.
 * v1 cannot store a zero point of 0 (it would be −1): such a model is written as `gptq_v2`,
 * which the report says. `quantization_config` carries `quant_method` `gptq`, `bits`,
 * `group_size` (−1 per channel), `desc_act`, `sym`, `static_groups`, `true_sequential`,
 * `damp_percent`, `lm_head`, `checkpoint_format`, `pack_dtype` and a `meta` naming this toolkit.
 * @module
 */
import type { ModelSource } from "../models/source.ts";
import { packInt32, unpackInt32 } from "./bitpack.ts";
import type { Checkpoint } from "./checkpoint.ts";
import { TOOLKIT } from "./packed.ts";
import {
  contiguousGIdx,
  dequantizeGrid,
  type LinearCodec,
  openPackedHf,
  type PackedHfReport,
  readFloats,
  readInts,
  transposed,
  writePackedHf,
} from "./packed_hf.ts";
import { codeBits, type QuantizedModel } from "./quantized.ts";

/** Where packing along an axis needs whole words; throws naming the layer. */
function checkWords(prefix: string, what: string, n: number, bits: number): void {
  if ((n * bits) % 32 !== 0) {
    throw new Error(
      `${prefix}: GPTQ packs ${what} (${n}) ${bits}-bit values into whole int32 words, which ` +
        `needs a multiple of ${32 / gcd(bits, 32)}: use --format compressed-tensors (it pads) ` +
        `or gguf`,
    );
  }
}

function gcd(a: number, b: number): number {
  return b ? gcd(b, a % b) : a;
}

/** The GPTQ codec: `v2` stores zero points as they are, v1 minus one. */
function gptqCodec(
  bits: number,
  groupSize: number,
  v2: () => boolean,
  sawZero: () => void,
): LinearCodec {
  return {
    pack(prefix, g) {
      checkWords(prefix, "input columns", g.cols, bits);
      checkWords(prefix, "output rows", g.rows, bits);
      const groups = g.scales.length / g.rows;
      const zeros = transposed(Uint8Array.from(g.zeros), g.rows, groups);
      if (zeros.some((z) => z === 0)) sawZero();
      const stored = v2() ? zeros : zeros.map((z) => z - 1);
      return [
        {
          name: "qweight",
          dtype: "I32",
          shape: [(g.cols * bits) / 32, g.rows],
          data: packInt32(transposed(g.codes, g.rows, g.cols), g.cols, g.rows, bits, 0, prefix),
        },
        {
          name: "qzeros",
          dtype: "I32",
          shape: [groups, (g.rows * bits) / 32],
          data: packInt32(stored, groups, g.rows, bits, 1, prefix),
        },
        {
          name: "scales",
          dtype: "F16",
          shape: [groups, g.rows],
          data: transposed(g.scales, g.rows, groups),
        },
        { name: "g_idx", dtype: "I32", shape: [g.cols], data: g.gIdx },
      ];
    },
    async unpack(ckpt: Checkpoint, prefix, rows, cols) {
      checkWords(prefix, "input columns", cols, bits);
      checkWords(prefix, "output rows", rows, bits);
      // Writers that never reorder may leave g_idx out: then groups are runs of group_size.
      const gIdx = ckpt.has(`${prefix}.g_idx`)
        ? await readInts(ckpt, `${prefix}.g_idx`, [cols]) as Int32Array
        : contiguousGIdx(cols, groupSize);
      let groups = 0;
      for (const g of gIdx) groups = Math.max(groups, g + 1);
      const qweight = await readInts(ckpt, `${prefix}.qweight`, [(cols * bits) / 32, rows]);
      const qzeros = await readInts(ckpt, `${prefix}.qzeros`, [groups, (rows * bits) / 32]);
      const scales = await readFloats(ckpt, `${prefix}.scales`, [groups, rows]);
      const codes = transposed(unpackInt32(qweight as Int32Array, cols, rows, bits, 0), cols, rows);
      const z = unpackInt32(qzeros as Int32Array, groups, rows, bits, 1);
      // v1 readers add one to the stored value (a stored 2^bits − 1 becomes 2^bits).
      const zeros = Float32Array.from(z, (x) => v2() ? x : x + 1);
      return dequantizeGrid(
        codes,
        transposed(scales, groups, rows),
        transposed(zeros, groups, rows),
        gIdx,
        rows,
        cols,
      );
    },
  };
}

/** What {@linkcode writeGptq} wrote. */
export interface GptqReport extends PackedHfReport {
  /** `gptq` (v1) or `gptq_v2` when a zero point of 0 occurred. */
  checkpointFormat: "gptq" | "gptq_v2";
}

/**
 * Writes our quantized model (`model` opened from the output directory, `q` its grids) as a
 * GPTQ checkpoint directory `out`.
 */
export async function writeGptq(
  out: string,
  model: ModelSource,
  q: QuantizedModel,
): Promise<GptqReport> {
  const bits = codeBits(q.maxq), qc = q.quant;
  for (const format of ["gptq", "gptq_v2"] as const) {
    let zero = false;
    const codec = gptqCodec(bits, 0, () => format === "gptq_v2", () => {
      zero = true;
      if (format === "gptq") throw new V1CannotHold();
    });
    try {
      const r = await writePackedHf(out, model, q, codec, () => ({
        quant_method: "gptq",
        bits,
        group_size: typeof qc.group_size === "number" && qc.group_size > 0 ? qc.group_size : -1,
        desc_act: qc.desc_act === true,
        sym: qc.sym === true,
        static_groups: qc.static_groups === true,
        true_sequential: qc.true_sequential === true,
        damp_percent: typeof qc.damp_percent === "number" ? qc.damp_percent : 0.01,
        lm_head: false,
        checkpoint_format: format,
        pack_dtype: "int32",
        meta: {
          quantizer: [`${TOOLKIT.name}:${TOOLKIT.version}`],
          method: String(qc.quant_method ?? "").replace(/^qllm-deno\//, ""),
          zero_point_of_0: zero,
        },
      }));
      return { ...r, checkpointFormat: format };
    } catch (e) {
      if (!(e instanceof V1CannotHold)) throw e;
    }
  }
  throw new Error("unreachable");
}

class V1CannotHold extends Error {}

/** Opens a GPTQ checkpoint directory (`quantization_config.quant_method` `gptq`). */
export function openGptq(dir: string, json: Record<string, unknown>): Promise<ModelSource> {
  const qc = json.quantization_config as Record<string, unknown>;
  const bits = qc.bits;
  if (typeof bits !== "number" || ![2, 3, 4, 8].includes(bits)) {
    throw new Error(`${dir}/config.json: quantization_config.bits ${bits} (expected 2, 3, 4, 8)`);
  }
  const format = qc.checkpoint_format ?? "gptq";
  if (format !== "gptq" && format !== "gptq_v2") {
    throw new Error(
      `${dir}/config.json: checkpoint_format "${format}" is not supported (gptq, gptq_v2)`,
    );
  }
  if (qc.pack_dtype !== undefined && qc.pack_dtype !== "int32") {
    throw new Error(`${dir}/config.json: pack_dtype "${qc.pack_dtype}" (only int32)`);
  }
  const groupSize = typeof qc.group_size === "number" && qc.group_size > 0 ? qc.group_size : 0;
  const { quantization_config: _, ...rest } = json;
  return openPackedHf(
    dir,
    rest,
    "gptq",
    gptqCodec(bits, groupSize, () => format === "gptq_v2", () => {}),
  );
}
