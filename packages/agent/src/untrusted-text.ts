/**
 * Text a receiver wrote for a person (a refused DiskState's `detail`, SPEC
 * §5.1 v9; an Error's `message`) made fit to log and print: a receiver may be
 * hostile or broken, and its words end up in the agent's log, on a terminal,
 * in e-mails and webhooks. Terminal escape sequences (CSI, OSC, …) are
 * removed; every other control character (C0, DEL, C1, line and paragraph
 * separators) and every bidirectional override — a run of them — becomes one space; the result is
 * cut to `maxBytes` UTF-8 bytes, ending in "…" when cut.
 */
import { blankUnprintable, MAX_REFUSAL_DETAIL_BYTES, truncateUtf8Marked } from '@grainline/protocol'

// ESC [ … final, ESC ] … BEL|ST, ESC P/X/^/_ … ST, and a lone ESC with the one character after it; the C1 CSI (U+009B) likewise
const ESCAPES = /\u001b\[[0-?]*[ -/]*[@-~]?|\u009b[0-?]*[ -/]*[@-~]?|\u001b\][^\u0007\u001b\u009c]*(?:\u0007|\u001b\\|\u009c)?|\u001b[PX^_][^\u001b\u009c]*(?:\u001b\\|\u009c)?|\u001b[\s\S]?/g

/** `text` without escape sequences and control characters, at most `maxBytes` UTF-8 bytes ("…" when cut). Pure. */
export function untrustedText(text: string, maxBytes = MAX_REFUSAL_DETAIL_BYTES): string {
  return truncateUtf8Marked(blankUnprintable(text.replace(ESCAPES, '')).trim(), maxBytes)
}
