/**
 * A journal changed in the middle of a rollback (journal.ts undoJournal reads it back a window at a time, newest
 * first, and writes each back before reading the one before it): the window read again no longer matches the scan
 * after part of the flat was put back. The refusal says the mirror is half undone and what to do, naming the VM,
 * the disk and the journal relative to the store; `grainline status` says it CRITICAL, never healthy; a later
 * rollback and start-up recovery refuse the same way and write nothing (the rollback recorded the journal it began
 * with in the VM's state: state-file.ts InflightDisk.undoFrom) — the journal cut short by the changed record would
 * have "finished" the undo without its oldest records, and reported the mirror committed; once the journal is put
 * back as it was, the rollback finishes and the flat is the committed one byte for byte.
 */
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { existsSync, readFileSync, realpathSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import pino from 'pino'
import { MiB, watchSyncs } from './helpers.ts'
import { inflightCycle, stateOf } from './journal-fixture.ts'
import { recoverStore } from '../src/recovery.ts'
import { storeStatus } from '../src/store-admin.ts'
import { scanJournal } from '../src/journal.ts'
import { undoInflight } from '../src/rollback.ts'
import { VmMirror } from '../src/vm-mirror.ts'
import { VmPaths } from '../src/vm-paths.ts'

const CHILD = join(import.meta.dirname, 'undo-changed-child.js')
const log = pino({ level: 'silent' })

/** Run the child's rollback of `vm`; `atStop` runs while it is stopped at the fault point (after a batch was written back). */
async function childRollback(store: string, vm: string, atStop: () => void): Promise<{ code?: string; message?: string; ok?: boolean; stopped: boolean }> {
  const child = spawn(process.execPath, [CHILD, store, vm], { env: { ...process.env, GRAINLINE_RECEIVER_FAULT: 'undo-written:1:stop' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  let stopped = false
  child.stdout.on('data', (b: Buffer) => {
    out += b.toString()
  })
  child.stderr.on('data', (b: Buffer) => {
    err += b.toString()
    if (!stopped && err.includes('"fault-stop"')) {
      stopped = true
      // the stop is sent right after the line: wait until the process is stopped
      const stat = (): string => readFileSync(`/proc/${child.pid}/stat`, 'utf8')
      const wait = (): void => {
        if (stat().slice(stat().lastIndexOf(')') + 2, stat().lastIndexOf(')') + 3) !== 'T') {
          setImmediate(wait)
          return
        }
        atStop()
        child.kill('SIGCONT')
      }
      wait()
    }
  })
  await new Promise<void>((resolve) => child.on('close', () => resolve()))
  if (out.trim() === '') throw new Error(`the child printed nothing (stderr: ${err.slice(-600)})`)
  return { ...(JSON.parse(out.trim()) as { code?: string; message?: string; ok?: boolean }), stopped }
}

/** Cycle 2 of VM `vm` in flight: it overwrote 10 MiB of cycle 1's flat in 10 extents of 1 MiB, each journaled with its old contents (a window each). */
async function inflight(t: Test, vm: string) {
  const { env, img1, img2 } = await inflightCycle(t, vm, undefined, [{ offset: 0, length: 10 * MiB }])
  const flatPath = join(env.store, vm, 'd-flat.vmdk')
  t.ok(readFileSync(flatPath).equals(img2), "the flat holds cycle 2's bytes")
  const paths = new VmPaths(env.store, vm)
  const infl = stateOf(env.store, vm).inflight
  if (infl === null) throw new Error('no cycle in flight')
  return { env, img1, img2, flatPath, paths, jpath: paths.journal('d'), infl }
}

t.test('a journal changed mid-rollback: half undone, said so, refused the same way until put back; then finished', async (t) => {
  const vm = 'vm 01'
  const { env, img1, img2, flatPath } = await inflight(t, vm)
  // the first record after the head: seq 0's, the oldest, read back last
  const upath = join(env.store, vm, '.grainline', 'd.journal.undo')
  let original: Buffer | undefined
  let first = 0
  const rolled = await childRollback(env.store, vm, () => {
    const bytes = readFileSync(upath)
    original = Buffer.from(bytes)
    first = 8 + bytes.readUInt32LE(0)
    // the last byte of its old contents
    const flipped = first + 8 + bytes.readUInt32LE(first) - 1
    bytes.writeUInt8(bytes.readUInt8(flipped) ^ 0x01, flipped)
    writeFileSync(upath, bytes)
  })
  t.ok(rolled.stopped, 'the rollback stopped after writing a batch back')
  t.equal(rolled.code, 'E_STATE', 'the rollback is refused')
  const store = env.store
  const rollback = `grainline mirror rollback --store ${store} --vm 'vm 01'`
  const remove = `grainline mirror remove --store ${store} --vm 'vm 01' --yes`
  const tail =
    "The rollback of cycle 2 may have put part of the mirror flat back from it already: disk d.vmdk of VM vm 01 is half undone, neither its committed mirror nor cycle 2's, and nothing more is written from this journal; every run of VM vm 01 fails until it is dealt with. " +
    `Stop what else writes in the folder of VM vm 01; put the journal back as it was when the rollback began (from the backup the folder comes from), then ${rollback} finishes the rollback; ` +
    `or restore the folder of VM vm 01 whole from one backup, or remove the mirror (${remove}): the next run seeds the VM anew`
  t.equal(
    rolled.message,
    `journal vm 01/.grainline/d.journal.undo of disk d.vmdk of VM vm 01 (cycle 2) changed while it was read: its record at byte ${first} is not the one read before (below its valid end at byte ${original?.length}). ${tail}`,
    'the refusal says the mirror is half undone, names VM, disk and journal, and what to do',
  )
  const half = readFileSync(flatPath)
  t.ok(half.subarray(2 * MiB, 10 * MiB).equals(img1.subarray(2 * MiB, 10 * MiB)), 'the newest 8 MiB were put back')
  t.ok(half.subarray(0, 2 * MiB).equals(img2.subarray(0, 2 * MiB)), 'the oldest 2 MiB were not: the flat is half undone')
  const state = readFileSync(join(env.store, vm, '.grainline', 'state.json'))
  t.equal(stateOf(env.store, vm).inflight?.cycle, 2, 'cycle 2 is still in flight')

  // status: CRITICAL, the same words
  const status = await storeStatus(env.store)
  const disk = status.vms.find((v) => v.vm === vm)?.disks.find((d) => d.name === 'd.vmdk')
  // the changed record's crc fails: a scan now ends before it (the journal ends at the head)
  const differs = `journal vm 01/.grainline/d.journal.undo of disk d.vmdk of VM vm 01 (cycle 2) is not the journal its rollback began with: 10 extent records to byte ${original?.length} then, 0 to byte ${first} now. `
  t.match(disk?.inflight, { refused: true }, 'status: refused (CRITICAL)')
  t.equal(disk?.inflight?.problem, differs + tail, 'status says the mirror is half undone')

  // a later rollback and start-up recovery refuse the same way and write nothing
  const m = await VmMirror.acquire(env.store, vm, log, { create: false })
  const again = await m.rollback().then(
    () => undefined,
    (e: unknown) => e as { code?: string; message?: string },
  )
  m.release()
  t.equal(again?.code, 'E_STATE', 'a rollback again: refused')
  t.equal(again?.message, disk?.inflight?.problem, 'in the words status says')
  const reports = await recoverStore(env.store, log)
  t.match(reports, [{ vm, action: 'failed', error: disk?.inflight?.problem }], 'recovery: refused the same way')
  t.ok(readFileSync(flatPath).equals(half), 'the flat unchanged by either')
  t.ok(readFileSync(join(env.store, vm, '.grainline', 'state.json')).equals(state), 'the state unchanged by either')

  // the journal put back as it was: the rollback finishes
  writeFileSync(upath, original as Buffer)
  const m2 = await VmMirror.acquire(env.store, vm, log, { create: false })
  await m2.rollback()
  m2.release()
  t.equal(stateOf(env.store, vm).inflight, null, 'rolled back')
  t.ok(readFileSync(flatPath).equals(img1), 'the flat is the committed one byte for byte')
})

t.test('a journal changed after the rollback read it, before anything was written back: refused, nothing written, the journal under its name', async (t) => {
  const { img2, flatPath, paths, jpath, infl } = await inflight(t, 'vm 02')
  let newest = 0
  const err = await undoInflight(paths, infl, undefined, undefined, undefined, undefined, async (marks) => {
    t.same([...marks.keys()], ['d.vmdk'], 'the rollback records the journal of its in-place disk before it writes')
    // the newest record's last byte, read back first
    const scan = await scanJournal(jpath)
    const bytes = readFileSync(jpath)
    for (let p = 0; p < (scan?.validEnd ?? 0); p += 8 + bytes.readUInt32LE(p)) if (bytes.readUInt8(p + 8) === 2) newest = p
    const pos = newest + 8 + bytes.readUInt32LE(newest) - 1
    bytes.writeUInt8(bytes.readUInt8(pos) ^ 0x01, pos)
    writeFileSync(jpath, bytes)
  }).then(
    () => undefined,
    (e: unknown) => e as { code?: string; message?: string },
  )
  t.equal(err?.code, 'E_STATE', 'refused')
  t.match(
    err?.message,
    new RegExp(`changed while it was read: its record at byte ${newest} is not the one read before .*Nothing more was read from it, nothing written from it`),
    'nothing written, it says',
  )
  t.ok(readFileSync(flatPath).equals(img2), 'the flat unchanged')
  t.ok(existsSync(jpath) && !existsSync(paths.undoing('d')), 'the journal under its own name again: no rollback half done')
})

t.test('the journal a rollback records is synced before the record: a power loss cannot make it another one', async (t) => {
  const { env, img1, flatPath, paths, jpath, infl } = await inflight(t, 'vm 03')
  // the records a killed receiver wrote last (its resume marker, say) may lie in the page cache only
  const { synced, stop } = await watchSyncs(t, env.dir)
  let before: string[] = []
  await undoInflight(paths, infl, undefined, undefined, undefined, undefined, async () => {
    before = [...synced]
  })
  stop()
  t.ok(before.includes(realpathSync(jpath)), `the journal synced before it is recorded (synced then: ${JSON.stringify(before)})`)
  t.ok(readFileSync(flatPath).equals(img1), 'and the rollback finished')
})
