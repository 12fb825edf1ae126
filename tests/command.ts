/** Running a pipeline as a user would (`deno run -A pipelines/NAME.ts …`), for the CLI tests. */
import { PROJECT_ROOT } from "../fixtures/paths.ts";

/** What a command printed and how it exited. */
export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `pipelines/{name}.ts` with `args` from the project root, colours off. */
export async function runPipeline(name: string, args: string[]): Promise<CommandResult> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${PROJECT_ROOT}/pipelines/${name}.ts`, ...args],
    cwd: PROJECT_ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
