/**
 * CPython-exact MT19937 and GPTQ calibration starts (PROTOCOL §4,
 * reference/peer_results.json → models.*.calibration).
 */
import assert from "node:assert/strict";
import { fixtureModel, fixtureText, SHARED_FIXTURES } from "../fixtures/paths.ts";
import { bitLength, MT19937, seedKey } from "../kernels/mt19937.ts";
import { calibrationStarts, calibrationWindows } from "../text/calibration.ts";
import { loadTokenizer } from "../text/tokenizer.ts";
import { readDataset } from "../text/dataset.ts";

const assertEquals = <T>(actual: T, expected: T, msg?: string): void =>
  assert.deepStrictEqual(actual, expected, msg as string);

interface CalibrationRef {
  file: string;
  nsamples: number;
  seqlen: number;
  seed: number;
  randint_hi: number;
  starts: number[];
}

const peer = JSON.parse(
  await Deno.readTextFile(`${SHARED_FIXTURES}/../reference/peer_results.json`),
) as {
  models: Record<string, { calibration: CalibrationRef; tokens: { train: { count: number } } }>;
};

// Expected values below were produced by CPython 3.11.7's `random` module, e.g.
// python3 -c "import random; random.seed(0); print([random.getrandbits(32) for _ in range(5)])"
Deno.test("MT19937 matches CPython: seed(0) getrandbits(32)", () => {
  const rng = new MT19937(0);
  assertEquals(
    Array.from({ length: 5 }, () => rng.getrandbits(32)),
    [3626764237, 1654615998, 3255389356, 3823568514, 1806341205],
  );
  // 1001st output after seed(0)
  const r2 = new MT19937(0);
  for (let i = 0; i < 1000; i++) r2.genrandUint32();
  assertEquals(r2.genrandUint32(), 126175447);
});

Deno.test("MT19937 matches CPython: randint, multi-word seeds, negative seeds, random()", () => {
  const r0 = new MT19937(0);
  assertEquals(
    Array.from({ length: 5 }, () => r0.randint(0, 49868)),
    [25247, 49673, 27562, 2653, 16968],
  );
  const r1 = new MT19937(1);
  assertEquals(
    Array.from({ length: 10 }, () => r1.randint(1, 6)),
    [2, 5, 1, 3, 1, 4, 4, 4, 6, 4],
  );
  const big = new MT19937(12345678901234567890n);
  assertEquals(
    Array.from({ length: 3 }, () => big.getrandbits(32)),
    [2199100970, 3695432519, 4002396509],
  );
  const neg = new MT19937(-7);
  assertEquals(
    Array.from({ length: 8 }, () => neg.randint(-5, 5)),
    [0, -3, 1, 5, -5, -4, 3, -4],
  );
  // random.seed(42); random(), getrandbits(40), getrandbits(53), randint(0, 2**40)
  const r42 = new MT19937(42);
  assertEquals(r42.random(), 0.6394267984578837);
  assertEquals(r42.getrandbits(40), 811856239313);
  assertEquals(r42.getrandbits(53), 2205789010285143);
  assertEquals(r42.randint(0, 2 ** 40), 305901360862);
});

Deno.test("MT19937 helpers: bitLength and seed key", () => {
  assertEquals([0, 1, 2, 3, 49869, 2 ** 32, 2 ** 40].map(bitLength), [0, 1, 2, 2, 16, 33, 41]);
  assertEquals(Array.from(seedKey(0)), [0]);
  assertEquals(Array.from(seedKey(-(2 ** 32 + 5))), [5, 1]);
});

for (const model of ["tinystories-656k", "stories260k"]) {
  Deno.test(`calibration starts ${model}: all 128 equal peer_results`, async () => {
    const ref = peer.models[model].calibration;
    const tok = await loadTokenizer(fixtureModel(model));
    const ids = await readDataset(fixtureText(ref.file.split("/").pop()!), tok);
    assertEquals(ids.length, peer.models[model].tokens.train.count);
    assertEquals(ids.length - ref.seqlen - 1, ref.randint_hi);
    const starts = calibrationStarts(ids.length, ref.nsamples, ref.seqlen, ref.seed);
    assertEquals(starts, ref.starts);
    const cal = calibrationWindows(ids, ref.nsamples, ref.seqlen, ref.seed);
    assertEquals(cal.starts, ref.starts);
    assertEquals(cal.data.length, ref.nsamples * ref.seqlen);
    for (const s of [0, 1, ref.nsamples - 1]) {
      const start = ref.starts[s];
      assertEquals(
        cal.data.subarray(s * ref.seqlen, (s + 1) * ref.seqlen),
        ids.slice(start, start + ref.seqlen),
      );
    }
  });
}

Deno.test("calibrationStarts rejects a too-short stream", () => {
  assert.throws(() => calibrationStarts(256, 1, 256, 0), /too few/);
  assertEquals(calibrationStarts(257, 3, 256, 0), [0, 0, 0]);
});
