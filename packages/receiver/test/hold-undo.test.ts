/**
 * What `mirror failover` relies on when its registration fails (holds.ts
 * undoOpen), and the release commands the receiver prints (hold-record.ts):
 * undoOpen drops the hold and removes only what the opening made (a folder
 * that was there stays, emptied; the parents it made go while empty), and
 * refuses a folder a VM looks powered on in, the hold kept; a relative
 * `points close --to` names a hold inside the store (the agent's form);
 * every command is shell-quoted, the agent's names no store folder.
 */
import t from 'tap'
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { seededStore, whenFree } from './helpers.ts'
import { closeCommand, closePoint, listHolds, openPoint, undoOpen } from '../src/index.ts'
import { heldMessage, heldPeerMessage } from '../src/hold-record.ts'
import { grainlineCommand, storeArg } from '../src/operator-command.ts'

const log = pino({ level: 'silent' })

t.test('undoOpen: the hold released, only what the opening made removed; a powered-on sign refuses and keeps the hold', async (t) => {
  const vm = "vm it's 01"
  const { env } = await seededStore(t, vm)

  // a folder made (with two parents): all three go, their own parent stays
  const deep = join(env.dir, 'ds', 'a', 'b', 'dr')
  mkdirSync(join(env.dir, 'ds'))
  const o1 = await whenFree(() => openPoint(env.store, vm, 1, deep, { logger: log, kind: 'failover' }))
  t.equal(o1.made, join(env.dir, 'ds', 'a'), 'the outermost folder the opening made')
  await whenFree(() => undoOpen(env.store, vm, o1.hold, { logger: log, made: o1.made }))
  t.same(await listHolds(env.store, vm), [], 'the hold is released')
  t.notOk(existsSync(join(env.dir, 'ds', 'a')), 'the folders it made are gone')
  t.ok(existsSync(join(env.dir, 'ds')), 'the folder that was there stays')

  // a parent it made that meanwhile holds something else stays
  const side = join(env.dir, 'ds', 'c', 'dr')
  const o2 = await whenFree(() => openPoint(env.store, vm, 1, side, { logger: log, kind: 'failover' }))
  writeFileSync(join(env.dir, 'ds', 'c', 'other'), 'not the failover\n')
  await whenFree(() => undoOpen(env.store, vm, o2.hold, { logger: log, made: o2.made }))
  t.same(readdirSync(join(env.dir, 'ds', 'c')), ['other'], 'only the opened folder went')

  // an empty folder that was there: emptied, kept
  const kept = join(env.dir, 'ds', 'kept')
  mkdirSync(kept)
  const o3 = await whenFree(() => openPoint(env.store, vm, 1, kept, { logger: log, kind: 'failover' }))
  t.equal(o3.made, undefined, 'the opening made no folder')
  t.ok(readdirSync(kept).length > 2, 'the opening wrote its files')
  await whenFree(() => undoOpen(env.store, vm, o3.hold, { logger: log, made: o3.made }))
  t.same(readdirSync(kept), [], 'the folder stays, emptied of what the opening wrote')
  t.same(await listHolds(env.store, vm), [], 'released')

  // a VM that looks powered on there (a registration that went through after all, then a power-on): refused, held
  const on = join(env.dir, 'ds', 'on')
  const o4 = await whenFree(() => openPoint(env.store, vm, 1, on, { logger: log, kind: 'failover' }))
  writeFileSync(join(on, 'vm.vswp'), '')
  await t.rejects(
    // not through whenFree: it retries E_BUSY (a lock still held) 1000 times, ~20 s before this refusal came through
    undoOpen(env.store, vm, o4.hold, { logger: log, made: o4.made }),
    { code: 'E_BUSY', message: /vm\.vswp: the VM opened there looks powered on/ },
  )
  t.equal((await listHolds(env.store, vm)).length, 1, 'the hold stays')
  t.ok(existsSync(join(on, `${vm}.vmx`)), 'nothing was removed')
})

t.test('a relative points close --to names a hold inside the store (as the agent is told it); the commands are quoted', async (t) => {
  const vm = 'web-a 01'
  const { env } = await seededStore(t, vm)
  const dir = join(env.store, '.open', 'web-a 01-point-1')
  const o = await whenFree(() => openPoint(env.store, vm, 1, dir, { logger: log }))
  const holds = await listHolds(env.store, vm)
  t.equal(heldMessage(vm, holds, env.store).split('release it with ')[1], `"grainline points close --store ${env.store} --vm 'web-a 01' --to '${dir}'"`)
  const peer = heldPeerMessage(vm, holds, env.store)
  t.notMatch(peer, env.store, "the agent's text names no store folder")
  t.match(peer, `(point 1 in the store's .open/web-a 01-point-1)`)
  t.match(peer, `"grainline points close --store STORE --vm 'web-a 01' --to '.open/web-a 01-point-1'" (STORE: the receiver's store folder; --to '.open/web-a 01-point-1' is inside it)`)
  t.equal(closeCommand('ceph:rbd', "it's", 'open-3-ab12', false), "grainline points close --store ceph:rbd --vm 'it'\\''s' --to open-3-ab12")
  t.equal(closeCommand('ceph:rbd', 'db01', '/dr/db01 dr', true), "grainline points close --store ceph:rbd --vm db01 --to '/dr/db01 dr' --failover")
  // from a folder other than the store: the relative --to the agent was given finds the hold
  t.equal(process.cwd() === env.store, false)
  const closed = await whenFree(() => closePoint(env.store, vm, { logger: log, dir: '.open/web-a 01-point-1' }))
  t.same(
    closed.map((h) => h.id),
    [o.hold.id],
    'released',
  )
  t.notOk(existsSync(dir), 'its folder removed')
})

t.test('every printed command: quoted, a folder store absolute, ceph:POOL and the STORE placeholder as they are', async (t) => {
  t.equal(
    grainlineCommand(['mirror', 'remove', '--store', storeArg('rel/store'), '--vm', 'Demo VM', '--yes']),
    `grainline mirror remove --store ${join(process.cwd(), 'rel/store')} --vm 'Demo VM' --yes`,
  )
  t.equal(grainlineCommand(['points', 'prune', '--store', storeArg('ceph:rbd'), '--vm', "a'b", '--keep', '0']), "grainline points prune --store ceph:rbd --vm 'a'\\''b' --keep 0")
  t.equal(storeArg('STORE'), 'STORE')
})
