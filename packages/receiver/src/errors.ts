import { userInfo } from 'node:os'
import { ProtocolErrorCodes, type ProtocolErrorCode } from '@grainline/protocol'

/** Codes of receiver errors: every wire code of SPEC §7 plus local ones. */
export type ReceiverErrorCode = ProtocolErrorCode | 'E_CONFIG' | 'E_STATE' | 'E_NOT_FOUND' | 'E_STORE_FILE' | 'E_VERIFY' | 'E_ARCHIVE'

/**
 * A typed receiver error. Wire codes carry the WebSocket close code of SPEC §7;
 * local codes (`E_CONFIG`, `E_STATE`, `E_NOT_FOUND`, `E_STORE_FILE`) close with
 * 1011 if they ever reach a socket (a session reports `E_STATE` and
 * `E_STORE_FILE` as `E_IO`).
 */
export class ReceiverError extends Error {
  override readonly name = 'ReceiverError'
  readonly code: ReceiverErrorCode
  readonly closeCode: number
  readonly fatal: boolean
  /**
   * What an Error frame tells the agent instead of `message`, when that names
   * what only the DR site may know (the host and pid of a lock's holder):
   * the log and the operator's commands keep `message` (SPEC §7).
   */
  readonly peerMessage?: string
  constructor(code: ReceiverErrorCode, message: string, options?: { cause?: unknown; peerMessage?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    if (options?.peerMessage !== undefined) this.peerMessage = options.peerMessage
    const wire = (ProtocolErrorCodes as Record<string, { closeCode: number; fatal: boolean }>)[code]
    this.closeCode = wire?.closeCode ?? 1011
    this.fatal = wire?.fatal ?? true
  }
}

/** What the agent may hear of `err`: its `peerMessage` when it has one, else its message (an error that wraps another keeps this). */
export function peerText(err: unknown): string {
  const e = err as { message?: unknown; peerMessage?: unknown } | null
  return typeof e?.peerMessage === 'string' ? e.peerMessage : String(e?.message ?? err)
}

/** Map a Node.js file-system error to E_NO_SPACE / E_IO with a clear message. */
export function ioError(err: unknown, what: string): Error {
  if (err instanceof ReceiverError) return err
  const code = (err as { code?: unknown } | null)?.code
  const syscall = (err as { syscall?: unknown } | null)?.syscall
  // not a file-system error (a bug, a protocol error): keep it as it is
  if (typeof syscall !== 'string' && code !== 'EIO') return err instanceof Error ? err : new Error(String(err))
  const msg = (err as Error | null)?.message ?? String(err)
  if (code === 'ENOSPC' || code === 'EDQUOT') return new ReceiverError('E_NO_SPACE', `no space left while ${what}: ${msg}`, { cause: err })
  if (code === 'EROFS') return new ReceiverError('E_IO', `store is read-only while ${what}: ${msg}`, { cause: err })
  if (code === 'ENOENT') return new ReceiverError('E_IO', `file or folder vanished while ${what}: ${msg}`, { cause: err })
  if (code === 'EACCES' || code === 'EPERM') {
    const user = receiverUser()
    return new ReceiverError(
      'E_IO',
      `permission denied while ${what}: ${msg}; the receiver runs as ${user.label} and must own its store: chown -R ${user.owner} STORE (a store copied by another user, or with its source's owners and modes kept, has files it may not write)`,
      { cause: err, peerMessage: `permission denied while ${what}: the receiver may not write its store; its operator gives it back to the receiver's user (chown -R)` },
    )
  }
  return new ReceiverError('E_IO', `I/O error while ${what}: ${msg}`, { cause: err })
}

/** The user this process runs as, for a remedy: `name (uid N)` and what chown takes (the name, or the uid where there is no name). */
function receiverUser(): { readonly label: string; readonly owner: string } {
  const uid = process.getuid?.()
  let name = ''
  try {
    name = userInfo().username
  } catch {
    // a uid without a passwd entry (a container)
  }
  const owner = name !== '' ? name : uid !== undefined ? String(uid) : 'USER'
  return { label: uid === undefined ? owner : `${owner} (uid ${uid})`, owner }
}

/** The stable code of any error (ours, the protocol's, or E_INTERNAL). */
export function errorCode(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code
  const name = (err as { name?: unknown } | null)?.name
  if ((name === 'ReceiverError' || name === 'ProtocolError') && typeof code === 'string') return code
  return 'E_INTERNAL'
}
