/**
 * compressed-tensors `pack-quantized` checkpoints, as llm-compressor writes them for vLLM: 4- or
 * 8-bit integer weights per channel or per group, symmetric or not. Each linear layer `[N, K]`
 * is stored as
 *
 * - `weight_packed` int32 `[N, ⌈K·bits/32⌉]`: signed codes q ∈ [−2^(bits−1), 2^(bits−1)) plus
 *   2^(bits−1), packed along K lowest bits first, the last word zero-padded;
 * - `weight_scale` `[N, groups]` (fp16 here);
 * - `weight_zero_point` int32 `[⌈N·bits/32⌉, groups]`, packed along N the same way (asymmetric
 *   only; symmetric grids have zero point 0);
 * - `weight_shape` int64 `[2]`, and `weight_g_idx` int32 `[K]` when act-order groups are not
 *   runs of consecutive columns (`actorder` `group`);
 *
 * with W = scale·(q − zero_point). Our grid's code c and zero z are q + 2^(bits−1) and
 * zero_point + 2^(bits−1), so the packed values are exactly our codes and zeros. The
 * `quantization_config` has one `config_groups` entry targeting `Linear`, `ignore` `lm_head`,
 * `format` `pack-quantized` and `quantization_status` `compressed`.
 * @module
 */
import type { ModelSource } from "../models/source.ts";
import { packedWords, packInt32, unpackInt32 } from "./bitpack.ts";
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
  writePackedHf,
} from "./packed_hf.ts";
import { codeBits, type QuantizedModel } from "./quantized.ts";

/** The weight scheme of a pack-quantized checkpoint. */
interface CtScheme {
  bits: 4 | 8;
  symmetric: boolean;
  /** 0: per channel. */
  groupSize: number;
}

function ctCodec(s: CtScheme): LinearCodec {
  const offset = 2 ** (s.bits - 1);
  return {
    pack(prefix, g) {
      const groups = g.scales.length / g.rows;
      if (s.symmetric && g.zeros.some((z) => z !== offset)) {
        throw new Error(`${prefix}: a zero point is not ${offset}, the symmetric grid's`);
      }
      return [
        {
          name: "weight_packed",
          dtype: "I32",
          shape: [g.rows, packedWords(g.cols, s.bits)],
          data: packInt32(g.codes, g.rows, g.cols, s.bits, 1, prefix),
        },
        { name: "weight_scale", dtype: "F16", shape: [g.rows, groups], data: g.scales },
        ...(s.symmetric ? [] : [{
          name: "weight_zero_point",
          dtype: "I32" as const,
          shape: [packedWords(g.rows, s.bits), groups],
          data: packInt32(g.zeros, g.rows, groups, s.bits, 0, prefix),
        }]),
        {
          name: "weight_shape",
          dtype: "I64",
          shape: [2],
          data: BigInt64Array.of(BigInt(g.rows), BigInt(g.cols)),
        },
        ...(g.contiguous ? [] : [{
          name: "weight_g_idx",
          dtype: "I32" as const,
          shape: [g.cols],
          data: g.gIdx,
        }]),
      ];
    },
    async unpack(ckpt: Checkpoint, prefix, rows, cols) {
      const shape = await ckpt.readRaw(`${prefix}.weight_shape`);
      const dims = Array.from(shape.data as BigInt64Array | Int32Array, Number);
      if (dims.join() !== [rows, cols].join()) {
        throw new Error(
          `${ckpt.dir}: ${prefix}.weight_shape is [${dims}], expected [${rows}, ${cols}]`,
        );
      }
      const groups = s.groupSize ? Math.ceil(cols / s.groupSize) : 1;
      const packed = await readInts(ckpt, `${prefix}.weight_packed`, [
        rows,
        packedWords(cols, s.bits),
      ]);
      const scales = await readFloats(ckpt, `${prefix}.weight_scale`, [rows, groups]);
      let zeros: ArrayLike<number> = new Uint8Array(rows * groups).fill(offset);
      if (!s.symmetric) {
        const name = `${prefix}.weight_zero_point`;
        const info = ckpt.info(name);
        zeros = info.dtype === "I32"
          ? unpackInt32(
            await readInts(ckpt, name, [packedWords(rows, s.bits), groups]) as Int32Array,
            rows,
            groups,
            s.bits,
            0,
          )
          // Older writers kept the signed zero points unpacked, one int8 each.
          : Array.from(await readInts(ckpt, name, [rows, groups], ["I8"]), (z) => z + offset);
      }
      const gIdx = ckpt.has(`${prefix}.weight_g_idx`)
        ? await readInts(ckpt, `${prefix}.weight_g_idx`, [cols]) as Int32Array
        : contiguousGIdx(cols, s.groupSize);
      const codes = unpackInt32(packed as Int32Array, rows, cols, s.bits, 1);
      return dequantizeGrid(codes, scales, zeros, gIdx, rows, cols);
    },
  };
}

/**
 * Writes our quantized model (`model` opened from the output directory, `q` its grids) as a
 * compressed-tensors `pack-quantized` directory `out`.
 */
export function writeCompressedTensors(
  out: string,
  model: ModelSource,
  q: QuantizedModel,
): Promise<PackedHfReport> {
  const bits = codeBits(q.maxq), qc = q.quant;
  if (bits !== 4 && bits !== 8) {
    throw new Error(`${out}: pack-quantized holds 4- and 8-bit weights, not ${bits}-bit`);
  }
  const groupSize = typeof qc.group_size === "number" && qc.group_size > 0 ? qc.group_size : 0;
  const scheme: CtScheme = { bits, symmetric: qc.sym === true, groupSize };
  const actorder = qc.desc_act === true ? (qc.static_groups === true ? "weight" : "group") : null;
  return writePackedHf(out, model, q, ctCodec(scheme), () => ({
    quant_method: "compressed-tensors",
    format: "pack-quantized",
    quantization_status: "compressed",
    config_groups: {
      group_0: {
        targets: ["Linear"],
        weights: {
          num_bits: bits,
          type: "int",
          symmetric: scheme.symmetric,
          strategy: groupSize ? "group" : "channel",
          group_size: groupSize || null,
          block_structure: null,
          dynamic: false,
          actorder,
          observer: "minmax",
          observer_kwargs: {},
        },
        input_activations: null,
        output_activations: null,
      },
    },
    ignore: ["lm_head"],
    kv_cache_scheme: null,
    global_compression_ratio: null,
    sparsity_config: {},
    producer: `${TOOLKIT.name} ${TOOLKIT.version}`,
  }));
}

/** Opens a compressed-tensors `pack-quantized` directory. */
export function openCompressedTensors(
  dir: string,
  json: Record<string, unknown>,
): Promise<ModelSource> {
  const file = `${dir}/config.json`;
  const qc = json.quantization_config as Record<string, unknown>;
  if (qc.format !== "pack-quantized") {
    throw new Error(`${file}: compressed-tensors format "${qc.format}" (only pack-quantized)`);
  }
  const groups = Object.values((qc.config_groups ?? {}) as Record<string, Record<string, unknown>>);
  if (groups.length !== 1) {
    throw new Error(
      `${file}: ${groups.length} config_groups (one scheme for every Linear is read)`,
    );
  }
  const w = groups[0].weights as Record<string, unknown> | null;
  if (groups[0].input_activations || groups[0].output_activations) {
    throw new Error(`${file}: activation quantization is not supported (weight-only schemes)`);
  }
  if (!w || w.type !== "int" || (w.num_bits !== 4 && w.num_bits !== 8)) {
    throw new Error(`${file}: weights ${JSON.stringify(w)} (4- or 8-bit int only)`);
  }
  const strategy = w.strategy;
  if (strategy !== "group" && strategy !== "channel") {
    throw new Error(`${file}: strategy "${strategy}" (group or channel only)`);
  }
  const scheme: CtScheme = {
    bits: w.num_bits,
    symmetric: w.symmetric === true,
    groupSize: strategy === "group" ? Number(w.group_size) : 0,
  };
  const { quantization_config: _, ...rest } = json;
  return openPackedHf(dir, rest, "compressed-tensors", ctCodec(scheme));
}
