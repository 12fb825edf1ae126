import { runPipelineProcess } from "/work/wt-12/bench/memory.ts";
const dir = "/work/wt-12/fixtures/generated/llama-h1024-i2816-l8-a16-kv8-v2048-std0.02-s0-p512";
for (const evalOn of [true]) {
  const run = await runPipelineProcess("gptq", [
    "--model", dir, "--out", `/tmp/w12/g1024-${evalOn}`, "--wbits", "4", "--group-size", "128",
    "--nsamples", "128", "--seqlen", "256", ...(evalOn ? [] : ["--eval", ""]),
  ]);
  const r = run.report;
  console.log(JSON.stringify({ evalOn, peak_mib: Math.round(r.peak_rss_bytes / 2 ** 20), seconds: r.seconds, eval: r.eval, timing: r.timing,
    phases: Object.fromEntries(Object.entries(run.phase_peak_rss).map(([k, v]) => [k, Math.round(v / 2 ** 20)])) }));
  await Deno.remove(`/tmp/w12/g1024-${evalOn}`, { recursive: true });
}
