/**
 * One export's speed and memory, measured in a process of its own (so that its peak RSS is its
 * own): `deno run -A bench/deploy_child.ts DIR` prints one JSON line with the load time,
 * prefill tokens/s (one 512-token prompt, or the model's context when shorter), decode
 * tokens/s at batch 1 and batch 8 (128 new tokens after a 16-token prompt, greedy, every step
 * through the KV cache) and the peak RSS (VmHWM) of the process.
 * @module
 */
import { peakRss } from "../run/report.ts";
import { OnnxDecoder } from "../serve/decoder.ts";
import { argmax } from "../serve/sampling.ts";

/** What the child prints. */
export interface DeployTiming {
  load_s: number;
  prefill_tokens: number;
  prefill_tokens_per_s: number;
  decode_tokens_per_s: number;
  /** CPU time per decoded token at batch 1: all threads, their spinning between ops included. */
  decode_cpu_ms_per_token: number;
  decode_batch8_tokens_per_s: number;
  peak_rss_bytes: number;
}

/** Tokens of the prefill prompt, new tokens per decode run, prompt tokens before decoding. */
export const PREFILL = 512, DECODE = 128, DECODE_PROMPT = 16;

/** CPU time of this process so far (user + system, all threads), in ms; 0 where unknown. */
function cpuMs(): number {
  try {
    const f = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
    return (Number(f[11]) + Number(f[12])) * 10; // clock ticks of 10 ms
  } catch {
    return 0;
  }
}

/**
 * Decodes `steps` tokens per row after `prompt` rows of equal length; returns the wall seconds
 * and the CPU milliseconds of the decode steps.
 */
async function decode(
  dec: OnnxDecoder,
  prompts: number[][],
  steps: number,
): Promise<{ seconds: number; cpuMs: number }> {
  const B = prompts.length, P = prompts[0].length, V = dec.config.vocab;
  let { logits, cache } = await dec.step({
    ids: prompts.flat(),
    batch: B,
    mask: new Array(B * P).fill(1),
    positions: prompts.flatMap((p) => p.map((_, i) => i)),
  }, dec.emptyCache(B));
  const t0 = performance.now(), c0 = cpuMs();
  for (let s = 0; s < steps; s++) {
    const T = s === 0 ? P : 1;
    const next = prompts.map((_, r) => {
      const at = ((r + 1) * T - 1) * V;
      return argmax(logits.subarray(at, at + V));
    });
    ({ logits, cache } = await dec.step({
      ids: next,
      batch: B,
      mask: new Array(B * (cache.length + 1)).fill(1),
      positions: new Array(B).fill(P + s),
    }, cache));
  }
  return { seconds: (performance.now() - t0) / 1000, cpuMs: cpuMs() - c0 };
}

async function main(dir: string) {
  const t0 = performance.now();
  const dec = await OnnxDecoder.open(dir);
  const load_s = (performance.now() - t0) / 1000;
  try {
    const c = dec.config;
    const ids = (n: number, seed: number) =>
      Array.from({ length: n }, (_, i) => 3 + ((i * 7919 + seed * 104729) % (c.vocab - 3)));
    const P = Math.min(PREFILL, c.maxSeq);
    const prefill = async (seed: number) => {
      const t = performance.now();
      await dec.step({
        ids: ids(P, seed),
        batch: 1,
        mask: new Array(P).fill(1),
        positions: Array.from({ length: P }, (_, i) => i),
      }, dec.emptyCache(1));
      return (performance.now() - t) / 1000;
    };
    // Warm-up: the first runs of a session allocate its arena.
    await decode(dec, [ids(DECODE_PROMPT, 0)], 4);
    await prefill(1);
    const prefillSeconds = await prefill(2);
    const one = await decode(dec, [ids(DECODE_PROMPT, 3)], DECODE);
    const eight = await decode(
      dec,
      Array.from({ length: 8 }, (_, r) => ids(DECODE_PROMPT, 10 + r)),
      DECODE,
    );
    const out: DeployTiming = {
      load_s,
      prefill_tokens: P,
      prefill_tokens_per_s: P / prefillSeconds,
      decode_tokens_per_s: DECODE / one.seconds,
      decode_cpu_ms_per_token: one.cpuMs / DECODE,
      decode_batch8_tokens_per_s: (8 * DECODE) / eight.seconds,
      peak_rss_bytes: peakRss(),
    };
    console.log(JSON.stringify(out));
  } finally {
    await dec.release();
  }
}

if (import.meta.main) await main(Deno.args[0]);
