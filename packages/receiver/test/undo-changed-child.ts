/**
 * Child of undo-changed.test: roll back the cycle in flight of a VM (VmMirror.rollback, as `grainline mirror
 * rollback` and a session's Rollback do), in a process the test stops mid-undo (GRAINLINE_RECEIVER_FAULT).
 * argv: store, vm. Prints {"ok":true} or the refusal's {"code","message"} as JSON.
 */
import pino from 'pino'
import { VmMirror } from '../src/vm-mirror.ts'

const [store, vm] = process.argv.slice(2) as [string, string]
const m = await VmMirror.acquire(store, vm, pino({ level: 'silent' }), { create: false })
try {
  await m.rollback()
  process.stdout.write(`${JSON.stringify({ ok: true })}\n`)
} catch (err) {
  process.stdout.write(`${JSON.stringify({ code: (err as { code?: unknown }).code, message: (err as Error).message })}\n`)
} finally {
  m.release()
}
