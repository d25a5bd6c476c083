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
import type { Test as TapTest } from 'tap'
import { execFileSync } from 'node:child_process'
import { existsSync, lstatSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import { Agent, MiB, TOKEN, memoryLogger, runCycle, startReceiver } from './helpers.ts'
import { CAP, files, frame, inflightCycle, inflightSeed, patchHead, resumeFailsAt, resumeRefused, stateOf, undoError, unchanged } from './journal-fixture.ts'
import { undoInflight } from '../src/rollback.ts'
import { recoverStore } from '../src/recovery.ts'
import { rollbackMirror, storeHealth, storeOverview } from '../src/index.ts'
import { VmPaths } from '../src/vm-paths.ts'

/**
 * Rewrite, with a valid crc, the first extent record of journal `path` that `patch` returns a header patch for
 * (a record the receiver never writes, that passes its crc); every other record stays as it was.
 */
function patchExtent(path: string, patch: (header: Record<string, unknown>, dataLen: number) => Record<string, unknown> | undefined, recordType = 2): void {
  const buf = readFileSync(path)
  const out: Buffer[] = []
  let gen = 0
  let done = false
  let pos = 0
  while (pos + 13 <= buf.length) {
    const len = buf.readUInt32LE(pos)
    const type = buf.readUInt8(pos + 8)
    const hlen = buf.readUInt32LE(pos + 9)
    // the journal's valid records end where a frame does not fit or its crc is not this generation's: past them lie
    // the stale bytes of the spare file the journal was made from (journal.ts), which the reader ignores too
    if (len < 5 || hlen > len - 5 || pos + 8 + len > buf.length) break
    const body = buf.subarray(pos + 8, pos + 8 + len)
    if (crc32(body, type === 1 ? 0 : gen) >>> 0 !== buf.readUInt32LE(pos + 4)) break
    const header = JSON.parse(buf.subarray(pos + 13, pos + 13 + hlen).toString('utf8')) as Record<string, unknown>
    const data = buf.subarray(pos + 13 + hlen, pos + 8 + len)
    if (type === 1) gen = (header['gen'] as number) >>> 0
    const p = !done && type === recordType ? patch(header, data.length) : undefined
    if (p === undefined) out.push(buf.subarray(pos, pos + 8 + len))
    else {
      out.push(frame(type, { ...header, ...p }, data, gen))
      done = true
    }
    pos += 8 + len
  }
  if (!done) throw new Error('no extent record to patch')
  writeFileSync(path, Buffer.concat([...out, buf.subarray(pos)]))
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
  // the writer journals pieces of the range it overwrites, nothing else (disk-apply.ts prepareBatch): old contents
  // elsewhere, though below the base size, would be written by an undo over bytes the cycle never wrote
  {
    what: 'stored old contents outside its own range',
    keep: undefined,
    patch: (h: Record<string, unknown>, n: number) => (h['seq'] === 1 && n > 0 ? { oldOffset: 10 * MiB } : undefined),
    text: `holds old contents at offset ${10 * MiB} length ${MiB}, ending at ${11 * MiB}, outside its own range at offset ${MiB} length ${MiB}, ending at ${2 * MiB} (an undo would write them over bytes the cycle never wrote)`,
  },
  {
    what: 'stored old contents straddling the end of its own range',
    keep: undefined,
    patch: (h: Record<string, unknown>, n: number) => (h['seq'] === 0 && n > 0 ? { oldOffset: 512 * 1024 } : undefined),
    text: `holds old contents at offset ${512 * 1024} length ${MiB}, ending at ${MiB + 512 * 1024}, outside its own range at offset 0 length ${MiB}, ending at ${MiB}`,
  },
  {
    what: 'old zeros outside its own range (points on: undo from the reverse increment)',
    keep: 5,
    patch: (h: Record<string, unknown>) => (h['seq'] === 2 ? { oldOffset: 4 * MiB, oldZeros: 8192 } : undefined),
    text: `holds old contents at offset ${4 * MiB} length 8192, ending at ${4 * MiB + 8192}, outside its own range at offset ${2 * MiB} length ${MiB}, ending at ${3 * MiB}`,
  },
  // a resume keeps up to 64 Ki records waiting (disk-apply.ts #replay): only what the writer writes is held
  {
    what: 'a digest that is not hex (a header of up to 1 MiB held per waiting record)',
    keep: undefined,
    patch: (h: Record<string, unknown>) => (h['seq'] === 1 ? { digest: 'z'.repeat(4096) } : undefined),
    text: 'holds a digest that is not hex of at most 128 digits',
  },
  {
    what: 'a zero flag that is not true or false',
    keep: undefined,
    patch: (h: Record<string, unknown>) => (h['seq'] === 1 ? { zero: ['x'.repeat(64)] } : undefined),
    text: `says zero = ["${'x'.repeat(38)}, not true or false`,
  },
] as const

for (const [i, c] of cases.entries()) {
  t.test(`a rollback over a journal whose extent record has ${c.what} is refused (E_STATE), nothing written`, async (t) => {
    const vm = `web-jr-${i}`
    const { env } = await inflightCycle(t, vm, c.keep)
    patchExtent(join(env.store, vm, '.grainline', 'd.journal'), c.patch)
    const before = files(env.store, vm)
    const err = await undoError(env.store, vm)
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

t.test("an agent's resume over a journal whose record holds old contents outside its own range is refused; the flat stays as it was", async (t) => {
  const vm = 'web-jr-resume-own'
  const cycle = await inflightCycle(t, vm, undefined)
  const c = cases[3]
  patchExtent(join(cycle.env.store, vm, '.grainline', 'd.journal'), c.patch)
  await resumeRefused(t, vm, cycle, c.text)
})

/** A seed of cycle 2 in flight whose journal's extent record of seq 1 writes past the capacity (passes its crc). */
async function refusedSeed(t: TapTest, vm: string) {
  const cycle = await inflightSeed(t, vm)
  patchExtent(join(cycle.env.store, vm, '.grainline', 'd.journal'), (h) => (h['seq'] === 1 ? { offset: CAP - 512 * 1024 } : undefined))
  const text = `its extent record of seq 1 at byte \\d+ writes offset ${CAP - 512 * 1024} length ${MiB}, ending at ${CAP + 512 * 1024}, past the disk's capacity of ${CAP} bytes the head gives`
  return { ...cycle, text: new RegExp(text) }
}

/** After the seed's rollback: nothing in flight, the seed file gone, the flat cycle 1's; a warning named the ignored record. */
function seedRolledBack(t: TapTest, store: string, vm: string, img1: Buffer, lines: ReadonlyArray<Record<string, unknown>>, text: RegExp): void {
  t.match(stateOf(store, vm), { committedCycle: 1, inflight: null }, 'committed cycle 1, nothing in flight')
  t.notOk(existsSync(join(store, vm, 'd-flat.vmdk.seed')), 'the seed file is gone')
  t.ok(readFileSync(join(store, vm, 'd-flat.vmdk')).equals(img1), "the mirror flat is cycle 1's, byte for byte")
  const warn = lines.find((l) => l['level'] === 40 && String(l['msg']).includes('holds records the receiver never writes'))
  t.match(
    warn,
    {
      vm,
      disk: 'd.vmdk',
      cycle: 2,
      journal: `${vm}/.grainline/d.journal`,
      why: text,
      msg: new RegExp(`^the journal of seed disk d\\.vmdk of VM ${vm} \\(cycle 2\\) holds records the receiver never writes: ignored`),
    },
    'a warning names the journal, the disk, the cycle and the ignored record',
  )
}

t.test("a seed's rollback over a journal whose record is refused reads the head alone: the seed discarded, the mirror as committed, the ignored records logged", async (t) => {
  const vm = 'web-jr-seed'
  const { env, img1, text } = await refusedSeed(t, vm)
  // status: the next run's resume is refused, then the receiver rolls the seed back on its own (WARNING)
  let v = (await storeOverview(env.store)).vms.find((x) => x.vm === vm)
  t.match(v?.disks[0]?.inflight, { cycle: 2, mode: 'seed', resumeSeq: 0 }, 'status: no resume point')
  t.equal(v?.disks[0]?.inflight?.refused, undefined, 'not stuck: a rollback gets past it')
  t.match(v?.disks[0]?.inflight?.problem, text, "the disk's problem names the record")
  t.match(
    v?.disks[0]?.inflight?.problem,
    `cycle 2, a seed, cannot resume from this journal. The receiver rolls it back on its own once a resume failed on it (grainline mirror rollback --store ${env.store} --vm ${vm} does it now)`,
    '… what happens, and the remedy',
  )
  t.equal(v?.health.state, 'WARNING', 'WARNING')
  // the rollback (grainline mirror rollback): the head is the state's record of the seed, the records are not needed
  const log = memoryLogger()
  t.same(await rollbackMirror(env.store, vm, log.logger), { vm, committedCycle: 1, rolledBack: true }, 'rolled back to committed cycle 1')
  seedRolledBack(t, env.store, vm, img1, log.lines, text)
  v = (await storeOverview(env.store)).vms.find((x) => x.vm === vm)
  t.equal(v?.disks[0]?.inflight, null, 'status: nothing in flight')
  t.equal(v?.health.state, 'OK', 'status: OK')
})

t.test("an agent's resume of such a seed is refused, the receiver rolls the seed back on its own, and the next run seeds the disk anew", async (t) => {
  const vm = 'web-jr-seed-resume'
  const { env, img1, inc, text } = await refusedSeed(t, vm)
  const { receiver, url, logs } = await startReceiver(env, { recover: false })
  t.teardown(() => receiver.close())
  await resumeFailsAt(t, url, env, vm, inc)
  t.match(logs.text(), text, 'the receiver logs why')
  seedRolledBack(t, env.store, vm, img1, logs.lines, text)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const again = await runCycle(a, vm, 2, [inc])
  a.close()
  t.same(again.resume, [0], 'the next run: a fresh seed from seq 0')
  t.ok(again.committed !== undefined, 'cycle 2 committed')
  t.ok(readFileSync(join(env.store, vm, 'd-flat.vmdk')).equals(inc.image), "the mirror is cycle 2's seed")
})

t.test("a seed's rollback over a journal whose head is not the state's record is refused: it may be another cycle's undo data", async (t) => {
  const vm = 'web-jr-seed-head'
  const { env } = await inflightSeed(t, vm)
  patchHead(join(env.store, vm, '.grainline', 'd.journal'), { mode: 'incremental', baseSize: CAP })
  const before = files(env.store, vm)
  const infl = stateOf(env.store, vm).inflight
  if (infl === null) throw new Error('no cycle in flight')
  await t.rejects(
    undoInflight(new VmPaths(env.store, vm), infl),
    {
      code: 'E_STATE',
      message: `journal ${vm}/.grainline/d.journal of disk d.vmdk of VM ${vm} does not belong to cycle 2 in flight that the VM's state records: base size ${CAP} bytes in the journal, 0 bytes in the state; mode "incremental" in the journal, "seed" in the state`,
    },
    'refused (E_STATE), both values named',
  )
  unchanged(t, env.store, vm, before)
  t.ok(existsSync(join(env.store, vm, 'd-flat.vmdk.seed')), 'the seed file stays')
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

t.test('an applied marker that names no seq is refused (E_STATE): a resume never takes extents as durable that no marker vouches for', async (t) => {
  const vm = 'web-jr-marker'
  const { env } = await inflightCycle(t, vm, undefined)
  patchExtent(join(env.store, vm, '.grainline', 'd.journal'), () => ({ seq: 'x' }), 3)
  const before = files(env.store, vm)
  const err = await undoError(env.store, vm)
  t.equal(err?.code, 'E_STATE')
  t.match(err?.message, new RegExp(`^journal ${esc(`${vm}/.grainline/d.journal`)} of disk d\\.vmdk \\(cycle 2\\) is corrupt: its applied marker at byte \\d+ names seq "x", not a seq`))
  unchanged(t, env.store, vm, before)
  const r = (await recoverStore(env.store, memoryLogger().logger, {})).find((x) => x.vm === vm)
  t.equal(r?.action, 'failed', 'recovery: failed, not a resume point of "x1"')
  t.match(r?.error, 'names seq "x", not a seq')
  unchanged(t, env.store, vm, before)
})

t.test("a state whose cycle in flight is no cycle number is refused before a seed's journal is set aside: never a rename outside the VM's folder", async (t) => {
  const vm = 'web-jr-cycle'
  const { env } = await inflightSeed(t, vm)
  const jpath = join(env.store, vm, '.grainline', 'd.journal')
  unlinkSync(jpath)
  execFileSync('mkfifo', [jpath])
  const stateFile = join(env.store, vm, '.grainline', 'state.json')
  const st = JSON.parse(readFileSync(stateFile, 'utf8')) as { inflight: { cycle: unknown } }
  // <vm>/d.journal.set-aside-cycle-x/../../../evil is <scratch>/evil: out of the store
  st.inflight.cycle = 'x/../../../evil'
  writeFileSync(stateFile, JSON.stringify(st))
  const err = (await rollbackMirror(env.store, vm).then(
    () => undefined,
    (e: unknown) => e,
  )) as { code?: string; message?: string } | undefined
  t.equal(err?.code, 'E_STATE')
  t.match(err?.message, `has inflight.cycle = "x/../../../evil", which is not a cycle number`)
  t.ok(lstatSync(jpath).isFIFO(), 'the journal is where it was')
  t.notOk(existsSync(join(env.dir, 'evil')), 'nothing was moved out of the store')
})
