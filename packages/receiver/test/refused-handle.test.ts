import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { MessageKind, type Message } from '@grainline/protocol'
import { Agent, MiB, TOKEN, diskEnd, diskOpen, extentMessage, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen, type DiskPlan } from './helpers.ts'

/*
 * SPEC §8.2, refused disk handles: a refused handle is spent for the
 * connection; the agent may open the same disk name again under a new handle
 * (e.g. as a seed after a refused incremental); Commit needs every disk name
 * opened to have a sealed handle, or only refused handles.
 * (Before: a refused handle was "left free" by the receiver and could be
 * reused, while the agent and SPEC said otherwise.)
 */

async function ship(a: Agent, d: DiskPlan): Promise<void> {
  for (let seq = 0; seq < d.extents.length; seq++) a.send(extentMessage(d, seq, 'sha256'))
  a.send(diskEnd(d, 'sha256'))
  for (;;) {
    const m = await a.next()
    if (m?.kind === MessageKind.DiskEnded) return
    if (m?.kind !== MessageKind.ExtentAck) throw new Error(`unexpected ${String(m?.kind)}`)
  }
}

t.test('refused handles', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const img = pattern(MiB, 1)
  const a0 = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a0, 'vm-h', 1, [seedPlan(0, 'a.vmdk', img, '01'.repeat(8)), seedPlan(1, 'b.vmdk', img, '02'.repeat(8))])
  a0.close()
  await a0.whenClosed()
  // an incremental that does not follow the recorded successor: refused (E_CHAIN_MISMATCH)
  const badInc = (handle: number, name: string): DiskPlan => incPlan(handle, name, img, 1, 'x', [{ offset: 0, length: 4096 }], 'nope-000009.vmdk', 'nope-000010.vmdk')
  let generation = ''
  const open = async (): Promise<Agent> => {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    a.send(hello())
    await a.expect(MessageKind.Welcome)
    // the VmOpen names both disks; its .vmx names none the rewrite can map (helpers' VMX of no disk): a disk the
    // VmOpen names is never taken for removed, so a refused b.vmdk keeps its mirror (commit.ts, mirror-vmx.ts withNamed)
    a.send({ ...vmOpen('vm-h', 2, []), disks: ['a.vmdk', 'b.vmdk'] } as Message)
    generation = (await a.expect(MessageKind.VmState)).generation
    return a
  }

  await t.test('a refused handle cannot be used again, not even for another open', async (t) => {
    const a = await open()
    a.send(diskOpen(badInc(0, 'a.vmdk'), 2, 'vm-h', generation))
    t.equal((await a.expect(MessageKind.DiskState)).reason, 'E_CHAIN_MISMATCH')
    a.send(diskOpen(seedPlan(0, 'a.vmdk', img, '03'.repeat(8)), 2, 'vm-h'))
    t.same(await a.expectError(), { code: 'E_UNEXPECTED', closeCode: 4004 })
  })

  await t.test('no extent for a refused handle', async (t) => {
    const a = await open()
    const d = badInc(0, 'a.vmdk')
    a.send(diskOpen(d, 2, 'vm-h', generation))
    t.equal((await a.expect(MessageKind.DiskState)).accepted, false)
    a.send(extentMessage(d, 0, 'sha256'))
    t.same(await a.expectError(), { code: 'E_UNEXPECTED', closeCode: 4004 })
  })

  await t.test('a disk already open under an accepted handle cannot be opened again', async (t) => {
    const a = await open()
    a.send(diskOpen(seedPlan(0, 'a.vmdk', img, '04'.repeat(8)), 2, 'vm-h'))
    t.equal((await a.expect(MessageKind.DiskState)).accepted, true)
    a.send(diskOpen(seedPlan(1, 'a.vmdk', img, '04'.repeat(8)), 2, 'vm-h'))
    t.same(await a.expectError(), { code: 'E_UNEXPECTED', closeCode: 4004 })
    // roll the in-flight seed back for the next case
    const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(b, 'vm-h', 2, [], { rollbackFirst: true, commit: false })
    b.close()
    await b.whenClosed()
  })

  await t.test('the same name under a new handle (a seed after a refused incremental) commits; a name only refused is left out', async (t) => {
    const img2 = pattern(MiB, 2)
    const a = await open()
    a.send(diskOpen(badInc(0, 'a.vmdk'), 2, 'vm-h', generation))
    t.equal((await a.expect(MessageKind.DiskState)).accepted, false)
    a.send(diskOpen(badInc(1, 'b.vmdk'), 2, 'vm-h', generation))
    t.equal((await a.expect(MessageKind.DiskState)).accepted, false)
    const seed = seedPlan(2, 'a.vmdk', img2, '05'.repeat(8))
    a.send(diskOpen(seed, 2, 'vm-h'))
    t.equal((await a.expect(MessageKind.DiskState)).accepted, true, 'a.vmdk reopened under handle 2')
    await ship(a, seed)
    a.send({ kind: MessageKind.Commit, vm: 'vm-h', cycle: 2, retention: null })
    const c = await a.expect(MessageKind.Committed)
    t.same(
      c.disks.map((d) => d.disk),
      [2],
      'only the sealed handle is committed',
    )
    a.close()
    await a.whenClosed()
    t.ok(readFileSync(join(env.store, 'vm-h', 'a-flat.vmdk')).equals(img2))
    t.ok(readFileSync(join(env.store, 'vm-h', 'b-flat.vmdk')).equals(img), 'b.vmdk stays at cycle 1')
    const st = JSON.parse(readFileSync(join(env.store, 'vm-h', '.grainline', 'state.json'), 'utf8')) as { disks: Record<string, { cycle: number; removed?: number }> }
    t.same(
      Object.entries(st.disks).map(([n, d]) => [n, d.cycle, d.removed ?? null]),
      [
        ['a.vmdk', 2, null],
        ['b.vmdk', 1, null],
      ],
      'b.vmdk, refused but named by the VmOpen, is not taken for removed',
    )
  })
})
