/**
 * Reading an exact byte range of an open file, the one primitive of the readers that fetch
 * tensors by offset (llama2.c, GGUF).
 * @module
 */

/**
 * The `n` bytes of `file` at `pos`; a file that ends first is an error naming `path` and the
 * byte where it ended.
 */
export async function readAt(
  file: Deno.FsFile,
  pos: number,
  n: number,
  path: string,
): Promise<Uint8Array> {
  const buf = new Uint8Array(n);
  await file.seek(pos, Deno.SeekMode.Start);
  let got = 0;
  while (got < n) {
    const k = await file.read(buf.subarray(got));
    if (k === null) throw new Error(`${path}: unexpected end of file at byte ${pos + got}`);
    got += k;
  }
  return buf;
}
