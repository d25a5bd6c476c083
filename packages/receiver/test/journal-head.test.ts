/**
 * A journal is read to resume or roll back a cycle in flight only when its
 * head is the state's in-flight record of the disk (journal-head.ts): a head
 * whose capacity or base size (or cycle, disk, increment) differs — a journal
 * of another disk or cycle, a state edited by hand, a folder restored from
 * backups of different times — is refused with E_STATE naming the VM, the
 * disk, the journal (relative to the store), both values and the remedy, and
 * nothing is written: the flat, the journal and the state stay byte for byte.
 */
import t from 'tap'
import { join } from 'node:path'
import { MiB, memoryLogger } from './helpers.ts'
import { CAP, files, inflightCycle, patchHead, resumeRefused, undoError, unchanged } from './journal-fixture.ts'
import { recoverStore } from '../src/recovery.ts'

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
      const err = await undoError(env.store, vm)
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
  const cycle = await inflightCycle(t, vm, undefined)
  patchHead(join(cycle.env.store, vm, '.grainline', 'd.journal'), { capacity: 16 * MiB })
  await resumeRefused(t, vm, cycle, `capacity ${16 * MiB} bytes in the journal, ${CAP} bytes in the state`)
})
