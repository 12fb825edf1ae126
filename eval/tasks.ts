/**
 * Zero-shot multiple-choice task files: our own JSON lines (`{"context", "choices", "gold"}`) and
 * the public datasets as users have them on disk (PIQA, ARC, HellaSwag, WinoGrande, BoolQ as JSON
 * lines, one document per line, or lm-evaluation-harness's `--log_samples` files, whose lines
 * carry the document under `doc`). Each document becomes the requests lm-evaluation-harness
 * builds for it: its context and, per choice, the target delimiter `" "` and the choice —
 * or, for WinoGrande's partial scoring, one context per option and the same continuation.
 * @module
 */
import { jsonLines } from "../text/dataset.ts";

/** What the harness puts between a context and a choice (its `target_delimiter`). */
export const TARGET_DELIMITER = " ";

/** One (context, continuation) pair to score; the continuation holds the delimiter. */
export interface ChoiceRequest {
  /** Text the choice is conditioned on. */
  context: string;
  /** Text whose log-likelihood is summed. */
  continuation: string;
}

/** One question of a task. */
export interface Question {
  /** One request per choice, in choice order. */
  requests: ChoiceRequest[];
  /** Index of the right choice. */
  gold: number;
  /**
   * The choices as the harness lists them (`doc_to_choice`): their lengths normalise `acc_norm`
   * (for WinoGrande these are the partial contexts).
   */
  choices: string[];
}

/** The formats {@linkcode readTask} recognises, by the fields of a line. */
export type TaskFormat = "jsonl" | "piqa" | "arc" | "hellaswag" | "winogrande" | "boolq";

/** An accuracy the harness reports. */
export type TaskMetric = "acc" | "acc_norm";

/** A task read from a file. */
export interface Task {
  /** The file's name without its extension (the report's key). */
  name: string;
  /** The file it was read from. */
  path: string;
  /** Which format its lines are in. */
  format: TaskFormat;
  /** The accuracies the harness reports for it. */
  metrics: TaskMetric[];
  /** Its questions, in file order. */
  questions: Question[];
}

type Doc = Record<string, unknown>;

interface FormatSpec {
  /** Fields whose presence identifies the format. */
  fields: string[];
  /** The accuracies lm-evaluation-harness's task config lists. */
  metrics: TaskMetric[];
  /** The question the harness builds from a document (fields already checked). */
  question(doc: Doc, where: string): Question;
}

/** A field as a string; the error names the line and the field. */
function str(doc: Doc, key: string, where: string): string {
  const v = doc[key];
  if (typeof v !== "string") throw new Error(`${where}: field "${key}" must be a string`);
  return v;
}

/** A field as an array of strings. */
function strings(v: unknown, key: string, where: string): string[] {
  if (!Array.isArray(v) || v.some((s) => typeof s !== "string")) {
    throw new Error(`${where}: field "${key}" must be an array of strings`);
  }
  return v as string[];
}

/** A label given as an integer or a string of one. */
function index(v: unknown, key: string, where: string): number {
  const n = typeof v === "string" && /^-?\d+$/.test(v.trim()) ? Number(v) : v;
  if (typeof n !== "number" || !Number.isInteger(n)) {
    throw new Error(`${where}: field "${key}" must be an integer (got ${JSON.stringify(v)})`);
  }
  return n;
}

/** The harness's usual question: one context, the delimiter and each choice. */
function plain(context: string, choices: string[], gold: number): Question {
  return {
    requests: choices.map((c) => ({ context, continuation: TARGET_DELIMITER + c })),
    gold,
    choices,
  };
}

/** Python's `str.capitalize()`: the first character upper-cased, the rest lower-cased. */
function capitalize(s: string): string {
  const [first = "", ...rest] = s;
  return first.toUpperCase() + rest.join("").toLowerCase();
}

/** HellaSwag's clean-up of WikiHow artefacts (lm-evaluation-harness `hellaswag/utils.py`). */
export function hellaswagPreprocess(text: string): string {
  return text.trim().replaceAll(" [title]", ". ").replace(/\[.*?\]/g, "").replaceAll("  ", " ");
}

const FORMATS: Record<TaskFormat, FormatSpec> = {
  jsonl: {
    fields: ["context", "choices", "gold"],
    metrics: ["acc", "acc_norm"],
    question: (d, w) =>
      plain(str(d, "context", w), strings(d.choices, "choices", w), index(d.gold, "gold", w)),
  },
  piqa: {
    fields: ["goal", "sol1", "sol2", "label"],
    metrics: ["acc", "acc_norm"],
    question: (d, w) =>
      plain(
        `Question: ${str(d, "goal", w)}\nAnswer:`,
        [str(d, "sol1", w), str(d, "sol2", w)],
        index(d.label, "label", w),
      ),
  },
  arc: {
    fields: ["question", "choices", "answerKey"],
    metrics: ["acc", "acc_norm"],
    question: (d, w) => {
      const c = (d.choices ?? {}) as Doc;
      const texts = strings(c.text, "choices.text", w);
      const labels = strings(c.label, "choices.label", w);
      const key = str(d, "answerKey", w);
      const gold = labels.indexOf(key);
      if (gold < 0) {
        throw new Error(`${w}: answerKey "${key}" is not among choices.label [${labels}]`);
      }
      return plain(`Question: ${str(d, "question", w)}\nAnswer:`, texts, gold);
    },
  },
  hellaswag: {
    fields: ["ctx_a", "ctx_b", "activity_label", "endings", "label"],
    metrics: ["acc", "acc_norm"],
    question: (d, w) => {
      const ctx = `${str(d, "ctx_a", w)} ${capitalize(str(d, "ctx_b", w))}`;
      return plain(
        hellaswagPreprocess(`${str(d, "activity_label", w)}: ${ctx}`),
        strings(d.endings, "endings", w).map(hellaswagPreprocess),
        index(d.label, "label", w),
      );
    },
  },
  winogrande: {
    fields: ["sentence", "option1", "option2", "answer"],
    metrics: ["acc"],
    question: (d, w) => {
      const sentence = str(d, "sentence", w);
      const blank = sentence.indexOf("_");
      if (blank < 0) throw new Error(`${w}: the sentence has no "_" blank`);
      const contexts = [str(d, "option1", w), str(d, "option2", w)].map((o) =>
        sentence.slice(0, blank) + o
      );
      const continuation = TARGET_DELIMITER + sentence.slice(blank + 1).trim();
      const answer = String(d.answer);
      if (answer !== "1" && answer !== "2") {
        throw new Error(
          `${w}: field "answer" must be "1" or "2" (got ${JSON.stringify(d.answer)})`,
        );
      }
      return {
        requests: contexts.map((context) => ({ context, continuation })),
        gold: Number(answer) - 1,
        choices: contexts,
      };
    },
  },
  boolq: {
    fields: ["passage", "question"],
    metrics: ["acc"],
    question: (d, w) => {
      // SuperGLUE's `label` (0 false, 1 true), or google/boolq's boolean `answer`.
      const gold = typeof d.answer === "boolean" ? Number(d.answer) : index(d.label, "label", w);
      return plain(
        `${str(d, "passage", w)}\nQuestion: ${str(d, "question", w)}?\nAnswer:`,
        ["no", "yes"],
        gold,
      );
    },
  },
};

/** The format whose identifying fields a document has, or null. */
export function detectFormat(doc: Record<string, unknown>): TaskFormat | null {
  for (const [name, spec] of Object.entries(FORMATS) as [TaskFormat, FormatSpec][]) {
    if (spec.fields.every((f) => f in doc)) return name;
  }
  return null;
}

/** The document of a line: the line itself, or a `--log_samples` line's `doc`. */
function documentOf(v: unknown, where: string): Doc {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new Error(`${where}: expected a JSON object`);
  }
  const o = v as Doc;
  if ("doc_id" in o && typeof o.doc === "object" && o.doc !== null) return o.doc as Doc;
  return o;
}

/** What {@linkcode readTask} and {@linkcode parseTask} take. */
export interface ReadTaskOptions {
  /** Only the first N questions (the harness's `--limit`). */
  limit?: number;
}

/** Parses a task file's text; `path` names the file in errors and gives the task its name. */
export function parseTask(text: string, path: string, o: ReadTaskOptions = {}): Task {
  const lines = jsonLines(text, path);
  if (lines.length === 0) throw new Error(`${path}: no questions`);
  const first = documentOf(lines[0].value, lines[0].where);
  const format = detectFormat(first);
  if (format === null) {
    throw new Error(
      `${lines[0].where}: not a task line: expected the fields of one of ` +
        Object.entries(FORMATS).map(([n, s]) => `${n} (${s.fields.join(", ")})`).join("; "),
    );
  }
  const spec = FORMATS[format];
  const questions: Question[] = [];
  for (const { value, where } of lines.slice(0, o.limit ?? lines.length)) {
    const doc = documentOf(value, where);
    const missing = spec.fields.filter((f) => !(f in doc));
    if (missing.length) {
      throw new Error(
        `${where}: ${format} line without ${missing.map((f) => `"${f}"`).join(", ")}`,
      );
    }
    const q = spec.question(doc, where);
    if (q.requests.length < 2) throw new Error(`${where}: a question needs at least 2 choices`);
    if (q.gold < 0 || q.gold >= q.requests.length) {
      throw new Error(
        `${where}: gold ${q.gold} is not the index of one of ${q.requests.length} choices`,
      );
    }
    questions.push(q);
  }
  const name = path.replace(/^.*\//, "").replace(/\.(jsonl|json)$/i, "");
  return { name, path, format, metrics: spec.metrics, questions };
}

/** Reads a task file (JSON lines in one of the {@linkcode TaskFormat}s). */
export async function readTask(path: string, o: ReadTaskOptions = {}): Promise<Task> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`task file ${path}: ${(e as Error).message}`);
  }
  return parseTask(text, path, o);
}
