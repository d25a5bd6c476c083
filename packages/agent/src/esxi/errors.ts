/**
 * Errors of the `esxi` hypervisor driver. Codes that mean the same as an
 * `AgentError` code use the same string (E_VM_NOT_FOUND, E_SNAPSHOT, E_CONFIG,
 * E_VMX, E_CHAIN, E_ABORTED), so callers can match on `err.code` alone.
 */

/** Stable error codes of the esxi driver (listed in docs/esxi.md). */
export const EsxiErrorCodes = [
  'E_CONFIG', // bad driver configuration (fingerprint format, missing key, ...)
  'E_HOST_KEY', // the host presented a key whose fingerprint is not the pinned one
  'E_SSH_AUTH', // the host refused our user/key
  'E_SSH_CONNECT', // TCP/SSH connection failed or dropped
  'E_TIMEOUT', // a command or a wait did not finish in time
  'E_COMMAND', // a command exited non-zero without a vim fault we recognise
  'E_OUTPUT_LIMIT', // a command printed more than the output limit
  'E_VIM_FAULT', // vim-cmd printed a fault (see `fault`)
  'E_PARSE', // vim-cmd printed something we do not understand
  'E_VM_NOT_FOUND', // no VM with that name or id
  'E_VM_AMBIGUOUS', // more than one VM with that name, or a getallvms row whose file cannot be told from its name or annotation
  'E_SNAPSHOT_NOT_FOUND', // the snapshot is not (or no longer) in the tree
  'E_SNAPSHOT', // a snapshot operation did not leave the chain we expect
  'E_CONSOLIDATION_NEEDED', // the snapshot is gone but its delta was not merged
  'E_DATASTORE', // a datastore path names no mapped datastore, or is malformed; a file name resolves outside every mapped datastore
  'E_VMX', // the .vmx cannot be read or names no disk
  'E_CHAIN', // a disk chain does not open / verify
  'E_HOST_VERSION', // the host's snapshot.remove takes the pre-5.1 argument order (or one we do not know)
  'E_UNSUPPORTED_DISK', // a vSAN/vVol disk, or an independent disk / physical RDM with independentDisks "refuse"
  'E_SNAPSHOT_LEFT', // a failed check after snapshot.create, and removing the new snapshot failed too (recorded for the next run)
  'E_ABORTED', // cancelled through an AbortSignal
] as const
export type EsxiErrorCode = (typeof EsxiErrorCodes)[number]

/** Context every esxi failure carries when it is known. */
export interface EsxiErrorContext {
  /** the ESXi host (address) */
  host?: string
  /** the VM (name or id) */
  vm?: string
  /** the command line run on the host */
  command?: string
  /** what ESXi said (fault message, stderr or the output) */
  esxiMessage?: string
  /** the vim fault type, e.g. "vim.fault.NotFound" */
  fault?: string
  cause?: unknown
}

/** A typed esxi driver error; the message names host, VM, command and ESXi's message. */
export class EsxiError extends Error {
  override readonly name = 'EsxiError'
  readonly code: EsxiErrorCode
  readonly host?: string
  readonly vm?: string
  readonly command?: string
  readonly esxiMessage?: string
  readonly fault?: string

  constructor(code: EsxiErrorCode, message: string, ctx: EsxiErrorContext = {}) {
    super(composeMessage(message, ctx), ctx.cause === undefined ? undefined : { cause: ctx.cause })
    this.code = code
    if (ctx.host !== undefined) this.host = ctx.host
    if (ctx.vm !== undefined) this.vm = ctx.vm
    if (ctx.command !== undefined) this.command = ctx.command
    if (ctx.esxiMessage !== undefined) this.esxiMessage = ctx.esxiMessage
    if (ctx.fault !== undefined) this.fault = ctx.fault
  }
}

function composeMessage(message: string, ctx: EsxiErrorContext): string {
  const parts = [message]
  if (ctx.host !== undefined) parts.push(`host ${ctx.host}`)
  if (ctx.vm !== undefined) parts.push(`VM ${JSON.stringify(ctx.vm)}`)
  if (ctx.command !== undefined) parts.push(`command: ${ctx.command}`)
  if (ctx.esxiMessage !== undefined && ctx.esxiMessage !== '') parts.push(`ESXi said: ${ctx.esxiMessage.trim().slice(0, 2000)}`)
  return parts.join('; ')
}
