/**
 * llama.cpp's SentencePiece tokenizer over the vocabularies we write into GGUF files gives the
 * ids of the models' own tokenizers on the whole validation text: tokenizer.json's BPE (scores
 * from merge ranks; `<unk>` for the characters the vocabulary lacks) and llama2.c's tok512.bin.
 */
import assert from "node:assert/strict";
import { fixtureModel, fixtureText } from "../fixtures/paths.ts";
import { readSpmVocab, vocabFromGguf, writeVocabGguf } from "../formats/gguf_llama.ts";
import { GgufFile } from "../formats/gguf.ts";
import { spmTokenizer, TokenType } from "../text/spm.ts";
import { loadTokenizer } from "../text/tokenizer.ts";

const VAL = await Deno.readTextFile(fixtureText("tinystories_val.txt"));

function firstDifference(a: number[], b: number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return -1;
}

Deno.test("tokenizer.json as a llama.cpp vocabulary: the BPE's ids on the whole text", async () => {
  const dir = fixtureModel("tinystories-656k");
  const v = await readSpmVocab(dir);
  assert.equal(v.tokens.length, 2048);
  assert.deepEqual([v.types[0], v.types[1], v.types[2], v.types[80]], [
    TokenType.UNKNOWN,
    TokenType.CONTROL,
    TokenType.CONTROL,
    TokenType.NORMAL,
  ]);
  assert.equal(v.scores[81], -0); // "e▁": the first merge
  const want = (await loadTokenizer(dir)).encode(VAL);
  const got = spmTokenizer(v).encode(VAL);
  assert.equal(firstDifference(got, want), -1);
  assert.ok(got.includes(0), "the text has characters the vocabulary lacks (<unk>)");
  assert.equal(spmTokenizer(v).decode(got.slice(0, 4)), "Spot. Spot ");
});

Deno.test("tok512.bin as a llama.cpp vocabulary: llama2.c's ids on the whole text", async () => {
  const dir = fixtureModel("stories260k");
  const v = await readSpmVocab(dir);
  assert.deepEqual([v.tokens[1], v.tokens[2], v.tokens[3], v.tokens[259]], [
    "<s>",
    "</s>",
    "<0x00>",
    "▁t",
  ]);
  assert.equal(v.types[13], TokenType.BYTE);
  const want = (await loadTokenizer(dir)).encode(VAL);
  assert.equal(firstDifference(spmTokenizer(v).encode(VAL), want), -1);
});

Deno.test("a vocabulary survives a vocabulary-only GGUF file", async () => {
  const tmp = await Deno.makeTempFile({ suffix: ".gguf" });
  try {
    const v = await readSpmVocab(fixtureModel("stories260k"));
    await writeVocabGguf(tmp, v);
    const f = await GgufFile.open(tmp);
    const back = vocabFromGguf(f);
    f.close();
    assert.deepEqual(back.tokens, v.tokens);
    assert.deepEqual([...back.scores], [...v.scores]);
    assert.deepEqual([...back.types], [...v.types]);
    assert.deepEqual([back.bos, back.eos, back.unk, back.addBos], [1, 2, 0, true]);
  } finally {
    await Deno.remove(tmp);
  }
});
