/**
 * The Ceph client commands (`rbd`, `rados`) the Ceph store runs: there is no
 * maintained Node binding for librbd, and `rbd import-diff -`, `rbd export`,
 * `rbd snap …` and `rados put/get/append` are part of Ceph itself. Every call
 * carries the store's client settings (`--conf`, `--id`, `--keyring`); a
 * failure is a typed {@link CephCommandError} naming the command and Ceph's
 * own message.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { PassThrough, type Readable } from 'node:stream'
import { ReceiverError } from '../../errors.ts'

/** Where and as whom the store talks to the cluster. */
export interface CephTarget {
  /** the RADOS pool holding images, snapshots and state objects */
  readonly pool: string
  /** `ceph.conf` path @default the client's default (/etc/ceph/ceph.conf) */
  readonly conf?: string
  /** client id (`client.ID`) @default the client's default (admin) */
  readonly id?: string
  /** keyring path @default the client's default */
  readonly keyring?: string
}

/** Bytes of Ceph's stderr kept in an error message. */
const STDERR_KEEP = 2048

/** A Ceph client command failed: `exitCode` is its status (ENOENT of `rbd` is 2, EEXIST 17, EBUSY 16 as `rbd` prints them). */
export class CephCommandError extends ReceiverError {
  readonly command: string
  readonly exitCode: number | null
  readonly stderr: string
  /** the command did not finish in its time and was killed (rbd-cli.ts `cephTimeouts`) */
  readonly timedOut: boolean
  constructor(command: string, exitCode: number | null, stderr: string, timedOut = false) {
    // Ceph's own words (stderr, a helper's exception) may name the client's ceph.conf or keyring and the cluster's
    // addresses: the log and the operator's commands keep them, the agent hears what failed (SPEC §7); a timeout's
    // text is the receiver's own
    super(
      'E_IO',
      `Ceph command \`${command}\` failed (exit ${exitCode ?? 'signal'}): ${stderr.trim().slice(-STDERR_KEEP) || 'no message'}`,
      timedOut ? undefined : { peerMessage: `Ceph command \`${command}\` failed on the receiver (exit ${exitCode ?? 'signal'}): Ceph's own error is in the receiver's log` },
    )
    this.command = command
    this.exitCode = exitCode
    this.stderr = stderr
    this.timedOut = timedOut
  }
  /** whether Ceph said the object, image or snapshot does not exist */
  get notFound(): boolean {
    return /No such file or directory|\(2\)|does not exist/i.test(this.stderr)
  }
  /** whether Ceph said it exists already */
  get exists(): boolean {
    return /File exists|\(17\)|already exists/i.test(this.stderr)
  }
}

/**
 * A command's output passed the bound its caller set (`runCeph`'s
 * `maxBytes`): the command was killed there, nothing more was read. The
 * caller turns it into its own error (a state object too large: E_STATE).
 */
export class CephOutputTooLarge extends ReceiverError {
  readonly command: string
  readonly maxBytes: number
  constructor(command: string, maxBytes: number) {
    super('E_IO', `Ceph command \`${command}\` wrote more than ${maxBytes} bytes: killed, its output not read further`)
    this.command = command
    this.maxBytes = maxBytes
  }
}

/** The client arguments of a target. */
export function clientArgs(t: CephTarget): string[] {
  return [...(t.conf === undefined ? [] : ['--conf', t.conf]), ...(t.id === undefined ? [] : ['--id', t.id]), ...(t.keyring === undefined ? [] : ['--keyring', t.keyring])]
}

/**
 * How long a Ceph client command may run before it is killed (a client can
 * hang: an `rbd du` was seen waiting forever on a healthy one-node cluster,
 * and answered at once when asked again). Queries (`ceph …`, `rbd du`,
 * `rbd info`, `rbd ls`, `rbd status`, `rbd snap ls`, `rados get/ls/stat/listomapkeys/lock info`)
 * get `queryMs` and are
 * asked `queryAttempts` times; anything else gets `commandMs` and is never
 * repeated (a write must not be sent twice behind the store's back). The
 * same deadlines bound what is not a one-shot command: a streamed `rbd
 * export` that sends nothing for `queryMs` while its reader waits
 * ({@link streamCeph}), a librbd helper's read (`queryMs`) or write
 * (`commandMs`) without an answer (rbd-image.ts), and a request to a VM's
 * session client (`commandMs`, ceph-lock.ts). Tests shorten them.
 */
export const cephTimeouts = {
  /** @default 60 s */
  queryMs: 60_000,
  /** @default 2 */
  queryAttempts: 2,
  /** @default 10 min */
  commandMs: 600_000,
  /**
   * How long a released session client (ceph-lock.ts) has to remove its
   * registrations, unlock and disconnect before it is killed: librados waits
   * forever for a cluster that does not answer, and the helper's pipes would
   * keep the receiver's process alive with it.
   * @default 10 s
   */
  releaseMs: 10_000,
}

/** Whether a command only reads (safe to ask again after a timeout). */
export function isCephQuery(cmd: 'rbd' | 'rados' | 'ceph', args: readonly string[]): boolean {
  if (cmd === 'ceph') return true
  if (cmd === 'rados') {
    // rados -p POOL <subcommand> …
    const at = args[0] === '-p' ? 2 : 0
    const [a, b] = [args[at], args[at + 1]]
    return a === 'get' || a === 'ls' || a === 'stat' || a === 'listomapkeys' || (a === 'lock' && b === 'info')
  }
  const [a, b] = args
  return a === 'du' || a === 'info' || a === 'ls' || a === 'status' || (a === 'snap' && b === 'ls')
}

/** The path under which a command run with `runCeph(…, { fd })` opens the file handed to it. */
export const PASSED_FD_PATH = '/dev/fd/3'

/**
 * Run `cmd` (rbd, rados, ceph) to completion, `input` on its stdin; stdout
 * returned as bytes. `opts.fd`, an open file, is handed to the command as
 * its descriptor 3 ({@link PASSED_FD_PATH} in its arguments): it reads the
 * file the receiver checked, not whatever a path names by then (a link).
 * `opts.maxBytes` bounds its stdout: past it the command is killed and
 * {@link CephOutputTooLarge} thrown, so that an object planted in the pool
 * costs no more memory than the bound (never asked again).
 */
export async function runCeph(
  t: CephTarget,
  cmd: 'rbd' | 'rados' | 'ceph',
  args: readonly string[],
  input?: Buffer | readonly Buffer[],
  opts: { fd?: number; maxBytes?: number } = {},
): Promise<Buffer> {
  const query = isCephQuery(cmd, args)
  const timeoutMs = query ? cephTimeouts.queryMs : cephTimeouts.commandMs
  for (let attempt = 1; ; attempt++) {
    try {
      return await runOnce(t, cmd, args, input, timeoutMs, opts.fd, opts.maxBytes)
    } catch (err) {
      // a monitor that has not loaded its command descriptions yet (seen on a loaded machine) answers EPERM for a moment
      if (cmd === 'ceph' && err instanceof CephCommandError && err.stderr.includes('problem getting command descriptions') && attempt < 3) continue
      // a query that hung is asked again; a write never is
      if (query && err instanceof CephCommandError && err.timedOut && attempt < cephTimeouts.queryAttempts) continue
      throw err
    }
  }
}

async function runOnce(
  t: CephTarget,
  cmd: 'rbd' | 'rados' | 'ceph',
  args: readonly string[],
  input: Buffer | readonly Buffer[] | undefined,
  timeoutMs: number,
  fd?: number,
  maxBytes = Number.POSITIVE_INFINITY,
): Promise<Buffer> {
  const full = [...clientArgs(t), ...args]
  const shown = `${cmd} ${args.join(' ')}`
  return await new Promise<Buffer>((resolve, reject) => {
    // with a fourth descriptor the typings lose the three pipes, which are there all the same
    const p = fd === undefined ? spawn(cmd, full, { stdio: ['pipe', 'pipe', 'pipe'] }) : (spawn(cmd, full, { stdio: ['pipe', 'pipe', 'pipe', fd] }) as ChildProcessWithoutNullStreams)
    const out: Buffer[] = []
    const err: Buffer[] = []
    let errBytes = 0
    let timedOut = false
    let outBytes = 0
    let tooLarge = false
    const timer = setTimeout(() => {
      timedOut = true
      p.kill('SIGKILL')
    }, timeoutMs)
    p.stdout.on('data', (b: Buffer) => {
      if (tooLarge) return
      outBytes += b.length
      if (outBytes <= maxBytes) {
        out.push(b)
        return
      }
      // past the caller's bound: stop reading, kill it, drop what was kept
      tooLarge = true
      out.length = 0
      p.kill('SIGKILL')
    })
    p.stderr.on('data', (b: Buffer) => {
      errBytes += b.length
      if (errBytes < 64 * 1024) err.push(b)
    })
    p.on('error', (e) => {
      clearTimeout(timer)
      reject(new ReceiverError('E_IO', `cannot run \`${shown}\`: ${e.message} (is ceph-common installed?)`))
    })
    p.on('close', (code) => {
      clearTimeout(timer)
      if (tooLarge) reject(new CephOutputTooLarge(shown, maxBytes))
      else if (timedOut) reject(new CephCommandError(shown, null, `no answer in ${Math.round(timeoutMs / 1000)} s, killed: is the cluster healthy (ceph -s)?`, true))
      else if (code === 0) resolve(Buffer.concat(out))
      else reject(new CephCommandError(shown, code, Buffer.concat(err).toString('utf8')))
    })
    p.stdin.on('error', () => {}) // a command that exits early: its status tells
    if (input === undefined) p.stdin.end()
    else {
      const parts = Buffer.isBuffer(input) ? [input] : (input as readonly Buffer[])
      writeAll(p.stdin, parts).catch(() => {})
    }
  })
}

async function writeAll(w: NodeJS.WritableStream, parts: readonly Buffer[]): Promise<void> {
  for (const b of parts) {
    if (!w.write(b)) await new Promise<void>((resolve) => w.once('drain', () => resolve()))
  }
  w.end()
}

/**
 * Run `cmd` and hand its stdout over as a stream (`rbd export IMG@SNAP -`);
 * `done` settles with the exit (a CephCommandError unless 0 or killed by
 * `stop`). Call `stop` to end it early (a trivial check reads a prefix only).
 * Deadline: a command that sends nothing for `cephTimeouts.queryMs` while
 * its reader waits for bytes (nothing buffered: not a slow reader) is
 * killed; the stream ends and `done` rejects with a timed-out
 * CephCommandError (E_IO naming the command).
 */
export function streamCeph(t: CephTarget, cmd: 'rbd' | 'rados', args: readonly string[]): { stdout: Readable; done: Promise<void>; stop: () => void } {
  const shown = `${cmd} ${args.join(' ')}`
  const p = spawn(cmd, [...clientArgs(t), ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stopped = false
  let timedOut = false
  const err: Buffer[] = []
  p.stderr.on('data', (b: Buffer) => {
    if (err.length < 64) err.push(b)
  })
  // bytes counted on their way to the reader: no bytes in a whole period while none wait for the reader is a stall
  let bytes = 0
  const out = new PassThrough()
  p.stdout.on('data', (b: Buffer) => {
    bytes += b.length
  })
  p.stdout.pipe(out)
  let seen = -1
  const ms = cephTimeouts.queryMs
  const watch = setInterval(() => {
    if (bytes === seen && out.readableLength === 0 && out.writableLength === 0 && p.stdout.readableLength === 0) {
      timedOut = true
      p.kill('SIGKILL')
    }
    seen = bytes
  }, ms)
  const done = new Promise<void>((resolve, reject) => {
    p.on('error', (e) => {
      clearInterval(watch)
      reject(new ReceiverError('E_IO', `cannot run \`${shown}\`: ${e.message}`))
    })
    p.on('close', (code) => {
      clearInterval(watch)
      if (timedOut) reject(new CephCommandError(shown, null, `no data in ${Math.round(ms / 1000)} s, killed: is the cluster healthy (ceph -s)?`, true))
      else if (code === 0 || stopped) resolve()
      else reject(new CephCommandError(shown, code, Buffer.concat(err).toString('utf8')))
    })
  })
  return {
    stdout: out,
    done,
    stop: () => {
      stopped = true
      p.kill('SIGTERM')
    },
  }
}
