/**
 * Device selection: an unknown device is refused by name; WebGPU and CUDA either work (and give
 * the CPU's result) or fail with an error that names the device — never a silent CPU fall-back.
 */
import assert from "node:assert/strict";
import { matmul } from "../kernels/matmul.ts";
import { type Device, Runtime } from "../kernels/session.ts";

Deno.test("an unknown --device is refused by name", () => {
  assert.throws(() => new Runtime("tpu" as Device), /--device: unknown device "tpu"/);
});

for (const device of ["webgpu", "cuda"] as const) {
  Deno.test(`--device ${device}: works or says why, never falls back`, async () => {
    const rt = new Runtime(device);
    const a = { data: Float32Array.from([1, 2, 3, 4, 5, 6]), shape: [2, 3] };
    const b = { data: Float32Array.from([1, 0, 0, 1, 1, 1]), shape: [3, 2] };
    try {
      const c = await matmul(rt, a, b);
      assert.deepEqual([...c.data], [4, 5, 10, 11]);
    } catch (e) {
      assert.match((e as Error).message, new RegExp(`--device ${device}`));
    } finally {
      await rt.release();
    }
  });
}
