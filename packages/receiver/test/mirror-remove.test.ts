// `grainline mirror remove` on a folder store: a VM with restore points
// leaves the store whole (mirror, points, journals, history); refused while a
// session writes it or a point is open; a removal killed after its rename is
// finished by the next one, of another VM or of the same VM run again; a hostile store's links and tombstones never lead
// it outside the store; the VM's place under maxVms is free again and the
// next cycle of the VM is a seed. Hostile names (separators, "..", NUL,
// overlong) are E_BAD_NAME; a linked mirror folder or .grainline and a FIFO
// at the VM's name are E_STORE_FILE with nothing removed; links and FIFOs
// inside a mirror are never followed or opened; a name stored longer than a
// VmOpen now accepts (by an older receiver) is still removable.
import t from 'tap'
import type { Test } from 'tap'
import { execFileSync, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { cpSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { MessageKind } from '@grainline/protocol'
import { scratchDir } from '@grainline/test-utils'
import { pino } from 'pino'
import { closePoint, openPoint, removeMirror, storeStatus, REMOVED_PREFIX } from '../src/index.ts'
import { Agent, MiB, TOKEN, evolve, hello, incPlan, makeEnv, openVmOnly, pattern, runCycle, seedPlan, startReceiver, vmOpen, type Env } from './helpers.ts'

const CLI = fileURLToPath(new URL('../../../cli/dist/src/bin.js', import.meta.url))
const log = pino({ level: 'silent' })

/** What a `grainline mirror remove` process ended with. */
interface Removal {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly out: string
  readonly err: string
}

/**
 * `grainline mirror remove <args>` as its own process, with the fault point `fault` armed
 * (GRAINLINE_RECEIVER_FAULT); `stopped` settles when a `…:stop` fault has stopped it.
 */
function removeCli(args: readonly string[], fault?: string): { exited: Promise<Removal>; stopped: Promise<void>; pid: number } {
  const env = { ...process.env }
  if (fault === undefined) delete env['GRAINLINE_RECEIVER_FAULT']
  else env['GRAINLINE_RECEIVER_FAULT'] = fault
  const c = spawn(process.execPath, [CLI, 'mirror', 'remove', ...args, '--log-level', 'warn'], { env })
  let out = ''
  let err = ''
  let onStop: () => void = () => {}
  const stopped = new Promise<void>((resolve) => (onStop = resolve))
  c.stdout.on('data', (d: Buffer) => (out += d.toString()))
  c.stderr.on('data', (d: Buffer) => {
    err += d.toString()
    if (err.includes('"fault-stop"')) onStop()
  })
  const exited = new Promise<Removal>((resolve) => c.once('exit', (code, signal) => resolve({ code, signal, out, err })))
  return { exited, stopped, pid: c.pid as number }
}

/** A VM of `cycles` committed cycles (retention keeps the points) in env's store, through an in-process receiver. */
async function withVm(t: Test, env: Env, vm: string, cycles: number): Promise<void> {
  const { receiver, url } = await startReceiver(env, { retention: { keep: 5 } })
  try {
    let image: Buffer = Buffer.concat([pattern(MiB, 3), Buffer.alloc(MiB)])
    let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', image, 'aa01aa01aa01aa01')])
    a.close()
    for (let c = 2; c <= cycles; c++) {
      const ranges = [{ offset: c * 65_536, length: 65_536 }]
      image = evolve(image, c, ranges)
      a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      await runCycle(a, vm, c, [incPlan(0, 'd.vmdk', image, c - 1, `aa0${c}aa0${c}aa0${c}aa0${c}`, ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)])
      a.close()
    }
  } finally {
    await receiver.close()
  }
  t.ok(existsSync(join(env.store, vm, '.grainline', 'state.json')), `${vm} committed`)
}

t.test('a VM with restore points leaves the store whole; its report; status no longer lists it', async (t) => {
  const env = makeEnv(scratchDir(t))
  await withVm(t, env, 'vm-a', 3)
  await withVm(t, env, 'vm-b', 1)
  const r = await removeMirror(env.store, 'vm-a', log)
  t.match(r, { vm: 'vm-a', committedCycle: 3, disks: ['d.vmdk'], points: [1, 2], leftovers: 0, resumed: false }, 'the report names the cycle, the disks and the points')
  t.ok(r.bytes > MiB, `the bytes freed (${r.bytes})`)
  t.same(readdirSync(env.store).sort(), ['vm-b'], 'nothing of it is left, no tombstone')
  t.same(
    (await storeStatus(env.store)).vms.map((v) => v.vm),
    ['vm-b'],
    'status lists the other VM only',
  )
  await t.rejects(removeMirror(env.store, 'vm-a', log), { code: 'E_NOT_FOUND', message: /no mirror of VM vm-a in / }, 'removed twice: not found')
  await t.rejects(removeMirror(env.store, 'nope', log), { code: 'E_NOT_FOUND' })
  for (const bad of ['.failover', '../vm-b', 'a/b', '']) await t.rejects(removeMirror(env.store, bad, log), { code: /^E_BAD_NAME|E_NOT_FOUND$/ }, `hostile name ${JSON.stringify(bad)} refused`)
  t.ok(existsSync(join(env.store, 'vm-b', 'd-flat.vmdk')), 'the other VM untouched')
})

t.test('refused while a session writes the VM and while a point is open; allowed once closed', async (t) => {
  const env = makeEnv(scratchDir(t))
  await withVm(t, env, 'vm-h', 2)
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  a.send(hello())
  await a.expect(MessageKind.Welcome)
  a.send(vmOpen('vm-h', 3, ['d-000002.vmdk']))
  await a.expect(MessageKind.VmState)
  await t.rejects(removeMirror(env.store, 'vm-h', log), { code: 'E_BUSY' }, 'a session holds it: E_BUSY')
  t.ok(existsSync(join(env.store, 'vm-h', 'd-flat.vmdk')), 'and nothing was removed')
  a.close()
  await a.whenClosed()
  const dir = join(env.dir, 'open-1')
  await openPoint(env.store, 'vm-h', 1, dir, { logger: log })
  await t.rejects(removeMirror(env.store, 'vm-h', log), { code: 'E_HELD', message: /points close .*then remove it/ }, 'an opened point holds it: E_HELD naming what to do')
  t.ok(existsSync(join(env.store, 'vm-h', 'd-flat.vmdk')), 'the mirror the open point reads is still there')
  await closePoint(env.store, 'vm-h', { logger: log, dir })
  t.match(await removeMirror(env.store, 'vm-h', log), { vm: 'vm-h', committedCycle: 2, points: [1] }, 'closed: removed')
})

t.test('the CLI: --yes required; killed after the rename, the VM is gone and the next removal deletes its files; links are never followed', async (t) => {
  const env = makeEnv(scratchDir(t))
  await withVm(t, env, 'vm-k', 2)
  await withVm(t, env, 'vm-l', 1)
  const run = (args: string[], fault?: string): Promise<Removal> => removeCli(args, fault).exited
  const noYes = await run(['--store', env.store, '--vm', 'vm-k'])
  t.equal(noYes.code, 2, 'without --yes: a usage error')
  t.match(noYes.err, /cannot be undone: add --yes/)
  t.ok(existsSync(join(env.store, 'vm-k', 'd-flat.vmdk')), 'and nothing removed')
  const killed = await run(['--store', env.store, '--vm', 'vm-k', '--yes'], 'remove-renamed:1')
  t.equal(killed.signal, 'SIGKILL', 'killed right after the rename')
  t.notOk(existsSync(join(env.store, 'vm-k')), 'the VM is gone at once')
  const stones = readdirSync(env.store).filter((n) => n.startsWith(REMOVED_PREFIX))
  t.equal(stones.length, 1, 'its files wait in one tombstone')
  t.same(
    (await storeStatus(env.store)).vms.map((v) => v.vm),
    ['vm-l'],
    'status does not list the tombstone',
  )
  // a hostile store: a link named like a tombstone, to a folder outside the store
  const outside = join(env.dir, 'outside')
  mkdirSync(outside)
  writeFileSync(join(outside, 'precious'), 'keep me')
  symlinkSync(outside, join(env.store, `${REMOVED_PREFIX}link`))
  const ok = await run(['--store', env.store, '--vm', 'vm-l', '--yes', '--output', 'json'])
  t.equal(ok.code, 0, ok.err)
  t.match(JSON.parse(ok.out), { vm: 'vm-l', committedCycle: 1, points: [], leftovers: 2, resumed: false }, 'the next removal finished the interrupted one (and took the link away)')
  t.same(readdirSync(env.store), [], 'the store is empty')
  t.equal(readFileSync(join(outside, 'precious'), 'utf8'), 'keep me', 'what the link pointed to is untouched')
  const human = await run(['--store', env.store, '--vm', 'vm-l', '--yes'])
  t.equal(human.code, 1, 'a VM the store does not hold: a failure')
  t.match(human.err, /E_NOT_FOUND/)
  // the operator runs the interrupted removal of the same VM again: it finishes it (as on Ceph)
  await withVm(t, env, 'vm-m', 1)
  const killedM = await run(['--store', env.store, '--vm', 'vm-m', '--yes'], 'remove-renamed:1')
  t.equal(killedM.signal, 'SIGKILL', 'a removal of vm-m killed right after its rename')
  const key = createHash('sha256').update('vm-m', 'utf8').digest('hex').slice(0, 16)
  // a link named like vm-m's own tombstone, to the folder outside: deleted, never followed or counted
  symlinkSync(outside, join(env.store, `${REMOVED_PREFIX}${key}-link`))
  const again = await run(['--store', env.store, '--vm', 'vm-m', '--yes'])
  t.equal(again.code, 0, again.err)
  t.match(again.out, /^vm-m: finished its interrupted removal from .* — [\d.]+ [KMG]i?B freed\n/, 'says it finished the interrupted removal')
  t.notMatch(again.out, /committed cycle 0/, 'not reported as a removal of an empty mirror')
  t.same(readdirSync(env.store), [], 'its tombstone and the link are gone')
  t.equal(readFileSync(join(outside, 'precious'), 'utf8'), 'keep me', 'what the link pointed to is untouched')
  // a VM never committed (one VmOpen), removed while another VM's tombstone waits: its own removal, not a resumed one
  const { receiver, url } = await startReceiver(env)
  t.equal(await openVmOnly(url, TOKEN, env.tls.ca, 'vm-n'), 'ok')
  await receiver.close()
  await withVm(t, env, 'vm-o', 1)
  t.equal((await run(['--store', env.store, '--vm', 'vm-o', '--yes'], 'remove-renamed:1')).signal, 'SIGKILL', "vm-o's removal killed after its rename")
  const never = await run(['--store', env.store, '--vm', 'vm-n', '--yes'])
  t.equal(never.code, 0, never.err)
  t.match(
    never.out,
    /^vm-n: removed from .* — committed cycle 0, 0 disk\(s\), no restore point, .* freed\nalso finished 1 removal\(s\) interrupted before\n/,
    'a removal of its own, finishing the other',
  )
  t.same(readdirSync(env.store), [], 'nothing left')
  const third = await run(['--store', env.store, '--vm', 'vm-m', '--yes', '--output', 'json'])
  t.equal(third.code, 1, 'run a third time: nothing left of vm-m')
  t.match(third.err, /E_NOT_FOUND/)
})

t.test('its place under maxVms is free again, and the next cycle of the VM is a seed', async (t) => {
  const env = makeEnv(scratchDir(t))
  const file = join(env.dir, 'tokens-vms.json')
  writeFileSync(file, JSON.stringify({ tokens: [{ name: 'proxy-a', token: TOKEN, vms: ['*'], maxVms: 2 }] }))
  await withVm(t, env, 'vm-1', 2)
  const { receiver, url } = await startReceiver(env, { tokensFile: file })
  t.teardown(() => receiver.close())
  t.equal(await openVmOnly(url, TOKEN, env.tls.ca, 'vm-2'), 'ok')
  t.match(await openVmOnly(url, TOKEN, env.tls.ca, 'vm-3'), /^E_QUOTA: /, 'at maxVms')
  await removeMirror(env.store, 'vm-2', log)
  t.equal(await openVmOnly(url, TOKEN, env.tls.ca, 'vm-3'), 'ok', 'a VM opened and never committed can be removed, and its place is free')
  await removeMirror(env.store, 'vm-1', log)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  a.send(hello())
  await a.expect(MessageKind.Welcome)
  a.send(vmOpen('vm-1', 3, ['d-000002.vmdk']))
  const st = await a.expect(MessageKind.VmState)
  t.match(st, { exists: false, committedCycle: 0 }, 'the VM is new to the store: its agent seeds it')
  a.close()
  await a.whenClosed()
})

t.test("a removal paused after its rename never takes the lock of the VM's new folder: a session's VmOpen meanwhile keeps its lock", async (t) => {
  const env = makeEnv(scratchDir(t))
  await withVm(t, env, 'vm-r', 1)
  const run = (fault?: string): ReturnType<typeof removeCli> => removeCli(['--store', env.store, '--vm', 'vm-r', '--yes'], fault)
  const first = run('remove-renamed:1:stop')
  t.teardown(() => {
    try {
      process.kill(first.pid, 'SIGKILL')
    } catch {
      // exited
    }
  })
  await first.stopped
  t.notOk(existsSync(join(env.store, 'vm-r')), 'renamed away, the removal paused before it releases the lock')
  // the VM's agent opens it again meanwhile: a new folder, with the session's own lock
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  a.send(hello())
  await a.expect(MessageKind.Welcome)
  a.send(vmOpen('vm-r', 2, ['d.vmdk']))
  t.match(await a.expect(MessageKind.VmState), { exists: false }, 'the VM is new to the store')
  const lock = join(env.store, 'vm-r', '.grainline', 'lock')
  t.ok(existsSync(lock), "the session's lock file")
  process.kill(first.pid, 'SIGCONT')
  t.equal((await first.exited).code, 0, 'the paused removal finished')
  t.ok(existsSync(lock), "the session's lock file is still there: the removal released its own lock only")
  const second = await run().exited
  t.equal(second.code, 1, 'a second removal while the session holds the VM fails')
  t.match(second.err, /E_BUSY/, 'E_BUSY: the session holds the VM')
  t.ok(existsSync(join(env.store, 'vm-r', '.grainline')), "and the session's folder is still there")
  a.close()
  await a.whenClosed()
})

t.test("the tombstone of a removal killed after its rename counts against no token's quota", async (t) => {
  const env = makeEnv(scratchDir(t))
  // a token whose glob also matches hidden names
  const tokensFile = join(env.dir, 'tokens-q.json')
  writeFileSync(tokensFile, JSON.stringify({ tokens: [{ name: 'proxy-q', token: TOKEN, vms: ['*'], quota: '3M' }] }))
  const { receiver, url } = await startReceiver({ ...env, tokensFile })
  t.teardown(() => receiver.close())
  const img = pattern(2 * MiB, 1)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  t.equal((await runCycle(a, 'q-1', 1, [seedPlan(0, 'q-1.vmdk', img, '01'.repeat(8))])).committed?.cycle, 1, 'a seed of 2 MiB within the 3 MiB quota')
  a.close()
  await a.whenClosed()
  const killed = (await removeCli(['--store', env.store, '--vm', 'q-1', '--yes'], 'remove-renamed:1').exited).signal
  t.equal(killed, 'SIGKILL', 'the removal was killed after its rename')
  t.equal(readdirSync(env.store).filter((n) => n.startsWith(REMOVED_PREFIX)).length, 1, "the VM's files wait in a tombstone")
  const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const r = await runCycle(b, 'q-2', 1, [seedPlan(0, 'q-2.vmdk', img, '02'.repeat(8))]).catch((err: unknown) => err)
  b.close()
  t.equal((r as { committed?: { cycle: number } }).committed?.cycle, 1, `another VM of 2 MiB fits: the removed VM no longer counts (${String(r instanceof Error ? r.message : '')})`)
})

t.test(
  'hostile names and entries: separators, "..", NUL, overlong, a linked mirror folder, a FIFO, a linked .grainline: nothing outside the store is removed; a name stored long by an older receiver is still removable',
  async (t) => {
    const env = makeEnv(scratchDir(t))
    await withVm(t, env, 'vm-h', 1)
    const flat = join(env.store, 'vm-h', 'd-flat.vmdk')
    // names: typed E_BAD_NAME, nothing read or removed
    for (const bad of ['..', '.', '', 'a/b', '../vm-h', 'vm-h/..', '/vm-h', 'a\\b', 'vm\u0000h', 'vm-h\n', 'x'.repeat(256), `${'é'.repeat(128)}`]) {
      await t.rejects(removeMirror(env.store, bad, log), { code: 'E_BAD_NAME' }, `name ${JSON.stringify(bad.slice(0, 20))} (${Buffer.byteLength(bad)} bytes): E_BAD_NAME`)
    }
    t.ok(existsSync(flat), 'vm-h untouched')

    // the mirror folder is a link to a whole mirror outside the store: refused, typed; neither the link's target nor the link's name removed
    const outside = join(env.dir, 'outside')
    mkdirSync(outside)
    cpSync(join(env.store, 'vm-h'), join(outside, 'vm-copy'), { recursive: true })
    symlinkSync(join(outside, 'vm-copy'), join(env.store, 'vm-link'))
    await t.rejects(removeMirror(env.store, 'vm-link', log), { code: 'E_STORE_FILE', message: /vm-link/ }, 'a linked mirror folder: E_STORE_FILE, named')
    t.ok(existsSync(join(outside, 'vm-copy', 'd-flat.vmdk')), 'the folder it points to is whole')
    t.ok(lstatSync(join(env.store, 'vm-link')).isSymbolicLink(), 'the link is left for the operator')

    // a mirror whose .grainline is a link to another VM's: refused, nothing removed
    mkdirSync(join(env.store, 'vm-g'))
    symlinkSync(join(env.store, 'vm-h', '.grainline'), join(env.store, 'vm-g', '.grainline'))
    await t.rejects(removeMirror(env.store, 'vm-g', log), { code: 'E_STORE_FILE', message: /vm-g\/\.grainline is a symbolic link/ }, 'a linked .grainline: E_STORE_FILE')
    t.ok(existsSync(join(env.store, 'vm-h', '.grainline', 'state.json')), "the other VM's state is whole")

    // a FIFO where the VM's folder would be: refused at once (never opened: no hang)
    execFileSync('mkfifo', [join(env.store, 'vm-fifo')])
    await t.rejects(removeMirror(env.store, 'vm-fifo', log), { code: 'E_STORE_FILE', message: /vm-fifo is a FIFO/ }, 'a FIFO: E_STORE_FILE, no hang')
    t.ok(lstatSync(join(env.store, 'vm-fifo')).isFIFO(), 'the FIFO is left')
    t.same(
      readdirSync(env.store).filter((n) => n.startsWith(REMOVED_PREFIX)),
      [],
      'no tombstone made',
    )

    // a mirror holding a link to a folder outside the store and a FIFO: removed, the link never followed (nor counted), the FIFO never opened
    await withVm(t, env, 'vm-f', 1)
    symlinkSync(outside, join(env.store, 'vm-f', 'escape'))
    symlinkSync(outside, join(env.store, 'vm-f', '.grainline', 'escape'))
    execFileSync('mkfifo', [join(env.store, 'vm-f', 'pipe')])
    const rf = await removeMirror(env.store, 'vm-f', log)
    t.match(rf, { vm: 'vm-f', committedCycle: 1 }, 'removed')
    t.ok(rf.bytes < 64 * MiB, `only its own bytes counted (${rf.bytes})`)
    t.notOk(existsSync(join(env.store, 'vm-f')), 'its folder is gone')
    t.ok(existsSync(join(outside, 'vm-copy', 'd-flat.vmdk')), 'what its links pointed to is whole')

    // a VM name of 240 bytes (above the 227 a VmOpen now accepts) stored by an older receiver: still removed, whole
    const long = `vm-${'l'.repeat(237)}`
    t.equal(Buffer.byteLength(long), 240)
    await withVm(t, env, 'vm-old', 1)
    renameSync(join(env.store, 'vm-old'), join(env.store, long))
    const statePath = join(env.store, long, '.grainline', 'state.json')
    writeFileSync(statePath, JSON.stringify({ ...JSON.parse(readFileSync(statePath, 'utf8')), vm: long }))
    t.equal((await storeStatus(env.store)).vms.find((v) => v.vm === long)?.committedCycle, 1, 'status lists the long-named VM')
    const r = await removeMirror(env.store, long, log)
    t.match(r, { vm: long, committedCycle: 1, disks: ['d.vmdk'], resumed: false }, 'the long-named VM is removed')
    t.notOk(existsSync(join(env.store, long)), 'its folder is gone')
    t.ok(existsSync(flat), 'vm-h untouched')
    t.ok(existsSync(join(outside, 'vm-copy', '.grainline', 'state.json')), 'outside untouched')
  },
)
