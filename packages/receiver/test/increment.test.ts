/**
 * ReverseIncrement: grains reserved once per cycle (two extents of one
 * batch save a shared grain once), saved from bytes the caller read ahead,
 * and no further use after a failed save (a reserved grain may be missing).
 */
import t, { type Test } from 'tap'
import { copyFileSync, linkSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import { createFlatDisk, openChain } from '@grainline/vmdk'
import { scratchDir } from '@grainline/test-utils'
import { POINT_GRAIN, ReverseIncrement, pointExtentName, pointFileName, pointPath } from '../src/increment.ts'
import { VmPaths } from '../src/vm-paths.ts'
import { pattern } from './helpers.ts'

const MiB = 1024 * 1024

async function setup(t: Test): Promise<{ paths: VmPaths; inc: ReverseIncrement; file: string }> {
  const store = scratchDir(t)
  const paths = new VmPaths(store, 'vm')
  mkdirSync(paths.gdir, { recursive: true })
  await createFlatDisk(paths.descriptor('disk'), 16 * MiB)
  const file = pointFileName('disk', 1)
  const inc = await ReverseIncrement.open(paths, 'disk', file, [])
  return { paths, inc, file }
}

t.test('reserve: grain-aligned runs of unsaved grains, each grain once; saveRun writes what it is given', async (t) => {
  const { paths, inc, file } = await setup(t)
  const capacity = 16 * MiB
  // an extent over grains 1..2 (partly), then one overlapping grain 2..3
  const a = inc.reserve(POINT_GRAIN + 100, POINT_GRAIN, capacity)
  t.same(a, [{ grain: 1, pos: POINT_GRAIN, n: 2 * POINT_GRAIN }], 'the whole grains an unaligned range touches')
  const b = inc.reserve(2 * POINT_GRAIN, 2 * POINT_GRAIN, capacity)
  t.same(b, [{ grain: 3, pos: 3 * POINT_GRAIN, n: POINT_GRAIN }], 'a grain reserved by an earlier extent is not reserved again')
  t.same(inc.reserve(capacity - 10, 100, capacity), [{ grain: capacity / POINT_GRAIN - 1, pos: capacity - POINT_GRAIN, n: POINT_GRAIN }], 'clipped to the capacity')
  const old = pattern(2 * POINT_GRAIN, 9)
  const grains = await inc.saveRun(a[0] as (typeof a)[number], old)
  t.same(
    grains.map((g) => g.grain),
    [1, 2],
    'one index entry per grain',
  )
  const zero = await inc.saveRun(b[0] as (typeof b)[number], Buffer.alloc(POINT_GRAIN))
  t.equal(zero.length, 1, 'a zero grain is indexed too')
  t.equal(inc.savedGrains, 3)
  await inc.close()
  // the increment reads back the old bytes at their grains (QEMU-readable SEsparse, read here with our reader)
  const chain = await openChain(pointPath(paths, file))
  t.teardown(() => chain.close())
  t.same(await chain.read(POINT_GRAIN, 2 * POINT_GRAIN, { depth: 0 }), old, 'old bytes saved at their offset')
})

t.test('after a failed save the increment refuses to reserve or save anything more', async (t) => {
  const { inc } = await setup(t)
  const capacity = 16 * MiB
  const [run] = inc.reserve(0, POINT_GRAIN, capacity)
  // the writer is closed under it: the save fails
  await inc.close()
  await t.rejects(inc.saveRun(run as NonNullable<typeof run>, Buffer.alloc(POINT_GRAIN, 1)), /closed/)
  t.throws(() => inc.reserve(8 * POINT_GRAIN, POINT_GRAIN, capacity), /closed/, 'reserve refuses after the failure')
  await t.rejects(inc.saveRun({ grain: 8, pos: 8 * POINT_GRAIN, n: POINT_GRAIN }, Buffer.alloc(POINT_GRAIN, 1)), /closed/, 'and so does saveRun')
})

t.test('after a crash a journaled grain the increment does not hold is saved again (never read from the mirror as if saved)', async (t) => {
  const { paths, inc, file } = await setup(t)
  const capacity = 16 * MiB
  await inc.close()
  // the journal names grain 5 with the crc of its old bytes (zeros, as the mirror still holds them), but the
  // increment's table for it was never written (a kill -9 between the journal's flush and the increment's)
  const journaled = [{ grain: 5, crc: crc32(Buffer.alloc(POINT_GRAIN)) >>> 0 }]
  const again = await ReverseIncrement.open(paths, 'disk', file, journaled)
  t.teardown(() => again.close())
  t.same(again.reserve(5 * POINT_GRAIN, POINT_GRAIN, capacity), [{ grain: 5, pos: 5 * POINT_GRAIN, n: POINT_GRAIN }], 'grain 5 is not counted saved: it is saved again')
})

t.test('a reverse increment reopened after a crash is refused while one of its files has another name (a hard link): the resumed apply never writes through it', async (t) => {
  const { paths, inc, file } = await setup(t)
  const capacity = 16 * MiB
  const [run] = inc.reserve(0, POINT_GRAIN, capacity)
  const journaled = await inc.saveRun(run as NonNullable<typeof run>, pattern(POINT_GRAIN, 3))
  await inc.close()
  const other = join(paths.store, 'other')
  mkdirSync(other)
  for (const name of [pointExtentName(file), file]) {
    const own = pointPath(paths, name)
    const outside = join(other, name)
    // a second name for the file (a backup tool's hard link, or the live mirror's flat linked in its place)
    linkSync(own, outside)
    const before = readFileSync(outside)
    await t.rejects(
      ReverseIncrement.open(paths, 'disk', file, journaled),
      {
        code: 'E_STATE',
        message: new RegExp(
          `restore point ${file.replace(/\./g, '\\.')} of VM vm: ${name.replace(/\./g, '\\.')} has 2 names \\(a hard link.*the resumed apply would write into all of them.*replace .* by a copy of its own`,
        ),
      },
      `${name} hard-linked: the reopen is refused`,
    )
    t.ok(readFileSync(outside).equals(before), `${name}: the other name's file is untouched`)
    t.equal(statSync(own).nlink, 2, `${name}: nothing was removed or replaced`)
    // the remedy the error names: a copy of its own in place of the link
    copyFileSync(own, `${own}.copy`)
    renameSync(`${own}.copy`, own)
    rmSync(outside)
  }
  const again = await ReverseIncrement.open(paths, 'disk', file, journaled)
  t.teardown(() => again.close())
  t.same(again.reserve(0, POINT_GRAIN, capacity), [], 'its own files again: reopened, the journaled grain counted saved')
})

t.test('a reverse increment reopened after a crash is refused while its descriptor names another parent than the mirror (E_STATE): its chain is never opened', async (t) => {
  const { paths, inc, file } = await setup(t)
  const capacity = 16 * MiB
  const [run] = inc.reserve(0, POINT_GRAIN, capacity)
  const journaled = await inc.saveRun(run as NonNullable<typeof run>, pattern(POINT_GRAIN, 3))
  await inc.close()
  // another descriptor with the mirror's CID (a copy of it, reading the same flat): every other check passes
  copyFileSync(paths.descriptor('disk'), join(paths.dir, 'other.vmdk'))
  const descriptor = pointPath(paths, file)
  const own = readFileSync(descriptor, 'utf8')
  t.match(own, /parentFileNameHint="\.\.\/\.\.\/disk\.vmdk"/, 'made over the mirror')
  writeFileSync(descriptor, own.replace('parentFileNameHint="../../disk.vmdk"', 'parentFileNameHint="../../other.vmdk"'))
  await t.rejects(
    ReverseIncrement.open(paths, 'disk', file, journaled),
    {
      code: 'E_STATE',
      message: new RegExp(
        `restore point ${file.replace(/\./g, '\\.')} of VM vm: its parent is "\\.\\./\\.\\./other\\.vmdk", where the in-flight cycle's reverse increment has the mirror \\.\\./\\.\\./disk\\.vmdk`,
      ),
    },
    'refused, naming the parent it names and the one it must have',
  )
  writeFileSync(descriptor, own)
  const again = await ReverseIncrement.open(paths, 'disk', file, journaled)
  t.teardown(() => again.close())
  t.same(again.reserve(0, POINT_GRAIN, capacity), [], 'put back: reopened, the journaled grain counted saved')
})
