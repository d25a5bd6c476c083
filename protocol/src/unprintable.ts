/**
 * The characters a peer's or a store's text may not bring to a terminal, a
 * log line, an e-mail or a webhook as they are: every C0 and C1 control
 * character and DEL, the line and paragraph separators (U+2028, U+2029) and
 * every bidirectional mark, embedding, override and isolate (U+200E, U+200F,
 * U+202A–U+202E, U+2066–U+2069: "Trojan Source" text that reads other than
 * it is). One definition for the agent (a receiver's words) and the
 * receiver (names an S3 endpoint lists, a lock's body).
 */

const CLASS = '[\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069]'
const RUNS = new RegExp(`${CLASS}+`, 'g')
const ONE = new RegExp(CLASS, 'g')
const ANY = new RegExp(CLASS)

/** Whether `text` holds any character {@link blankUnprintable} would replace. Pure. */
export function hasUnprintable(text: string): boolean {
  return ANY.test(text)
}

/** `text` with every run of unprintable characters replaced by one space (prose: a message, a lock's field). Pure. */
export function blankUnprintable(text: string): string {
  return text.replace(RUNS, ' ')
}

/** `text` with every unprintable character written as `\uXXXX` (a name, shown so that it can be told apart and typed). Pure. */
export function escapeUnprintable(text: string): string {
  return text.replace(ONE, (c) => `\\u${(c.codePointAt(0) as number).toString(16).padStart(4, '0')}`)
}
