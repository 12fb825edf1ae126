/**
 * Chat conversations as calibration text: `messages` lists rendered through the model's Jinja
 * chat template (`@huggingface/jinja`), as `apply_chat_template(tokenize=False)` does, then
 * encoded with one leading BOS.
 * @module
 */
import { Template } from "@huggingface/jinja";
import type { TextTokenizer } from "./tokenizer.ts";

/** One chat message of a `messages` JSONL line. */
export interface ChatMessage {
  /** Speaker role (`system`, `user`, `assistant`, …). */
  role: string;
  /** Message text. */
  content: string;
}

/**
 * Renders `messages` through a Jinja chat template with `bos_token`, `eos_token` and
 * `add_generation_prompt` (false unless asked: calibration text; a server asks for the
 * assistant's turn), as `apply_chat_template(tokenize=False)` does.
 */
export function renderChat(
  chatTemplate: string,
  messages: ChatMessage[],
  tok: Pick<TextTokenizer, "bosToken" | "eosToken">,
  addGenerationPrompt = false,
): string {
  return new Template(chatTemplate).render({
    messages,
    bos_token: tok.bosToken ?? "",
    eos_token: tok.eosToken ?? "",
    add_generation_prompt: addGenerationPrompt,
  });
}

/**
 * Encodes a rendered chat. The template usually emits the BOS text itself and `encode` adds
 * one too; a doubled leading BOS is collapsed to one, so each conversation starts with one BOS.
 */
export function encodeChat(rendered: string, tok: TextTokenizer): number[] {
  const ids = tok.encode(rendered);
  if (ids.length >= 2 && ids[0] === tok.bos && ids[1] === tok.bos) ids.shift();
  return ids;
}

/** Whether `v` is a `messages` list of `{role, content}` strings. */
export function isMessages(v: unknown): v is ChatMessage[] {
  return Array.isArray(v) &&
    v.every((m) =>
      m !== null && typeof m === "object" && typeof (m as ChatMessage).role === "string" &&
      typeof (m as ChatMessage).content === "string"
    );
}
