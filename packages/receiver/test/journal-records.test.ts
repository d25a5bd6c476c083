/**
 * A journal's records are held to its head (journal.ts readJournal): an extent
 * record whose range ends past the head's capacity, or whose old contents end
 * past the head's base size, passed its crc but is none the receiver writes —
 * the journal is refused (E_STATE naming the journal relative to the store,
 * the record's seq, the values, the bound and the remedy) by a rollback,
 * start-up recovery and a resume, never read as a torn tail, and nothing is
 * written: the flat, the journal and the state stay byte for byte. `grainline
 * status` says why such a journal, or one whose head is not the state's
 * in-flight record, would be refused: the disk's `inflight.problem`, CRITICAL,
 * the rest of the status there.
 */
import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { MiB, memoryLogger } from './helpers.ts'
import { CAP, files, frame, inflightCycle, patchHead, resumeRefused, stateOf, unchanged } from './journal-fixture.ts'
import { undoInflight } from '../src/rollback.ts'
import { recoverStore } from '../src/recovery.ts'
import { storeHealth, storeOverview } from '../src/index.ts'
import { VmPaths } from '../src/vm-paths.ts'

/**
 * Rewrite, with a valid crc, the first extent record of journal `path` that `patch` returns a header patch for
 * (a record the receiver never writes, that passes its crc); every other record stays as it was.
 */
function patchExtent(path: string, patch: (header: Record<string, unknown>, dataLen: number) => Record<string, unknown> | undefined): void {
  const buf = readFileSync(path)
  const out: Buffer[] = []
  let gen = 0
  let done = false
  for (let pos = 0; pos + 13 <= buf.length; ) {
    const len = buf.readUInt32LE(pos)
    const type = buf.readUInt8(pos + 8)
    const hlen = buf.readUInt32LE(pos + 9)
    const header = JSON.parse(buf.subarray(pos + 13, pos + 13 + hlen).toString('utf8')) as Record<string, unknown>
    const data = buf.subarray(pos + 13 + hlen, pos + 8 + len)
    if (type === 1) gen = (header['gen'] as number) >>> 0
    const p = !done && type === 2 ? patch(header, data.length) : undefined
    if (p === undefined) out.push(buf.subarray(pos, pos + 8 + len))
    else {
      out.push(frame(type, { ...header, ...p }, data, gen))
      done = true
    }
    pos += 8 + len
  }
  if (!done) throw new Error('no extent record to patch')
  writeFileSync(path, Buffer.concat(out))
}

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

/** The lies: a range past the capacity; old contents (stored, or zeros by length) past the base size. */
const cases = [
  {
    what: 'a range past the capacity',
    keep: undefined,
    patch: (h: Record<string, unknown>) => (h['seq'] === 1 ? { offset: CAP - 512 * 1024, oldOffset: h['oldOffset'] ?? h['offset'] } : undefined),
    text: `writes offset ${CAP - 512 * 1024} length ${MiB}, ending at ${CAP + 512 * 1024}, past the disk's capacity of ${CAP} bytes the head gives`,
  },
  {
    what: 'stored old contents past the base size',
    keep: undefined,
    patch: (_h: Record<string, unknown>, n: number) => (n > 0 ? { oldOffset: CAP - 4096 } : undefined),
    text: `holds old contents at offset ${CAP - 4096} length ${MiB}, ending at ${CAP - 4096 + MiB}, past the flat's base size of ${CAP} bytes the head gives`,
  },
  {
    what: 'old zeros past the base size (points on: undo from the reverse increment)',
    keep: 5,
    patch: (h: Record<string, unknown>) => (h['seq'] === 2 ? { oldOffset: CAP - 4096, oldZeros: 8192 } : undefined),
    text: `holds old contents at offset ${CAP - 4096} length 8192, ending at ${CAP + 4096}, past the flat's base size of ${CAP} bytes the head gives`,
  },
] as const

for (const [i, c] of cases.entries()) {
  t.test(`a rollback over a journal whose extent record has ${c.what} is refused (E_STATE), nothing written`, async (t) => {
    const vm = `web-jr-${i}`
    const { env } = await inflightCycle(t, vm, c.keep)
    patchExtent(join(env.store, vm, '.grainline', 'd.journal'), c.patch)
    const before = files(env.store, vm)
    const infl = stateOf(env.store, vm).inflight
    if (infl === null) throw new Error('no cycle in flight')
    const err = (await undoInflight(new VmPaths(env.store, vm), infl).then(
      () => undefined,
      (e: unknown) => e,
    )) as { code?: string; message?: string } | undefined
    t.equal(err?.code, 'E_STATE', 'refused with E_STATE (no torn tail silently dropped)')
    const msg = err?.message ?? ''
    t.match(
      msg,
      new RegExp(`^journal ${esc(`${vm}/.grainline/d.journal`)} of disk d\\.vmdk \\(cycle 2\\) is corrupt: its extent record of seq \\d+ at byte \\d+ `),
      'names the journal (relative to the store), the disk, the cycle and the record',
    )
    t.match(msg, c.text, 'the values and the bound')
    t.match(msg, `cycle 2 can neither resume nor roll back from this journal`, 'what it means')
    t.match(msg, `grainline mirror remove --store ${env.store} --vm ${vm} --yes`, 'and the remedy')
    unchanged(t, env.store, vm, before)

    // start-up recovery (the cycle kept, or abandoned) says so too, and writes nothing
    for (const opts of [{}, { abandonAfterMs: 0 }]) {
      const r = (await recoverStore(env.store, memoryLogger().logger, opts)).find((x) => x.vm === vm)
      t.equal(r?.action, 'failed', `recovery ${JSON.stringify(opts)}: failed`)
      t.match(r?.error, c.text, '… saying why')
      unchanged(t, env.store, vm, before)
    }

    // status: the disk's problem, CRITICAL; the rest of the status there
    const v = (await storeHealth(env.store)).vms.find((x) => x.vm === vm)
    t.match(v?.disks[0]?.inflight, { cycle: 2, mode: 'incremental', resumeSeq: 0, refused: true }, 'status: no resume point, refused')
    t.match(v?.disks[0]?.inflight?.problem, c.text, "the disk's problem is the refusal's text")
    t.equal(v?.committedCycle, 1, 'the rest of the status: committed cycle 1')
    t.equal(v?.health.state, 'CRITICAL', 'CRITICAL: the cycle can neither resume nor roll back')
    t.match(v?.health.problems, [new RegExp(esc(c.text)), /^cycle 2 in flight/], 'the problem in its health, with the cycle in flight')
    unchanged(t, env.store, vm, before)
  })
}

t.test("an agent's resume over a journal whose record holds old contents past the base size is refused; the flat stays as it was", async (t) => {
  const vm = 'web-jr-resume'
  const cycle = await inflightCycle(t, vm, undefined)
  const c = cases[1]
  patchExtent(join(cycle.env.store, vm, '.grainline', 'd.journal'), c.patch)
  await resumeRefused(t, vm, cycle, c.text)
})

t.test("status: a journal whose head is not the state's in-flight record is the disk's problem (CRITICAL), with the refusal's text", async (t) => {
  const vm = 'web-jr-status-head'
  const { env } = await inflightCycle(t, vm, undefined)
  let v = (await storeHealth(env.store)).vms.find((x) => x.vm === vm)
  t.match(v?.disks[0]?.inflight, { cycle: 2, mode: 'incremental' }, 'control: a cycle in flight')
  t.ok((v?.disks[0]?.inflight?.resumeSeq ?? 0) > 0, `control: resume point ${v?.disks[0]?.inflight?.resumeSeq} from the journal`)
  t.equal(v?.disks[0]?.inflight?.problem, undefined, 'control: no problem')
  t.equal(v?.health.state, 'WARNING', 'control: WARNING (a cycle in flight)')

  patchHead(join(env.store, vm, '.grainline', 'd.journal'), { capacity: 16 * MiB })
  const before = files(env.store, vm)
  v = (await storeHealth(env.store)).vms.find((x) => x.vm === vm)
  const text = `journal ${vm}/.grainline/d.journal of disk d.vmdk of VM ${vm} does not belong to cycle 2 in flight that the VM's state records: capacity ${16 * MiB} bytes in the journal, ${CAP} bytes in the state`
  t.match(v?.disks[0]?.inflight, { cycle: 2, mode: 'incremental', resumeSeq: 0, refused: true }, 'no resume point shown, refused')
  t.match(v?.disks[0]?.inflight?.problem, text, 'the problem: the text a resume refuses with')
  t.match(v?.disks[0]?.inflight?.problem, `grainline mirror remove --store ${env.store} --vm ${vm} --yes`, '… with the remedy')
  t.equal(v?.health.state, 'CRITICAL', 'CRITICAL')
  t.equal(v?.committedCycle, 1, 'the rest of the status there')
  const o = await storeOverview(env.store)
  t.equal(o.exitCode, 2, 'status exits 2 (CRITICAL)')
  unchanged(t, env.store, vm, before)
})
