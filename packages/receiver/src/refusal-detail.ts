/**
 * What the receiver tells the agent in words — the `detail` of a refused
 * DiskState (SPEC §5.1, protocol version 9) and the `message` of every Error
 * frame (SPEC §7) — is the text its own log gives, but without the store's
 * absolute folder: the agent's operator (and a hostile agent probing the
 * receiver) must not learn the DR site's file system layout. A folder
 * store's message may name a file of the mirror by its path (a descriptor
 * that does not decode, a state file that is a FIFO, a flat that cannot be
 * written): `STORE/<vm>/…` is told as `<vm>/…` — its `.grainline` state,
 * journal and staging folders included — and the store folder itself as
 * "the store", in the form the receiver was given, as resolved and as its
 * real path (a store reached through a link); a store given relative loses
 * that relative prefix too. A folder is the store's only where its path is
 * the whole path: not the tail of a longer one (`/mnt/srv/store/…`), nor
 * the start of a sibling's name (`/srv/store2/…`, `/srv/store.old`); and
 * it ends where the path ends — at the end of a sentence (`/srv/store.`,
 * `…!`, `…?`), a quote, a bracket or any other character that does not
 * continue a file name. What else the messages name
 * stays: the VM's disks, cycles, CIDs, generations, a Ceph store's
 * `POOL/IMAGE@SNAP` and `ceph:POOL` (the remedy's `--store`), and a hold's
 * folder (the point the operator opened, named in the `points close --to`
 * that releases it). The receiver's log keeps the full path.
 */
import { realpathSync } from 'node:fs'
import { isAbsolute, normalize, resolve } from 'node:path'
import { MAX_ERROR_TEXT_BYTES, refusalDetail, toErrorMessage, truncateUtf8, type ErrorMessage } from '@grainline/protocol'

/** The absolute forms of the folder `storeDir` a message may name it by (given, resolved, real both ways), longest first. */
function storeForms(storeDir: string): string[] {
  const real: string[] = []
  // Node's realpath takes a `..` as written (`link/..` is the folder holding the link), the system's after the link
  // before it (the folder holding the link's target: what fs.promises.realpath, and so checkVmDir, say): both
  for (const rp of [realpathSync, realpathSync.native]) {
    try {
      real.push(rp(storeDir))
    } catch {
      // gone or unreadable: the forms given and resolved still go
    }
  }
  const forms = new Set([storeDir, resolve(storeDir), ...real].map((d) => d.replace(/[\\/]+$/, '')).filter((d) => d.length > 1 && isAbsolute(d)))
  // the longest first: a resolved form may extend the one given
  return [...forms].sort((a, b) => b.length - a.length)
}

/**
 * A character that continues a file name: a path that has one right before
 * a store form is a longer path (`/mnt` + `/srv/store`), one that has one
 * right after it (past the `.`, `!`, `?` or `…` that may end a sentence) is a
 * sibling folder (`/srv/store` + `2`, + `.old`); before a form, a `.` or a
 * separator does too (`../srv/store`, `/a//srv/store`). Anything else — white
 * space, a control character, a quote, a bracket, `,;:=`, `*`, a dash other
 * than `-` — ends a path in a message.
 */
const NAME_CHAR = '\\p{L}\\p{N}\\p{M}_~+@%#$&\\-'
/** What ends a sentence and may follow a path: skipped before deciding whether the name goes on. */
const SENTENCE_END = '.!?…'
/** After `STORE/`: the path ends there (`STORE/` at the end of a sentence, in quotes): the folder itself. */
const PATH_ENDS = new RegExp(`^[${SENTENCE_END}]*(?:$|[\\s\\p{Cc}"'\`),;:\\]}>])`, 'u')
/** After `STORE`: a sibling's name goes on. */
const NAME_GOES_ON = new RegExp(`^[${SENTENCE_END}]*[${NAME_CHAR}]`, 'u')

/** `message` without the folder store `storeDir` (given, resolved, real; a relative one's prefix of a path); undefined (a Ceph store): as it is. Reads the store's real path, never throws. */
export function withoutStoreFolder(message: string, storeDir: string | undefined): string {
  let text = message
  if (storeDir === undefined || storeDir === '') return text
  const quote = (d: string): string => d.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  // a store given relative (`--store data/store`) names its files relative to the receiver's folder: that prefix goes
  // too, where a path starts (the folder alone stays: "store" is also a word), first: its resolved form is its tail
  const rel = normalize(storeDir).replace(/[\\/]+$/, '')
  if (!isAbsolute(rel) && rel !== '.' && rel !== '') text = text.replace(new RegExp(`(^|[\\s"'(\\[=,])${quote(rel)}[\\\\/]+`, 'g'), '$1')
  for (const d of storeForms(storeDir)) {
    // where a path starts (`//srv/store` is that folder too), never inside a longer one; then the separators after it
    const at = new RegExp(`(?<![${NAME_CHAR}.\\\\/])[\\\\/]*${quote(d)}([\\\\/]*)`, 'gu')
    text = text.replace(at, (whole: string, seps: string, offset: number, all: string) => {
      const rest = all.slice(offset + whole.length)
      // `STORE/vm/…`: the file by its store-relative path; `STORE/` alone, or `STORE` where the path ends: the folder
      if (seps !== '') return PATH_ENDS.test(rest) ? 'the store' : ''
      return NAME_GOES_ON.test(rest) ? whole : 'the store'
    })
  }
  return text
}

/** `message` without the absolute folder `storeDir` (undefined: a Ceph store), bounded for the wire ("…" when cut). */
export function peerRefusalDetail(message: string, storeDir: string | undefined): string {
  return refusalDetail(withoutStoreFolder(message, storeDir))
}

/**
 * The Error frame (SPEC §7) told to the agent for `err`: `toErrorMessage`'s
 * code, `fatal` and bound (an `E_INTERNAL` says "internal error" only), its
 * text (a ReceiverError's `peerMessage` when it has one) without the store's folder — stripped before the cut, so that no
 * piece of the folder is left at the end of a long text.
 */
export function peerErrorMessage(err: unknown, storeDir: string | undefined): ErrorMessage {
  const msg = toErrorMessage(err)
  if (msg.code === 'E_INTERNAL') return msg
  // a ReceiverError's peerMessage: its message names what only the DR site may know (a lock holder's host and pid)
  const e = err as { message?: unknown; peerMessage?: unknown } | null
  const text = typeof e?.peerMessage === 'string' ? e.peerMessage : String(e?.message ?? '')
  return { ...msg, message: truncateUtf8(withoutStoreFolder(text, storeDir), MAX_ERROR_TEXT_BYTES) }
}
