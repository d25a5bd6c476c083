/**
 * Fault injection for crash tests: `GRAINLINE_RECEIVER_FAULT=<point>:<n>`
 * makes the process SIGKILL itself on the n-th time (1-based) it reaches the
 * named point. Unset in production: `faultPoint` is then a no-op.
 */
const spec = process.env['GRAINLINE_RECEIVER_FAULT']
let point: string | undefined
let target = 0
if (spec !== undefined && spec !== '') {
  const i = spec.lastIndexOf(':')
  point = i < 0 ? spec : spec.slice(0, i)
  target = i < 0 ? 1 : Number(spec.slice(i + 1))
}
let hits = 0

/** Mark a crash point (see the module comment). */
export function faultPoint(name: string): void {
  if (point !== name) return
  hits++
  if (hits === target) process.kill(process.pid, 'SIGKILL')
}
