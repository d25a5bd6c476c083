/**
 * `points open` writes its hold marker (`.grainline-hold`) durably: a
 * temporary file fsync'ed, renamed over the marker's name, the folder
 * fsync'ed (fs-util.ts writeFileAtomic). A plain write left it in the page
 * cache: a crash (power loss) could leave an empty marker, and `points
 * close` then refused the folder as not its own. The opened point's .vmx and
 * .nvram are written the same way: plain writes left them in the page cache,
 * and a crash after the open returned could leave the folder without them or
 * with empty ones.
 */
import t from 'tap'
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { seededStore, watchSyncs, whenFree } from './helpers.ts'
import { closePoint, openPoint } from '../src/index.ts'
import { HOLD_MARKER } from '../src/holds.ts'

const log = pino({ level: 'silent' })

t.test('points open: the hold marker is written to a temporary file, fsynced, renamed, and its folder fsynced', async (t) => {
  const vm = 'web-hold'
  const { env } = await seededStore(t, vm)

  // every fsync of this process, by the path its descriptor names when it is synced (/proc/self/fd)
  const { synced, stop } = await watchSyncs(t, env.dir)
  const dir = join(env.dir, 'opened')
  const o = await whenFree(() => openPoint(env.store, vm, 1, dir, { logger: log }))
  stop()
  const marker = join(dir, HOLD_MARKER)
  t.same(JSON.parse(readFileSync(marker, 'utf8')), { id: o.hold.id, vm, cycle: 1 }, 'the marker names the hold')
  const tmp = synced.findIndex((p) => p.startsWith(`${marker}.tmp-`))
  t.ok(tmp >= 0, `the marker's temporary file was fsynced before its rename (synced: ${synced.join(', ')})`)
  t.ok(synced.indexOf(dir, tmp) > tmp, 'then the folder, so that the rename is durable')
  t.ok(synced.includes(env.dir), "the new folder's parent too, so that the folder is durable")
  const closed = await whenFree(() => closePoint(env.store, vm, { logger: log, dir }))
  t.equal(closed.length, 1, 'the close finds its marker and drops the hold')
})

t.test('points close: a folder holding only the marker temporary file (a crash before its rename) is closed; with anything else beside it, refused', async (t) => {
  const vm = 'web-crash'
  const { env } = await seededStore(t, vm)
  // the state openPoint leaves when the process dies after the hold's record and the marker's temporary file,
  // before the rename: the folder holds that temporary file only (partly written)
  const crashed = async (dir: string, extra?: string): Promise<void> => {
    await whenFree(() => openPoint(env.store, vm, 1, dir, { logger: log }))
    rmSync(dir, { recursive: true })
    mkdirSync(dir)
    writeFileSync(join(dir, `${HOLD_MARKER}.tmp-4242-0badf00d`), '{"id":')
    if (extra !== undefined) writeFileSync(join(dir, extra), 'the operator put this here')
  }
  const dir = join(env.dir, 'crashed')
  await crashed(dir)
  const closed = await whenFree(() => closePoint(env.store, vm, { logger: log, dir }))
  t.equal(closed.length, 1, 'the hold is dropped')
  t.notOk(existsSync(dir), 'and its folder removed')
  const other = join(env.dir, 'crashed-other')
  await crashed(other, 'notes.txt')
  await t.rejects(
    whenFree(() => closePoint(env.store, vm, { logger: log, dir: other })),
    { code: 'E_STATE', message: /carries no \.grainline-hold/ },
    'a file that is not the marker temporary file: refused as before',
  )
  t.ok(existsSync(join(other, 'notes.txt')), 'nothing removed')
})

t.test("points open: the opened point's .vmx and .nvram are written to temporary files, fsynced, renamed, and the folder fsynced", async (t) => {
  const vm = 'web-config'
  const { env } = await seededStore(t, vm, { seed: 5, cycleId: 'cd02cd02cd02cd02' })

  // every fsync of this process, by the path its descriptor names when it is synced (/proc/self/fd)
  const { synced, stop } = await watchSyncs(t, env.dir)
  const dir = join(env.dir, 'opened')
  const o = await whenFree(() => openPoint(env.store, vm, 1, dir, { logger: log }))
  stop()
  t.equal(o.vmx, join(dir, `${vm}.vmx`))
  t.match(readFileSync(o.vmx, 'utf8'), /displayName = ".* \(opened\)"/, "the .vmx is the point's, marked")
  t.ok(readFileSync(join(dir, `${vm}.nvram`)).equals(readFileSync(join(env.store, vm, `${vm}.nvram`))), "the .nvram is the mirror's")
  for (const name of [`${vm}.vmx`, `${vm}.nvram`]) {
    const file = join(dir, name)
    const tmp = synced.findIndex((p) => p.startsWith(`${file}.tmp-`))
    t.ok(tmp >= 0, `${name}: its temporary file was fsynced before its rename (synced: ${synced.join(', ')})`)
    t.ok(synced.indexOf(dir, tmp) > tmp, `${name}: then the folder, so that the rename is durable`)
  }
  const closed = await whenFree(() => closePoint(env.store, vm, { logger: log, dir }))
  t.equal(closed.length, 1, 'the close finds its marker and drops the hold')
})
