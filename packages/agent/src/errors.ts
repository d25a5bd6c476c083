/** Stable error codes of @grainline/agent (listed in the README). */
export const AgentErrorCodes = [
  'E_VMX', // a .vmx/.vmsd that cannot be parsed or names no disk
  'E_VM_NOT_FOUND', // the VM reference does not resolve
  'E_SNAPSHOT', // a snapshot operation failed or left an unexpected chain
  'E_FOREIGN_SNAPSHOTS', // snapshots not made by grainline exist (see consolidateExisting)
  'E_CHAIN', // the disk chain does not verify (CID links, capacity, missing file)
  'E_CONNECT', // connecting to the receiver failed (after retries)
  'E_INSECURE', // a plain ws:// receiver URL to a non-loopback host (the token would travel in clear)
  'E_GAVE_UP', // the connection stayed down longer than the give-up time
  'E_REFUSED', // the receiver refused the VM or disk
  'E_PROTOCOL', // the receiver sent something out of order or malformed
  'E_REMOTE', // the receiver reported an error
  'E_CHECK', // trivial check or certify mismatch
  'E_CONFIG', // bad job configuration or option
  'E_STATE', // the agent state file cannot be read or written
  'E_ABORTED', // cancelled through an AbortSignal
  'E_BUSY', // another agent run replicates this VM now (its run lock in the state folder)
  'E_OTHER_WRITER', // another writer committed this run's cycle to the mirror while this run's Commit went unanswered (SPEC §5.10)
] as const
export type AgentErrorCode = (typeof AgentErrorCodes)[number]

/** A typed agent error with a stable code. */
export class AgentError extends Error {
  override readonly name = 'AgentError'
  readonly code: AgentErrorCode
  /** code of the remote (receiver) error when there is one */
  readonly remoteCode?: string
  constructor(code: AgentErrorCode, message: string, opts: { cause?: unknown; remoteCode?: string } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.code = code
    if (opts.remoteCode !== undefined) this.remoteCode = opts.remoteCode
  }
}

/** The words of an abort reason (`interrupted by SIGINT`). */
export function abortReason(signal: AbortSignal): string {
  const r = signal.reason as unknown
  return r instanceof Error ? r.message : typeof r === 'string' ? r : 'aborted'
}

/**
 * Stop at a step boundary: throws `E_ABORTED` when `signal` has fired. Steps
 * that change durable state (a snapshot taken or removed, a commit) are not
 * given the signal; they finish, and the cycle stops at the next boundary.
 */
export function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted === true) throw new AgentError('E_ABORTED', abortReason(signal))
}
