/**
 * Exit codes of the `grainline` command. `status` follows the monitoring
 * plugin conventions instead (Nagios: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
 */
export const ExitCode = {
  Ok: 0,
  /** something failed: the message names the VM, the disk and the code */
  Failed: 1,
  /** a usage or settings error: nothing was done */
  Usage: 2,
  /** stopped by SIGINT (128 + 2) */
  Interrupted: 130,
  /** stopped by SIGTERM (128 + 15) */
  Terminated: 143,
} as const
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode]

/** A usage error (unknown option, bad value, missing argument): exit 2 before anything happens. */
export class UsageError extends Error {
  override readonly name = 'UsageError'
  readonly code = 'E_USAGE'
}
