/**
 * Writes a generated table into README.md between `<!-- bench:NAME -->` and
 * `<!-- /bench:NAME -->`, so the README's tables come from benchmark runs, never typed by hand,
 * and formats the file as `deno fmt` does.
 * @module
 */
import { PROJECT_ROOT } from "../fixtures/paths.ts";

/** Replaces (or appends) the section `name` of README.md with `markdown`. */
export async function writeReadmeSection(name: string, markdown: string): Promise<void> {
  const path = `${PROJECT_ROOT}/README.md`;
  const text = await Deno.readTextFile(path);
  const open = `<!-- bench:${name} -->`, close = `<!-- /bench:${name} -->`;
  const block = `${open}\n${markdown.trim()}\n${close}`;
  const a = text.indexOf(open), b = text.indexOf(close);
  const next = a >= 0 && b > a
    ? text.slice(0, a) + block + text.slice(b + close.length)
    : `${text.trimEnd()}\n\n${block}\n`;
  const tmp = `${path}.tmp`;
  await Deno.writeTextFile(tmp, next);
  await Deno.rename(tmp, path);
  // The README is kept as `deno fmt` writes it (aligned tables), so `deno task check` passes.
  await new Deno.Command(Deno.execPath(), { args: ["fmt", "-q", path] }).output();
}
