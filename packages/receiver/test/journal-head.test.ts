/**
 * A journal is read to resume or roll back a cycle in flight only when its
 * head is the state's in-flight record of the disk (journal-head.ts): a head
 * whose capacity or base size (or cycle, disk, increment) differs — a journal
 * of another disk or cycle, a state edited by hand, a folder restored from
 * backups of different times — is refused with E_STATE naming the VM, the
 * disk, the journal (relative to the store), both values and the remedy, and
 * nothing is written: the flat, the journal and the state stay byte for byte.
 */
import t, { type Test } from 'tap'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import { scratchDir } from '@grainline/test-utils'
import { Agent, MiB, TOKEN, evolve, incPlan, makeEnv, memoryLogger, pattern, runCycle, seedPlan, startReceiver } from './helpers.ts'
import { undoInflight } from '../src/rollback.ts'
import { recoverStore } from '../src/recovery.ts'
import { VmPaths } from '../src/vm-paths.ts'
import type { VmStateFile } from '../src/state-file.ts'

const CAP = 12 * MiB

function stateOf(store: string, vm: string): VmStateFile {
  return JSON.parse(readFileSync(join(store, vm, '.grainline', 'state.json'), 'utf8')) as VmStateFile
}

/** A seed (cycle 1) of disk d.vmdk of `vm`, then an incremental cycle 2 sent whole but not committed; the receiver closed. */
async function inflightCycle(t: Test, vm: string, keep: number | undefined) {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, keep === undefined ? {} : { retention: { keep } })
  const img1 = pattern(CAP, 3)
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', img1, 'ac01ac01ac01ac01')])
  a.close()
  const ranges = [
    { offset: 0, length: 5 * MiB },
    { offset: 6 * MiB, length: 3 * MiB, zero: true },
  ]
  const img2 = evolve(img1, 9, ranges)
  const inc = incPlan(0, 'd.vmdk', img2, 1, 'ac02ac02ac02ac02', ranges, 'd-000001.vmdk', 'd-000002.vmdk')
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 2, [inc], { commit: false })
  a.close()
  await a.whenClosed()
  await receiver.close()
  t.equal(stateOf(env.store, vm).inflight?.cycle, 2, 'cycle 2 is in flight')
  return { env, inc, img1, img2 }
}

/** Rewrite the head record of journal `path` with `patch` (its crc starts from 0; later records keep their seed, the head's `gen`). */
function patchHead(path: string, patch: Record<string, unknown>): void {
  const buf = readFileSync(path)
  const len = buf.readUInt32LE(0)
  const hlen = buf.readUInt32LE(9)
  if (buf.readUInt8(8) !== 1 || len !== 5 + hlen) throw new Error('no head record first')
  const head = { ...(JSON.parse(buf.subarray(13, 13 + hlen).toString('utf8')) as Record<string, unknown>), ...patch }
  const h = Buffer.from(JSON.stringify(head), 'utf8')
  const pre = Buffer.alloc(13)
  pre.writeUInt32LE(5 + h.length, 0)
  pre.writeUInt8(1, 8)
  pre.writeUInt32LE(h.length, 9)
  pre.writeUInt32LE(crc32(h, crc32(pre.subarray(8, 13), 0)) >>> 0, 4)
  writeFileSync(path, Buffer.concat([pre, h, buf.subarray(8 + len)]))
}

/** The bytes of every file a refused resume or rollback must leave alone. */
function files(store: string, vm: string): Record<string, Buffer> {
  const out: Record<string, Buffer> = {}
  for (const f of ['d-flat.vmdk', 'd.vmdk', '.grainline/d.journal', '.grainline/state.json']) out[f] = readFileSync(join(store, vm, f))
  return out
}

function unchanged(t: Test, store: string, vm: string, before: Record<string, Buffer>): void {
  for (const [f, bytes] of Object.entries(before)) t.ok(readFileSync(join(store, vm, f)).equals(bytes), `${f} unchanged byte for byte`)
  t.notOk(existsSync(join(store, vm, '.grainline', 'd.journal.undo')), 'no undo begun (the journal not renamed)')
}

const cases = [
  { what: 'capacity', patch: { capacity: 16 * MiB }, text: `capacity ${16 * MiB} bytes in the journal, ${CAP} bytes in the state` },
  { what: 'base size', patch: { baseSize: 8 * MiB }, text: `base size ${8 * MiB} bytes in the journal, ${CAP} bytes in the state` },
] as const

for (const keep of [undefined, 5]) {
  const how = keep === undefined ? 'points off: undo from the journal' : 'points on: undo from the reverse increment'
  for (const c of cases) {
    t.test(`a rollback whose journal head's ${c.what} is not the state's is refused, nothing written (${how})`, async (t) => {
      const vm = `web-jh-${keep ?? 0}-${c.what.replace(' ', '')}`
      const { env } = await inflightCycle(t, vm, keep)
      patchHead(join(env.store, vm, '.grainline', 'd.journal'), c.patch)
      const before = files(env.store, vm)
      const infl = stateOf(env.store, vm).inflight
      if (infl === null) throw new Error('no cycle in flight')
      const err = (await undoInflight(new VmPaths(env.store, vm), infl).then(
        () => undefined,
        (e: unknown) => e,
      )) as { code?: string; message?: string } | undefined
      t.equal(err?.code, 'E_STATE', 'refused with E_STATE')
      const msg = err?.message ?? ''
      t.match(msg, `journal ${vm}/.grainline/d.journal of disk d.vmdk of VM ${vm} does not belong to cycle 2 in flight`, 'names the journal (relative to the store), the disk, the VM and the cycle')
      t.match(msg, c.text, 'both values')
      t.match(msg, `grainline mirror remove --store ${env.store} --vm ${vm} --yes`, 'and the remedy')
      unchanged(t, env.store, vm, before)
    })
  }
}

t.test('start-up recovery reports such a journal (kept or abandoned cycle) and writes nothing', async (t) => {
  const vm = 'web-jh-recover'
  const { env } = await inflightCycle(t, vm, undefined)
  patchHead(join(env.store, vm, '.grainline', 'd.journal'), { capacity: 16 * MiB })
  const before = files(env.store, vm)
  for (const opts of [{}, { abandonAfterMs: 0 }]) {
    const reports = await recoverStore(env.store, memoryLogger().logger, opts)
    const r = reports.find((x) => x.vm === vm)
    t.equal(r?.action, 'failed', `recovery ${JSON.stringify(opts)}: failed`)
    t.match(r?.error, `capacity ${16 * MiB} bytes in the journal, ${CAP} bytes in the state`, '… saying why')
    unchanged(t, env.store, vm, before)
  }
})

t.test("an agent's resume of the cycle over such a journal is refused; the flat stays as it was", async (t) => {
  const vm = 'web-jh-resume'
  const { env, inc } = await inflightCycle(t, vm, undefined)
  patchHead(join(env.store, vm, '.grainline', 'd.journal'), { capacity: 16 * MiB })
  const before = files(env.store, vm)
  const { receiver, url, logs } = await startReceiver(env, { recover: false })
  t.teardown(() => receiver.close())
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const res = await runCycle(a, vm, 2, [inc]).then(
    () => 'committed',
    (e: unknown) => String((e as Error).message),
  )
  a.terminate()
  await a.whenClosed()
  t.not(res, 'committed', `the resume is refused (${res.slice(0, 120)})`)
  t.match(logs.text(), `capacity ${16 * MiB} bytes in the journal, ${CAP} bytes in the state`, 'the receiver logs why')
  unchanged(t, env.store, vm, before)
})
