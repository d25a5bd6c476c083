/**
 * Fault injection for crash tests: `GRAINLINE_RECEIVER_FAULT=<point>:<n>`
 * makes the process SIGKILL itself on the n-th time (1-based) it reaches the
 * named point; `<point>:<n>:stop` makes it freeze instead — its child
 * processes (the Ceph store's helpers) and then itself are sent SIGSTOP, as
 * a host that stalls (a partition, a paused VM) — after printing
 * `{"event":"fault-stop","point":…}` on stderr; a test resumes it with
 * SIGCONT. Unset in production: `faultPoint` is then a no-op.
 */
import { readdirSync, readFileSync } from 'node:fs'

let spec = process.env['GRAINLINE_RECEIVER_FAULT']
let stop = false
if (spec?.endsWith(':stop') === true) {
  stop = true
  spec = spec.slice(0, -':stop'.length)
}
let point: string | undefined
let target = 0
if (spec !== undefined && spec !== '') {
  const i = spec.lastIndexOf(':')
  point = i < 0 ? spec : spec.slice(0, i)
  target = i < 0 ? 1 : Number(spec.slice(i + 1))
}
let hits = 0

/** The pids of this process's children (from /proc: the Ceph helpers). */
export function childPids(parent = process.pid): number[] {
  const out: number[] = []
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8')
      // pid (comm) state ppid …: comm may hold spaces and parentheses
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (ppid === parent) out.push(Number(e))
    } catch {
      // a process that ended meanwhile
    }
  }
  return out
}

/** Mark a crash point (see the module comment). */
export function faultPoint(name: string): void {
  if (point !== name) return
  hits++
  if (hits !== target) return
  if (!stop) {
    process.kill(process.pid, 'SIGKILL')
    return
  }
  for (const pid of childPids()) process.kill(pid, 'SIGSTOP')
  process.stderr.write(`${JSON.stringify({ event: 'fault-stop', point: name })}\n`)
  process.kill(process.pid, 'SIGSTOP')
}
