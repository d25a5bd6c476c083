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
 * that relative prefix too. What else the messages name
 * stays: the VM's disks, cycles, CIDs, generations, a Ceph store's
 * `POOL/IMAGE@SNAP` and `ceph:POOL` (the remedy's `--store`), and a hold's
 * folder (the point the operator opened, named in the `points close --to`
 * that releases it). The receiver's log keeps the full path.
 */
import { realpathSync } from 'node:fs'
import { isAbsolute, normalize, resolve } from 'node:path'
import { MAX_ERROR_TEXT_BYTES, refusalDetail, toErrorMessage, truncateUtf8, type ErrorMessage } from '@grainline/protocol'

/** The absolute forms of the folder `storeDir` a message may name it by, longest first. */
function storeForms(storeDir: string): string[] {
  let real: string | undefined
  try {
    real = realpathSync(storeDir)
  } catch {
    // gone or unreadable: the forms given and resolved still go
  }
  const forms = new Set([storeDir, resolve(storeDir), ...(real === undefined ? [] : [real])].map((d) => d.replace(/[\\/]+$/, '')).filter((d) => d.length > 1 && isAbsolute(d)))
  // the longest first: a resolved form may extend the one given
  return [...forms].sort((a, b) => b.length - a.length)
}

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
    const at = quote(d)
    text = text.replace(new RegExp(`${at}[\\\\/]+`, 'g'), '').replace(new RegExp(`${at}(?![^\\s"'),;:])`, 'g'), 'the store')
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
