/** The agent state file: default folder, key and file name, round trip, damaged and hostile files. */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { chmod, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'
import {
  AgentStateStore,
  checkStateShape,
  clearPendingCommit,
  defaultStateDir,
  markCommitted,
  markInflightResync,
  markPendingCommit,
  pendingCommitMatch,
  stateFileName,
  stateKey,
  type AgentVmState,
} from '../src/agent-state.ts'
import { scratch } from './helpers.ts'

const G = '0123456789abcdef0123456789abcdef'

t.test('default folder: /var/lib/grainline for root, else XDG_STATE_HOME or ~/.local/state', async (t) => {
  t.equal(defaultStateDir({}, 0), '/var/lib/grainline')
  t.equal(defaultStateDir({ XDG_STATE_HOME: '/x/state' }, 1000), '/x/state/grainline')
  t.match(defaultStateDir({}, 1000), /\/\.local\/state\/grainline$/)
})

t.test('key and file name: per driver, host and id; a safe name whatever the VM is called', async (t) => {
  t.equal(stateKey({ driver: 'esxi', host: 'esx1', id: '42' }), 'esxi:esx1:42')
  t.equal(stateKey({ driver: 'local', id: '/vms/a/a.vmx' }), 'local::/vms/a/a.vmx')
  const a = stateFileName('web 01', 'esxi:esx1:42')
  t.match(a, /^web_01-[0-9a-f]{16}\.json$/)
  t.not(a, stateFileName('web 01', 'esxi:esx2:42'), 'the same VM id on another host is another VM')
  const hostile = stateFileName('../../etc/passwd', 'k')
  t.notOk(hostile.includes('/') || hostile.startsWith('.'), `no path separator or leading dot survives: ${hostile}`)
})

t.test('round trip, atomic replace, damaged files', async (t) => {
  const dir = join(scratch(t), 'state')
  const store = new AgentStateStore(dir)
  const key = 'local::/vms/a/a.vmx'
  const first = await store.load('a', key)
  t.same(first, { state: { version: 1, vm: 'a', key, committed: null, inflight: null } }, 'nothing recorded yet')
  const s: AgentVmState = {
    ...first.state,
    committed: { cycle: 3, generation: G, snapshot: { name: 'grainline-3', id: '7' }, receiver: 'wss://dr', at: 'now' },
    inflight: { cycle: 4, snapshot: { name: 'grainline-4', id: '8' }, at: 'now' },
  }
  await store.save(s)
  t.same((await store.load('a', key)).state, s)
  t.same(
    (await readdir(dir)).filter((f) => f.includes('.tmp-')),
    [],
    'no temp file left',
  )
  const file = store.pathOf('a', key)
  for (const [bad, why] of [
    ['{', /does not parse/],
    ['{"version": 2}', /not a version 1 agent state/],
    [JSON.stringify({ ...s, key: 'local::/other.vmx' }), /recorded for another VM/],
    [JSON.stringify({ ...s, committed: { ...s.committed, generation: 'xyz' } }), /malformed committed record/],
    [JSON.stringify({ ...s, inflight: { cycle: 0, snapshot: { name: 'g', id: '1' } } }), /malformed in-flight record/],
    [JSON.stringify({ ...s, inflight: { ...s.inflight, resync: 'a.vmdk' } }), /malformed in-flight record/],
    [JSON.stringify({ ...s, inflight: { ...s.inflight, resync: [1] } }), /malformed in-flight record/],
  ] as const) {
    await writeFile(file, bad)
    const r = await store.load('a', key)
    t.match(r.problem, why)
    t.same(r.state.committed, null, 'an unusable record counts as none (the VM resyncs)')
  }
  // the disks an in-flight cycle resyncs: recorded, kept by a round trip, replaced on a change
  const withResync = markInflightResync(structuredClone(s), ['a.vmdk'])
  t.same(withResync.inflight?.resync, ['a.vmdk'])
  await store.save(withResync)
  t.same((await store.load('a', key)).state.inflight, { ...s.inflight, resync: ['a.vmdk'] }, 'the resynced disks survive a reload')
  t.same(markInflightResync({ ...s, inflight: null }, ['a.vmdk']).inflight, null, 'nothing in flight: nothing recorded')
  t.equal(checkStateShape({ ...s, diverged: { cycle: 3, generation: G, disks: ['a.vmdk'], reason: 'x', at: 'now' } }, key), undefined)
})

t.test('the pending Commit: recorded with the snapshot it replaces, kept by a round trip, checked, matched only by its own cycle and non-empty identity, dropped by a commit', async (t) => {
  const dir = join(scratch(t), 'state')
  const store = new AgentStateStore(dir)
  const key = 'local::/vms/p/p.vmx'
  const id = 'a'.repeat(64)
  const s: AgentVmState = {
    ...(await store.load('p', key)).state,
    committed: { cycle: 3, generation: G, snapshot: { name: 'grainline-3', id: '7' }, receiver: 'wss://dr', at: 'now' },
    inflight: { cycle: 4, snapshot: { name: 'grainline-4', id: '8' }, at: 'now' },
  }
  markPendingCommit(s, 4, id, { name: 'grainline-4', id: '8' }, 'wss://dr')
  t.match(s.pendingCommit, { cycle: 4, committedCycleId: id, snapshot: { name: 'grainline-4', id: '8' }, replaces: { name: 'grainline-3', id: '7' }, receiver: 'wss://dr' })
  await store.save(s)
  t.same((await store.load('p', key)).state, s, 'survives a reload')
  t.equal(markPendingCommit({ ...structuredClone(s), committed: null }, 1, id, { name: 'grainline-1', id: '1' }, 'wss://dr').pendingCommit?.replaces, null, 'a seed replaces nothing')
  const file = store.pathOf('p', key)
  for (const bad of [
    { ...s.pendingCommit, committedCycleId: '' },
    { ...s.pendingCommit, committedCycleId: 'A'.repeat(64) },
    { ...s.pendingCommit, cycle: 0 },
    { ...s.pendingCommit, snapshot: { name: 'grainline-4', id: '' } },
    { ...s.pendingCommit, replaces: undefined },
  ]) {
    await writeFile(file, JSON.stringify({ ...s, pendingCommit: bad }))
    const r = await store.load('p', key)
    t.match(r.problem, /malformed pending commit record/)
    t.same(r.state.committed, null, 'an unusable record counts as none (the VM resyncs)')
  }
  const pending = s.pendingCommit
  t.equal(pendingCommitMatch(pending, { committedCycle: 4, committedCycleId: id }), 'own')
  t.equal(pendingCommitMatch(pending, { committedCycle: 4, committedCycleId: 'b'.repeat(64) }), 'other')
  t.equal(pendingCommitMatch(pending, { committedCycle: 4, committedCycleId: '' }), 'unknown', '"": a commit recorded by an older receiver proves nothing')
  t.equal(pendingCommitMatch(pending, { committedCycle: 4 }), 'unknown', 'an older connection proves nothing')
  t.equal(pendingCommitMatch(pending, { committedCycle: 3, committedCycleId: id }), 'unknown', 'another cycle')
  t.equal(pendingCommitMatch(pending, { committedCycle: 5, committedCycleId: id }), 'unknown', 'another cycle')
  t.equal(pendingCommitMatch(undefined, { committedCycle: 4, committedCycleId: id }), 'unknown', 'nothing pending')
  t.notOk('pendingCommit' in markCommitted(structuredClone(s), 4, G, { name: 'grainline-4', id: '8' }, 'wss://dr'), 'a commit drops it')
  t.notOk('pendingCommit' in clearPendingCommit(structuredClone(s)))
})

t.test('a FIFO as the state file or an unwritable folder is E_STATE, not a hang', async (t) => {
  const dir = join(scratch(t), 'state')
  await mkdir(dir)
  const store = new AgentStateStore(dir)
  execFileSync('mkfifo', [store.pathOf('a', 'k')])
  await t.rejects(store.load('a', 'k'), { code: 'E_STATE', message: /is a FIFO/ })
  const ro = join(scratch(t), 'ro')
  await mkdir(ro)
  await writeFile(join(ro, 'f'), '')
  await t.rejects(new AgentStateStore(join(ro, 'f', 'state')).load('a', 'k'), { code: 'E_STATE', message: /not usable/ })
  if (process.getuid?.() !== 0) {
    await chmod(ro, 0o500)
    await t.rejects(new AgentStateStore(ro).load('a', 'k'), { code: 'E_STATE' })
  }
  t.ok((await readFile(join(ro, 'f'), 'utf8')) === '')
})

t.test('the run lock of a VM: one holder; a dead, rebooted or garbled one is taken over; another host is never judged stale', async (t) => {
  const dir = scratch(t)
  const store = new AgentStateStore(join(dir, 'state'))
  const key = stateKey({ driver: 'local', id: '/vms/a/a.vmx' })
  const lock = await store.lock('a', key)
  const path = `${store.pathOf('a', key)}.lock`
  t.match(JSON.parse(await readFile(path, 'utf8')), { pid: process.pid, host: hostname() }, 'it names this process')
  await t.rejects(store.lock('a', key), { code: 'E_BUSY', message: new RegExp(`VM a is being replicated by another grainline run \\(pid ${process.pid} on `) })
  // another VM has a lock of its own
  const other = await store.lock('b', stateKey({ driver: 'local', id: '/vms/b/b.vmx' }))
  await other.release()
  await lock.release()
  await lock.release()
  await t.rejects(readFile(path), { code: 'ENOENT' }, 'released: the file is gone')
  // a run that died (a pid that is no process), one of a former boot, a torn file: taken over
  const dead = execFileSync('sh', ['-c', 'echo $$']).toString().trim()
  const stale = (o: Record<string, unknown>): string => JSON.stringify({ pid: Number(dead), boot: '', start: '', host: hostname(), since: '2026-01-01T00:00:00.000Z', ...o })
  for (const text of [stale({}), stale({ pid: process.pid, boot: 'another-boot' }), '{"pid": 12', '']) {
    await writeFile(path, text)
    const l = await store.lock('a', key)
    t.match(JSON.parse(await readFile(path, 'utf8')), { pid: process.pid }, `taken over from ${JSON.stringify(text).slice(0, 40)}`)
    await l.release()
  }
  t.same(
    (await readdir(join(dir, 'state'))).filter((f) => f.includes('.lock')),
    [],
    'nothing left beside the records',
  )
  // the host name is for the message only (a container's changes with every run): a dead run of another name is taken over,
  // a live one of this boot is held whatever name it gave
  await writeFile(path, stale({ host: `${hostname()}-old-container` }))
  const l = await store.lock('a', key)
  await l.release()
  const held = JSON.parse(stale({})) as Record<string, unknown>
  await writeFile(path, JSON.stringify({ ...held, pid: process.pid, boot: '', start: '', host: `${hostname()}-other` }))
  await t.rejects(store.lock('a', key), { code: 'E_BUSY', message: /on .*-other, since 2026-01-01.*remove .*\.lock/ })
  // a FIFO in the lock's place is refused at once, never opened to block
  await rm(path)
  execFileSync('mkfifo', [path])
  await t.rejects(store.lock('a', key), { code: 'E_STATE', message: /agent run lock .* is a FIFO/ })
})
