/**
 * The reference run (`../shared/reference/peer_results.json`): the GPTQ reference code and
 * llama2.c in PyTorch on the fixtures. Tests compare against its rows.
 */
import { SHARED_FIXTURES } from "../fixtures/paths.ts";

/** One configuration of the reference run. */
export interface ReferenceRun {
  name: string;
  method: "fp32" | "rtn" | "gptq";
  wbits: number;
  abits: number;
  groupsize: number;
  act_order: boolean;
  static_groups: boolean;
  true_sequential: boolean;
  quant_s?: number;
  gptq_layer_error?: Record<string, number>;
  eval: Record<string, { ppl: number }>;
}

const data = JSON.parse(
  await Deno.readTextFile(`${SHARED_FIXTURES}/../reference/peer_results.json`),
) as { models: Record<string, { runs: ReferenceRun[] }> };

/** The reference rows of a fixture model. */
export function referenceRuns(model: string): ReferenceRun[] {
  return data.models[model].runs;
}

/** The fixture models of the reference run. */
export const REFERENCE_MODELS = ["tinystories-656k", "stories260k"] as const;
