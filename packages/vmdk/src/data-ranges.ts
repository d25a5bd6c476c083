/**
 * Where an open local file holds data, without reading it: `lseek(2)` with
 * `SEEK_DATA`/`SEEK_HOLE` (issue #13: a resync must not read what is known to
 * be zero). Node has no `lseek`, so the calls are made by the system's
 * `python3` (standard library `os.lseek`, Debian's python3): no compiled addon,
 * nothing built or downloaded at install; run isolated (`-I`: no PYTHON*
 * environment, no user site) and without the `site` module (`-S`: the script
 * needs only built-in modules; importing `site` was most of the helper's
 * start-up, which sits on a scrub's path after the commit). The child receives the very file
 * descriptor already open (as its fd 3), so it sees the same file, not a path
 * that may have been replaced; Node reads at explicit positions, so the shared
 * file offset the child moves is never used.
 *
 * Answers are conservative: a range not listed reads as zeros; a listed range
 * may still hold zeros. Where the answer is unknown — no python3, a file system
 * that refuses the calls (EINVAL), more than `maxRanges` pieces — the caller
 * gets `undefined` (or the rest of the window as data) and reads as before.
 * A file system without real support (the kernel's generic answer) lists the
 * whole file as data, which is the same fallback.
 */
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'

/** A byte range `[start, end)` of a file that may hold data. */
export type DataRange = readonly [start: number, end: number]

/** How the data ranges are found; tests point `command` elsewhere to prove the fallback. */
export const seekHelper = {
  /**
   * the interpreter run with the script below: the system's own when present
   * (a `python3` found first on PATH may be a version manager's shim that takes
   * seconds to start).
   * @default '/usr/bin/python3' when it exists, else 'python3'
   */
  command: existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3',
  /** set after the first failure to start the helper (not found): never tried again */
  missing: false,
}

/** Default cap on the ranges of one answer; the rest of the window is then data. */
export const DEFAULT_MAX_RANGES = 65536

// ask(fd, start, end, maxRanges): the data ranges, a "start end" line each; OSError/AttributeError when unsupported
const ASK = `
import os, sys, errno
def ask(fd, s, e, m):
    out, p, n = [], s, 0
    while p < e:
        try:
            d = os.lseek(fd, p, os.SEEK_DATA)
        except OSError as x:
            if x.errno == errno.ENXIO:
                break
            raise
        if d >= e:
            break
        h = os.lseek(fd, d, os.SEEK_HOLE)
        n += 1
        if n > m:
            out.append("%d %d\\n" % (d, e))
            break
        out.append("%d %d\\n" % (d, min(h, e)))
        p = h
    return "".join(out)
`

// argv: start end maxRanges; fd 3 the file. Exit 3 = SEEK_DATA not supported.
const SCRIPT = `${ASK}
try:
    r = ask(3, int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
except (OSError, AttributeError):
    sys.exit(3)
sys.stdout.write(r)
`

/**
 * The ranges of `[start, end)` of the open file `fd` that may hold data, in
 * order; `undefined` when this cannot be known here (see the file comment).
 * Never throws.
 */
export async function fileDataRanges(fd: number, start: number, end: number, maxRanges = DEFAULT_MAX_RANGES): Promise<DataRange[] | undefined> {
  if (seekHelper.missing || !(end > start) || start < 0) return end > start ? undefined : []
  return await new Promise((resolve) => {
    let child: ReturnType<typeof spawn>
    try {
      child = spawn(seekHelper.command, ['-I', '-S', '-c', SCRIPT, String(start), String(end), String(maxRanges)], { stdio: ['ignore', 'pipe', 'ignore', fd] })
    } catch {
      resolve(undefined)
      return
    }
    const chunks: Buffer[] = []
    let bytes = 0
    // at most maxRanges + 1 lines of two numbers of ≤ 20 digits
    const limit = (maxRanges + 1) * 42 + 16
    child.stdout?.on('data', (b: Buffer) => {
      bytes += b.length
      if (bytes > limit) child.kill()
      else chunks.push(b)
    })
    child.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') seekHelper.missing = true
      resolve(undefined)
    })
    child.once('close', (code) => {
      if (code !== 0 || bytes > limit) {
        resolve(undefined)
        return
      }
      resolve(parseRanges(Buffer.concat(chunks).toString('latin1'), start, end))
    })
  })
}

/** The helper's lines, checked: ordered, inside the window; undefined when malformed. */
export function parseRanges(text: string, start: number, end: number): DataRange[] | undefined {
  const out: DataRange[] = []
  let prev = start
  for (const line of text.split('\n')) {
    if (line === '') continue
    const m = /^(\d{1,17}) (\d{1,17})$/.exec(line)
    if (m === null) return undefined
    const a = Number(m[1])
    const b = Number(m[2])
    if (!(a >= prev && b > a && b <= end)) return undefined
    out.push([a, b])
    prev = b
  }
  return out
}

/**
 * A forward-only question over `ranges` (ordered, disjoint): may [from, to)
 * hold data? Asked with non-decreasing `from`, each call costs amortized O(1).
 * With `ranges` undefined (holes unknown) every range may hold data.
 */
export function dataCursor(ranges: readonly DataRange[] | undefined): (from: number, to: number) => boolean {
  if (ranges === undefined) return () => true
  let at = 0
  return (from, to) => {
    while (at < ranges.length && (ranges[at] as DataRange)[1] <= from) at++
    const next = ranges[at]
    return next !== undefined && next[0] < to
  }
}

// one question a line: "path start end maxRanges" (path: /proc/PID/fd/FD, the asker's very descriptor reopened);
// answer: the ranges, a line each, then "."; or "E" when unknown
const KEPT_SCRIPT = `${ASK}
for line in sys.stdin:
    try:
        a = line.split()
        fd = os.open(a[0], os.O_RDONLY)
        try:
            r = ask(fd, int(a[1]), int(a[2]), int(a[3])) + ".\\n"
        finally:
            os.close(fd)
    except (OSError, AttributeError, ValueError, IndexError):
        r = "E\\n"
    sys.stdout.write(r)
    sys.stdout.flush()
`

/**
 * One `SEEK_DATA` helper kept running for the whole process (the same
 * `python3` and calls as {@link fileDataRanges}), asked one question at a
 * time: starting a helper per question cost 36–44 ms on a quiet machine and
 * 80–450 ms at load 7–9 (and its synchronous `spawn` blocked the event loop
 * 16–114 ms there) — on a scrub's path after the commit, more than the scrub
 * may cost (issue #13). A question costs a line each way once it runs. The
 * helper reopens the asker's very descriptor through `/proc/PID/fd/FD` (the
 * same open file's inode, not a path that may have been replaced); without
 * `/proc` (not Linux), or once the helper has died, each question falls back
 * to {@link fileDataRanges}. It does not keep the process alive (unref'd
 * while idle) and ends with it (its stdin closes).
 */
export class KeptSeekHelper {
  #proc: ReturnType<typeof spawn> | undefined
  #dead = false
  #tail: Promise<unknown> = Promise.resolve()
  #onLine: ((line: string) => void) | undefined
  #pending = ''
  /** the command the running helper was started with (`seekHelper.command` changed: another helper) */
  #command = seekHelper.command
  /** helper processes started (tests: one per process, not per question) */
  starts = 0

  /**
   * The ranges of `[start, end)` of the open file `fd` that may hold data, as
   * {@link fileDataRanges} answers them; questions are answered in order.
   * Never throws.
   */
  dataRanges(fd: number, start: number, end: number, maxRanges = DEFAULT_MAX_RANGES): Promise<DataRange[] | undefined> {
    const next = this.#tail.then(() => this.#ask(fd, start, end, maxRanges))
    this.#tail = next.catch(() => {})
    return next.catch(() => undefined)
  }

  /**
   * Start the helper now, off the path of a question expected soon (a
   * receiver whose VM is in a scrub rotation: its start under load took
   * 100–600 ms, and slowed what ran beside it); nothing when it runs, has
   * died, or cannot be used here.
   */
  warm(): void {
    if (this.#command !== seekHelper.command || this.#dead || seekHelper.missing || !existsSync(`/proc/${process.pid}/fd`)) return
    this.#start()
  }

  /** End the helper (the next question starts another). */
  close(): void {
    this.#proc?.kill()
    this.#proc = undefined
  }

  async #ask(fd: number, start: number, end: number, maxRanges: number): Promise<DataRange[] | undefined> {
    if (this.#command !== seekHelper.command) {
      this.close()
      this.#dead = false
      this.#command = seekHelper.command
    }
    if (seekHelper.missing || !(end > start) || start < 0) return end > start ? undefined : []
    const path = `/proc/${process.pid}/fd/${fd}`
    if (this.#dead || !Number.isSafeInteger(fd) || fd < 0 || !existsSync(path)) return await fileDataRanges(fd, start, end, maxRanges)
    const proc = this.#start()
    if (proc === undefined) return await fileDataRanges(fd, start, end, maxRanges)
    const lines: string[] = []
    const answer = new Promise<DataRange[] | undefined>((resolve) => {
      const finish = (r: DataRange[] | undefined): void => {
        this.#onLine = undefined
        proc.off('exit', onExit)
        proc.off('error', onExit)
        resolve(r)
      }
      // died, or never started (no python3: 'error' without 'exit')
      const onExit = (): void => finish(undefined)
      proc.once('exit', onExit)
      proc.once('error', onExit)
      this.#onLine = (line) => {
        if (line === 'E') finish(undefined)
        else if (line === '.') finish(parseRanges(lines.join('\n'), start, end))
        else if (lines.length > maxRanges + 1) {
          // more than asked for: not this helper's answer
          this.#dead = true
          proc.kill()
          finish(undefined)
        } else lines.push(line)
      }
    })
    this.#ref(proc, true)
    proc.stdin?.write(`${path} ${start} ${end} ${maxRanges}\n`)
    try {
      return await answer
    } finally {
      this.#ref(proc, false)
    }
  }

  #start(): ReturnType<typeof spawn> | undefined {
    if (this.#proc !== undefined) return this.#proc
    let proc: ReturnType<typeof spawn>
    try {
      proc = spawn(seekHelper.command, ['-I', '-S', '-c', KEPT_SCRIPT], { stdio: ['pipe', 'pipe', 'ignore'] })
    } catch {
      this.#dead = true
      return undefined
    }
    this.starts++
    this.#proc = proc
    this.#pending = ''
    proc.stdout?.setEncoding('latin1')
    proc.stdout?.on('data', (chunk: string) => {
      const parts = (this.#pending + chunk).split('\n')
      this.#pending = parts.pop() ?? ''
      for (const l of parts) this.#onLine?.(l)
    })
    proc.stdin?.on('error', () => {})
    // a helper ended by close() (its command changed) exits later: that must
    // not mark the helper started since as dead
    proc.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') seekHelper.missing = true
      if (this.#proc === proc) this.#dead = true
    })
    proc.once('exit', () => {
      if (this.#proc !== proc) return
      this.#proc = undefined
      this.#dead = true
    })
    this.#ref(proc, false)
    return proc
  }

  /** Keep the process alive while a question waits, not while the helper idles. */
  #ref(proc: ReturnType<typeof spawn>, on: boolean): void {
    const all: Array<{ ref(): unknown; unref(): unknown } | null | undefined> = [proc, proc.stdin as never, proc.stdout as never]
    for (const h of all) {
      if (h === null || h === undefined) continue
      if (on) h.ref()
      else h.unref()
    }
  }
}

/** The process's kept `SEEK_DATA` helper (see {@link KeptSeekHelper}). */
export const keptSeekHelper = new KeptSeekHelper()
