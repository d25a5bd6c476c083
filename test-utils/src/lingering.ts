/**
 * A test file whose tests all passed but whose process does not exit (a
 * socket, a pipe or a timer still open) is killed by tap only at its file
 * timeout, 20 minutes later, with a bare list of handle types. Seen once in CI
 * (Node 24, test/test/hostile.test, 2026-12-02) and never reproduced by hand.
 * {@link failIfLingering} names what is still open a few seconds after the
 * root test ended, with the details tap leaves out (addresses, ports, file
 * descriptors, the pids of children), and ends the process with exit code 1:
 * the file fails at once, with its cause, instead of at the timeout.
 */
import { writeSync } from 'node:fs'

/** What a handle is, as far as its public and well-known private fields tell. */
export function describeHandle(h: unknown): string {
  if (typeof h !== 'object' || h === null) return String(h)
  const o = h as Record<string, unknown> & { constructor: { name: string } }
  const parts = [o.constructor.name]
  const add = (k: string, v: unknown): void => {
    if (v !== undefined && v !== null && v !== '') parts.push(`${k}=${String(v)}`)
  }
  add('local', o['localPort'] === undefined ? undefined : `${String(o['localAddress'])}:${String(o['localPort'])}`)
  add('remote', o['remotePort'] === undefined ? undefined : `${String(o['remoteAddress'])}:${String(o['remotePort'])}`)
  if (o['remotePort'] === undefined && typeof o['address'] === 'function' && o['listening'] === true) {
    const a = (o['address'] as () => unknown).call(h) as { address?: string; port?: number } | string | null
    add('listening', typeof a === 'object' && a !== null ? `${String(a.address)}:${String(a.port)}` : a)
  }
  add('fd', (o['_handle'] as { fd?: unknown } | undefined)?.fd)
  add('pid', o['pid'])
  add('destroyed', o['destroyed'])
  add('ms', o['_idleTimeout'])
  const events = o['_events']
  if (typeof events === 'object' && events !== null) add('events', Object.keys(events).join(','))
  return parts.join(' ')
}

/** Handles that keep the event loop alive besides our own stdio. */
export function lingeringHandles(): string[] {
  const p = process as unknown as { _getActiveHandles(): unknown[] }
  return p
    ._getActiveHandles()
    .filter((h) => h !== process.stdout && h !== process.stderr && h !== process.stdin)
    .filter((h) => (h as { hasRef?: () => boolean }).hasRef?.() !== false)
    .map(describeHandle)
}

/**
 * Register at the root test's teardown: if the process is still alive
 * `graceMs` after it (tap's own reporting included), write what keeps it
 * alive and exit 1. The timer is unreferenced: a process that ends by itself
 * never sees it.
 */
export function failIfLingering(t: { teardown(fn: () => void): void }, graceMs = 15_000): void {
  t.teardown(() => {
    setTimeout(() => {
      const open = lingeringHandles()
      writeSync(2, `\n--- the tests ended ${graceMs} ms ago but this process did not exit: ${open.length} handle(s) keep it alive\n${open.join('\n')}\n`)
      process.exit(1)
    }, graceMs).unref()
  })
}
