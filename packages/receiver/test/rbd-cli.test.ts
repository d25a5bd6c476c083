/**
 * A Ceph client command that hangs is killed (rbd-cli.ts `cephTimeouts`): a
 * query is asked once more, a write never is. Seen in CI: an `rbd du` waited
 * forever on a healthy one-node cluster (and answered at once when asked
 * again), so the receiver hung with it. Fake `rbd` and `ceph` commands on
 * PATH stand in for a cluster here: no Ceph needed.
 */
import t, { type Test } from 'tap'
import { chmodSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { scratchDir } from '@grainline/test-utils'
import { CephCommandError, cephTimeouts, isCephQuery, runCeph } from '../src/store/ceph/rbd-cli.ts'
import { digestImage } from '../src/store/ceph/ceph-read.ts'
import { RbdImage } from '../src/store/ceph/rbd-image.ts'
import { CEPH_STATE_FORMAT, CephNames, MAX_STATE_BYTES, readCephState } from '../src/store/ceph/ceph-state.ts'
import { readCephHistory } from '../src/store/ceph/ceph-history.ts'
import { HISTORY_MAX_FILE_BYTES } from '../src/cycle-history.ts'

const target = { pool: 'p' }

/** `rbd` and `ceph` scripts counting their calls in DIR/calls; the first call of each hangs (exec: the kill reaches it). */
function fakeClients(dir: string): void {
  const script = `#!/bin/sh
echo "$*" >> "${dir}/calls"
n=$(grep -c . "${dir}/calls")
case " $* " in
  *" du "*) if [ "$n" -eq 1 ]; then exec sleep 60; fi; echo '{"images":[]}' ;;
  *" snap create "*) exec sleep 60 ;;
  *" df "*) exec sleep 60 ;;
  *) echo "unexpected: $*" >&2; exit 22 ;;
esac
`
  for (const name of ['rbd', 'ceph']) {
    writeFileSync(join(dir, name), script)
    chmodSync(join(dir, name), 0o755)
  }
}

t.test('a hung Ceph command is killed: a query is asked again, a write fails E_IO without a second try', async (t) => {
  const dir = scratchDir(t)
  fakeClients(dir)
  const path = process.env['PATH']
  const saved = { ...cephTimeouts }
  process.env['PATH'] = `${dir}:${path ?? ''}`
  cephTimeouts.queryMs = 400
  cephTimeouts.commandMs = 400
  t.teardown(() => {
    process.env['PATH'] = path
    Object.assign(cephTimeouts, saved)
  })
  const calls = (): string[] => readFileSync(join(dir, 'calls'), 'utf8').trim().split('\n')

  const du = await runCeph(target, 'rbd', ['du', '--format', 'json', 'p/img'])
  t.same(JSON.parse(du.toString('utf8')), { images: [] }, 'the du that hung was killed and asked again: its answer')
  t.equal(calls().length, 2, 'two calls: the hung one and the retry')

  const snap = await runCeph(target, 'rbd', ['snap', 'create', 'p/img@c1']).then(
    () => undefined,
    (e: unknown) => e,
  )
  t.ok(snap instanceof CephCommandError && snap.timedOut, 'the write that hung fails with a timeout')
  t.equal((snap as CephCommandError).code, 'E_IO', 'typed E_IO')
  t.match((snap as Error).message, /rbd snap create p\/img@c1.*no answer in 0 s, killed/, 'the message names the command and what happened')
  t.equal(calls().filter((c) => c.includes('snap create')).length, 1, 'a write is never sent twice')

  const df = await runCeph(target, 'ceph', ['df', 'detail', '--format', 'json']).then(
    () => undefined,
    (e: unknown) => e,
  )
  t.ok(df instanceof CephCommandError && df.timedOut, 'a query that hangs every time fails after its attempts')
  t.equal(calls().filter((c) => c.includes('df')).length, cephTimeouts.queryAttempts, 'asked queryAttempts times')
})

t.test('which commands count as queries', async (t) => {
  t.ok(isCephQuery('ceph', ['df']), 'every ceph command the store runs reads')
  for (const a of [['du'], ['info', 'x'], ['ls'], ['status', 'x'], ['snap', 'ls', 'x']]) t.ok(isCephQuery('rbd', a), `rbd ${a.join(' ')}`)
  for (const a of [
    ['snap', 'create', 'x@y'],
    ['import-diff', '-'],
    ['rm', 'x'],
  ])
    t.notOk(isCephQuery('rbd', a), `rbd ${a.join(' ')} writes`)
  for (const a of [
    ['-p', 'p', 'get', 'o', '-'],
    ['-p', 'p', 'ls'],
    ['-p', 'p', 'listomapkeys', 'o'],
    ['-p', 'p', 'lock', 'info', 'o', 'l'],
  ])
    t.ok(isCephQuery('rados', a), `rados ${a.join(' ')}`)
  for (const a of [
    ['-p', 'p', 'put', 'o', '-'],
    ['-p', 'p', 'rm', 'o'],
    ['-p', 'p', 'setomapval', 'o', 'k', 'v'],
    ['-p', 'p', 'lock', 'get', 'o', 'l'],
  ])
    t.notOk(isCephQuery('rados', a), `rados ${a.join(' ')} writes`)
})

/** Fakes for the streamed export and the librbd helper: `rbd export` sends a few bytes, then nothing; the "python" answers the open (or not), then nothing. */
function fakeStalls(dir: string, openAnswer: boolean): void {
  writeFileSync(join(dir, 'rbd'), `#!/bin/sh\necho "$*" >> "${dir}/calls"\ncase " $* " in\n  *" export "*) printf 'abc'; exec sleep 60 ;;\n  *) exit 22 ;;\nesac\n`)
  chmodSync(join(dir, 'rbd'), 0o755)
  // the first frame of rbd-image.ts: status 0, 16 bytes: size 1 MiB (u64le), snapshot id 0
  const first = "printf '\\000\\020\\000\\000\\000\\000\\000\\020\\000\\000\\000\\000\\000\\000\\000\\000\\000\\000\\000\\000\\000'"
  writeFileSync(join(dir, 'python'), `#!/bin/sh\n${openAnswer ? first : ':'}\nexec sleep 60\n`)
  chmodSync(join(dir, 'python'), 0o755)
}

t.test('a streamed rbd export and a librbd helper that stall are killed: E_IO naming the command, nothing hangs', async (t) => {
  const dir = scratchDir(t)
  fakeStalls(dir, true)
  const path = process.env['PATH']
  const python = process.env['GRAINLINE_PYTHON']
  const saved = { ...cephTimeouts }
  process.env['PATH'] = `${dir}:${path ?? ''}`
  process.env['GRAINLINE_PYTHON'] = join(dir, 'python')
  cephTimeouts.queryMs = 300
  cephTimeouts.commandMs = 300
  t.teardown(() => {
    process.env['PATH'] = path
    if (python === undefined) delete process.env['GRAINLINE_PYTHON']
    else process.env['GRAINLINE_PYTHON'] = python
    Object.assign(cephTimeouts, saved)
  })

  // a trivial check's digest of a snapshot whose export stops sending
  const digest = await digestImage(target, 'img@c1', 'sha256', 1 << 20).then(
    () => undefined,
    (e: unknown) => e,
  )
  t.ok(digest instanceof CephCommandError && digest.timedOut, `the stalled export fails with a timeout: ${String(digest)}`)
  t.equal((digest as CephCommandError).code, 'E_IO', 'typed E_IO')
  t.match((digest as Error).message, /rbd export --no-progress p\/img@c1 -.*no data in 0 s, killed/, 'the message names the command')
  // a reader's request that gets no answer
  const img = await RbdImage.open(target, 'img', 'c1')
  const read = await img.read(0, 4096).then(
    () => undefined,
    (e: unknown) => e,
  )
  t.ok(read instanceof CephCommandError && read.timedOut, `the stalled read fails with a timeout: ${String(read)}`)
  t.match((read as Error).message, /librbd helper of p\/img@c1: read at 0 \(4096 bytes\).*no answer in 0 s, killed/, 'the message names the helper and the request')
  const again = await img.read(0, 4096).then(
    () => undefined,
    (e: unknown) => e,
  )
  t.equal((again as Error).message, (read as Error).message, 'the killed helper refuses every later request with the same error')
  await img.close()

  // a helper that never answers its open
  fakeStalls(dir, false)
  const open = await RbdImage.open(target, 'img', null, { log: 'l', capacity: 1 << 20 }).then(
    () => undefined,
    (e: unknown) => e,
  )
  t.match(open, { code: 'E_IO' }, 'a writer whose open gets no answer: E_IO')
  t.match((open as Error).message, /cannot open p\/img .*no answer in 0 s, killed/, 'naming the image and the deadline')
})

/**
 * A fake `rados` first on PATH (for the test's length) whose `get` answers by `cases` (sh case patterns matched
 * against " <args> ", each a command line); every call is appended to `<dir>/calls`. Queries time out after 5 s.
 */
function fakeRados(t: Test, dir: string, cases: readonly string[]): void {
  writeFileSync(
    join(dir, 'rados'),
    `#!/bin/sh
echo "$*" >> "${dir}/calls"
case " $* " in
${cases.map((c) => `  ${c} ;;`).join('\n')}
  *) echo "unexpected: $*" >&2; exit 22 ;;
esac
`,
  )
  chmodSync(join(dir, 'rados'), 0o755)
  const path = process.env['PATH']
  const saved = { ...cephTimeouts }
  process.env['PATH'] = `${dir}:${path ?? ''}`
  // a bounded read kills the command at once; an unbounded one waits for its end: a hung one times out (E_IO)
  cephTimeouts.queryMs = 5000
  t.teardown(() => {
    process.env['PATH'] = path
    Object.assign(cephTimeouts, saved)
  })
}

t.test('a Ceph state object above 16 MiB is refused while read (E_STATE): the rados get is killed past the bound, never buffered whole', async (t) => {
  const dir = scratchDir(t)
  // `rados get` of `big` writes 1 MiB past the bound, then holds the pipe open (as a huge object still streaming);
  // of `huge-done` writes as much and exits; of `fits` a state of the bound's size exactly
  fakeRados(t, dir, [
    `*" get big "*) head -c ${MAX_STATE_BYTES + 1024 * 1024} /dev/zero; exec sleep 60`,
    `*" get huge-done "*) head -c ${MAX_STATE_BYTES + 1024 * 1024} /dev/zero`,
    `*" get fits "*) cat "${dir}/fits.json"`,
  ])
  const state = { format: CEPH_STATE_FORMAT, vm: 'vm1', committedCycle: 0, disks: {}, points: [] }
  const json = JSON.stringify(state)
  writeFileSync(join(dir, 'fits.json'), json + ' '.repeat(MAX_STATE_BYTES - Buffer.byteLength(json)))
  const started = Date.now()
  await t.rejects(
    readCephState(target, 'big'),
    { code: 'E_STATE', message: `state object big in pool p is above ${MAX_STATE_BYTES} bytes (not read further): not a state the receiver writes` },
    'refused once past the bound, the command still writing',
  )
  t.ok(Date.now() - started < 4000, 'at once: the command was killed, not waited for')
  t.equal(readFileSync(join(dir, 'calls'), 'utf8').trim().split('\n').length, 1, 'not asked again')
  await t.rejects(readCephState(target, 'huge-done'), { code: 'E_STATE', message: /above 16777216 bytes/ }, 'a command that ended past the bound: the same')
  t.match(await readCephState(target, 'fits', 'vm1'), { vm: 'vm1', committedCycle: 0 }, 'a state of exactly the bound is read')
})

t.test('a Ceph history object above 2 MiB is dropped while read (no charts): the rados get is killed past the bound, never buffered whole', async (t) => {
  const dir = scratchDir(t)
  const vm = 'vm1'
  const object = new CephNames(vm).history
  // `rados get` of the history writes 1 MiB past the bound, then holds the pipe open (a huge planted object still streaming)
  fakeRados(t, dir, [`*" get ${object} "*) head -c ${HISTORY_MAX_FILE_BYTES + 1024 * 1024} /dev/zero; exec sleep 60`])
  const started = Date.now()
  t.same(await readCephHistory(target, vm), [], 'no history: not one the receiver writes')
  t.ok(Date.now() - started < 4000, 'at once: the command was killed past the bound, not waited for')
  t.equal(readFileSync(join(dir, 'calls'), 'utf8').trim().split('\n').length, 1, 'not asked again')
})
