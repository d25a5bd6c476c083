import t from 'tap'
import type { Test } from 'tap'
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { MessageKind } from '@grainline/protocol'
import { pino } from 'pino'
import { pollUntil } from '@grainline/test-utils'
import { recoverStore, rollbackMirror, type VmStateFile } from '../src/index.ts'
import { Agent, MiB, TOKEN, evolve, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startChild, vmOpen, type Env } from './helpers.ts'

/*
 * kill -9 (src/fault.ts) of a receiver that keeps restore points, during an
 * incremental apply into a reverse increment, its commit (which links the
 * new point and prunes the oldest), and of `grainline points drop` during a
 * merge of two increments. After restart (resume, rollback) or recovery,
 * the mirror equals the image of the committed cycle and every kept point
 * reads (qemu-img) as the image of its cycle.
 */

t.setTimeout(40 * 60_000)

const VM = 'vm1'
const CAP = 2 * MiB
const EXT = 64 * 1024
const rangesOf = (c: number): Array<{ offset: number; length: number; zero?: boolean }> => [
  { offset: (c * 3 * EXT) % MiB, length: 4 * EXT },
  { offset: MiB + ((c * 5 * EXT) % (MiB / 2)), length: 3 * EXT, zero: c % 2 === 0 },
  { offset: CAP - 2 * EXT, length: 2 * EXT },
]
const images: Buffer[] = [Buffer.alloc(0), Buffer.concat([pattern(MiB, 1), Buffer.alloc(MiB / 2), pattern(MiB / 2, 2)])]
for (let c = 2; c <= 6; c++) images[c] = evolve(images[c - 1] as Buffer, c * 13, rangesOf(c))
const plan = (c: number, id = `${c}f`.repeat(8)) =>
  c === 1 ? seedPlan(0, 'vm1.vmdk', images[1] as Buffer, id, EXT) : incPlan(0, 'vm1.vmdk', images[c] as Buffer, c - 1, id, rangesOf(c), `vm1-00000${c - 1}.vmdk`, `vm1-00000${c}.vmdk`, EXT)
const CLI = fileURLToPath(new URL('../../../cli/dist/src/bin.js', import.meta.url))

function args(env: Env): string[] {
  const cfg = join(env.dir, 'receiver.json')
  writeFileSync(cfg, JSON.stringify({ store: env.store, retention: { keep: 3 } }))
  return ['--batch-bytes', String(EXT), '--log-level', 'warn', '--config', cfg]
}

function state(env: Env): VmStateFile {
  return JSON.parse(readFileSync(join(env.store, VM, '.grainline', 'state.json'), 'utf8')) as VmStateFile
}

/** qemu-img's reading of a descriptor (and its chain) as raw bytes. */
function readRaw(env: Env, desc: string): Buffer {
  const out = join(env.dir, `r-${Math.random().toString(16).slice(2)}.raw`)
  execFileSync('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', desc, out])
  return readFileSync(out)
}

/** The mirror and every kept point read as the images of their cycles. */
function checkExact(t: Test, env: Env, what: string): void {
  const s = state(env)
  const read = (desc: string): Buffer => readRaw(env, desc)
  t.ok(read(join(env.store, VM, 'vm1.vmdk')).equals(images[s.committedCycle] as Buffer), `${what}: mirror == image ${s.committedCycle}`)
  for (const p of s.points ?? []) {
    t.ok(read(join(env.store, VM, '.grainline', 'points', p.disks['vm1.vmdk']?.file as string)).equals(images[p.cycle] as Buffer), `${what}: point ${p.cycle} exact`)
  }
}

/** Seed + cycles 2..`upTo` with points (keep 3). */
async function withPoints(dir: string, upTo: number): Promise<Env> {
  const env = makeEnv(dir)
  const c = await startChild(env, { args: args(env) })
  for (let k = 1; k <= upTo; k++) {
    const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, VM, k, [plan(k)])
    a.close()
    await a.whenClosed()
  }
  c.child.kill('SIGTERM')
  await c.exited
  return env
}

async function crashRun(t: Test, env: Env, fault: string, run: (url: string) => Promise<unknown>, childArgs = args(env)): Promise<void> {
  const c = await startChild(env, { fault, args: childArgs })
  await run(c.url).catch(() => {})
  const e = await Promise.race([c.exited, new Promise<{ code: null; signal: 'timeout' }>((resolve) => setTimeout(() => resolve({ code: null, signal: 'timeout' }), 20000))])
  if (e.signal === 'timeout') c.child.kill('SIGKILL')
  t.equal(e.signal, 'SIGKILL', `killed at ${fault}`)
}

const faults = [
  'increment-written:1',
  'increment-written:3',
  'journal-synced:1',
  'journal-synced:4',
  'extent-written:2',
  'extent-written:7',
  'target-synced:1',
  'target-synced:5',
  'commit-before-state:1',
  'commit-after-state:1',
  'commit-descriptors:1',
  'commit-points:1',
]
const thens = ['resume', 'rollback-msg', 'rollback-cli'] as const

t.test('kill -9 during an apply into a reverse increment and its commit (which prunes the oldest point)', async (t) => {
  let i = 0
  for (const fault of faults) {
    const then = thens[i++ % thens.length] as (typeof thens)[number]
    await t.test(`${fault} then ${then}`, async (t) => {
      // points 1, 2, 3 kept; cycle 5 adds point 4 and prunes point 1
      const env = await withPoints(t.testdir(), 4)
      await crashRun(t, env, fault, async (url) => {
        const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
        await runCycle(a, VM, 5, [plan(5)])
      })
      const c = await startChild(env, { args: args(env) })
      t.teardown(() => {
        c.child.kill('SIGKILL')
      })
      const committed = state(env).committedCycle
      t.ok(committed === 4 || committed === 5, `committed ${committed}`)
      if (fault.startsWith('commit-after') || fault.startsWith('commit-desc') || fault.startsWith('commit-points')) t.equal(committed, 5, 'past the commit point')
      if (then === 'resume' && committed === 4) {
        const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
        await runCycle(a, VM, 5, [plan(5)])
        a.close()
      } else if (then === 'rollback-msg') {
        const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
        a.send(hello())
        await a.expect(MessageKind.Welcome)
        a.send(vmOpen(VM, 6, ['vm1-000005.vmdk']))
        await a.expect(MessageKind.VmState)
        a.send({ kind: MessageKind.Rollback, vm: VM })
        await a.expect(MessageKind.RolledBack)
        a.close()
        await a.whenClosed()
      } else if (then === 'rollback-cli') {
        c.child.kill('SIGTERM')
        await c.exited
        await rollbackMirror(env.store, VM)
      }
      const s = state(env)
      t.same(
        (s.points ?? []).map((p) => p.cycle),
        s.committedCycle === 5 ? [2, 3, 4] : [1, 2, 3],
        'points of the committed cycle',
      )
      checkExact(t, env, `${fault}/${then}`)
      // and replication goes on: the next cycle commits and its points are exact
      if (then !== 'rollback-cli') {
        const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
        const next = s.committedCycle + 1
        await runCycle(a, VM, next, [plan(next, `${next}e`.repeat(8))], { rollbackFirst: true })
        a.close()
        await a.whenClosed()
        checkExact(t, env, `${fault}/${then}, next cycle`)
      }
    })
  }
})

/**
 * After cycle 5 (keep 3) replaced the mirror of cycle 4 whole (a re-seed, a
 * capacity change): committed, nothing pending, point 4 is the old mirror
 * kept as a base point at its own capacity, the mirror is `mirror`, and
 * every point reads as the image of its cycle.
 */
function checkBasePoint(t: Test, env: Env, fault: string, mirror: Buffer): void {
  const s = state(env)
  t.equal(s.committedCycle, 5)
  t.equal(s.pending, null, 'nothing left to roll forward')
  t.same(
    (s.points ?? []).map((p) => p.cycle),
    [2, 3, 4],
    'keep 3: point 1 pruned, the old mirror is point 4',
  )
  t.match(s.points?.[2]?.disks['vm1.vmdk'], { file: 'vm1.p4.vmdk', base: true, capacity: CAP })
  t.ok(readRaw(env, join(env.store, VM, 'vm1.vmdk')).equals(mirror), `${fault}: mirror == cycle 5`)
  for (const p of s.points ?? []) {
    t.ok(readRaw(env, join(env.store, VM, '.grainline', 'points', p.disks['vm1.vmdk']?.file as string)).equals(images[p.cycle] as Buffer), `${fault}: point ${p.cycle} exact`)
  }
}

const mergeFaults = ['prune-after-state:1', 'merge-cid-recorded:1', 'merge-copied:1', 'merge-copied:3', 'merge-parent-flushed:1', 'merge-repointed:1', 'merge-parent-cid:1', 'merge-removed:1']

t.test('kill -9 of `grainline points drop` merging the newest point into the mirror-side chain: recovery finishes it, every kept point exact', async (t) => {
  const base = await withPoints(join(t.testdir(), 'base'), 4)
  for (const fault of mergeFaults) {
    await t.test(fault, async (t) => {
      const env = { ...base, dir: t.testdir(), store: join(t.testdir(), 'store') }
      execFileSync('cp', ['-a', base.store, env.store])
      t.same(
        (state(env).points ?? []).map((p) => p.cycle),
        [1, 2, 3],
      )
      const child = spawn(process.execPath, [CLI, 'points', 'drop', '--store', env.store, '--vm', VM, '--point', '3', '--log-level', 'warn'], {
        env: { ...process.env, GRAINLINE_RECEIVER_FAULT: fault },
        stdio: 'ignore',
      })
      const exit = await new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_c, s) => resolve(s)))
      t.equal(exit, 'SIGKILL', `killed at ${fault}`)
      const rep = await recoverStore(env.store, pino({ level: 'silent' }))
      t.equal(rep[0]?.action, 'rolled-forward', 'recovery finished the drop')
      t.same(
        (state(env).points ?? []).map((p) => p.cycle),
        [1, 2],
      )
      checkExact(t, env, fault)
    })
  }
})

t.test('kill -9 of the commit that reclaims a removed disk, before and amid deleting its files: the restart finishes it', async (t) => {
  for (const fault of ['commit-before-state:1', 'commit-points:1', 'commit-disk-removed:1']) {
    await t.test(fault, async (t) => {
      const env = makeEnv(t.testdir())
      const cfg = join(env.dir, 'receiver-keep1.json')
      writeFileSync(cfg, JSON.stringify({ store: env.store, retention: { keep: 1 } }))
      const childArgs = ['--log-level', 'warn', '--config', cfg]
      const c = await startChild(env, { args: childArgs })
      // cycle 1 seeds vm1.vmdk and b.vmdk; cycles 2 and 3 carry vm1.vmdk only and their .vmx names only it (b.vmdk removed in cycle 2)
      let a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
      await runCycle(a, VM, 1, [plan(1), seedPlan(1, 'b.vmdk', pattern(MiB, 5), 'b1'.repeat(16), EXT)])
      a.close()
      a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
      await runCycle(a, VM, 2, [plan(2)])
      a.close()
      await a.whenClosed()
      c.child.kill('SIGTERM')
      await c.exited
      t.same(Object.keys(state(env).disks).sort(), ['b.vmdk', 'vm1.vmdk'], 'point 1 holds b.vmdk: kept')
      // cycle 3 (keep 1) drops point 1: its commit reclaims b.vmdk
      await crashRun(
        t,
        env,
        fault,
        async (url) => {
          const ag = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
          await runCycle(ag, VM, 3, [plan(3)])
        },
        childArgs,
      )
      const c2 = await startChild(env, { args: childArgs })
      t.teardown(() => {
        c2.child.kill('SIGKILL')
      })
      if (state(env).committedCycle === 2) {
        t.equal(fault, 'commit-before-state:1', 'only a kill before the commit point leaves cycle 2')
        a = await Agent.connect(c2.url, { token: TOKEN, ca: env.tls.ca })
        await runCycle(a, VM, 3, [plan(3)], { rollbackFirst: true })
        a.close()
        await a.whenClosed()
      }
      const s = state(env)
      t.equal(s.committedCycle, 3)
      t.equal(s.pending, null, 'nothing left to roll forward')
      t.same(Object.keys(s.disks), ['vm1.vmdk'], 'b.vmdk reclaimed')
      const left = readdirSync(join(env.store, VM)).filter((f) => f.startsWith('b'))
      const leftG = readdirSync(join(env.store, VM, '.grainline')).filter((f) => f.startsWith('b'))
      t.same([...left, ...leftG], [], 'no file of b.vmdk is left')
      checkExact(t, env, fault)
    })
  }
})

t.test('kill -9 of the commit of a re-seed that keeps the old mirror as a base point, at each step: the restart finishes it, every point exact', async (t) => {
  const reseed = pattern(CAP, 21)
  const base = await withPoints(join(t.testdir(), 'base'), 4)
  for (const fault of ['commit-before-state:1', 'commit-after-state:1', 'commit-retired:1', 'commit-renamed:1', 'commit-descriptors:1', 'commit-points:1']) {
    await t.test(fault, async (t) => {
      const env = { ...base, dir: t.testdir(), store: join(t.testdir(), 'store') }
      execFileSync('cp', ['-a', base.store, env.store])
      const seed5 = (id: string) => seedPlan(0, 'vm1.vmdk', reseed, id, EXT)
      await crashRun(t, env, fault, async (url) => {
        const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
        await runCycle(a, VM, 5, [seed5('5a'.repeat(8))])
      })
      const c = await startChild(env, { args: args(env) })
      t.teardown(() => {
        c.child.kill('SIGKILL')
      })
      if (state(env).committedCycle === 4) {
        t.equal(fault, 'commit-before-state:1', 'only a kill before the commit point leaves cycle 4')
        const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
        await runCycle(a, VM, 5, [seed5('5b'.repeat(8))], { rollbackFirst: true })
        a.close()
        await a.whenClosed()
      }
      checkBasePoint(t, env, fault, reseed)
      t.same(
        readdirSync(join(env.store, VM)).filter((f) => f.endsWith('.seed')),
        [],
        'no seed file left',
      )
    })
  }
})

/** Cycle 5 grows vm1.vmdk by 1 MiB (the grown part reads as zeros until written, as on ESXi) and writes on both sides of the old end. */
const r5 = [
  { offset: EXT, length: 2 * EXT },
  { offset: CAP + EXT, length: 4 * EXT },
]
const img5 = evolve(Buffer.concat([images[4] as Buffer, Buffer.alloc(MiB)]), 77, r5)
const grow5 = (id: string) => incPlan(0, 'vm1.vmdk', img5, 4, id, r5, 'vm1-000004.vmdk', 'vm1-000005.vmdk', EXT)

t.test('kill -9 while a capacity change copies the mirror into a base point, applies and commits: resume or rollback, every point exact', async (t) => {
  const base = await withPoints(join(t.testdir(), 'base'), 4)
  let i = 0
  for (const fault of ['base-copied:1', 'journal-synced:1', 'extent-written:2', 'commit-before-state:1', 'commit-points:1']) {
    const then = i++ % 2 === 0 ? 'resume' : 'rollback-cli'
    await t.test(`${fault} then ${then}`, async (t) => {
      const env = { ...base, dir: t.testdir(), store: join(t.testdir(), 'store') }
      execFileSync('cp', ['-a', base.store, env.store])
      await crashRun(t, env, fault, async (url) => {
        const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
        await runCycle(a, VM, 5, [grow5('5c'.repeat(8))])
      })
      if (then === 'rollback-cli' && state(env).inflight !== null) await rollbackMirror(env.store, VM)
      const c = await startChild(env, { args: args(env) })
      t.teardown(() => {
        c.child.kill('SIGKILL')
      })
      if (state(env).committedCycle === 4) {
        const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
        await runCycle(a, VM, 5, [grow5(then === 'resume' ? '5c'.repeat(8) : '5d'.repeat(8))], { rollbackFirst: then !== 'resume' })
        a.close()
        await a.whenClosed()
      }
      checkBasePoint(t, env, fault, img5)
      t.same(
        readdirSync(join(env.store, VM, '.grainline', 'points')).filter((f) => f.endsWith('.copying')),
        [],
        'no partial copy left',
      )
    })
  }
})

/** Cycle 6: an incremental on the grown disk of cycle 5. */
const r6 = [
  { offset: 3 * EXT, length: 2 * EXT },
  { offset: CAP + 8 * EXT, length: EXT },
]
const img6 = evolve(img5, 91, r6)
const plan6 = () => incPlan(0, 'vm1.vmdk', img6, 5, '6a'.repeat(8), r6, 'vm1-000005.vmdk', 'vm1-000006.vmdk', EXT)

/** Cycle 5 (a capacity change) killed after its second extent: in flight, its base copy `vm1.p4.vmdk` made and named. */
async function growKilled(t: Test, dir: string): Promise<Env> {
  const env = await withPoints(dir, 4)
  await crashRun(t, env, 'extent-written:2', async (url) => {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, VM, 5, [grow5('5c'.repeat(8))])
  })
  t.equal(state(env).inflight?.disks['vm1.vmdk']?.baseCopy, 'vm1.p4.vmdk', 'the in-flight record names the base copy')
  return env
}

t.test('kill -9 after a rollback undid a capacity change, before its state write: the resumed cycle keeps the base copy as point 4, and the next cycles commit', async (t) => {
  const env = await growKilled(t, t.testdir())
  // the Rollback undoes the disk and is killed before the state write (kill -9 standing in for a full disk)
  await crashRun(t, env, 'rollback-reset:1', async (url) => {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    a.send(hello())
    await a.expect(MessageKind.Welcome)
    a.send(vmOpen(VM, 5, ['vm1-000005.vmdk']))
    await a.expect(MessageKind.VmState)
    a.send({ kind: MessageKind.Rollback, vm: VM })
    await a.whenClosed()
  })
  t.equal(state(env).inflight?.cycle, 5, 'the cycle is still in flight')
  t.ok(readFileSync(join(env.store, VM, 'vm1-flat.vmdk')).equals(images[4] as Buffer), 'the mirror is back at cycle 4')
  const copy = join(env.store, VM, '.grainline', 'points', 'vm1.p4.vmdk')
  t.ok(existsSync(copy) && readRaw(env, copy).equals(images[4] as Buffer), 'the base copy the in-flight record names is kept: still a copy of the committed mirror')
  // the agent resumes the same cycle: from 0 (the undo reset the journal), onto the kept copy
  const c = await startChild(env, { args: args(env) })
  t.teardown(() => {
    c.child.kill('SIGKILL')
  })
  let a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
  const r = await runCycle(a, VM, 5, [grow5('5c'.repeat(8))])
  a.close()
  await a.whenClosed()
  t.equal(r.resume[0], 0, 'resumed from 0')
  t.equal(r.committed?.cycle, 5)
  checkBasePoint(t, env, 'resumed after the killed rollback', img5)
  // the next VmOpen and cycle go on, their points read through the base point
  a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
  t.equal((await runCycle(a, VM, 6, [plan6()])).committed?.cycle, 6)
  a.close()
  await a.whenClosed()
  const s = state(env)
  t.same(
    (s.points ?? []).map((p) => p.cycle),
    [3, 4, 5],
  )
  const imageOf: Record<number, Buffer> = { 3: images[3] as Buffer, 4: images[4] as Buffer, 5: img5 }
  for (const p of s.points ?? []) {
    t.ok(readRaw(env, join(env.store, VM, '.grainline', 'points', p.disks['vm1.vmdk']?.file as string)).equals(imageOf[p.cycle] as Buffer), `after cycle 6: point ${p.cycle} exact`)
  }
  t.ok(readRaw(env, join(env.store, VM, 'vm1.vmdk')).equals(img6), 'mirror == cycle 6')
})

t.test('a resumed capacity change whose base copy is gone (deleted by the rollback of an older receiver) commits with the points dropped, not a point without files', async (t) => {
  const env = await growKilled(t, t.testdir())
  const pdir = join(env.store, VM, '.grainline', 'points')
  rmSync(join(pdir, 'vm1.p4.vmdk'))
  rmSync(join(pdir, 'vm1.p4-flat.vmdk'))
  const c = await startChild(env, { args: args(env) })
  t.teardown(() => {
    c.child.kill('SIGKILL')
  })
  let a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
  t.equal((await runCycle(a, VM, 5, [grow5('5c'.repeat(8))])).committed?.cycle, 5, 'the cycle commits')
  a.close()
  await a.whenClosed()
  let s = state(env)
  t.equal(s.pending, null, 'nothing left to roll forward')
  t.same(s.points, [], 'no point recorded without its files')
  t.match(s.pointsDropped, { cycle: 5, cycles: [1, 2, 3], broken: true }, 'the drop is recorded (status, PointsDropped)')
  t.match(c.stderr(), /base copy vm1\.p4\.vmdk .*is missing/, 'the reason is logged, naming the copy')
  t.ok(readRaw(env, join(env.store, VM, 'vm1.vmdk')).equals(img5), 'mirror == cycle 5')
  t.same(
    readdirSync(pdir).filter((f) => f.startsWith('vm1.p')),
    [],
    'no point file left',
  )
  // and the next cycles commit and keep points again
  a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
  t.equal((await runCycle(a, VM, 6, [plan6()])).committed?.cycle, 6)
  a.close()
  await a.whenClosed()
  s = state(env)
  t.same(
    (s.points ?? []).map((p) => p.cycle),
    [5],
  )
  t.ok(readRaw(env, join(pdir, s.points?.[0]?.disks['vm1.vmdk']?.file as string)).equals(img5), 'point 5 exact')
})

t.test('the base copy reads the mirror flat it checked: a FIFO swapped in before cp starts neither blocks it nor is copied', async (t) => {
  const env = await withPoints(t.testdir(), 4)
  const grown = Buffer.concat([images[4] as Buffer, Buffer.alloc(MiB)])
  const r5 = [{ offset: CAP + EXT, length: 2 * EXT }]
  const img5 = evolve(grown, 78, r5)
  const grow5 = () => incPlan(0, 'vm1.vmdk', img5, 4, '5e'.repeat(8), r5, 'vm1-000004.vmdk', 'vm1-000005.vmdk', EXT)
  const flat = join(env.store, VM, 'vm1-flat.vmdk')
  const pflat = join(env.store, VM, '.grainline', 'points', 'vm1.p4-flat.vmdk')
  const c = await startChild(env, { fault: 'base-copy-opened:1:stop', args: args(env) })
  t.teardown(() => {
    c.child.kill('SIGKILL')
  })
  const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
  const cycle = runCycle(a, VM, 5, [grow5()]).catch((err: unknown) => err)
  // frozen between the check of the flat and cp: someone swaps the flat for a FIFO nobody writes
  await pollUntil(() => (c.stderr().includes('fault-stop') ? true : undefined), { signal: AbortSignal.timeout(30_000) })
  renameSync(flat, `${flat}.orig`)
  execFileSync('mkfifo', [flat])
  process.kill(c.child.pid as number, 'SIGCONT')
  // the copy is of the file that was checked; the apply then meets the FIFO by name and refuses it
  t.equal((await a.expectError(30_000)).code, 'E_IO', 'the apply refuses the FIFO (not a hang)')
  await cycle
  await pollUntil(() => (c.stderr().includes('vm1-flat.vmdk is a FIFO: grainline never follows or opens it') ? true : undefined), { signal: AbortSignal.timeout(10_000) })
  t.ok(readFileSync(pflat).equals(images[4] as Buffer), 'the base copy is the mirror as it was checked')
  c.child.kill('SIGKILL')
  await c.exited
  // the operator puts the flat back: the cycle resumes onto its copy and commits
  rmSync(flat)
  renameSync(`${flat}.orig`, flat)
  const d = await startChild(env, { args: args(env) })
  t.teardown(() => {
    d.child.kill('SIGKILL')
  })
  const b = await Agent.connect(d.url, { token: TOKEN, ca: env.tls.ca })
  t.equal((await runCycle(b, VM, 5, [grow5()])).committed?.cycle, 5)
  b.close()
  await b.whenClosed()
  checkBasePoint(t, env, 'after the FIFO', img5)
})

t.test('recovery removes the point files no state names (an orphaned base copy, a partial copy, a stale descriptor) and keeps every named one', async (t) => {
  const env = await withPoints(t.testdir(), 4)
  const pdir = join(env.store, VM, '.grainline', 'points')
  const named = readdirSync(pdir).sort()
  t.ok(named.includes('vm1.p3.vmdk') && named.includes('vm1.p3-sesparse.vmdk'), 'points 1–3 have their files')
  // a capacity change's copy made before the in-flight record named it, then the crash; a killed copy's partial; a base
  // descriptor written for a commit that never reached its commit point; an increment of a cycle nobody resumes
  const flat = readFileSync(join(env.store, VM, 'vm1-flat.vmdk'))
  writeFileSync(join(pdir, 'vm1.p4-flat.vmdk'), flat)
  writeFileSync(join(pdir, 'vm1.p4.vmdk'), '# Disk DescriptorFile\n')
  writeFileSync(join(pdir, 'vm1.p7-flat.vmdk.copying'), flat.subarray(0, MiB))
  writeFileSync(join(pdir, 'vm1.p9.vmdk'), '# Disk DescriptorFile\n')
  writeFileSync(join(pdir, 'vm1.p9-sesparse.vmdk'), Buffer.alloc(4096))
  writeFileSync(join(pdir, 'vm1.p4.vmdk.tmp-123-0badf00d'), 'x')
  // not the receiver's names: left alone
  writeFileSync(join(pdir, 'README.txt'), 'the operator notes')
  const logs: string[] = []
  const log = pino({ level: 'info' }, { write: (l: string) => logs.push(l) })
  const rep = await recoverStore(env.store, log)
  t.same(rep, [{ vm: VM, action: 'none' }])
  t.same(readdirSync(pdir).sort(), [...named, 'README.txt'].sort(), 'only the named files and the foreign one stay')
  t.equal(logs.filter((l) => l.includes('restore point file no state names removed')).length, 5, 'each removal logged')
  checkExact(t, env, 'after the sweep')
  // the next cycles still read and prune through the kept files
  const c = await startChild(env, { args: args(env) })
  t.teardown(() => {
    c.child.kill('SIGKILL')
  })
  const a = await Agent.connect(c.url, { token: TOKEN, ca: env.tls.ca })
  t.equal((await runCycle(a, VM, 5, [plan(5)])).committed?.cycle, 5)
  a.close()
  await a.whenClosed()
  checkExact(t, env, 'after one more cycle')
})
