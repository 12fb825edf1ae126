/**
 * Hostile inputs, part 2: flags and `--out` targets. Bad flags are refused before any work with
 * exit 2 and the flag named; `--out` never replaces the working directory, the root, the model,
 * the data or a file or directory that is not ours (unless `--overwrite`, and never the first
 * ones), while an output of ours is replaced whole and stale temporaries of killed runs are
 * removed (tests/hostile.ts checks that nothing else changed).
 */
import assert from "node:assert/strict";
import { MARKER } from "../formats/output_dir.ts";
import { abqMain } from "../pipelines/abq.ts";
import { claqMain } from "../pipelines/claq.ts";
import { exportMain as exportCommand } from "../pipelines/export.ts";
import type { CommandMain } from "../cli/flags.ts";
import { gptqMain } from "../pipelines/gptq.ts";
import { omniquantMain } from "../pipelines/omniquant.ts";
import { qllmMain } from "../pipelines/qllm.ts";
import { rtnMain } from "../pipelines/rtn.ts";
import { fixtureModel } from "../fixtures/paths.ts";
import { openModel } from "../formats/open.ts";
import { ModelWriter } from "../formats/writer.ts";
import { runQuantization } from "../run/quantize.ts";
import { propagate } from "../stages/propagate.ts";
import { type LinearQuantizer, quantizeLinears } from "../stages/quantize_linears.ts";
import {
  assertSame,
  type Case,
  runCases,
  smallRun,
  snapshot,
  type Workspace,
  workspace,
} from "./hostile.ts";

const cmd = (f: (argv: string[], i?: never) => Promise<unknown>): CommandMain => async (argv) =>
  void await f(argv);
const gptq = cmd(gptqMain), rtn = cmd(rtnMain), claq = cmd(claqMain);
const omni = cmd(omniquantMain), abq = cmd(abqMain), qllm = cmd(qllmMain);
const exportMain = cmd(exportCommand);

/** A flag case: exit 2, the error names `names`. */
function flag(name: string, main: CommandMain, extra: string[], names: string[]): Case {
  return {
    name,
    setup: (w) => Promise.resolve({ main, argv: smallRun(w, extra) }),
    code: 2,
    names: () => names,
  };
}

const FLAGS: Case[] = [
  flag("--wbits 0", gptq, ["--wbits", "0"], ["--wbits 0"]),
  flag("--wbits 1", gptq, ["--wbits", "1"], ["--wbits 1"]),
  flag("--wbits 17", rtn, ["--wbits", "17"], ["--wbits 17"]),
  flag("--wbits abc", gptq, ["--wbits", "abc"], ["--wbits abc"]),
  flag("--group-size 7 (does not divide 128)", gptq, ["--group-size", "7"], [
    "--group-size 7",
    "input width 128",
  ]),
  flag("--group-size 48 for RTN", rtn, ["--group-size", "48"], ["--group-size 48"]),
  flag("--group-size -1", gptq, ["--group-size=-1"], ["--group-size -1"]),
  flag("--group-size -1 without =", gptq, ["--group-size", "-1"], ["--group-size"]),
  flag("--nsamples 0", gptq, ["--nsamples", "0"], ["--nsamples 0"]),
  flag("--nsamples 100000000 (memory)", gptq, ["--nsamples", "100000000"], [
    "--nsamples 100000000",
    "GiB",
    "available",
  ]),
  flag("--seqlen 1", gptq, ["--seqlen", "1"], ["--seqlen 1"]),
  flag("--seqlen past max positions", gptq, ["--seqlen", "100000"], [
    "--seqlen 100000",
    "max_position_embeddings 512",
  ]),
  flag("--eval-windows 0", gptq, ["--eval-windows", "0"], ["--eval-windows 0"]),
  flag("--device tpu", gptq, ["--device", "tpu"], ["--device tpu"]),
  flag("an unknown flag", gptq, ["--foo"], ["--foo"]),
  flag("--abits 1", rtn, ["--abits", "1"], ["--abits 1"]),
  flag("--abits 17", rtn, ["--abits", "17"], ["--abits 17"]),
  flag("--kv-bits 0", rtn, ["--kv-bits", "0"], ["--kv-bits 0"]),
  flag("--act-scheme foo", rtn, ["--act-scheme", "foo"], ["--act-scheme foo"]),
  flag("--act-scheme static without --abits", rtn, ["--act-scheme", "static"], [
    "--act-scheme static",
  ]),
  flag("--percdamp 2", gptq, ["--percdamp", "2"], ["--percdamp 2"]),
  flag("--offload-activations with --keep-activations", gptq, [
    "--offload-activations",
    "--keep-activations",
  ], ["--offload-activations", "--keep-activations"]),
  flag("--offload-activations for a learned method", omni, ["--offload-activations"], [
    "--offload-activations",
  ]),
  flag("--target-bits 1", claq, ["--target-bits", "1"], ["--target-bits 1"]),
  flag("--outlier-ratio 0.5", claq, ["--outlier-ratio", "0.5"], ["--outlier-ratio 0.5"]),
  flag("--epochs -1", omni, ["--epochs=-1"], ["--epochs -1"]),
  flag("--batch 3 does not divide --nsamples 4", omni, ["--batch", "3"], [
    "--batch 3",
    "--nsamples 4",
  ]),
  flag("--alpha 2", omni, ["--alpha", "2"], ["--alpha 2"]),
  flag("--lwc-lr -1", omni, ["--lwc-lr=-1"], ["--lwc-lr -1"]),
  flag("--bit-balance at 4 bits", abq, ["--bit-balance"], ["--bit-balance", "--wbits 4"]),
  flag("--lora-rank 0", qllm, ["--lora-rank", "0"], ["--lora-rank 0"]),
  flag("--channel-ratio 2", qllm, ["--channel-ratio", "2"], ["--channel-ratio 2"]),
  flag("--merge-score foo", qllm, ["--merge-score", "foo"], ["--merge-score foo"]),
  flag("--num-layer 0", qllm, ["--num-layer", "0"], ["--num-layer 0"]),
  flag("--seed -1", gptq, ["--seed=-1"], ["--seed -1"]),
  {
    name: "--resume: no such directory",
    setup: (w) =>
      Promise.resolve({ main: gptq, argv: smallRun(w, ["--resume", `${w.dir}/nothing`]) }),
    code: 2,
    names: (w) => ["--resume", `${w.dir}/nothing`],
  },
  {
    name: "--resume: a directory without a fingerprint",
    setup: async (w) => {
      await Deno.mkdir(`${w.dir}/mine`);
      await Deno.writeTextFile(`${w.dir}/mine/notes.txt`, "mine");
      return { main: gptq, argv: smallRun(w, ["--resume", `${w.dir}/mine`]) };
    },
    code: 2,
    names: (w) => ["--resume", `${w.dir}/mine`, "fingerprint.json"],
  },
  {
    name: "--resume: checkpoints of other settings",
    setup: async (w) => {
      await Deno.mkdir(`${w.out}.ckpt`);
      const fp = { version: 1, method: "gptq", wbits: 3, group_size: 0 };
      await Deno.writeTextFile(`${w.out}.ckpt/fingerprint.json`, JSON.stringify(fp));
      return { main: gptq, argv: smallRun(w, ["--resume", `${w.out}.ckpt`]) };
    },
    code: 2,
    names: (w) => ["--resume", `${w.out}.ckpt`, "wbits: was 3, now 4"],
  },
  {
    name: "--model: no such path",
    setup: (w) => Promise.resolve({ main: gptq, argv: smallRun(w, ["--model", `${w.dir}/m`]) }),
    code: 1,
    names: (w) => ["--model", `${w.dir}/m`],
  },
  {
    name: "--model: a directory that is no model",
    setup: async (w) => {
      await Deno.mkdir(`${w.dir}/m`);
      return { main: gptq, argv: smallRun(w, ["--model", `${w.dir}/m`]) };
    },
    code: 1,
    names: (w) => ["--model", `${w.dir}/m`],
  },
  {
    name: "export.ts: --out a directory of the user's",
    setup: async (w) => {
      await Deno.mkdir(`${w.dir}/x.onnx`);
      await Deno.writeTextFile(`${w.dir}/x.onnx/notes.txt`, "mine\n");
      return { main: exportMain, argv: ["--model", w.model, "--out", `${w.dir}/x.onnx`] };
    },
    code: 2,
    names: (w) => ["--out", `${w.dir}/x.onnx`],
  },
  {
    name: "export.ts: --out the model's weights",
    setup: (w) =>
      Promise.resolve({
        main: exportMain,
        argv: ["--model", w.model, "--out", `${w.model}/model.safetensors`],
      }),
    code: 2,
    names: (w) => ["--out", `${w.model}/model.safetensors`],
  },
  {
    name: "export.ts: a directory that cannot be written",
    setup: (w) =>
      Promise.resolve({
        main: exportMain,
        argv: ["--model", w.model, "--out", `${w.dir}/no/such/dir/m.onnx`],
      }),
    code: 1,
    names: (w) => ["--out", `${w.dir}/no/such/dir/m.onnx`],
  },
];

/** Runs `main` with `dir` as the working directory. */
function inDir(dir: (w: Workspace) => string, w: Workspace, main: CommandMain): CommandMain {
  return async (argv, i) => {
    const old = Deno.cwd();
    Deno.chdir(dir(w));
    try {
      await main(argv, i);
    } finally {
      Deno.chdir(old);
    }
  };
}

/** A refused `--out`: exit 2, the error names the flag. */
function refused(
  name: string,
  out: (w: Workspace) => string,
  names: string[],
  o: {
    prepare?: (w: Workspace) => Promise<void>;
    cwd?: (w: Workspace) => string;
    extra?: string[];
  } = {},
): Case {
  return {
    name,
    setup: async (w) => {
      await o.prepare?.(w);
      const main = o.cwd ? inDir(o.cwd, w, gptq) : gptq;
      const extra = (o.extra ?? []).map((a) => a === "LLAMA" ? `${w.llama}/stories260K.bin` : a);
      return { main, argv: smallRun(w, ["--out", out(w), ...extra]) };
    },
    code: 2,
    names: (w) => [`--out ${out(w)}`, ...names],
  };
}

const userFiles = async (dir: string) => {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/thesis.tex`, "years of work");
};
const cwdDir = (w: Workspace) => `${w.dir}/work/here`;

/** A successful run writing `--out` (only `out` and nothing else may change). */
function accepted(
  name: string,
  prepare: (w: Workspace) => Promise<void>,
  check: (w: Workspace) => Promise<void>,
  extra: string[] = [],
  mayChange = ["out"],
): Case {
  return {
    name,
    setup: async (w) => {
      await prepare(w);
      return { main: rtn, argv: smallRun(w, extra) };
    },
    code: 0,
    names: () => [],
    mayChange,
    check,
  };
}

const isOurs = async (w: Workspace) => {
  const marker = JSON.parse(await Deno.readTextFile(`${w.out}/${MARKER}`));
  assert.equal(marker.tool, "qllm-deno");
  assert.ok((await Deno.stat(`${w.out}/report.json`)).isFile);
  const left = [];
  for await (const e of Deno.readDir(w.dir)) {
    if (/\.(partial|old)-|\.ckpt$/.test(e.name)) left.push(e.name);
  }
  assert.deepEqual(left, [], "no temporaries left beside the output");
};

const OUT: Case[] = [
  refused(".", () => ".", ["working directory"], {
    prepare: (w) => userFiles(cwdDir(w)),
    cwd: cwdDir,
  }),
  refused("..", () => "..", ["working directory or a directory above it"], {
    prepare: (w) => userFiles(cwdDir(w)),
    cwd: cwdDir,
  }),
  refused("the working directory by its absolute path", (w) => cwdDir(w), ["working directory"], {
    prepare: (w) => userFiles(cwdDir(w)),
    cwd: cwdDir,
  }),
  refused("the model itself", (w) => w.model, ["--model"]),
  refused("the model's parent", (w) => w.dir, ["holds --model"]),
  refused("a llama2.c model file", (w) => `${w.llama}/stories260K.bin`, ["--model"], {
    extra: ["--model", "LLAMA"],
  }),
  refused("the llama2.c model's folder", (w) => w.llama, ["holds --model"], {
    extra: ["--model", "LLAMA"],
  }),
  refused("the calibration file", (w) => w.calib, ["--calib"]),
  refused("the root directory", () => "/", ["root"]),
  refused("an existing file", (w) => `${w.dir}/notes.txt`, ["a file"], {
    prepare: (w) => Deno.writeTextFile(`${w.dir}/notes.txt`, "mine"),
  }),
  refused("a directory of the user's", (w) => `${w.dir}/docs`, ["not an output of qllm-deno"], {
    prepare: (w) => userFiles(`${w.dir}/docs`),
  }),
  refused("a symbolic link to the user's directory", (w) => `${w.dir}/link`, ["symbolic link"], {
    prepare: async (w) => {
      await userFiles(`${w.dir}/docs`);
      await Deno.symlink(`${w.dir}/docs`, `${w.dir}/link`);
    },
  }),
  refused("--overwrite does not make . acceptable", () => ".", ["working directory"], {
    prepare: (w) => userFiles(cwdDir(w)),
    cwd: cwdDir,
    extra: ["--overwrite"],
  }),
  refused("--overwrite does not make the model acceptable", (w) => w.model, ["--model"], {
    extra: ["--overwrite"],
  }),
  refused("--overwrite does not make the eval file's folder acceptable", (w) => w.dir, [
    "--model",
  ], { extra: ["--overwrite"] }),
  {
    name: "--out empty",
    setup: (w) => Promise.resolve({ main: gptq, argv: smallRun(w, ["--out", ""]) }),
    code: 2,
    names: () => ["--out", "empty"],
  },
  {
    name: "--out below a file",
    setup: async (w) => {
      await Deno.writeTextFile(`${w.dir}/f`, "mine");
      return { main: gptq, argv: smallRun(w, ["--out", `${w.dir}/f/out`]) };
    },
    code: 2,
    names: (w) => [`--out ${w.dir}/f/out`, "not a directory"],
  },
  {
    name: "--out where nothing can be created",
    setup: (w) => Promise.resolve({ main: gptq, argv: smallRun(w, ["--out", "/proc/qllm-out"]) }),
    code: 2,
    names: () => ["--out /proc/qllm-out", "cannot create files in /proc"],
  },
  {
    name: "the checkpoint directory holds the user's files",
    setup: async (w) => {
      await userFiles(`${w.out}.ckpt`);
      return { main: gptq, argv: smallRun(w) };
    },
    code: 2,
    names: (w) => [`${w.out}.ckpt`, "thesis.tex"],
  },
  accepted("an empty directory is used", (w) => Deno.mkdir(w.out), isOurs),
  accepted("an output of ours is replaced whole", async (w) => {
    await Deno.mkdir(w.out);
    await Deno.writeTextFile(`${w.out}/${MARKER}`, JSON.stringify({ tool: "qllm-deno" }));
    await Deno.writeTextFile(`${w.out}/old-extra.txt`, "from the older run");
  }, async (w) => {
    await isOurs(w);
    await assert.rejects(() => Deno.stat(`${w.out}/old-extra.txt`));
  }),
  accepted(
    "--overwrite replaces a directory that is not ours",
    (w) => userFiles(w.out),
    async (w) => {
      await isOurs(w);
      await assert.rejects(() => Deno.stat(`${w.out}/thesis.tex`));
    },
    ["--overwrite"],
  ),
  accepted(
    "a stale partial of a killed run is removed, a live one kept",
    async (w) => {
      await Deno.mkdir(`${w.out}.partial-0000dead`);
      await Deno.writeTextFile(
        `${w.out}.partial-0000dead/.qllm-partial.json`,
        JSON.stringify({ pid: 2 ** 22 + 17, start: "1" }),
      );
      await Deno.writeFile(`${w.out}.partial-0000dead/activations.tmp`, new Uint8Array(1024));
      await Deno.mkdir(`${w.out}.partial-00a11ve0`);
      await Deno.writeTextFile(
        `${w.out}.partial-00a11ve0/.qllm-partial.json`,
        JSON.stringify({ pid: Deno.pid, start: null }),
      );
    },
    async (w) => {
      await assert.rejects(() => Deno.stat(`${w.out}.partial-0000dead`));
      assert.ok((await Deno.stat(`${w.out}.partial-00a11ve0`)).isDirectory);
      await Deno.remove(`${w.out}.partial-00a11ve0`, { recursive: true });
    },
    [],
    ["out", "out.partial-0000dead", "out.partial-00a11ve0"],
  ),
  accepted(
    "an old output moved aside by a killed replacement is put back, then replaced",
    async (w) => {
      await Deno.mkdir(`${w.out}.old-0123abcd`);
      await Deno.writeTextFile(
        `${w.out}.old-0123abcd/${MARKER}`,
        JSON.stringify({ tool: "qllm-deno" }),
      );
      await Deno.writeTextFile(
        `${w.out}.old-0123abcd/.qllm-partial.json`,
        JSON.stringify({ pid: 2 ** 22 + 19 }),
      );
    },
    isOurs,
    [],
    ["out", "out.old-0123abcd"],
  ),
];

runCases("flags", FLAGS);
runCases("--out", OUT);

Deno.test("a quantizer that produces NaN stops the run naming the layer; nothing is written", async () => {
  const root = await Deno.makeTempDir({ prefix: "qllm-nan-quantizer-" });
  try {
    const w = await workspace(root, "w");
    const before = await snapshot(w.dir);
    const broken: LinearQuantizer = {
      name: "broken",
      trueSequential: false,
      quantize(_ctx, layer, W) {
        const data = W.data.slice();
        if (layer === "mlp.up_proj") data[3] = NaN;
        return Promise.resolve({ weight: { data, shape: W.shape }, storedBits: 32 });
      },
    };
    await assert.rejects(
      () =>
        runQuantization({
          method: "broken",
          wbits: 4,
          abits: 16,
          groupSize: 0,
          stages: () => [quantizeLinears(broken), propagate()],
          model: w.model,
          out: w.out,
          calib: { file: w.calib, nsamples: 4, seqlen: 64, seed: 0 },
          eval: { files: [w.val], windows: 2 },
          quiet: true,
        }),
      /block 1: broken produced a non-finite weight in mlp\.up_proj/,
    );
    assertSame(before, await snapshot(w.dir), "nothing written");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("the model writer refuses a non-finite tensor, naming it", async () => {
  const root = await Deno.makeTempDir({ prefix: "qllm-nan-writer-" });
  try {
    const c = await openModel(fixtureModel("tinystories-656k"));
    const writer = await ModelWriter.create(`${root}/out`, c.config);
    c.close();
    await assert.rejects(
      () => writer.add("model.norm.weight", { data: Float32Array.of(1, Infinity), shape: [2] }),
      /tensor "model\.norm\.weight" has a non-finite value \(Infinity at index 1\)/,
    );
    await writer.abort();
    assert.deepEqual(await Array.fromAsync(Deno.readDir(root)), []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
