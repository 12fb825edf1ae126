/**
 * Faults a process meets: Ctrl-C, SIGTERM and SIGHUP in the middle of a run remove the run's
 * partial output and checkpoints and leave the previous output as it was (exit 128 + signal);
 * a kill -9 leaves a partial that the next run removes; a learned method's checkpoints survive a
 * Ctrl-C (they are what `--resume` takes); a disk that fills (`ulimit -f`) is an error naming the
 * file, with nothing left behind. Each runs a pipeline in a process of its own.
 */
import assert from "node:assert/strict";
import { MARKER } from "../formats/output_dir.ts";
import {
  assertSame,
  runProcess,
  smallRun,
  snapshot,
  type Workspace,
  workspace,
} from "./hostile.ts";

/** A run long enough to be interrupted: stories260k, 5 blocks, evaluation on 8 windows. */
function longRun(w: Workspace, extra: string[] = []): string[] {
  return smallRun(w, [
    ...["--model", `${w.llama}/stories260K.bin`, "--nsamples", "32", "--seqlen", "128"],
    ...["--eval-windows", "8", ...extra],
  ]);
}

/** A previous output of ours at `w.out`. */
async function previousOutput(w: Workspace): Promise<void> {
  await Deno.mkdir(w.out);
  await Deno.writeTextFile(`${w.out}/${MARKER}`, JSON.stringify({ tool: "qllm-deno" }));
  await Deno.writeTextFile(`${w.out}/report.json`, '{"from": "the previous run"}');
}

/** Entries beside the output that a run may leave: partials, old outputs, checkpoints. */
async function leftovers(w: Workspace): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(w.dir)) {
    if (/^out\.(partial|old)-|^out\.ckpt$/.test(e.name)) names.push(e.name);
  }
  return names.sort();
}

async function withWorkspace(name: string, f: (w: Workspace) => Promise<void>): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: `qllm-faults-` });
  try {
    await f(await workspace(root, name));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

const SIGNALS: [Deno.Signal, number][] = [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]];

for (const [signal, code] of SIGNALS) {
  Deno.test(`${signal} mid-run: exit ${code}, the partial and checkpoints removed, the old output kept`, async () => {
    await withWorkspace("sig", async (w) => {
      await previousOutput(w);
      const before = await snapshot(w.dir);
      const r = await runProcess(
        "gptq",
        longRun(w, ["--offload-activations"]).filter((a) => a !== "--quiet"),
        { trigger: /block 3\/5: gptq/, signal },
      );
      assert.ok(r.triggered, r.stderr);
      assert.equal(r.code, code, r.stderr);
      assert.match(r.stderr, new RegExp(`interrupted by ${signal}; removed .*out\\.partial-`));
      assert.deepEqual(await leftovers(w), []);
      assertSame(before, await snapshot(w.dir), signal);
    });
  });
}

Deno.test("kill -9 leaves a partial; the next run removes it and writes the output", async () => {
  await withWorkspace("kill", async (w) => {
    const args = longRun(w).filter((a) => a !== "--quiet");
    const r = await runProcess("rtn", args, { trigger: /block 2\/5: rtn/ });
    assert.equal(r.signal, "SIGKILL");
    const left = await leftovers(w);
    assert.ok(left.some((n) => n.startsWith("out.partial-")), `left: ${left}`);
    const again = await runProcess("rtn", longRun(w));
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(await leftovers(w), []);
    assert.ok((await Deno.stat(`${w.out}/report.json`)).isFile);
  });
});

Deno.test("Ctrl-C of a learned method keeps its checkpoints for --resume, not its partial", async () => {
  await withWorkspace("learned", async (w) => {
    const args = longRun(w, ["--epochs", "2", "--lwc"]).filter((a) => a !== "--quiet");
    const r = await runProcess("omniquant", args, {
      trigger: /block 3\/5: omniquant epoch 1/,
      signal: "SIGINT",
    });
    assert.equal(r.code, 130, r.stderr);
    assert.deepEqual(await leftovers(w), ["out.ckpt"]);
    const ckpt = (await Array.fromAsync(Deno.readDir(`${w.out}.ckpt`))).map((e) => e.name).sort();
    assert.ok(ckpt.includes("fingerprint.json") && ckpt.includes("block-0.safetensors"), `${ckpt}`);
  });
});

Deno.test("disk full (ulimit -f): an error naming the file, nothing left, the old output kept", async () => {
  await withWorkspace("full", async (w) => {
    await previousOutput(w);
    const before = await snapshot(w.dir);
    // 1.5 MB: the calibration chain checkpoints fit, the 2.6 MB model does not.
    const r = await runProcess("gptq", smallRun(w, ["--nsamples", "16"]), { fileSizeKb: 1500 });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /error: .*out\.partial-[0-9a-f]{8}\/.*(File too large|os error 27)/);
    assert.deepEqual(await leftovers(w), []);
    assertSame(before, await snapshot(w.dir), "disk full");
  });
});
