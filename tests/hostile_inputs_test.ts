/**
 * Hostile inputs, part 1: malformed safetensors checkpoints, configs, tokenizers, llama2.c files
 * and data files. Each case breaks one input of a small GPTQ run (or of eval / tokenize) and
 * checks the exit code, that the error names the input, and that nothing was written or
 * changed in the user's directory (tests/hostile.ts).
 */
import type { CommandMain } from "../cli/flags.ts";
import { evalMain } from "../pipelines/eval.ts";
import { gptqMain } from "../pipelines/gptq.ts";
import { tokenizeMain } from "../pipelines/tokenize.ts";
import {
  addTensor,
  type Case,
  editJson,
  editRaw,
  runCases,
  setF32,
  smallRun,
  type Workspace,
  writeRaw,
} from "./hostile.ts";

const gptq: CommandMain = async (argv, i) => void await gptqMain(argv, i);
const evaluate: CommandMain = (argv, i) => evalMain(argv, i);
const tokenize: CommandMain = async (argv) => void await tokenizeMain(argv);

const st = (w: Workspace) => `${w.model}/model.safetensors`;
const cfg = (w: Workspace) => `${w.model}/config.json`;
const Q1 = "model.layers.1.self_attn.q_proj.weight";

/** A GPTQ run after `edit` broke the workspace. */
function run(edit: (w: Workspace) => Promise<void>, extra: string[] = []) {
  return async (w: Workspace) => {
    await edit(w);
    return { main: gptq, argv: smallRun(w, extra) };
  };
}

/** A case of a broken Hugging Face checkpoint: exit 1, the error names the file (and more). */
function model(
  name: string,
  edit: (w: Workspace) => Promise<void>,
  names: (w: Workspace) => (string | RegExp)[],
): Case {
  return { name, setup: run(edit), code: 1, names };
}

const bytes = async (path: string, f: (b: Uint8Array) => Uint8Array) =>
  await Deno.writeFile(path, f(await Deno.readFile(path)));

const SAFETENSORS: Case[] = [
  model("empty safetensors file", (w) => Deno.writeFile(st(w), new Uint8Array()), (w) => [st(w)]),
  model("3-byte safetensors file", (w) => Deno.writeFile(st(w), new Uint8Array(3)), (w) => [st(w)]),
  model("header length past the file", (w) =>
    bytes(st(w), (b) => {
      new DataView(b.buffer).setBigUint64(0, BigInt(b.length), true);
      return b;
    }), (w) => [st(w)]),
  model("header length 2^60", (w) =>
    bytes(st(w), (b) => {
      new DataView(b.buffer).setBigUint64(0, 1n << 60n, true);
      return b;
    }), (w) => [st(w)]),
  model("header not JSON", (w) =>
    bytes(st(w), (b) => {
      b.fill(0x7b, 8, 40);
      return b;
    }), (w) => [st(w)]),
  model(
    "header a JSON array",
    (w) => writeRaw(st(w), { header: [1, 2], data: new Uint8Array(8) }),
    (w) => [st(w)],
  ),
  model("unknown dtype", (w) =>
    editRaw(st(w), (r) => {
      r.header[Q1].dtype = "F99";
    }), (w) => [st(w), Q1]),
  model("integer dtype for a weight", (w) =>
    editRaw(st(w), (r) => {
      r.header[Q1].dtype = "I32";
    }), (w) => [st(w), Q1, "not a float"]),
  model("data offsets past the data", (w) =>
    editRaw(st(w), (r) => {
      const o = r.header[Q1].data_offsets;
      r.header[Q1].data_offsets = [o[0] + r.data.length, o[1] + r.data.length];
    }), (w) => [st(w), Q1]),
  model("data offsets reversed", (w) =>
    editRaw(st(w), (r) => {
      const o = r.header[Q1].data_offsets;
      r.header[Q1].data_offsets = [o[1], o[0]];
    }), (w) => [st(w), Q1]),
  model("overlapping tensors", (w) =>
    editRaw(st(w), (r) => {
      const k = "model.layers.1.self_attn.k_proj.weight";
      const o = r.header[k].data_offsets;
      r.header[Q1].data_offsets = [
        o[0],
        o[0] + (r.header[Q1].data_offsets[1] -
          r.header[Q1].data_offsets[0]),
      ];
    }), (w) => [st(w)]),
  model("shape larger than its bytes", (w) =>
    editRaw(st(w), (r) => {
      r.header[Q1].shape = [256, 128];
    }), (w) => [st(w), Q1]),
  model("negative dimension", (w) =>
    editRaw(st(w), (r) => {
      r.header[Q1].shape = [-128, -128];
    }), (w) => [st(w), Q1]),
  model(
    "truncated data",
    (w) => bytes(st(w), (b) => b.subarray(0, b.length - 4096)),
    (w) => [st(w)],
  ),
  model("NaN in a block weight", (w) => editRaw(st(w), (r) => setF32(r, Q1, 77, NaN)), (w) => [
    st(w),
    Q1,
    "non-finite",
  ]),
  model(
    "+Infinity in the shared embedding",
    (w) => editRaw(st(w), (r) => setF32(r, "lm_head.weight", 5, Infinity)),
    (w) => [st(w), "non-finite"],
  ),
  model(
    "-Infinity in a norm",
    (w) => editRaw(st(w), (r) => setF32(r, "model.layers.0.input_layernorm.weight", 3, -Infinity)),
    (w) => [
      st(w),
      "model.layers.0.input_layernorm.weight",
    ],
  ),
  model(
    "NaN in the final norm",
    (w) => editRaw(st(w), (r) => setF32(r, "model.norm.weight", 0, NaN)),
    (w) => [st(w), "model.norm.weight"],
  ),
  model("a tensor missing", (w) =>
    editRaw(st(w), (r) => {
      delete r.header["model.layers.1.mlp.up_proj.weight"];
    }), (w) => [w.model, "model.layers.1.mlp.up_proj.weight", "missing"]),
  model(
    "a layer beyond num_hidden_layers",
    (w) => editRaw(st(w), (r) => addTensor(r, "model.layers.2.input_layernorm.weight", [128])),
    (w) => [st(w), "model.layers.2.input_layernorm.weight", "num_hidden_layers 2"],
  ),
  model(
    "an o_proj bias the config does not declare",
    (w) => editRaw(st(w), (r) => addTensor(r, "model.layers.0.self_attn.o_proj.bias", [128])),
    (w) => [st(w), "model.layers.0.self_attn.o_proj.bias", "does not declare"],
  ),
  model(
    "a Qwen3 q_norm the config does not declare",
    (w) => editRaw(st(w), (r) => addTensor(r, "model.layers.1.self_attn.q_norm.weight", [16])),
    (w) => [st(w), "model.layers.1.self_attn.q_norm.weight"],
  ),
  model("a weight of the wrong shape", (w) =>
    editRaw(st(w), (r) => {
      r.header["model.layers.0.mlp.up_proj.weight"].shape = [128, 384];
    }), (w) => [st(w), "model.layers.0.mlp.up_proj.weight", "[128, 384]"]),
  model("a BF16 NaN", async (w) => {
    await editRaw(st(w), (r) => {
      const t = r.header["model.norm.weight"];
      t.dtype = "BF16";
      t.data_offsets = [t.data_offsets[0], t.data_offsets[0] + 256];
      new DataView(r.data.buffer, r.data.byteOffset).setUint16(t.data_offsets[0], 0x7fc0, true);
    });
  }, (w) => [st(w), "model.norm.weight"]),
  model("no weights at all", (w) => Deno.remove(st(w)), (w) => [w.model, "no checkpoint"]),
  model("index: weight_map not an object", async (w) => {
    await Deno.writeTextFile(`${w.model}/model.safetensors.index.json`, '{"weight_map": [1]}');
  }, (w) => [`${w.model}/model.safetensors.index.json`, "weight_map"]),
  model("index: invalid JSON", async (w) => {
    await Deno.writeTextFile(`${w.model}/model.safetensors.index.json`, "{weight_map");
  }, (w) => [`${w.model}/model.safetensors.index.json`]),
  model("index: a shard that does not exist", async (w) => {
    await Deno.writeTextFile(
      `${w.model}/model.safetensors.index.json`,
      JSON.stringify({ weight_map: { [Q1]: "model-00002-of-00002.safetensors" } }),
    );
  }, (w) => [`${w.model}/model-00002-of-00002.safetensors`]),
  model("index: a shard path outside the model", async (w) => {
    await Deno.writeTextFile(
      `${w.model}/model.safetensors.index.json`,
      JSON.stringify({ weight_map: { [Q1]: "../calib.txt" } }),
    );
  }, (w) => [`${w.model}/model.safetensors.index.json`, "../calib.txt"]),
  model(
    "index: a tensor its shard does not hold",
    async (w) => {
      await Deno.writeTextFile(
        `${w.model}/model.safetensors.index.json`,
        JSON.stringify({ weight_map: { "model.layers.9.x.weight": "model.safetensors" } }),
      );
    },
    (w) => [`${w.model}/model.safetensors.index.json`, "model.layers.9.x.weight", "does not hold"],
  ),
];

/** A case of a broken config.json: exit 1, the error names the file and the key. */
function config(name: string, patch: Record<string, unknown>, names: (string | RegExp)[]): Case {
  return model(
    name,
    (w) => editJson(cfg(w), (j) => Object.assign(j, patch)),
    (w) => [cfg(w), ...names],
  );
}

const CONFIGS: Case[] = [
  model(
    "config.json: invalid JSON",
    (w) => Deno.writeTextFile(cfg(w), "{ hidden_size: 128"),
    (w) => [cfg(w)],
  ),
  model("config.json: a JSON array", (w) => Deno.writeTextFile(cfg(w), "[]"), (w) => [cfg(w)]),
  config("model_type gpt2", { model_type: "gpt2" }, ['model_type "gpt2"']),
  config("hidden_size missing", { hidden_size: undefined }, ['"hidden_size"']),
  config("hidden_size a string", { hidden_size: "128" }, ['"hidden_size" must be a number']),
  config("hidden_size 0", { hidden_size: 0 }, ['"hidden_size"']),
  config("num_hidden_layers smaller than the weights", { num_hidden_layers: 1 }, [
    "num_hidden_layers 1",
    "model.layers.1.",
  ]),
  config("num_hidden_layers larger than the weights", { num_hidden_layers: 3 }, [
    "model.layers.2.",
    "missing",
  ]),
  config("heads not a multiple of the KV heads", { num_key_value_heads: 3 }, [
    "num_key_value_heads 3",
  ]),
  config("odd head_dim", { head_dim: 15 }, ["head_dim 15"]),
  config("rms_norm_eps 0", { rms_norm_eps: 0 }, ['"rms_norm_eps" must be positive']),
  config("rms_norm_eps negative", { rms_norm_eps: -1e-6 }, ['"rms_norm_eps"']),
  config("rope_theta 0", { rope_theta: 0 }, ['"rope_theta"']),
  config("hidden_act gelu", { hidden_act: "gelu" }, ['hidden_act "gelu"']),
  config("a sliding window on some layers only (Qwen's max_window_layers)", {
    model_type: "qwen2",
    use_sliding_window: true,
    sliding_window: 16,
    max_window_layers: 1,
  }, ["max_window_layers 1 of 2"]),
  config("rope_scaling yarn", { rope_scaling: { rope_type: "yarn", factor: 4 } }, [
    'rope_scaling type "yarn"',
  ]),
  config("mlp_bias true without the biases", { mlp_bias: true }, [
    "mlp.gate_proj.bias",
    "missing",
  ]),
  config("attention_bias true without the biases", { attention_bias: true }, [
    "self_attn.q_proj.bias",
    "missing",
  ]),
  config("model_type qwen3 without q/k norms", { model_type: "qwen3" }, [
    "self_attn.q_norm.weight",
    "missing",
  ]),
  config("vocab_size smaller than the embedding", { vocab_size: 1000 }, [
    "[1000, 128]",
    "model.embed_tokens.weight",
  ]),
  config("tie_word_embeddings a string", { tie_word_embeddings: "yes" }, [
    '"tie_word_embeddings"',
  ]),
  config("quantization_config.activation_bits 1", {
    quantization_config: { activation_bits: 1 },
  }, ["activation_bits"]),
  config("extra_block_tensors not shapes", {
    quantization_config: { extra_block_tensors: { x: "y" } },
  }, ["extra_block_tensors"]),
  model("config.json is a directory", async (w) => {
    await Deno.remove(cfg(w));
    await Deno.mkdir(cfg(w));
  }, (w) => [cfg(w)]),
  {
    name: "max_position_embeddings shorter than --seqlen",
    setup: run((w) => editJson(cfg(w), (j) => Object.assign(j, { max_position_embeddings: 16 }))),
    code: 2,
    names: () => ["--seqlen 64", "max_position_embeddings 16"],
  },
];

const tj = (w: Workspace) => `${w.model}/tokenizer.json`;
const tc = (w: Workspace) => `${w.model}/tokenizer_config.json`;

const TOKENIZERS: Case[] = [
  model("tokenizer.json: invalid JSON", (w) => Deno.writeTextFile(tj(w), "{"), (w) => [tj(w)]),
  model("tokenizer.json: a JSON array", (w) => Deno.writeTextFile(tj(w), "[]"), (w) => [tj(w)]),
  model("tokenizer.json: no model", (w) =>
    editJson(tj(w), (j) => {
      delete j.model;
    }), (w) => [tj(w), '"model"']),
  model("tokenizer.json: model a string", (w) =>
    editJson(tj(w), (j) => {
      j.model = "BPE";
    }), (w) => [tj(w)]),
  model("tokenizer.json: vocab a list", (w) =>
    editJson(tj(w), (j) => {
      (j.model as Record<string, unknown>).vocab = [1, 2];
    }), (w) => [tj(w)]),
  model("tokenizer.json: merges not a list", (w) =>
    editJson(tj(w), (j) => {
      (j.model as Record<string, unknown>).merges = 5;
    }), (w) => [tj(w)]),
  model("tokenizer_config.json: invalid JSON", (w) => Deno.writeTextFile(tc(w), "{,}"), (w) => [
    tc(w),
  ]),
  model("no tokenizer at all", (w) => Deno.remove(tj(w)), (w) => [w.model, "no tokenizer"]),
  {
    name: "chat JSONL without a chat template",
    setup: async (w) => {
      await Deno.writeTextFile(
        `${w.dir}/chat.jsonl`,
        JSON.stringify({ messages: [{ role: "user", content: "hi" }] }) + "\n",
      );
      return { main: gptq, argv: smallRun(w, ["--calib", `${w.dir}/chat.jsonl`]) };
    },
    code: 1,
    names: (w) => [`${w.dir}/chat.jsonl:1`, "--calib", "no chat template"],
  },
  {
    name: "chat template with a syntax error",
    setup: async (w) => {
      await editJson(tc(w), (j) => (j.chat_template = "{% for m in messages %}{{ m.content }"));
      await Deno.writeTextFile(
        `${w.dir}/chat.jsonl`,
        "\n" + JSON.stringify({ messages: [{ role: "user", content: "hi" }] }) + "\n",
      );
      return { main: gptq, argv: smallRun(w, ["--calib", `${w.dir}/chat.jsonl`]) };
    },
    code: 1,
    names: (w) => [`${w.dir}/chat.jsonl:2`, "chat template"],
  },
  {
    name: "llama2.c tokenizer truncated",
    setup: async (w) => {
      await bytes(`${w.llama}/tok512.bin`, (b) => b.subarray(0, 300));
      return { main: gptq, argv: smallRun(w, ["--model", `${w.llama}/stories260K.bin`]) };
    },
    code: 1,
    names: (w) => [`${w.llama}/tok512.bin`],
  },
  {
    name: "llama2.c tokenizer with a negative token length",
    setup: async (w) => {
      await bytes(`${w.llama}/tok512.bin`, (b) => {
        new DataView(b.buffer).setInt32(8, -5, true);
        return b;
      });
      return { main: gptq, argv: smallRun(w, ["--model", `${w.llama}/stories260K.bin`]) };
    },
    code: 1,
    names: (w) => [`${w.llama}/tok512.bin`, "length -5"],
  },
  {
    name: "tokenize.ts: a tokenizer directory without tokenizer.json",
    setup: async (w) => {
      await Deno.mkdir(`${w.dir}/empty`);
      return { main: tokenize, argv: ["--tokenizer", `${w.dir}/empty`, "--data", w.val] };
    },
    code: 1,
    names: (w) => ["--tokenizer", `${w.dir}/empty`],
  },
  {
    name: "tokenize.ts: --data missing",
    setup: (w) => Promise.resolve({ main: tokenize, argv: ["--tokenizer", w.model] }),
    code: 2,
    names: () => ["--data is required"],
  },
];

const bin = (w: Workspace) => `${w.llama}/stories260K.bin`;
const header = (i: number, v: number) => (w: Workspace) =>
  bytes(bin(w), (b) => {
    new DataView(b.buffer).setInt32(4 * i, v, true);
    return b;
  });

/** A broken llama2.c checkpoint: exit 1, the error names the .bin. */
function llama(name: string, edit: (w: Workspace) => Promise<void>, names: string[] = []): Case {
  return {
    name,
    setup: async (w) => {
      await edit(w);
      return { main: gptq, argv: smallRun(w, ["--model", bin(w)]) };
    },
    code: 1,
    names: (w) => [bin(w), ...names],
  };
}

/** Byte offset of `wq` of layer `layer` in stories260K.bin (dim 64, vocab 512, 5 layers). */
const WQ = (layer: number) => 28 + 4 * (512 * 64 + 5 * 64 + layer * 64 * 64);

const LLAMA2C: Case[] = [
  llama("shorter than its header", (w) => bytes(bin(w), (b) => b.subarray(0, 10)), ["too short"]),
  llama("negative dim", header(0, -64), ["non-positive"]),
  llama("header claims 4 layers of 5", header(2, 4), ["fits n_layers 5"]),
  llama("header claims 6 layers of 5", header(2, 6), ["truncated"]),
  llama("truncated mid-weights", (w) => bytes(bin(w), (b) => b.subarray(0, b.length - 1000)), [
    "truncated",
  ]),
  llama("trailing garbage", (w) =>
    bytes(bin(w), (b) => {
      const out = new Uint8Array(b.length + 100);
      out.set(b);
      return out;
    }), ["implies"]),
  llama("dim not a multiple of n_heads", header(3, 7), ["n_heads 7"]),
  llama("vocab_size 0", header(5, 0), ["vocab_size"]),
  llama("n_kv_heads not dividing n_heads", header(4, 3), ["n_kv_heads 3"]),
  llama("an all-zero header", (w) =>
    bytes(bin(w), (b) => {
      b.fill(0, 0, 28);
      return b;
    }), ["non-positive"]),
  llama("NaN in wq of layer 2", (w) =>
    bytes(bin(w), (b) => {
      new DataView(b.buffer).setFloat32(WQ(2) + 40, NaN, true);
      return b;
    }), ["wq of layer 2", "non-finite"]),
  llama("Infinity in the embedding", (w) =>
    bytes(bin(w), (b) => {
      new DataView(b.buffer).setFloat32(28 + 400, Infinity, true);
      return b;
    }), ["tok_embeddings", "non-finite"]),
];

/** A broken data file passed as `flag`. */
function data(
  name: string,
  file: string,
  contents: Uint8Array | string,
  flag: "--calib" | "--eval",
  code: number,
  names: string[],
): Case {
  return {
    name,
    setup: async (w) => {
      const path = `${w.dir}/${file}`;
      if (typeof contents === "string") await Deno.writeTextFile(path, contents);
      else await Deno.writeFile(path, contents);
      return { main: gptq, argv: smallRun(w, [flag, path]) };
    },
    code,
    names: (w) => [flag, `${w.dir}/${file}`, ...names],
  };
}

const random = (n: number, seed = 7) => {
  let x = seed;
  return Uint8Array.from({ length: n }, () => (x = (x * 1103515245 + 12345) >>> 0) >>> 24);
};

const DATA: Case[] = [
  {
    name: "--calib: no such file",
    setup: (w) =>
      Promise.resolve({ main: gptq, argv: smallRun(w, ["--calib", `${w.dir}/nope.txt`]) }),
    code: 1,
    names: (w) => ["--calib", `${w.dir}/nope.txt`, "no such file"],
  },
  {
    name: "--calib: a directory",
    setup: async (w) => {
      await Deno.mkdir(`${w.dir}/d.txt`);
      return { main: gptq, argv: smallRun(w, ["--calib", `${w.dir}/d.txt`]) };
    },
    code: 1,
    names: (w) => ["--calib", `${w.dir}/d.txt`],
  },
  data("--calib: empty", "empty.txt", "", "--calib", 2, ["too few"]),
  data("--calib: shorter than a window", "short.txt", "Once upon a time.", "--calib", 2, [
    "too few",
  ]),
  data("--calib: random bytes", "random.txt", random(30000), "--calib", 1, ["not a text file"]),
  data(
    "--calib: control bytes",
    "ctrl.txt",
    Uint8Array.from({ length: 20000 }, (_, i) => i % 8),
    "--calib",
    1,
    ["not a text file"],
  ),
  data(
    "--calib: invalid UTF-8",
    "latin.txt",
    Uint8Array.from({ length: 20000 }, (_, i) => 0xe9 + (i % 3) * 0x10),
    "--calib",
    1,
    ["invalid UTF-8"],
  ),
  data(
    "--calib: UTF-16 text",
    "utf16.txt",
    Uint8Array.from({ length: 40000 }, (_, i) => i % 2 ? 0 : 97 + (i % 26)),
    "--calib",
    1,
    ["not a text file"],
  ),
  data("--calib: a .csv file", "data.csv", "a,b\n1,2\n", "--calib", 1, ["unsupported file type"]),
  data(
    "--calib: JSONL with a broken line",
    "bad.jsonl",
    '{"text": "a"}\n{"text": \n',
    "--calib",
    1,
    [
      "bad.jsonl:2",
      "invalid JSON",
    ],
  ),
  data("--calib: JSONL without text", "notext.jsonl", '{"body": "a"}\n', "--calib", 1, [
    "notext.jsonl:1",
  ]),
  data("--calib: JSONL text not a string", "num.jsonl", '{"text": 5}\n', "--calib", 1, [
    "num.jsonl:1",
  ]),
  data("--calib: JSONL of arrays", "arr.jsonl", "[1, 2]\n", "--calib", 1, ["arr.jsonl:1"]),
  data("--calib: a model file as text", "model.txt", random(50000, 3), "--calib", 1, [
    "not a text file",
  ]),
  {
    name: "--eval: no such file",
    setup: (w) => Promise.resolve({ main: gptq, argv: smallRun(w, ["--eval", `${w.dir}/x.txt`]) }),
    code: 1,
    names: (w) => ["--eval", `${w.dir}/x.txt`],
  },
  data("--eval: shorter than one window", "tiny.txt", "The end.", "--eval", 2, [
    "not one window of 64",
  ]),
  data("--eval: random bytes", "noise.txt", random(20000, 11), "--eval", 1, ["not a text file"]),
  data("--eval: empty JSONL", "empty.jsonl", "\n\n", "--eval", 2, ["0 tokens"]),
  {
    name: "eval.ts: random bytes as --data",
    setup: async (w) => {
      await Deno.writeFile(`${w.dir}/r.txt`, random(20000, 5));
      return { main: evaluate, argv: ["--model", w.model, "--data", `${w.dir}/r.txt`] };
    },
    code: 1,
    names: (w) => ["--data", `${w.dir}/r.txt`, "not a text file"],
  },
  {
    name: "eval.ts: --data shorter than a window",
    setup: async (w) => {
      await Deno.writeTextFile(`${w.dir}/s.txt`, "Hi.");
      return { main: evaluate, argv: ["--model", w.model, "--data", `${w.dir}/s.txt`] };
    },
    code: 2,
    names: (w) => ["--data", `${w.dir}/s.txt`, "not one window"],
  },
  {
    name: "eval.ts: NaN weights",
    setup: async (w) => {
      await editRaw(st(w), (r) => setF32(r, Q1, 0, NaN));
      return { main: evaluate, argv: ["--model", w.model, "--data", w.val] };
    },
    code: 1,
    names: (w) => [st(w), Q1],
  },
  {
    name: "tokenize.ts: random bytes",
    setup: async (w) => {
      await Deno.writeFile(`${w.dir}/r.txt`, random(20000, 9));
      return { main: tokenize, argv: ["--tokenizer", w.model, "--data", `${w.dir}/r.txt`] };
    },
    code: 1,
    names: (w) => ["--data", `${w.dir}/r.txt`],
  },
];

runCases("safetensors", SAFETENSORS);
runCases("config", CONFIGS);
runCases("tokenizer", TOKENIZERS);
runCases("llama2.c", LLAMA2C);
runCases("data", DATA);
