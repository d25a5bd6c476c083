/**
 * Session errors kept with the mirror (`.grainline/errors.json`): they
 * survive a receiver restart (real receiver, real https API), a burst of
 * failures ends in one file holding the newest, and a hostile or missing
 * store entry (no VM folder, a symlink, a FIFO, a huge or malformed file, a
 * `.grainline` that is a symlink) reads as "no errors", writes nowhere
 * outside the mirror, and never stops the receiver.
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import WebSocket from 'ws'
import { httpCall, scratchDir } from '@grainline/test-utils'
import { ERRORS_PER_VM, LiveState, type VmDetail } from '../src/index.ts'
import { ERRORS_FILE, ERRORS_MAX_FILE_BYTES, readSessionErrors, writeSessionErrors } from '../src/session-errors.ts'
import { Agent, MiB, TOKEN, makeEnv, memoryLogger, pattern, runCycle, seedPlan, startReceiver } from './helpers.ts'

const VIEWER = 'viewer-noc-0123456789abcdef0123'

function vmFolder(store: string, vm: string): string {
  const g = join(store, vm, '.grainline')
  mkdirSync(g, { recursive: true })
  return g
}

t.test('errors survive a receiver restart and are shown by the API of the new process', async (t) => {
  const env = makeEnv(scratchDir(t))
  writeFileSync(
    env.tokensFile,
    JSON.stringify({
      tokens: [
        { name: 'proxy-a', token: TOKEN, vms: ['web-*'] },
        { name: 'noc', token: VIEWER, role: 'viewer' },
      ],
    }),
  )
  const first = await startReceiver(env, { httpListen: { host: '127.0.0.1', port: 0 } })
  let firstClosed = false
  t.teardown(() => (firstClosed ? undefined : first.receiver.close()))
  // a seed cut short, then a text frame: the session fails with E_MALFORMED, recorded for web-02
  const c = await Agent.connect(first.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(c, 'web-02', 1, [seedPlan(0, 'web-02.vmdk', pattern(2 * MiB, 9), 'cc01cc01cc01cc01', 512 * 1024)], { stopAfter: 2, commit: false })
  c.ws.send('hello?')
  await new Promise<void>((resolve) => (c.ws.readyState === WebSocket.CLOSED ? resolve() : c.ws.once('close', () => resolve())))
  await first.receiver.close()
  firstClosed = true
  const kept = JSON.parse(readFileSync(join(env.store, 'web-02', '.grainline', ERRORS_FILE), 'utf8')) as { errors: Array<{ code: string; cycle: number }> }
  t.match(kept.errors, [{ cycle: 1, code: 'E_MALFORMED' }], 'closing the receiver leaves the error written with the mirror')

  const second = await startReceiver(env, { httpListen: { host: '127.0.0.1', port: 0 } })
  t.teardown(() => second.receiver.close())
  const base = `https://127.0.0.1:${second.receiver.httpAddress?.port as number}`
  const d = JSON.parse((await httpCall(`${base}/api/v1/vms/web-02`, { headers: { Authorization: `Bearer ${VIEWER}` }, ca: env.tls.ca })).text) as VmDetail
  t.match(d.errors, [{ cycle: 1, code: 'E_MALFORMED' }], 'the new process shows the error of the old one')
})

t.test('kept errors: merged with new ones in order, a burst ends in one file with the newest', async (t) => {
  const store = scratchDir(t)
  vmFolder(store, 'vm')
  const a = new LiveState({ storeDir: store })
  for (let i = 1; i <= 3; i++) a.sessionFailed('vm', i, 'E_IO', `failure ${i}`)
  await a.flush()
  // a restarted process: nothing in memory until the VM is looked at, then the kept ones
  const b = new LiveState({ storeDir: store })
  t.same(b.errors('vm'), [])
  let changed = 0
  b.onChange(() => changed++)
  t.same(
    (await b.loadErrors('vm')).map((e) => e.cycle),
    [1, 2, 3],
  )
  t.equal(changed, 1, 'loading kept errors is a change (the event stream shows them)')
  t.same(
    (await b.loadErrors('vm')).map((e) => e.cycle),
    [1, 2, 3],
    'loaded once',
  )
  // a failure before the VM was looked at: the kept ones come first
  const c = new LiveState({ storeDir: store })
  c.sessionFailed('vm', 4, 'E_DISK_FULL', 'full')
  for (let i = 5; i < 5 + ERRORS_PER_VM + 10; i++) c.sessionFailed('vm', i, 'E_IO', 'x'.repeat(900))
  await c.flush()
  const all = await readSessionErrors(store, 'vm', 1000)
  t.equal(all.length, ERRORS_PER_VM, 'the file holds at most ERRORS_PER_VM')
  t.equal(all.at(-1)?.cycle, 4 + ERRORS_PER_VM + 10, 'the newest last')
  t.same(
    all.map((e) => e.cycle),
    c.errors('vm').map((e) => e.cycle),
    'file and memory agree',
  )
  t.equal(all[0]?.message.length, 500, 'messages are cut')
})

t.test('no mirror folder: nothing is created, nothing is read', async (t) => {
  const store = scratchDir(t)
  const live = new LiveState({ storeDir: store })
  live.sessionFailed('ghost', 1, 'E_FORBIDDEN', 'no')
  await live.flush()
  t.notOk(existsSync(join(store, 'ghost')), 'no folder for a VM without a mirror')
  t.equal(await writeSessionErrors(store, 'ghost', []), false)
  mkdirSync(join(store, 'bare'))
  t.equal(await writeSessionErrors(store, 'bare', []), false, 'a VM folder without .grainline is not given one')
  t.notOk(existsSync(join(store, 'bare', '.grainline')))
  t.same(await readSessionErrors(store, '../etc', 20), [], 'a name that is not a path component reads as none')
  await t.rejects(writeSessionErrors(store, '../etc', []), { code: 'E_BAD_NAME' })
  t.same(live.errors('ghost').length, 1, 'the error stays in memory')
})

t.test('hostile store entries read as no errors and write nowhere outside the mirror', async (t) => {
  const store = scratchDir(t)
  const outside = join(scratchDir(t), 'outside-errors.json')
  const good = `${JSON.stringify({ version: 1, errors: [{ at: new Date().toISOString(), cycle: 9, code: 'E_IO', message: 'planted' }] })}\n`
  writeFileSync(outside, good)
  t.teardown(() => rmSync(outside, { force: true }))

  // errors.json a symlink to a file outside: not followed on read; the write replaces the link, not its target
  const g1 = vmFolder(store, 'link')
  symlinkSync(outside, join(g1, ERRORS_FILE))
  t.same(await readSessionErrors(store, 'link', 20), [], 'a symlink is not read')
  t.equal(await writeSessionErrors(store, 'link', [{ at: new Date().toISOString(), cycle: 1, code: 'E_IO', message: 'm' }]), true)
  t.equal(readFileSync(outside, 'utf8'), good, 'the link target is untouched')

  // a FIFO: no hang
  const g2 = vmFolder(store, 'fifo')
  execFileSync('mkfifo', [join(g2, ERRORS_FILE)])
  t.same(await readSessionErrors(store, 'fifo', 20), [], 'a FIFO reads as none, without blocking')

  // too large, malformed entries, not JSON
  const g3 = vmFolder(store, 'big')
  writeFileSync(join(g3, ERRORS_FILE), Buffer.alloc(ERRORS_MAX_FILE_BYTES + 1, 0x20))
  t.same(await readSessionErrors(store, 'big', 20), [])
  const g4 = vmFolder(store, 'mixed')
  writeFileSync(
    join(g4, ERRORS_FILE),
    JSON.stringify({
      errors: [
        { at: 'not a date', cycle: 1, code: 'E_IO', message: 'a' },
        { at: new Date().toISOString(), cycle: 1.5, code: 'E_IO', message: 'b' },
        { at: new Date().toISOString(), cycle: 2, code: 'E'.repeat(65), message: 'c' },
        null,
        { at: new Date().toISOString(), cycle: 3, code: 'E_IO', message: 'kept' },
      ],
    }),
  )
  t.same(
    (await readSessionErrors(store, 'mixed', 20)).map((e) => e.message),
    ['kept'],
    'only well-formed entries',
  )
  const g5 = vmFolder(store, 'garbage')
  writeFileSync(join(g5, ERRORS_FILE), '{ not json')
  t.same(await readSessionErrors(store, 'garbage', 20), [])

  // .grainline a symlink to a folder outside: refused, logged, the receiver goes on
  const elsewhere = scratchDir(t)
  mkdirSync(join(store, 'redirected'))
  symlinkSync(elsewhere, join(store, 'redirected', '.grainline'))
  await t.rejects(writeSessionErrors(store, 'redirected', []), { code: 'E_STORE_FILE' })
  const logs = memoryLogger()
  const live = new LiveState({ storeDir: store, log: logs.logger })
  live.sessionFailed('redirected', 1, 'E_IO', 'x')
  await live.flush()
  t.notOk(existsSync(join(elsewhere, ERRORS_FILE)), 'nothing written through the symlink')
  t.match(logs.text(), /could not keep the session errors/, 'the failure to keep them is logged')
  t.equal(live.errors('redirected').length, 1, 'the error stays in memory')
})
