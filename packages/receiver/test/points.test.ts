import t from 'tap'
import type { Test } from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { execFileSync } from 'node:child_process'
import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { pino } from 'pino'
import { openWriter } from '@grainline/vmdk'
import { MessageKind, createDigest } from '@grainline/protocol'
import { Agent, MiB, TOKEN, evolve, hello, incPlan, type DiskPlan, makeEnv, runCycle, seedPlan, startChild, startReceiver, pattern, vmOpen, whenFree } from './helpers.ts'
import { closePoint, listHolds, listPoints, openPoint, prunePoints, recoverStore, restorePoint, storeHealth, storeStatus, type VmStateFile } from '../src/index.ts'
import { DISPLAY_MARK_KEY, markedDisplayName, markVmx } from '../src/mirror-vmx.ts'
import { MERGE_PROGRESS_MS, dropPoints, pointBytes, rollForwardPoints } from '../src/points.ts'
import { VmPaths } from '../src/vm-paths.ts'

/** qemu-img's reading of a descriptor (and its chain) as raw bytes. */
function qemuRead(dir: string, desc: string): Buffer {
  const out = join(dir, `read-${Math.random().toString(16).slice(2)}.raw`)
  execFileSync('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', desc, out])
  return readFileSync(out)
}

/** Every point of disk d.vmdk reads (qemu-img) as the image of its cycle, at its own size, and the mirror as the newest image. */
function pointsExact(t: Test, env: { dir: string; store: string }, vm: string, images: readonly Buffer[], what: string): void {
  const pdir = join(env.store, vm, '.grainline', 'points')
  for (const p of state(env.store, vm).points ?? []) {
    const file = p.disks['d.vmdk']?.file
    if (file !== undefined) t.ok(qemuRead(env.dir, join(pdir, file)).equals(images[p.cycle] as Buffer), `${what}: point ${p.cycle} reads (qemu-img) as cycle ${p.cycle}`)
  }
  t.ok(qemuRead(env.dir, join(env.store, vm, 'd.vmdk')).equals(images[images.length - 1] as Buffer), `${what}: mirror exact`)
}

function state(store: string, vm: string): VmStateFile {
  return JSON.parse(readFileSync(join(store, vm, '.grainline', 'state.json'), 'utf8')) as VmStateFile
}

/**
 * Date points 1, 2 and 3 of `vm` over the last days (UTC): 1 three days ago, 2 and 3 two days ago. A daily policy of 3
 * keeps the newest of each of the 3 newest days, so the next commit (a point today) drops point 2, a middle one.
 */
function spreadPointsOverDays(store: string, vm: string): void {
  const day = (back: number, hour: number): string => new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate() - back, hour)).toISOString()
  const st = state(store, vm)
  const at: Record<number, string> = { 1: day(3, 12), 2: day(2, 6), 3: day(2, 18) }
  writeFileSync(join(store, vm, '.grainline', 'state.json'), JSON.stringify({ ...st, points: (st.points ?? []).map((p) => ({ ...p, committedAt: at[p.cycle] ?? p.committedAt })) }))
}

/** Ranges of one incremental cycle: unaligned data, a zeroed range, a range over a former hole. */
function rangesFor(cycle: number, cap: number): Array<{ offset: number; length: number; zero?: boolean }> {
  const r = [
    { offset: ((cycle * 700_001) % (cap - 300_000)) & ~511, length: 131_072 + 512 * cycle },
    { offset: ((cycle * 1_300_003) % (cap - 70_000)) & ~511, length: 65_536, zero: cycle % 3 === 0 },
  ]
  return r.sort((a, b) => a.offset - b.offset).filter((x, i, a) => i === 0 || x.offset >= (a[i - 1] as { offset: number; length: number }).offset + (a[i - 1] as { length: number }).length)
}

/**
 * Seed disk d.vmdk of `vm` with `images[1]`, then run incremental cycles 2 to
 * `last`, each writing `rangesOf(c)` (evolve's seed `c * salt`) into
 * `images[c]`; `tag` is the two hex digits that make each cycle's id.
 */
async function pointCycles(
  env: { tls: { ca: Buffer } },
  url: string,
  vm: string,
  images: Buffer[],
  last: number,
  rangesOf: (c: number) => Array<{ offset: number; length: number; zero?: boolean }>,
  salt: number,
  tag: string,
  files?: ReadonlyArray<{ name: string; data: Uint8Array }>,
): Promise<void> {
  const opts = files === undefined ? {} : { files }
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', images[1] as Buffer, `${tag}01${tag}01${tag}01${tag}01`)], opts)
  a.close()
  for (let c = 2; c <= last; c++) {
    const ranges = rangesOf(c)
    images[c] = evolve(images[c - 1] as Buffer, c * salt, ranges)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const id = `${tag}0${c}`.repeat(4)
    await runCycle(a, vm, c, [incPlan(0, 'd.vmdk', images[c] as Buffer, c - 1, id, ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)], opts)
    a.close()
  }
}

t.test('every kept point reads (qemu-img) as the image of its cycle; retention drops the oldest', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 4 } })
  t.teardown(() => receiver.close())
  const cap = 4 * MiB
  const vm = 'web-pts1'
  const images: Buffer[] = [Buffer.alloc(0)]
  images[1] = Buffer.concat([pattern(MiB, 1), Buffer.alloc(2 * MiB), pattern(MiB, 2)])
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', images[1] as Buffer, 'cc01cc01cc01cc01')])
  a.close()
  t.same(state(env.store, vm).points ?? [], [], 'a seed makes no point')
  for (let c = 2; c <= 7; c++) {
    const ranges = rangesFor(c, cap)
    images[c] = evolve(images[c - 1] as Buffer, c * 17, ranges)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const r = await runCycle(a, vm, c, [incPlan(0, 'd.vmdk', images[c] as Buffer, c - 1, `cc0${c}cc0${c}cc0${c}cc0${c}`, ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)])
    if (c === 5) {
      a.send({
        kind: MessageKind.Certify,
        disk: 0,
        algorithm: 'md5',
        digest: createDigest('md5')
          .update(images[5] as Buffer)
          .digest(),
      })
      t.equal((await a.expect(MessageKind.CertifyResult)).ok, true, 'certify at cycle 5')
    }
    a.close()
    t.equal(r.committed?.cycle, c)
  }
  const s = state(env.store, vm)
  t.same(
    (s.points ?? []).map((p) => p.cycle),
    [3, 4, 5, 6],
    'keep 4: the newest four points, the oldest pruned',
  )
  const pdir = join(env.store, vm, '.grainline', 'points')
  const increments = (): string[] =>
    readdirSync(pdir)
      .filter((f) => !f.startsWith('config-'))
      .sort()
  t.same(increments(), ['d.p3-sesparse.vmdk', 'd.p3.vmdk', 'd.p4-sesparse.vmdk', 'd.p4.vmdk', 'd.p5-sesparse.vmdk', 'd.p5.vmdk', 'd.p6-sesparse.vmdk', 'd.p6.vmdk'], 'pruned increments deleted')
  t.same(
    readdirSync(pdir).filter((f) => f.startsWith('config-')),
    [s.points?.[0]?.config],
    'one configuration, shared by the four points (the .vmx never changed)',
  )
  t.ok(qemuRead(env.dir, join(env.store, vm, 'd.vmdk')).equals(images[7] as Buffer), 'mirror = cycle 7')
  for (const p of s.points ?? []) {
    const file = p.disks['d.vmdk']?.file as string
    t.ok(qemuRead(env.dir, join(pdir, file)).equals(images[p.cycle] as Buffer), `point ${p.cycle} reads as the image of cycle ${p.cycle}`)
    execFileSync('qemu-img', ['check', '-f', 'vmdk', join(pdir, file)])
    const bytes = p.disks['d.vmdk']?.bytes as number
    t.ok(bytes > 0 && bytes < 2 * MiB, `point ${p.cycle} takes ${bytes} bytes`)
  }
  const listed = await listPoints(env.store, vm)
  t.same(
    listed.points.map((p) => [p.cycle, p.current, p.disks[0]?.certify?.algorithm ?? null]),
    [
      [3, false, null],
      [4, false, null],
      [5, false, 'md5'],
      [6, false, null],
      [7, true, null],
    ],
    'listing: points oldest first, then the mirror; the certify of cycle 5 recorded with point 5',
  )
  const log = pino({ level: 'silent' })
  for (const k of [3, 5, 7]) {
    const to = join(env.dir, `restore-${k}`)
    const seen: number[] = []
    const r = await whenFree(() => restorePoint(env.store, vm, k, to, { logger: log, onProgress: (p) => seen.push(p.bytes) }))
    t.ok(readFileSync(join(to, 'd-flat.vmdk')).equals(images[k] as Buffer), `restore of point ${k} = image of cycle ${k}`)
    t.ok(qemuRead(env.dir, join(to, 'd.vmdk')).equals(images[k] as Buffer), `QEMU reads the restored descriptor of point ${k}`)
    t.match(readFileSync(join(to, 'd.vmdk'), 'utf8'), /createType="vmfs"/)
    t.match(readFileSync(join(to, `${vm}.vmx`), 'utf8'), new RegExp(`displayName = ".*\\(point ${k}\\)"`))
    t.equal(seen.at(-1), cap, 'progress reaches the total')
    t.equal(r.disks[0]?.verified, k === 5 ? 'certify' : 'none', `point ${k} verification`)
  }
  await t.rejects(
    whenFree(() => restorePoint(env.store, vm, 2, join(env.dir, 'restore-2'), { logger: log })),
    { code: 'E_NOT_FOUND' },
    'a pruned point',
  )
  // a damaged point is caught by the digest recorded at its cycle
  const ext = join(pdir, 'd.p5-sesparse.vmdk')
  const raw = readFileSync(ext)
  raw[raw.length - 100] = (raw[raw.length - 100] as number) ^ 0xff
  writeFileSync(ext, raw)
  await t.rejects(
    whenFree(() => restorePoint(env.store, vm, 5, join(env.dir, 'restore-5b'), { logger: log })),
    { code: 'E_VERIFY' },
    'damaged point 5 fails verification',
  )
  // a state.json whose point names a file outside .grainline/points (edited by hand, or an attacker): nothing outside is
  // removed or read; the operator gets E_STATE naming the file
  const victim = join(env.dir, 'victim.vmdk')
  writeFileSync(victim, 'not a point')
  const stateFile = join(env.store, vm, '.grainline', 'state.json')
  const saved = readFileSync(stateFile, 'utf8')
  const rel = relative(pdir, victim)
  const hostile = JSON.parse(saved) as { points: Array<{ cycle: number; disks: Record<string, { file: string }> }> }
  ;(hostile.points[0]?.disks['d.vmdk'] as { file: string }).file = rel
  writeFileSync(stateFile, JSON.stringify(hostile))
  await t.rejects(
    whenFree(() => restorePoint(env.store, vm, 3, join(env.dir, 'restore-hostile'), { logger: log })),
    { code: 'E_STATE', message: /not a file name of \.grainline\/points/ },
    `restore of a point named ${rel}`,
  )
  await t.rejects(
    whenFree(() => prunePoints(env.store, vm, { cycles: [3] }, { logger: log })),
    { code: 'E_STATE' },
    `drop of a point named ${rel}`,
  )
  t.equal(readFileSync(victim, 'utf8'), 'not a point', 'the file outside the store is untouched')
  writeFileSync(stateFile, saved)
  // prune on demand against a fake clock: points older than an hour at "now + 2 h" — all of them, but the
  // newest is the last restore point before the mirror and an age rule never drops it (retention.ts)
  const now = Date.parse(s.committedAt ?? '') + 2 * 3_600_000
  const pr = await whenFree(() => prunePoints(env.store, vm, { maxAgeMs: 3_600_000 }, { logger: log, now: () => now }))
  t.same(pr.dropped, [3, 4, 5])
  t.same(pr.kept, [6], 'the newest point stays')
  t.same(
    readdirSync(pdir).filter((f) => !f.startsWith('d.p6')),
    [state(env.store, vm).points?.[0]?.config],
    'every older increment removed (the configuration point 6 names stays)',
  )
  t.ok(qemuRead(env.dir, join(pdir, 'd.p6.vmdk')).equals(images[6] as Buffer), 'point 6 still reads as cycle 6')
  t.ok(qemuRead(env.dir, join(env.store, vm, 'd.vmdk')).equals(images[7] as Buffer), 'the mirror is never pruned')
})

t.test('a disk added after a point is not part of it: restore, open, list leave it out and disable it in the .vmx', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 5 } })
  t.teardown(() => receiver.close())
  const cap = 2 * MiB
  const vm = 'web-pts-add'
  const d: Buffer[] = [Buffer.alloc(0), pattern(cap, 31)]
  const e: Buffer[] = []
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', d[1] as Buffer, 'ad01ad01ad01ad01')])
  a.close()
  for (let c = 2; c <= 4; c++) {
    const ranges = rangesFor(c, cap)
    d[c] = evolve(d[c - 1] as Buffer, c * 3, ranges)
    const plans = [incPlan(0, 'd.vmdk', d[c] as Buffer, c - 1, `ad0${c}ad0${c}ad0${c}ad0${c}`, ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)]
    if (c === 3) {
      // the VM gets a second disk: cycle 3 seeds it
      e[3] = pattern(MiB, 33)
      plans.push(seedPlan(1, 'e.vmdk', e[3], 'ae03ae03ae03ae03'))
    } else if (c === 4) {
      const er = [{ offset: 65_536, length: 131_072 }]
      e[4] = evolve(e[3] as Buffer, 44, er)
      plans.push(incPlan(1, 'e.vmdk', e[4], 3, 'ae04ae04ae04ae04', er, 'e-000001.vmdk', 'e-000002.vmdk'))
    }
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const r = await runCycle(a, vm, c, plans)
    a.close()
    t.equal(r.committed?.cycle, c)
  }
  await receiver.close()
  t.same(
    (state(env.store, vm).points ?? []).map((p) => p.cycle),
    [1, 2, 3],
    'points 1 to 3 kept (a new disk breaks no point)',
  )
  const listed = await listPoints(env.store, vm)
  t.same(
    listed.points.map((p) => [p.cycle, p.disks.map((x) => x.name)]),
    [
      [1, ['d.vmdk']],
      [2, ['d.vmdk']],
      [3, ['d.vmdk', 'e.vmdk']],
      [4, ['d.vmdk', 'e.vmdk']],
    ],
    'a point lists only the disks the VM had at its cycle',
  )
  const log = pino({ level: 'silent' })
  const to2 = join(env.dir, 'restore-2')
  const r2 = await restorePoint(env.store, vm, 2, to2, { logger: log })
  t.same(
    r2.disks.map((x) => x.name),
    ['d.vmdk'],
    'point 2 restores one disk',
  )
  t.ok(readFileSync(join(to2, 'd-flat.vmdk')).equals(d[2] as Buffer), 'disk d at point 2')
  t.notOk(existsSync(join(to2, 'e-flat.vmdk')), 'no flat of the disk added at cycle 3 (it would hold cycle 4 data)')
  const vmx2 = readFileSync(join(to2, `${vm}.vmx`), 'utf8')
  t.match(vmx2, /scsi0:0\.fileName = "d\.vmdk"/, 'disk d attached')
  t.notMatch(vmx2, /scsi0:1/, "point 2's own .vmx (point-config.ts) knows no second disk")
  const to3 = join(env.dir, 'restore-3')
  const r3 = await restorePoint(env.store, vm, 3, to3, { logger: log })
  t.same(
    r3.disks.map((x) => x.name),
    ['d.vmdk', 'e.vmdk'],
    'point 3 restores both disks',
  )
  t.ok(readFileSync(join(to3, 'e-flat.vmdk')).equals(e[3] as Buffer), 'disk e at point 3 = its seed')
  t.notMatch(readFileSync(join(to3, `${vm}.vmx`), 'utf8'), /present = "FALSE"/, 'nothing disabled at point 3')
  const dir2 = join(env.dir, 'open-2')
  const o = await openPoint(env.store, vm, 2, dir2, { logger: log })
  t.same(
    o.disks.map((x) => relative(dir2, x)),
    ['d.vmdk'],
    'opening point 2 makes one child',
  )
  t.ok(qemuRead(env.dir, join(dir2, 'd.vmdk')).equals(d[2] as Buffer), 'QEMU reads d at point 2 through the child')
  t.notMatch(readFileSync(o.vmx, 'utf8'), /scsi0:1/, 'the opened .vmx has no second disk either')
  t.same(
    (await closePoint(env.store, vm, { logger: log, dir: dir2 })).map((h) => h.cycle),
    [2],
    'closed',
  )
  // points recorded before configurations were kept: the mirror's .vmx, the later disk disabled
  const st = state(env.store, vm)
  writeFileSync(join(env.store, vm, '.grainline', 'state.json'), JSON.stringify({ ...st, points: (st.points ?? []).map(({ config: _c, ...p }) => p) }))
  const to2l = join(env.dir, 'restore-2-legacy')
  await restorePoint(env.store, vm, 2, to2l, { logger: log })
  t.match(readFileSync(join(to2l, `${vm}.vmx`), 'utf8'), /scsi0:1\.present = "FALSE"/, "a legacy point: the later disk is disabled in the mirror's .vmx")
})

t.test('a point boots with its own .vmx: a disk removed since is attached again, unused configurations go, hostile ones are refused', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 5 } })
  t.teardown(() => receiver.close())
  const cap = 2 * MiB
  const vm = 'web-pts-cfg'
  const d: Buffer[] = [Buffer.alloc(0), pattern(cap, 51)]
  const e: Buffer[] = [Buffer.alloc(0), pattern(MiB, 53)]
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', d[1] as Buffer, 'cf01cf01cf01cf01'), seedPlan(1, 'e.vmdk', e[1] as Buffer, 'ce01ce01ce01ce01')])
  a.close()
  const pointsDir = join(env.store, vm, '.grainline', 'points')
  for (let c = 2; c <= 4; c++) {
    const ranges = rangesFor(c, cap)
    d[c] = evolve(d[c - 1] as Buffer, c * 5, ranges)
    const plans = [incPlan(0, 'd.vmdk', d[c] as Buffer, c - 1, `cf0${c}cf0${c}cf0${c}cf0${c}`, ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)]
    if (c === 2) {
      const er = [{ offset: 65_536, length: 131_072 }]
      e[2] = evolve(e[1] as Buffer, 22, er)
      plans.push(incPlan(1, 'e.vmdk', e[2], 1, 'ce02ce02ce02ce02', er, 'e-000001.vmdk', 'e-000002.vmdk'))
    }
    // from cycle 3 the VM has disk d only (e was removed from it)
    if (c === 4) writeFileSync(join(pointsDir, `config-${'ab'.repeat(16)}.vmx`), 'left by a crash before its state named it')
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const r = await runCycle(a, vm, c, plans)
    a.close()
    t.equal(r.committed?.cycle, c)
  }
  await receiver.close()
  const log = pino({ level: 'silent' })
  const pts = state(env.store, vm).points ?? []
  t.same(
    pts.map((p) => p.cycle),
    [1, 2, 3],
    'points 1 to 3',
  )
  const configs = (): string[] =>
    readdirSync(pointsDir)
      .filter((f) => f.startsWith('config-'))
      .sort()
  t.same(configs(), [...new Set(pts.map((p) => p.config))].sort(), 'the folder holds exactly the configurations the points name (a stray one removed at the next commit)')
  t.equal(pts[0]?.config, pts[1]?.config, 'points 1 and 2 share one configuration file (same .vmx)')
  t.not(pts[1]?.config, pts[2]?.config, 'point 3 has its own')
  const to2 = join(env.dir, 'restore-2')
  const r2 = await restorePoint(env.store, vm, 2, to2, { logger: log })
  t.same(
    r2.disks.map((x) => x.name),
    ['d.vmdk', 'e.vmdk'],
    'point 2 restores both disks',
  )
  t.ok(readFileSync(join(to2, 'e-flat.vmdk')).equals(e[2] as Buffer), 'disk e at point 2')
  const vmx2 = readFileSync(join(to2, `${vm}.vmx`), 'utf8')
  t.match(vmx2, /scsi0:1\.fileName = "e\.vmdk"/, "the removed disk is attached in point 2 (the mirror's .vmx no longer names it)")
  t.notMatch(readFileSync(join(env.store, vm, `${vm}.vmx`), 'utf8'), /e\.vmdk/, "the mirror's .vmx: disk d only")
  const dir2 = join(env.dir, 'open-2')
  const o = await openPoint(env.store, vm, 2, dir2, { logger: log })
  t.match(readFileSync(o.vmx, 'utf8'), /scsi0:1\.fileName = "e\.vmdk"/, 'the opened point attaches it too')
  t.ok(qemuRead(env.dir, join(dir2, 'e.vmdk')).equals(e[2] as Buffer), 'QEMU reads e at point 2 through the child')
  await closePoint(env.store, vm, { logger: log, dir: dir2 })
  const to3 = join(env.dir, 'restore-3')
  await restorePoint(env.store, vm, 3, to3, { logger: log })
  t.notMatch(readFileSync(join(to3, `${vm}.vmx`), 'utf8'), /scsi0:1/, 'point 3: the VM had disk d only')
  // unused configurations go with their points
  await whenFree(() => prunePoints(env.store, vm, { cycles: [1, 2] }, { logger: log }))
  t.same(configs(), [pts[2]?.config], "the dropped points' configuration removed, point 3's kept")
  // a hand-edited state: a configuration named outside the store is refused before anything is read
  const st = state(env.store, vm)
  const stFile = join(env.store, vm, '.grainline', 'state.json')
  writeFileSync(stFile, JSON.stringify({ ...st, points: (st.points ?? []).map((p) => ({ ...p, config: '../../../state.json' })) }))
  await t.rejects(restorePoint(env.store, vm, 3, join(env.dir, 'restore-3h'), { logger: log }), { code: 'E_STATE' }, 'a configuration name with a path: E_STATE')
  writeFileSync(stFile, JSON.stringify(st))
  // a link in place of the file: a typed error, never a file from outside the store
  const cfg = join(pointsDir, st.points?.[0]?.config as string)
  rmSync(cfg)
  writeFileSync(join(env.dir, 'outside.vmx'), 'displayName = "outside"\n')
  symlinkSync(join(env.dir, 'outside.vmx'), cfg)
  await t.rejects(restorePoint(env.store, vm, 3, join(env.dir, 'restore-3l'), { logger: log }), { code: 'E_STORE_FILE' }, 'a link as the configuration: E_STORE_FILE')
  // gone: the mirror's .vmx is used (logged), the restore still happens
  rmSync(cfg)
  const to3m = join(env.dir, 'restore-3m')
  await restorePoint(env.store, vm, 3, to3m, { logger: log })
  t.match(readFileSync(join(to3m, `${vm}.vmx`), 'utf8'), /scsi0:0\.fileName = "d\.vmdk"/, "a missing configuration: restored with the mirror's .vmx")
})

t.test('a rollback undoes from the increment and removes it; a re-seed keeps the points (the old mirror becomes a base point)', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env, { retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const cap = 2 * MiB
  const vm = 'web-pts2'
  const img1 = pattern(cap, 5)
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', img1, 'dd01dd01dd01dd01')])
  a.close()
  const ranges = [{ offset: 4096, length: MiB }]
  const img2 = evolve(img1, 3, ranges)
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 2, [incPlan(0, 'd.vmdk', img2, 1, 'dd02dd02dd02dd02', ranges, 'd-000001.vmdk', 'd-000002.vmdk', 64 * 1024)], { commit: false })
  a.close()
  const flat = join(env.store, vm, 'd-flat.vmdk')
  const pdir = join(env.store, vm, '.grainline', 'points')
  t.ok(readFileSync(flat).equals(img2), 'applied, not committed')
  t.ok(existsSync(join(pdir, 'd.p1.vmdk')), 'in-flight increment')
  // cycle 2 shipped again from another snapshot (another identity): the first one is rolled back
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const img3 = evolve(img1, 4, ranges)
  await runCycle(a, vm, 2, [incPlan(0, 'd.vmdk', img3, 1, 'dd03dd03dd03dd03', ranges, 'd-000001.vmdk', 'd-000002.vmdk')], { rollbackFirst: true })
  a.close()
  t.ok(readFileSync(flat).equals(img3), 'rolled back, then cycle 2 applied again')
  t.same(
    (state(env.store, vm).points ?? []).map((p) => p.cycle),
    [1],
  )
  t.ok(qemuRead(env.dir, join(pdir, 'd.p1.vmdk')).equals(img1), 'point 1 after a rollback and a new cycle')

  // a re-seed of the disk (cycle 3): the old mirror, as committed at cycle 2, is kept whole as point 2
  t.notOk(img2.equals(img3), 'the rolled-back cycle 2 is not the committed one')
  const images: Buffer[] = [Buffer.alloc(0), img1, img3, pattern(cap, 9)]
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 3, [seedPlan(0, 'd.vmdk', images[3] as Buffer, 'dd04dd04dd04dd04')])
  a.close()
  let s = state(env.store, vm)
  t.same(
    (s.points ?? []).map((p) => p.cycle),
    [1, 2],
    'the older point stays, the old mirror is point 2',
  )
  t.match(s.points?.[1]?.disks['d.vmdk'], { file: 'd.p2.vmdk', base: true })
  t.same(
    readdirSync(pdir)
      .filter((f) => !f.startsWith('config-'))
      .sort(),
    ['d.p1-sesparse.vmdk', 'd.p1.vmdk', 'd.p2-flat.vmdk', 'd.p2.vmdk'],
  )
  t.notOk(
    logs.lines.some((l) => l['msg'] === 'restore points dropped'),
    'nothing dropped',
  )
  t.ok(
    logs.lines.some((l) => String(l['msg']).startsWith('disk re-seeded: its old mirror is kept whole')),
    'the base point is logged',
  )
  const exact = (what: string): void => pointsExact(t, env, vm, images, what)
  exact('after the re-seed')

  // cycles 4 and 5 in place over the new mirror: points 3 and 4 chain onto it, not onto the base
  for (let c = 4; c <= 5; c++) {
    const r = rangesFor(c, cap)
    images[c] = evolve(images[c - 1] as Buffer, c * 7, r)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, c, [incPlan(0, 'd.vmdk', images[c] as Buffer, c - 1, `dd0${c}dd0${c}dd0${c}dd0${c}`, r, `d-00000${c - 3}.vmdk`, `d-00000${c - 2}.vmdk`)])
    a.close()
  }
  s = state(env.store, vm)
  t.same(
    (s.points ?? []).map((p) => p.cycle),
    [1, 2, 3, 4],
  )
  exact('after two more cycles')
  await receiver.close()
  const log = pino({ level: 'silent' })
  // a restore reads through the base point and verifies
  const to1 = join(env.dir, 'restore-1')
  await whenFree(() => restorePoint(env.store, vm, 1, to1, { logger: log }))
  t.ok(readFileSync(join(to1, 'd-flat.vmdk')).equals(img1), 'restore of point 1 (through the base point) exact')
  // dropping the point just newer than the base: nothing older reads through it, it goes whole
  await whenFree(() => prunePoints(env.store, vm, { cycles: [3] }, { logger: log }))
  exact('after dropping point 3')
  t.notOk(existsSync(join(pdir, 'd.p3.vmdk')), 'point 3 files removed, not merged into the base')
  // dropping the base: the older increment is merged into it, which then holds point 1 and stays whole
  await whenFree(() => prunePoints(env.store, vm, { cycles: [2] }, { logger: log }))
  s = state(env.store, vm)
  t.same(
    (s.points ?? []).map((p) => p.cycle),
    [1, 4],
  )
  t.match(s.points?.[0]?.disks['d.vmdk'], { file: 'd.p2.vmdk', base: true })
  exact('after dropping the base point')
  t.same(
    readdirSync(pdir)
      .filter((f) => !f.startsWith('config-'))
      .sort(),
    ['d.p2-flat.vmdk', 'd.p2.vmdk', 'd.p4-sesparse.vmdk', 'd.p4.vmdk'],
  )
  // the oldest point dropped: the base goes with it
  await whenFree(() => prunePoints(env.store, vm, { cycles: [1] }, { logger: log }))
  t.same(
    readdirSync(pdir)
      .filter((f) => !f.startsWith('config-'))
      .sort(),
    ['d.p4-sesparse.vmdk', 'd.p4.vmdk'],
  )
  exact('after dropping the oldest point')
})

t.test('a capacity change keeps the points: the mirror is copied into a base point before the in-place apply; a rollback removes it', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env, { retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const cap = 2 * MiB
  const vm = 'web-pts-grow'
  const pdir = join(env.store, vm, '.grainline', 'points')
  const images: Buffer[] = [Buffer.alloc(0), pattern(cap, 12)]
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', images[1] as Buffer, 'dc01dc01dc01dc01')])
  a.close()
  const inc = (c: number, img: Buffer, r: Array<{ offset: number; length: number }>, id = `dc0${c}dc0${c}dc0${c}dc0${c}`) =>
    incPlan(0, 'd.vmdk', img, c - 1, id, r, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)
  for (let c = 2; c <= 3; c++) {
    const r = rangesFor(c, cap)
    images[c] = evolve(images[c - 1] as Buffer, c * 5, r)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, c, [inc(c, images[c] as Buffer, r)])
    a.close()
  }
  // cycle 4 grows the disk to 3 MiB and writes into the old and the new part
  const grown = Buffer.concat([images[3] as Buffer, Buffer.alloc(MiB)])
  const r4 = [
    { offset: 65_536, length: 131_072 },
    { offset: cap + 4096, length: 262_144 },
  ]
  // a seed's base descriptor left by a commit that failed before its commit point (no flat beside it): not taken for a copy
  writeFileSync(join(pdir, 'd.p3.vmdk'), readFileSync(join(env.store, vm, 'd.vmdk'), 'utf8').replace('"d-flat.vmdk"', '"d.p3-flat.vmdk"'))
  // first an attempt that is rolled back: its base copy goes with it
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 4, [inc(4, evolve(grown, 99, r4), r4, 'dcf4dcf4dcf4dcf4')], { commit: false })
  a.close()
  t.ok(existsSync(join(pdir, 'd.p3-flat.vmdk')), 'the base copy is made before the apply')
  images[4] = evolve(grown, 44, r4)
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 4, [inc(4, images[4] as Buffer, r4)], { rollbackFirst: true })
  a.close()
  const s = state(env.store, vm)
  t.same(
    (s.points ?? []).map((p) => p.cycle),
    [1, 2, 3],
    'no point dropped',
  )
  t.match(s.points?.[2]?.disks['d.vmdk'], { file: 'd.p3.vmdk', base: true, capacity: cap })
  t.same(
    (await listPoints(env.store, vm)).points.map((p) => [p.cycle, p.disks[0]?.base ?? false]),
    [
      [1, false],
      [2, false],
      [3, true],
      [4, false],
    ],
    'the listing marks the base point',
  )
  t.notOk(
    logs.lines.some((l) => l['msg'] === 'restore points dropped'),
    'nothing dropped',
  )
  const exact = (what: string): void => pointsExact(t, env, vm, images, what)
  exact('after the capacity change')
  // one more cycle on the grown disk: its increment chains onto the mirror, the base stays whole
  const r5 = [{ offset: cap + 8192, length: 65_536 }]
  images[5] = evolve(images[4] as Buffer, 55, r5)
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 5, [inc(5, images[5] as Buffer, r5)])
  a.close()
  exact('after one more cycle')
  await receiver.close()
  const log = pino({ level: 'silent' })
  const to2 = join(env.dir, 'restore-2')
  const restored = await whenFree(() => restorePoint(env.store, vm, 2, to2, { logger: log }))
  t.ok(readFileSync(join(to2, 'd-flat.vmdk')).equals(images[2] as Buffer), 'restore of point 2 exact, at the old size')
  t.match(readFileSync(join(to2, 'd.vmdk'), 'utf8'), new RegExp(`RW ${cap / 512} VMFS`), 'its descriptor has the old capacity')
  t.equal(restored.disks[0]?.capacity, cap)
})

t.test("a capacity change's base copy is told to a version 3 agent as DiskProgress before the DiskState (SPEC §5.1); a version 2 agent hears none", async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env, { retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const vm = 'web-pts-progress'
  const images: Buffer[] = [Buffer.alloc(0), pattern(2 * MiB, 21)]
  const cycle = async (c: number, plan: Parameters<typeof runCycle>[3][number], versions: number[]) => {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const r = await runCycle(a, vm, c, [plan], { versions })
    a.close()
    t.ok(r.committed !== undefined, `cycle ${c} committed`)
    return r.progress
  }
  t.same(await cycle(1, seedPlan(0, 'd.vmdk', images[1] as Buffer, 'de01de01de01de01'), [3, 2]), [], 'a seed copies nothing: no progress')
  const inc = (c: number, img: Buffer, r: Array<{ offset: number; length: number }>) => incPlan(0, 'd.vmdk', img, c - 1, `de0${c}de0${c}de0${c}de0${c}`, r, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)
  const r2 = [{ offset: 65_536, length: 65_536 }]
  images[2] = evolve(images[1] as Buffer, 22, r2)
  t.same(await cycle(2, inc(2, images[2] as Buffer, r2), [3, 2]), [], 'an incremental at the same capacity copies nothing: no progress')
  // cycle 3 grows the disk to 3 MiB over a version 3 connection: the 2 MiB mirror is copied first
  const r3 = [{ offset: 2 * MiB + 4096, length: 131_072 }]
  images[3] = evolve(Buffer.concat([images[2] as Buffer, Buffer.alloc(MiB)]), 33, r3)
  const p3 = await cycle(3, inc(3, images[3] as Buffer, r3), [3, 2])
  t.ok(p3.length >= 2, `${p3.length} DiskProgress frames`)
  t.match(p3[0], { kind: MessageKind.DiskProgress, disk: 0, step: 'base-copy', doneBytes: 0, totalBytes: 2 * MiB }, 'the first one when the copy starts')
  t.match(p3[p3.length - 1], { disk: 0, step: 'base-copy', doneBytes: 2 * MiB, totalBytes: 2 * MiB }, 'the last one when it is durable')
  t.ok(
    p3.every((p, i) => i === 0 || p.doneBytes >= (p3[i - 1] as { doneBytes: number }).doneBytes),
    'never backwards',
  )
  t.ok(
    logs.lines.some((l) => l['msg'] === 'base copy of the mirror done' && l['disk'] === 'd.vmdk' && l['totalBytes'] === 2 * MiB),
    'the receiver logs the copy with its size',
  )
  // cycle 4 grows it again over a version 2 connection: the same copy, silent on the wire
  const r4 = [{ offset: 3 * MiB + 8192, length: 65_536 }]
  images[4] = evolve(Buffer.concat([images[3] as Buffer, Buffer.alloc(MiB)]), 44, r4)
  t.same(await cycle(4, inc(4, images[4] as Buffer, r4), [2]), [], 'version 2: no DiskProgress')
  t.same(
    (state(env.store, vm).points ?? []).map((p) => [p.cycle, p.disks['d.vmdk']?.base ?? false]),
    [
      [1, false],
      [2, true],
      [3, true],
    ],
    'both copies became base points',
  )
  pointsExact(t, env, vm, images, 'after two capacity changes')
})

t.test("the merges of the points a commit's retention drops are told to a version 4 agent as CommitProgress before the Committed (SPEC §5.5); a version 3 agent hears none", async (t) => {
  const env = makeEnv(scratchDir(t))
  const cap = 3 * MiB
  const vm = 'web-pts-merge'
  const images: Buffer[] = [Buffer.alloc(0), pattern(cap, 51)]
  const cycle = async (url: string, c: number, versions: number[]) => {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const plan =
      c === 1
        ? seedPlan(0, 'd.vmdk', images[1] as Buffer, 'ab01ab01ab01ab01')
        : (() => {
            const ranges = rangesFor(c, cap)
            images[c] = evolve(images[c - 1] as Buffer, c * 17, ranges)
            return incPlan(0, 'd.vmdk', images[c] as Buffer, c - 1, `ab0${c}ab0${c}ab0${c}ab0${c}`, ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)
          })()
    const r = await runCycle(a, vm, c, [plan], { versions })
    a.close()
    t.ok(r.committed !== undefined, `cycle ${c} committed`)
    return r
  }
  // points 1, 2 and 3 (cycles up to 4), kept by count
  const first = await startReceiver(env, { retention: { keep: 10 } })
  for (let c = 1; c <= 4; c++) t.same((await cycle(first.url, c, [4, 3, 2])).commitProgress, [], `cycle ${c}: nothing dropped, nothing merged, no progress`)
  await first.receiver.close()
  // the commit of cycle 5 (point 4, today) drops point 2, a middle one: point 1's increment is merged into point 2's file
  spreadPointsOverDays(env.store, vm)
  const { receiver, url, logs } = await startReceiver(env, { retention: { gfs: { daily: 3 } } })
  t.teardown(() => receiver.close())
  const p5 = (await cycle(url, 5, [4, 3, 2])).commitProgress
  t.same(
    (state(env.store, vm).points ?? []).map((p) => p.cycle),
    [1, 3, 4],
    'point 2 dropped',
  )
  t.ok(p5.length >= 2, `${p5.length} CommitProgress frames`)
  const total = p5[0]?.totalBytes ?? 0
  t.ok(total > 0, `the merge announced: ${total} bytes of point 1's increment`)
  t.match(p5[0], { kind: MessageKind.CommitProgress, vm, cycle: 5, step: 'merge-points', doneBytes: 0 }, 'the first one when the merges start')
  t.match(p5[p5.length - 1], { vm, cycle: 5, step: 'merge-points', doneBytes: total, totalBytes: total }, 'the last one when they are durable')
  t.ok(
    p5.every((p, i) => p.totalBytes === total && (i === 0 || p.doneBytes >= (p5[i - 1] as { doneBytes: number }).doneBytes)),
    'one total, never backwards',
  )
  t.ok(
    logs.lines.some((l) => l['msg'] === 'restore points merged' && l['vm'] === vm && l['cycle'] === 5 && l['totalBytes'] === total),
    'the receiver logs the merges with their size',
  )
  // cycle 6 (point 5, today) drops point 4 the same way (point 3's increment merged into it), over version 3: silent
  t.same((await cycle(url, 6, [3, 2])).commitProgress, [], 'version 3: no CommitProgress')
  t.same(
    (state(env.store, vm).points ?? []).map((p) => p.cycle),
    [1, 3, 5],
    'point 4 dropped',
  )
  pointsExact(t, env, vm, images, 'after the merges')
})

t.test(
  "a commit a crash interrupted is finished at the next VmOpen and a Rollback's undo runs, each told to a version 5 agent as VmProgress before the answer (SPEC §4.2, §4.3); a version 4 agent hears none",
  async (t) => {
    const env = makeEnv(scratchDir(t))
    const cap = 3 * MiB
    const vm = 'web-pts-vmprog'
    const images: Buffer[] = [Buffer.alloc(0), pattern(cap, 61)]
    // cycle c on the mirror of cycle `base`, its content and identity those of `try` (cycle 6 is shipped three times:
    // tries 6 and 7 are rolled back, try 8 commits; each builds on 5)
    const planOf = (c: number, base: number, v: number) => {
      if (c === 1) return seedPlan(0, 'd.vmdk', images[1] as Buffer, 'ac01ac01ac01ac01')
      const ranges = rangesFor(v, cap)
      images[c] = evolve(images[base] as Buffer, v * 19, ranges)
      return incPlan(0, 'd.vmdk', images[c] as Buffer, base, `ac0${v}ac0${v}ac0${v}ac0${v}`, ranges, `d-00000${base}.vmdk`, `d-00000${c}.vmdk`)
    }
    const cycle = async (url: string, c: number, versions: number[], opts: { commit?: boolean; rollbackFirst?: boolean } = {}, v = c) => {
      const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      try {
        return await runCycle(a, vm, c, [planOf(c, Math.min(c - 1, 5), v)], { versions, ...opts })
      } finally {
        a.close()
      }
    }
    const first = await startReceiver(env, { retention: { keep: 10 } })
    for (let c = 1; c <= 4; c++) t.same((await cycle(first.url, c, [5, 4, 3, 2])).vmProgress, [], `cycle ${c}: nothing to finish, nothing to undo, no VmProgress`)
    await first.receiver.close()
    // a daily policy of 3 will drop point 2 at the commit of cycle 5
    spreadPointsOverDays(env.store, vm)
    // cycle 5's commit: the receiver process dies once its state is durable, before it merges point 1's increment into point 2's file
    const cfg = join(env.dir, 'receiver.json')
    writeFileSync(cfg, JSON.stringify({ store: env.store, retention: { gfs: 'daily=3' } }))
    const crashing = await startChild(env, { fault: 'commit-after-state:1', args: ['--config', cfg] })
    await t.rejects(cycle(crashing.url, 5, [5, 4, 3, 2]), 'the receiver died in the commit')
    t.match(await crashing.exited, { signal: 'SIGKILL' })
    t.ok(state(env.store, vm).pending !== null, 'the commit is pending: its merges are not done')
    // the next receiver does no start-up recovery here (as on a store carried whole, or a prune killed under a running
    // receiver): the agent's VmOpen finishes the commit
    const { receiver, url, logs } = await startReceiver(env, { retention: { gfs: { daily: 3 } }, recover: false })
    t.teardown(() => receiver.close())
    const r6 = await cycle(url, 6, [5, 4, 3, 2], { commit: false })
    const open = r6.vmProgress
    t.ok(open.length >= 2, `${open.length} VmProgress frames before the VmState`)
    const total = open[0]?.totalBytes ?? 0
    t.ok(total > 0, `the merge announced: ${total} bytes of point 1's increment`)
    t.match(open[0], { kind: MessageKind.VmProgress, vm, step: 'merge-points', doneBytes: 0 }, 'the first one when the merges start')
    t.match(open[open.length - 1], { vm, step: 'merge-points', doneBytes: total, totalBytes: total }, 'the last one when they are durable')
    t.ok(
      open.every((p, i) => p.totalBytes === total && (i === 0 || p.doneBytes >= (open[i - 1] as { doneBytes: number }).doneBytes)),
      'one total, never backwards',
    )
    t.ok(
      logs.lines.some((l) => l['msg'] === 'interrupted commit or prune: restore points merged' && l['vm'] === vm && l['totalBytes'] === total),
      'the receiver logs the merges with their size',
    )
    t.same(
      (state(env.store, vm).points ?? []).map((p) => p.cycle),
      [1, 3, 4],
      'point 2 dropped, the commit of cycle 5 finished',
    )
    t.equal(state(env.store, vm).inflight?.cycle, 6, 'cycle 6 shipped and left in flight')
    // cycle 6 shipped again (another snapshot, another identity) rolls the first one back over version 5: its undo is
    // told before the RolledBack
    const r7 = await cycle(url, 6, [5, 4, 3, 2], { commit: false, rollbackFirst: true }, 7)
    const undo = r7.vmProgress
    t.ok(undo.length >= 2, `${undo.length} VmProgress frames before the RolledBack`)
    const undone = undo[0]?.totalBytes ?? 0
    t.ok(undone > 0, `the undo announced: ${undone} bytes written back`)
    t.match(undo[0], { kind: MessageKind.VmProgress, vm, step: 'undo', doneBytes: 0 }, 'the first one when the undo starts')
    t.match(undo[undo.length - 1], { vm, step: 'undo', doneBytes: undone, totalBytes: undone }, 'the last one when it is done')
    t.ok(
      logs.lines.some((l) => l['msg'] === 'in-flight cycle undone' && l['vm'] === vm && l['totalBytes'] === undone),
      'the receiver logs the undo with its size',
    )
    // and a third time over version 4: the same undo, silent on the wire
    const r8 = await cycle(url, 6, [4, 3, 2], { rollbackFirst: true }, 8)
    t.same(r8.vmProgress, [], 'version 4: no VmProgress')
    t.equal(r8.committed?.cycle, 6, 'cycle 6 committed after the rollback')
    t.ok(logs.lines.filter((l) => l['msg'] === 'in-flight cycle undone').length >= 2, 'both undos logged')
    t.same(
      (state(env.store, vm).points ?? []).map((p) => p.cycle),
      [1, 3, 5],
      'point 4 dropped at the commit of cycle 6 (one point a day)',
    )
    pointsExact(t, env, vm, images, 'after the finished commit and the undos')
  },
)

/** Bytes allocated under `dir` (every file's blocks), as the receiver counts a token's mirrors. */
function allocatedUnder(dir: string): number {
  let n = 0
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) n += statSync(join(e.parentPath, e.name)).blocks * 512
  }
  return n
}

t.test("a capacity change's base copy counts in the token's quota: E_QUOTA, nothing written, the points kept; within the quota it goes through", async (t) => {
  const env = makeEnv(scratchDir(t))
  const cap = 2 * MiB
  const vm = 'web-q-grow'
  const pdir = join(env.store, vm, '.grainline', 'points')
  const images: Buffer[] = [Buffer.alloc(0), pattern(cap, 21)]
  const inc = (c: number, img: Buffer, r: Array<{ offset: number; length: number }>) => incPlan(0, 'd.vmdk', img, c - 1, `de0${c}de0${c}de0${c}de0${c}`, r, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)
  {
    const { receiver, url } = await startReceiver(env, { retention: { keep: 10 } })
    t.teardown(() => receiver.close())
    let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', images[1] as Buffer, 'de01de01de01de01')])
    a.close()
    const r = rangesFor(2, cap)
    images[2] = evolve(images[1] as Buffer, 10, r)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 2, [inc(2, images[2] as Buffer, r)])
    a.close()
    await receiver.close()
  }
  // cycle 3 grows the disk by 1 MiB: the growth fits in the quota, the growth plus the copy of the 2 MiB mirror does not
  const used = allocatedUnder(join(env.store, vm))
  const quota = used + MiB + MiB / 2
  const tokens = (q: number): string => {
    const f = join(env.dir, `tokens-${q}.json`)
    writeFileSync(f, JSON.stringify({ tokens: [{ name: 'proxy-q', token: TOKEN, vms: ['web-*'], quota: q }] }))
    return f
  }
  const r3 = [{ offset: cap + 4096, length: 131_072 }]
  images[3] = evolve(Buffer.concat([images[2] as Buffer, Buffer.alloc(MiB)]), 30, r3)
  const before = readFileSync(join(env.store, vm, 'd-flat.vmdk'))
  {
    const { receiver, url, logs } = await startReceiver({ ...env, tokensFile: tokens(quota) }, { retention: { keep: 10 } })
    t.teardown(() => receiver.close())
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 3, [inc(3, images[3] as Buffer, r3)]).catch(() => {})
    t.same(await a.expectError(), { code: 'E_QUOTA', closeCode: 4508 }, `growth + copy > quota ${quota} (used ${used})`)
    a.close()
    await receiver.close()
    t.match(logs.text(), /disk d\.vmdk of VM web-q-grow changes capacity .*copies its mirror .*above its quota .*raise the quota/, 'the error names the VM, the disk, the copy and what to do')
  }
  const s = state(env.store, vm)
  t.equal(s.committedCycle, 2)
  t.equal(s.inflight, null, 'nothing in flight')
  t.same(
    (s.points ?? []).map((p) => p.cycle),
    [1],
    'the points kept',
  )
  t.ok(readFileSync(join(env.store, vm, 'd-flat.vmdk')).equals(before), 'the mirror untouched')
  t.same(
    readdirSync(pdir).filter((f) => f.startsWith('d.p2')),
    [],
    'no base copy made',
  )
  // with room for the copy in the quota, the same cycle keeps the points
  {
    const { receiver, url } = await startReceiver({ ...env, tokensFile: tokens(used + 4 * MiB) }, { retention: { keep: 10 } })
    t.teardown(() => receiver.close())
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    t.equal((await runCycle(a, vm, 3, [inc(3, images[3] as Buffer, r3)])).committed?.cycle, 3)
    a.close()
    await receiver.close()
  }
  t.match(state(env.store, vm).points?.[1]?.disks['d.vmdk'], { file: 'd.p2.vmdk', base: true, capacity: cap })
  pointsExact(t, env, vm, images, 'within the quota')
})

t.test('a re-seed over a mirror changed since its commit still drops the points, logged', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env, { retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const cap = 2 * MiB
  const vm = 'web-pts2b'
  const img1 = pattern(cap, 6)
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', img1, 'db01db01db01db01')])
  a.close()
  const ranges = [{ offset: 8192, length: MiB }]
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 2, [incPlan(0, 'd.vmdk', evolve(img1, 2, ranges), 1, 'db02db02db02db02', ranges, 'd-000001.vmdk', 'd-000002.vmdk')])
  a.close()
  t.same(
    (state(env.store, vm).points ?? []).map((p) => p.cycle),
    [1],
  )
  // someone grew the mirror behind the receiver's back: it is not the committed cycle 2 any more
  appendFileSync(join(env.store, vm, 'd-flat.vmdk'), Buffer.alloc(512, 1))
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const c3 = await runCycle(a, vm, 3, [seedPlan(0, 'd.vmdk', pattern(cap, 10), 'db03db03db03db03')], { versions: [6, 5, 4, 3, 2] })
  a.close()
  t.same(state(env.store, vm).points, [])
  // a version 6 agent hears it before the Committed (SPEC §5.5), as the state records it
  t.match(c3.pointsDropped, [{ kind: MessageKind.PointsDropped, vm, cycle: 3, count: 1, oldest: 1, newest: 1, broken: true, reason: /disk d\.vmdk was applied without a reverse increment/ }])
  t.equal(c3.committed?.cycle, 3, 'and the Committed follows')
  // the drop outlives the log: the state records it, and status says it for a week
  const dropped = state(env.store, vm).pointsDropped
  t.match(dropped, { cycle: 3, cycles: [1], broken: true, why: /disk d\.vmdk was applied without a reverse increment/ })
  t.ok(Math.abs(Date.parse(dropped?.at ?? '') - Date.now()) < 60_000, 'dated at the commit')
  const st = (await storeStatus(env.store)).vms.find((v) => v.vm === vm)
  t.same(st?.pointsDropped, dropped, 'in the status')
  t.same(st?.points, [])
  const health = (await storeHealth(env.store)).vms.find((v) => v.vm === vm)?.health
  t.equal(health?.state, 'WARNING')
  t.match(
    health?.problems.join('; '),
    /restore point 1 dropped by the commit of cycle 3 \d+ s ago: disk d\.vmdk was applied without a reverse increment.*; the VM can be restored to cycle 3 and later only/,
  )
  // a week later it is history: still in the state, no longer a warning
  t.equal(
    (await storeHealth(env.store, { now: Date.now() + 8 * 24 * 3600_000 })).vms.find((v) => v.vm === vm)?.health.problems.some((p) => p.includes('dropped')),
    false,
  )
  t.same(
    readdirSync(join(env.store, vm, '.grainline', 'points')).filter((f) => !f.startsWith('config-')),
    [],
  )
  t.ok(
    logs.lines.some((l) => l['msg'] === 'restore points dropped'),
    'the drop is logged with its reason',
  )
  t.ok(
    logs.lines.some((l) => String(l['msg']).startsWith('mirror changed since its last commit: it cannot be kept')),
    'and why the old mirror could not be kept',
  )
})

t.test('a commit that dropped the points, its Committed lost with the connection: the VmOpen of that cycle is told again on version 7, before the VmState (SPEC §4.2)', async (t) => {
  const env = makeEnv(scratchDir(t))
  let rx = await startReceiver(env, { retention: { keep: 10 } })
  const cap = 2 * MiB
  const vm = 'web-pts7'
  const img1 = pattern(cap, 16)
  let a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', img1, 'dc01dc01dc01dc01')])
  a.close()
  const ranges = [{ offset: 8192, length: MiB }]
  a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 2, [incPlan(0, 'd.vmdk', evolve(img1, 2, ranges), 1, 'dc02dc02dc02dc02', ranges, 'd-000001.vmdk', 'd-000002.vmdk')])
  a.close()
  // the mirror grown behind the receiver's back: the re-seed of cycle 3 drops point 1; this connection hears nothing (a
  // version 5 one here, standing for a Committed and its notice lost with the connection)
  appendFileSync(join(env.store, vm, 'd-flat.vmdk'), Buffer.alloc(512, 1))
  a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  const c3 = await runCycle(a, vm, 3, [seedPlan(0, 'd.vmdk', pattern(cap, 17), 'dc03dc03dc03dc03')], { versions: [5, 4, 3, 2] })
  a.close()
  t.same(c3.pointsDropped, [])
  t.match(state(env.store, vm).pointsDropped, { cycle: 3, cycles: [1], broken: true })
  // the agent reconnects and opens the cycle it sent the Commit of: the messages up to the VmState
  const reopen = async (cycle: number, versions: number[]): Promise<Array<Record<string, unknown>>> => {
    const b = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
    try {
      b.send(hello('sha256', 'none', versions))
      await b.expect(MessageKind.Welcome)
      b.send(vmOpen(vm, cycle, ['d-000001.vmdk']))
      const seen: Array<Record<string, unknown>> = []
      for (;;) {
        const m = await b.next()
        if (m === undefined) throw new Error(`closed ${JSON.stringify(b.closed)}`)
        seen.push(m as unknown as Record<string, unknown>)
        if (m.kind === MessageKind.VmState) return seen
      }
    } finally {
      b.close()
      await b.whenClosed()
    }
  }
  const v7 = [7, 6, 5, 4, 3, 2]
  const told = await reopen(3, v7)
  t.match(told, [
    { kind: MessageKind.PointsDropped, vm, cycle: 3, count: 1, oldest: 1, newest: 1, broken: true, reason: /disk d\.vmdk was applied without a reverse increment/ },
    { kind: MessageKind.VmState, vm, committedCycle: 3 },
  ])
  t.equal(told.length, 2, 'once')
  // a receiver restarted in between still tells it: the drop is in the VM's state, not in memory
  await rx.receiver.close()
  rx = await startReceiver(env, { retention: { keep: 10 } })
  t.teardown(() => rx.receiver.close())
  t.match(await reopen(3, v7), [
    { kind: MessageKind.PointsDropped, cycle: 3 },
    { kind: MessageKind.VmState, committedCycle: 3 },
  ])
  // version 6 is told only after a Commit; the next cycle's VmOpen is told nothing (that commit is not its own)
  t.match(await reopen(3, [6, 5, 4, 3, 2]), [{ kind: MessageKind.VmState, committedCycle: 3 }])
  t.equal((await reopen(3, [6, 5, 4, 3, 2])).length, 1)
  t.equal((await reopen(4, v7)).length, 1)
  // a later commit without a drop: its reopening is told nothing
  a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  const img3 = pattern(cap, 17)
  const r4 = [{ offset: 0, length: 65536 }]
  await runCycle(a, vm, 4, [incPlan(0, 'd.vmdk', evolve(img3, 4, r4), 3, 'dc04dc04dc04dc04', r4, 'd-000001.vmdk', 'd-000002.vmdk')], { versions: v7 })
  a.close()
  t.equal((await reopen(4, v7)).length, 1)
})

t.test('points turned off while a cycle is in flight: the commit drops them, recorded as chosen, told to a v6 agent and to no v5 one', async (t) => {
  const env = makeEnv(scratchDir(t))
  let rx = await startReceiver(env, { retention: { keep: 10 } })
  const cap = 2 * MiB
  const vm = 'web-ptsoff'
  const v6 = [6, 5, 4, 3, 2]
  let img = pattern(cap, 21)
  let a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  let c = await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', img, 'ab01ab01ab01ab01')], { versions: v6 })
  a.close()
  t.same(c.pointsDropped, [], 'a seed drops nothing')
  const plans: DiskPlan[] = []
  for (const cycle of [2, 3]) {
    const ranges = [{ offset: cycle * 65536, length: 65536 }]
    const next = evolve(img, cycle, ranges)
    plans[cycle] = incPlan(0, 'd.vmdk', next, cycle - 1, `ab0${cycle}ab0${cycle}ab0${cycle}ab0${cycle}`, ranges, `d-00000${cycle - 1}.vmdk`, `d-00000${cycle}.vmdk`)
    if (cycle === 3) break
    img = next
    a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
    c = await runCycle(a, vm, cycle, [plans[cycle] as DiskPlan], { versions: v6 })
    a.close()
    t.same(c.pointsDropped, [], 'an ordinary commit drops nothing')
  }
  t.same(
    (state(env.store, vm).points ?? []).map((p) => p.cycle),
    [1],
  )
  // cycle 3 starts with points on (its reverse increment written), then the receiver restarts with none
  a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 3, [plans[3] as DiskPlan], { versions: v6, commit: false })
  a.close()
  await rx.receiver.close()
  rx = await startReceiver(env)
  t.teardown(() => rx.receiver.close())
  a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  c = await runCycle(a, vm, 3, [plans[3] as DiskPlan], { versions: v6 })
  a.close()
  t.equal(c.committed?.cycle, 3)
  t.same(state(env.store, vm).points ?? [], [])
  t.match(state(env.store, vm).pointsDropped, { cycle: 3, cycles: [1], broken: false, why: /keeps no restore points any more/ })
  t.match(c.pointsDropped, [{ cycle: 3, count: 1, oldest: 1, newest: 1, broken: false, reason: /keeps no restore points any more/ }])
  // the operator's choice: no warning
  t.equal(
    (await storeHealth(env.store)).vms.find((v) => v.vm === vm)?.health.problems.some((p) => p.includes('dropped')),
    false,
  )
  t.ok(
    rx.logs.lines.some((l) => l['msg'] === 'restore points dropped' && /retention off/.test(String(l['why']))),
    'logged',
  )
  // a version 5 connection is told nothing (the kind is not part of it), and its commit goes through
  await rx.receiver.close()
  rx = await startReceiver(env, { retention: { keep: 10 } })
  for (const cycle of [4, 5]) {
    const ranges = [{ offset: cycle * 65536, length: 65536 }]
    img = evolve(img, cycle, ranges)
    a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
    c = await runCycle(a, vm, cycle, [incPlan(0, 'd.vmdk', img, cycle - 1, `ab0${cycle}ab0${cycle}ab0${cycle}ab0${cycle}`, ranges, `d-00000${cycle - 1}.vmdk`, `d-00000${cycle}.vmdk`)], {
      versions: [5, 4, 3, 2],
    })
    a.close()
  }
  t.same(
    (state(env.store, vm).points ?? []).map((p) => p.cycle),
    [3, 4],
  )
  await rx.receiver.close()
  rx = await startReceiver(env)
  a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  img = evolve(img, 6, [{ offset: 0, length: 65536 }])
  c = await runCycle(a, vm, 6, [incPlan(0, 'd.vmdk', img, 5, 'ab06ab06ab06ab06', [{ offset: 0, length: 65536 }], 'd-000005.vmdk', 'd-000006.vmdk')], { versions: [5, 4, 3, 2] })
  a.close()
  t.equal(c.committed?.cycle, 6)
  t.same(c.pointsDropped, [], 'nothing on version 5')
  t.match(state(env.store, vm).pointsDropped, { cycle: 6, cycles: [3, 4], broken: false, why: /keeps no restore points any more/ }, 'recorded all the same, as chosen')
})

t.test('dropping middle points merges increments: every kept point stays exact (explicit drop, then GFS on a fake clock)', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const cap = 3 * MiB
  const vm = 'web-pts3'
  const images: Buffer[] = [Buffer.alloc(0), pattern(cap, 11)]
  await pointCycles(env, url, vm, images, 7, (c) => rangesFor(c, cap), 31, 'ee')
  await receiver.close()
  const log = pino({ level: 'silent' })
  const pdir = join(env.store, vm, '.grainline', 'points')
  const exact = (what: string): void => {
    const s = state(env.store, vm)
    for (const p of s.points ?? []) {
      t.ok(qemuRead(env.dir, join(pdir, p.disks['d.vmdk']?.file as string)).equals(images[p.cycle] as Buffer), `${what}: point ${p.cycle} exact`)
    }
    t.ok(qemuRead(env.dir, join(env.store, vm, 'd.vmdk')).equals(images[7] as Buffer), `${what}: mirror exact`)
  }
  const r = await whenFree(() => prunePoints(env.store, vm, { cycles: [3] }, { logger: log }))
  t.same(r.kept, [1, 2, 4, 5, 6])
  t.equal(state(env.store, vm).points?.find((p) => p.cycle === 2)?.disks['d.vmdk']?.file, 'd.p3.vmdk', 'point 2 lives in the merged file')
  exact('after dropping point 3')
  await t.rejects(
    whenFree(() => prunePoints(env.store, vm, { cycles: [3] }, { logger: log })),
    { code: 'E_NOT_FOUND' },
  )
  // GFS against a fake clock: spread the points over two weeks
  const sf = join(env.store, vm, '.grainline', 'state.json')
  const st = state(env.store, vm)
  const days: Record<number, string> = { 1: '2026-01-05', 2: '2026-01-06', 4: '2026-01-12', 5: '2026-01-13', 6: '2026-01-14' }
  writeFileSync(sf, JSON.stringify({ ...st, points: (st.points ?? []).map((p) => ({ ...p, committedAt: `${days[p.cycle] ?? ''}T12:00:00Z` })) }))
  const g = await whenFree(() => prunePoints(env.store, vm, { gfs: { daily: 1, weekly: 3 } }, { logger: log, now: () => Date.parse('2026-01-15T00:00:00Z') }))
  t.same(g.dropped, [1, 4, 5])
  t.same(g.kept, [2, 6])
  exact('after GFS')
  t.same(
    readdirSync(pdir)
      .filter((f) => !f.startsWith('config-'))
      .sort(),
    ['d.p5-sesparse.vmdk', 'd.p5.vmdk', 'd.p6-sesparse.vmdk', 'd.p6.vmdk'],
  )
})

t.test('merges carry old zeros: a point whose increment holds zeros (old content that was zero) keeps reading zeros after its neighbours are dropped, one by one and chained', async (t) => {
  const cap = 2 * MiB
  const R = { offset: 256 * 1024, length: 128 * 1024 }
  const H = { offset: 1024 * 1024, length: 192 * 1024 }
  const S = { offset: 1536 * 1024, length: 64 * 1024 }
  // the seed has data everywhere but H, a hole
  const seed = pattern(cap, 41)
  seed.fill(0, H.offset, H.offset + H.length)
  // cycle 2 zeroes R; 3 writes R and H (their old contents are zeros: point 2's increment holds zeros there, point 1's has no H);
  // 4 writes R again; 5 writes elsewhere
  const plan: Record<number, Array<{ offset: number; length: number; zero?: boolean }>> = { 2: [{ ...R, zero: true }], 3: [R, H], 4: [R], 5: [S], 6: [S] }
  for (const variant of ['one by one', 'chained', 'chained, interrupted'] as const) {
    await t.test(variant, async (t) => {
      const env = makeEnv(scratchDir(t))
      const { receiver, url } = await startReceiver(env, { retention: { keep: 10 } })
      const vm = `web-zeros-${variant.length}`
      const images: Buffer[] = [Buffer.alloc(0), seed]
      await pointCycles(env, url, vm, images, 6, (c) => plan[c] ?? [], 7, `f${variant.length % 10}`)
      await receiver.close()
      t.ok((images[2] as Buffer).subarray(R.offset, R.offset + R.length).equals(Buffer.alloc(R.length)), 'cycle 2 reads zeros at R')
      t.ok((images[3] as Buffer).subarray(H.offset, H.offset + H.length).equals(Buffer.alloc(H.length)) === false, 'cycle 3 wrote H')
      pointsExact(t, env, vm, images, 'before any drop')
      const log = pino({ level: 'silent' })
      if (variant === 'one by one') {
        // point 3's increment (R as cycle 3 wrote it) merges into point 2's (R as zeros: old zeros must win)
        t.same((await whenFree(() => prunePoints(env.store, vm, { cycles: [3] }, { logger: log }))).kept, [1, 2, 4, 5])
        pointsExact(t, env, vm, images, 'after dropping point 3')
        // point 2's increment (zeros at R and H) merges into point 1's (pattern at R, nothing at H: the zeros must land there)
        t.same((await whenFree(() => prunePoints(env.store, vm, { cycles: [2] }, { logger: log }))).kept, [1, 4, 5])
        pointsExact(t, env, vm, images, 'after dropping point 2')
      } else if (variant === 'chained') {
        t.same((await whenFree(() => prunePoints(env.store, vm, { cycles: [2, 3, 4] }, { logger: log }))).kept, [1, 5])
        pointsExact(t, env, vm, images, 'after dropping points 2 to 4 at once')
      } else {
        // the same three merges stopped at each of their copy steps in turn (a crash there), then finished by start-up recovery
        const base = join(env.dir, 'base')
        execFileSync('cp', ['-a', env.store, base])
        const before = state(base, vm)
        const kept = dropPoints(before.points ?? [], [2, 3, 4])
        t.equal(kept.merges.length, 3)
        const pending: VmStateFile = {
          ...before,
          points: kept.points,
          pending: { cycle: before.committedCycle, renames: [], descriptors: [], journals: [], files: false, merges: kept.merges, removePoints: kept.removePoints },
        }
        let steps = 0
        for (let stopAt = 1; ; stopAt++) {
          const store = join(env.dir, `stop-${stopAt}`)
          execFileSync('cp', ['-a', base, store])
          writeFileSync(join(store, vm, '.grainline', 'state.json'), JSON.stringify(pending))
          let n = 0
          let clock = 0
          const stopped = await rollForwardPoints(
            new VmPaths(store, vm),
            pending,
            () => {
              if (++n === stopAt) throw new Error('stopped')
            },
            () => (clock += MERGE_PROGRESS_MS),
          ).then(
            () => false,
            () => true,
          )
          if (!stopped) {
            steps = stopAt - 1
            break
          }
          const rep = await recoverStore(store, log)
          t.equal(rep.find((r) => r.vm === vm)?.action, 'rolled-forward', `stopped at report ${stopAt}: recovery finished the merges`)
          t.same(
            (state(store, vm).points ?? []).map((p) => p.cycle),
            [1, 5],
          )
          pointsExact(t, { dir: env.dir, store }, vm, images, `stopped at report ${stopAt}, recovered`)
        }
        t.ok(steps >= 4, `every one of the ${steps} reports was a place to stop`)
        execFileSync('rm', ['-rf', base])
      }
      const p1 = state(env.store, vm).points?.find((p) => p.cycle === 1)?.disks['d.vmdk']?.file as string
      const one = qemuRead(env.dir, join(env.store, vm, '.grainline', 'points', p1))
      t.ok(one.subarray(H.offset, H.offset + H.length).equals(Buffer.alloc(H.length)), 'point 1 reads its hole H as zeros, not the later data')
    })
  }
})

t.test('consecutive dropped points merge in a chain: each merge is sized with what the earlier ones bring into its increment, so the reports go on moving to the total', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const cap = 3 * MiB
  const vm = 'web-pts-chain'
  const images: Buffer[] = [Buffer.alloc(0), pattern(cap, 17)]
  // disjoint data per cycle, so that a merged increment holds more than any one of them
  await pointCycles(env, url, vm, images, 6, (c) => [{ offset: (c - 2) * 512 * 1024, length: 384 * 1024 }], 13, 'ec')
  await receiver.close()
  // drop points 2, 3 and 4 as a prune would, then roll the plan forward with a clock that lets every copy step report
  const before = state(env.store, vm)
  const kept = dropPoints(before.points ?? [], [2, 3, 4])
  t.equal(kept.merges.length, 3, 'three merges, each into the next dropped point')
  t.equal(kept.merges[1]?.child, kept.merges[0]?.parent, 'the second merge copies what the first one wrote')
  const paths = new VmPaths(env.store, vm)
  const sizes = await Promise.all(kept.merges.map((m) => pointBytes(paths, m.child)))
  const next: VmStateFile = {
    ...before,
    points: kept.points,
    pending: { cycle: before.committedCycle, renames: [], descriptors: [], journals: [], files: false, merges: kept.merges, removePoints: kept.removePoints },
  }
  writeFileSync(join(env.store, vm, '.grainline', 'state.json'), JSON.stringify(next))
  let clock = 0
  const reports: Array<[number, number]> = []
  await rollForwardPoints(
    paths,
    next,
    (d, total) => reports.push([d, total]),
    () => (clock += MERGE_PROGRESS_MS),
  )
  const total = reports[0]?.[1] ?? 0
  const naive = sizes.reduce((n, b) => n + b, 0)
  t.ok(total > naive, `the total (${total}) counts the chained data, more than the increments hold on disk at the start (${naive})`)
  t.ok(
    reports.every(([, tt]) => tt === total),
    'one total throughout',
  )
  t.ok(
    reports.every(([d], i) => i === 0 || d >= (reports[i - 1]?.[0] ?? 0)),
    'the count never goes back',
  )
  t.same(reports[reports.length - 1], [total, total], 'the last report is the total')
  const copying = reports.slice(1, -1).map(([d]) => d)
  const last = copying[copying.length - 1] ?? 0
  t.ok(last > naive, `the last merge's copy steps report past the unchained sizes (${last} > ${naive}): the count does not stall there`)
  t.ok(last <= total, 'within the total')
  t.ok(last >= total * 0.75, `the copy steps end near the total (${last} of ${total}; the rest is the increments' own metadata)`)
  const after = state(env.store, vm)
  t.same(
    (after.points ?? []).map((p) => p.cycle),
    [1, 5],
    'points 2 to 4 dropped',
  )
  const pdir = join(env.store, vm, '.grainline', 'points')
  for (const p of after.points ?? []) {
    const file = p.disks['d.vmdk']?.file
    if (file !== undefined) t.ok(qemuRead(env.dir, join(pdir, file)).equals(images[p.cycle] as Buffer), `point ${p.cycle} reads (qemu-img) as cycle ${p.cycle} after the chained merges`)
  }
})

t.test('points open: QEMU boots the point through a writable child; the hold refuses DiskOpen (E_HELD) and prunes until closed', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 5 } })
  t.teardown(() => receiver.close())
  const cap = 2 * MiB
  const vm = 'web-pts4'
  const images: Buffer[] = [Buffer.alloc(0), pattern(cap, 21)]
  await pointCycles(env, url, vm, images, 3, (c) => rangesFor(c, cap), 5, 'ff')
  const log = pino({ level: 'silent' })
  const dir = join(env.dir, 'open-1')
  const o = await whenFree(() => openPoint(env.store, vm, 1, dir, { logger: log }))
  t.ok(qemuRead(env.dir, join(dir, 'd.vmdk')).equals(images[1] as Buffer), 'QEMU reads point 1 through the open child')
  const vmx = readFileSync(o.vmx, 'utf8')
  t.match(vmx, /displayName = ".*\(point 1\)"/)
  t.match(vmx, /uuid\.bios = "[0-9a-f ]+-[0-9a-f ]+"/)
  t.match(vmx, /scsi0:0\.fileName = "d\.vmdk"/)
  // the guest writes into its child (QEMU cannot write SEsparse: our writer stands in for ESXi): the point stays as it was
  const w = await openWriter(join(dir, 'd.vmdk'))
  await w.write(4096, Buffer.alloc(65536, 0x5a))
  await w.close()
  const seen = qemuRead(env.dir, join(dir, 'd.vmdk'))
  t.ok(seen.subarray(4096, 4096 + 65536).equals(Buffer.alloc(65536, 0x5a)), 'the write is visible in the opened VM')
  const s = state(env.store, vm)
  t.ok(qemuRead(env.dir, join(env.store, vm, '.grainline', 'points', s.points?.[0]?.disks['d.vmdk']?.file as string)).equals(images[1] as Buffer), 'point 1 unchanged')
  t.equal((await listPoints(env.store, vm)).points.find((p) => p.cycle === 1)?.held, true, 'listed as held')
  const st = (await storeStatus(env.store)).vms.find((v) => v.vm === vm)
  t.equal(st?.holds?.length, 1, 'status lists the hold')
  const h = (await storeHealth(env.store)).vms.find((v) => v.vm === vm)
  t.equal(h?.health.state, 'WARNING')
  t.match(h?.health.problems.join(' '), /held by an opened point/)
  // an agent is refused, non-fatally, with E_HELD
  const ranges = rangesFor(4, cap)
  images[4] = evolve(images[3] as Buffer, 44, ranges)
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const refused = await runCycle(a, vm, 4, [incPlan(0, 'd.vmdk', images[4] as Buffer, 3, 'ff04ff04ff04ff04', ranges, 'd-000003.vmdk', 'd-000004.vmdk')]).catch((e: unknown) => e as { reason?: string })
  a.close()
  t.equal((refused as { reason?: string }).reason, 'E_HELD', 'DiskOpen refused with E_HELD')
  await t.rejects(
    whenFree(() => prunePoints(env.store, vm, { keep: 0 }, { logger: log })),
    { code: 'E_HELD' },
    'no prune while held',
  )
  await t.rejects(
    whenFree(() => openPoint(env.store, vm, 2, dir, { logger: log })),
    { code: 'E_CONFIG' },
    'a folder in use',
  )
  const closed = await whenFree(() => closePoint(env.store, vm, { logger: log, dir }))
  t.equal(closed.length, 1)
  t.notOk(existsSync(dir), 'the folder is removed')
  await t.rejects(
    whenFree(() => closePoint(env.store, vm, { logger: log, dir })),
    { code: 'E_NOT_FOUND' },
  )
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const ok = await runCycle(a, vm, 4, [incPlan(0, 'd.vmdk', images[4] as Buffer, 3, 'ff04ff04ff04ff04', ranges, 'd-000003.vmdk', 'd-000004.vmdk')])
  a.close()
  t.equal(ok.committed?.cycle, 4, 'released: the cycle goes through')
  // the mirror itself opened (failover-style), then closed
  const m = await whenFree(() => openPoint(env.store, vm, 4, join(env.dir, 'open-m'), { logger: log, kind: 'failover', vmx: { networks: { 'VM Network': 'DR Network' } } }))
  t.ok(qemuRead(env.dir, join(env.dir, 'open-m', 'd.vmdk')).equals(images[4] as Buffer), 'the mirror opened')
  t.match(readFileSync(m.vmx, 'utf8'), /displayName = ".*\(failover\)"/)
  // after a failover the VM runs from that folder: --all alone never deletes it
  await t.rejects(
    whenFree(() => closePoint(env.store, vm, { logger: log, all: true })),
    { code: 'E_HELD', message: /failover folder.*--failover/ },
    'a failover hold needs --failover',
  )
  // a folder that shows a powered-on VM (ESXi's NFS lock file, the swap file) is refused, even with --failover
  for (const sign of ['.lck-0000000000001234', 'db.vswp']) {
    writeFileSync(join(env.dir, 'open-m', sign), '')
    await t.rejects(
      whenFree(() => closePoint(env.store, vm, { logger: log, all: true, failover: true }), 1000, 10, /powered on/),
      { code: 'E_BUSY', message: new RegExp(`holds ${sign.replace('.', '\\.')}: .*powered on`) },
      `${sign}: refused`,
    )
    rmSync(join(env.dir, 'open-m', sign))
  }
  t.ok(existsSync(join(env.dir, 'open-m', 'd.vmdk')) && (await listHolds(env.store, vm)).length === 1, 'refused closes changed nothing')
  // a state.json naming another folder (by hand, or an attacker): nothing is removed
  const stateFile = join(env.store, vm, '.grainline', 'state.json')
  const saved = readFileSync(stateFile, 'utf8')
  for (const bad of ['/', env.dir, 'relative/dir', `${env.dir}/open-m/../open-m`]) {
    const st = JSON.parse(saved) as { holds: Array<{ dir: string }> }
    for (const h of st.holds) h.dir = bad
    writeFileSync(stateFile, JSON.stringify(st))
    await t.rejects(
      whenFree(() => closePoint(env.store, vm, { logger: log, all: true, failover: true })),
      { code: 'E_STATE' },
      `a hold naming ${bad}: refused`,
    )
  }
  writeFileSync(stateFile, saved)
  t.ok(existsSync(env.store), 'the store is still there')
  t.equal((await whenFree(() => closePoint(env.store, vm, { logger: log, all: true, failover: true }))).length, 1, 'with --failover the hold goes')
  t.notOk(existsSync(join(env.dir, 'open-m')), 'and its folder')
  // "the latest" read before the lock, and a cycle committed since: refused, never the older one opened as the latest
  await t.rejects(
    whenFree(() => openPoint(env.store, vm, 3, join(env.dir, 'open-latest'), { logger: log, kind: 'failover', latest: true }), 1000, 10, /committed after the latest/),
    { code: 'E_BUSY', message: /cycle 4 was committed after the latest \(3\)/ },
    'a stale "latest" is refused',
  )
  t.same(await listHolds(env.store, vm), [], 'and holds nothing')
  // a FIFO where the mirror's .vmx or .nvram is: a typed E_STORE_FILE, never a hang holding the VM's lock
  for (const name of [`${vm}.vmx`, `${vm}.nvram`]) {
    const file = join(env.store, vm, name)
    const before = existsSync(file) ? readFileSync(file) : undefined
    rmSync(file, { force: true })
    execFileSync('mkfifo', [file])
    await t.rejects(
      whenFree(() => openPoint(env.store, vm, 4, join(env.dir, 'open-fifo'), { logger: log })),
      { code: 'E_STORE_FILE', message: /a FIFO/ },
      `points open: ${name} a FIFO`,
    )
    await whenFree(() => closePoint(env.store, vm, { logger: log, all: true }))
    await t.rejects(
      // the latest: its .vmx is the mirror's (an older point's is its own, point-config.ts)
      whenFree(() => restorePoint(env.store, vm, 4, join(env.dir, `restore-fifo-${name}`), { logger: log })),
      { code: 'E_STORE_FILE', message: /a FIFO/ },
      `restore: ${name} a FIFO`,
    )
    rmSync(file)
    if (before !== undefined) writeFileSync(file, before)
  }
  // and where an older point's own .vmx is
  const cfg = join(env.store, vm, '.grainline', 'points', state(env.store, vm).points?.find((p) => p.cycle === 3)?.config as string)
  rmSync(cfg)
  execFileSync('mkfifo', [cfg])
  await t.rejects(
    whenFree(() => restorePoint(env.store, vm, 3, join(env.dir, 'restore-fifo-config'), { logger: log })),
    { code: 'E_STORE_FILE', message: /a FIFO/ },
    "restore: the point's configuration a FIFO",
  )
})

t.test("points close removes only a folder its open made: never another VM's mirror or this VM's own, nor an unmarked folder", async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 5 } })
  t.teardown(() => receiver.close())
  const cap = MiB
  const images: Buffer[] = [Buffer.alloc(0), pattern(cap, 31)]
  await pointCycles(env, url, 'vm-a', images, 2, (c) => rangesFor(c, cap), 7, 'ea')
  await pointCycles(env, url, 'vm-b', [Buffer.alloc(0), pattern(cap, 32)], 1, (c) => rangesFor(c, cap), 7, 'eb')
  const log = pino({ level: 'silent' })
  // the lock file comes and goes with the sessions: not part of the mirror
  const listing = (dir: string): string[] =>
    readdirSync(dir, { recursive: true })
      .map(String)
      .filter((f) => f !== join('.grainline', 'lock'))
      .sort()
  const bDir = join(env.store, 'vm-b')
  const bFiles = listing(bDir)
  const aDir = join(env.store, 'vm-a')
  // a hold opened as usual (the CLI's default folder under <store>/.open): its folder carries the marker naming it
  const opened = join(env.store, '.open', 'vm-a-point-1')
  const o = await whenFree(() => openPoint(env.store, 'vm-a', 1, opened, { logger: log }))
  const stateFile = join(aDir, '.grainline', 'state.json')
  const saved = readFileSync(stateFile, 'utf8')
  const withHoldDir = (dir: string): void => {
    const st = JSON.parse(saved) as { holds: Array<{ dir: string }> }
    for (const h of st.holds) h.dir = dir
    writeFileSync(stateFile, JSON.stringify(st))
  }
  // a state.json naming a VM folder of the store (by hand, or an attacker): refused, nothing removed
  for (const bad of [bDir, join(bDir, '.grainline'), aDir, join(aDir, '.grainline', 'points')]) {
    withHoldDir(bad)
    await t.rejects(
      whenFree(() => closePoint(env.store, 'vm-a', { logger: log, all: true })),
      { code: 'E_STATE', message: /^VM vm-a: the hold's folder .* \(point 1\) is inside .*vm-[ab], a VM folder of the store.*nothing was removed/ },
      `a hold naming ${relative(env.store, bad)}: refused`,
    )
  }
  t.same(listing(bDir), bFiles, "vm-b's mirror folder is whole")
  t.ok(existsSync(join(aDir, 'd-flat.vmdk')) && existsSync(join(aDir, '.grainline', 'points')), "vm-a's own folder is whole")
  t.equal((await listHolds(env.store, 'vm-a')).length, 1, 'and the hold is kept')
  t.match(JSON.parse(readFileSync(join(opened, '.grainline-hold'), 'utf8')), { id: o.hold.id, vm: 'vm-a', cycle: 1 }, 'points open marks its folder')
  // a folder outside the store without the marker (opened by an earlier version, or any folder): refused until removed by hand
  const unmarked = join(env.dir, 'unmarked')
  mkdirSync(unmarked)
  writeFileSync(join(unmarked, 'precious.txt'), 'keep me')
  withHoldDir(unmarked)
  await t.rejects(
    whenFree(() => closePoint(env.store, 'vm-a', { logger: log, all: true })),
    { code: 'E_STATE', message: /carries no \.grainline-hold.*remove the folder by hand, then run points close again/ },
    'an unmarked folder: refused',
  )
  t.ok(existsSync(join(unmarked, 'precious.txt')), 'and kept')
  // a marker of another hold: refused too
  writeFileSync(join(unmarked, '.grainline-hold'), JSON.stringify({ id: 'another', vm: 'vm-a', cycle: 1 }))
  await t.rejects(
    whenFree(() => closePoint(env.store, 'vm-a', { logger: log, all: true })),
    { code: 'E_STATE', message: /another hold/ },
    "another hold's marker: refused",
  )
  // an older version's hold in another (not a VM's) folder of the store: refused while it holds files, closed once removed by hand
  const older = join(env.store, 'tests', 'web01')
  mkdirSync(older, { recursive: true })
  writeFileSync(join(older, 'd.vmdk'), 'a child descriptor')
  withHoldDir(older)
  await t.rejects(
    whenFree(() => closePoint(env.store, 'vm-a', { logger: log, all: true })),
    { code: 'E_STATE', message: /carries no \.grainline-hold/ },
    'unmarked: refused',
  )
  rmSync(older, { recursive: true })
  t.equal((await whenFree(() => closePoint(env.store, 'vm-a', { logger: log, all: true }))).length, 1, 'removed by hand: the hold closes, though the folder was in the store')
  t.equal((await listHolds(env.store, 'vm-a')).length, 0)
  withHoldDir(unmarked)
  rmSync(unmarked, { recursive: true })
  t.equal((await whenFree(() => closePoint(env.store, 'vm-a', { logger: log, all: true }))).length, 1, 'once removed by hand, the hold closes')
  t.ok(existsSync(opened), 'the folder the state no longer named is untouched')
  // an empty folder without the marker (a crash between the hold's record and its marker) is removed
  writeFileSync(stateFile, saved)
  rmSync(opened, { recursive: true })
  mkdirSync(opened)
  t.equal((await whenFree(() => closePoint(env.store, 'vm-a', { logger: log, all: true }))).length, 1, 'an empty unmarked folder: closed')
  t.notOk(existsSync(opened), 'and removed')
  // the normal way: the marked folder goes
  const again = await whenFree(() => openPoint(env.store, 'vm-a', 1, opened, { logger: log }))
  t.same(
    (await whenFree(() => closePoint(env.store, 'vm-a', { logger: log, dir: opened }))).map((h) => h.id),
    [again.hold.id],
  )
  t.notOk(existsSync(opened), 'a marked folder is removed')
  // and points open never opens into a VM folder of the store
  await t.rejects(
    whenFree(() => openPoint(env.store, 'vm-a', 1, join(bDir, 'opened'), { logger: log })),
    { code: 'E_CONFIG', message: /inside .*vm-b, where the store keeps .* a VM's mirror/ },
    "open into vm-b's folder: refused",
  )
  t.same(listing(bDir), bFiles, 'nothing made there')
  t.same(await listHolds(env.store, 'vm-a'), [], 'and no hold recorded')
})

t.test("a job's retention request is applied within retentionLimits and answered in Committed (SPEC §5.5)", async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env, { retention: { keep: 5 }, retentionLimits: { minKeep: 2, maxKeep: 3 } })
  t.teardown(() => receiver.close())
  const cap = 2 * MiB
  const vm = 'web-ret'
  const images: Buffer[] = [Buffer.alloc(0), pattern(cap, 31)]
  const ask = { keep: 1, maxAgeSeconds: 0, maxBytes: 0, hourly: 0, daily: 0, weekly: 0, monthly: 0 }
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const first = await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', images[1] as Buffer, 'ee01ee01ee01ee01')], { retention: ask })
  a.close()
  t.same((first.committed as { retention: unknown }).retention, { ...ask, keep: 2 }, 'Committed carries the applied policy: keep raised to the floor')
  for (let c = 2; c <= 5; c++) {
    const ranges = rangesFor(c, cap)
    images[c] = evolve(images[c - 1] as Buffer, c * 7, ranges)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, c, [incPlan(0, 'd.vmdk', images[c] as Buffer, c - 1, `ee0${c}ee0${c}ee0${c}ee0${c}`, ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)], { retention: ask })
    a.close()
  }
  t.same(
    (await listPoints(env.store, vm)).points.filter((p) => !p.current).map((p) => p.cycle),
    [3, 4],
    'the floor of two points holds against a request of one',
  )
  t.ok(
    logs.lines.some((l) => l.msg === 'retention requested by the job' && l['why'] === 'clamped to retentionLimits'),
    'the receiver logs the request and why it differs',
  )
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const own = await runCycle(a, vm, 6, [incPlan(0, 'd.vmdk', evolve(images[5] as Buffer, 66, rangesFor(6, cap)), 5, 'ee06ee06ee06ee06', rangesFor(6, cap), 'd-000005.vmdk', 'd-000006.vmdk')])
  a.close()
  t.same((own.committed as { retention: { keep: number } }).retention.keep, 5, "no request: the receiver's own policy, answered")
})

t.test("points open and restore: the display name's recorded mark is replaced, a name of the VM's own that looks like a mark is kept", async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 5 } })
  t.teardown(() => receiver.close())
  const cap = 2 * MiB
  const log = pino({ level: 'silent' })
  const vmxOf = (vmx: string): string => readFileSync(vmx, 'utf8')
  const displayName = (vmx: string): string | undefined => /^displayName = "(.*)"$/m.exec(vmxOf(vmx))?.[1]
  const mark = (vmx: string): string | undefined => new RegExp(`^${DISPLAY_MARK_KEY.replace('.', '\\.')} = "(.*)"$`, 'm').exec(vmxOf(vmx))?.[1]
  // a VM as grainline names it: its display name is the VM's name and the mirror's suffix, recorded as the mark
  const plain = 'web-mark'
  await pointCycles(env, url, plain, [Buffer.alloc(0), pattern(cap, 31)], 3, (c) => rangesFor(c, cap), 7, 'e1')
  t.equal(mark(join(env.store, plain, `${plain}.vmx`)), ' (grainline mirror)', "the mirror's .vmx records the mark it was given")
  const p2 = await whenFree(() => openPoint(env.store, plain, 2, join(env.dir, 'plain-2'), { logger: log }))
  t.equal(displayName(p2.vmx), 'web-mark (grainline mirror) (point 2)', "a point: the mirror's name and the point's mark, as before")
  t.equal(mark(p2.vmx), ' (grainline mirror) (point 2)', 'the opened .vmx records its whole mark')
  const p3 = await whenFree(() => openPoint(env.store, plain, 3, join(env.dir, 'plain-3'), { logger: log }))
  t.equal(displayName(p3.vmx), 'web-mark (grainline mirror) (opened)', 'the mirror: marked opened, as before')
  await whenFree(() => restorePoint(env.store, plain, 2, join(env.dir, 'plain-r2'), { logger: log }))
  const restoredVmx = join(env.dir, 'plain-r2', `${plain}.vmx`)
  t.equal(displayName(restoredVmx), 'web-mark (grainline mirror) (point 2)', 'a restore of a plain VM: as before')
  t.equal(mark(restoredVmx), ' (grainline mirror) (point 2)', 'the restored .vmx records its whole mark')
  // the restored VM registered and replicated (its .vmx as the restore wrote it): its mirror and its points carry the
  // mirror's mark alone, in place of the restore's ("web-mark (grainline mirror) (point 2) (grainline mirror) (point 2)"
  // stacked before last round)
  const again = 'web-again'
  const files = [{ name: `${again}.vmx`, data: readFileSync(restoredVmx) }]
  await pointCycles(env, url, again, [Buffer.alloc(0), pattern(cap, 33)], 3, (c) => rangesFor(c, cap), 11, 'e3', files)
  t.equal(displayName(join(env.store, again, `${again}.vmx`)), 'web-mark (grainline mirror)', "the mirror: the source's name without the mark the restore recorded")
  const a2 = await whenFree(() => openPoint(env.store, again, 2, join(env.dir, 'again-2'), { logger: log }))
  t.equal(displayName(a2.vmx), 'web-mark (grainline mirror) (point 2)', 'its point 2 opened: one mark')
  await whenFree(() => restorePoint(env.store, again, 2, join(env.dir, 'again-r2'), { logger: log }))
  t.equal(displayName(join(env.dir, 'again-r2', `${again}.vmx`)), 'web-mark (grainline mirror) (point 2)', 'its point 2 restored: one mark')
  // a VM whose own name ends with what looks like a mark (no record says grainline gave it): kept whole
  const own = 'web-build (opened)'
  await pointCycles(env, url, own, [Buffer.alloc(0), pattern(cap, 32)], 3, (c) => rangesFor(c, cap), 9, 'e2')
  t.equal(displayName(join(env.store, own, `${own}.vmx`)), 'web-build (opened) (grainline mirror)', "the mirror's name")
  const o2 = await whenFree(() => openPoint(env.store, own, 2, join(env.dir, 'own-2'), { logger: log }))
  t.equal(displayName(o2.vmx), 'web-build (opened) (grainline mirror) (point 2)', "point 2 opened: the name kept, the mirror's mark replaced")
  const o3 = await whenFree(() => openPoint(env.store, own, 3, join(env.dir, 'own-3'), { logger: log }))
  t.equal(displayName(o3.vmx), 'web-build (opened) (grainline mirror) (opened)', 'the mirror opened: the name kept')
  await whenFree(() => closePoint(env.store, own, { logger: log, dir: join(env.dir, 'own-2') }))
  const o2b = await whenFree(() => openPoint(env.store, own, 2, join(env.dir, 'own-2b'), { logger: log }))
  t.equal(displayName(o2b.vmx), 'web-build (opened) (grainline mirror) (point 2)', 'opened a second time: the same name')
  const f = await whenFree(() => openPoint(env.store, own, 1, join(env.dir, 'own-f'), { logger: log, kind: 'failover', vmx: { suffix: ' (grainline failover)' } }))
  t.equal(displayName(f.vmx), 'web-build (opened) (grainline failover)', "a failover: the VM's name and its mark alone")
  await whenFree(() => restorePoint(env.store, own, 2, join(env.dir, 'own-r2'), { logger: log }))
  t.equal(displayName(join(env.dir, 'own-r2', `${own}.vmx`)), 'web-build (opened) (grainline mirror) (point 2)', 'a restore: the name kept')
})

t.test('markVmx: only the mark recorded (or, with no record, the legacy suffix) is replaced; a name of its own stays', async (t) => {
  const cases: Array<[string, string | undefined, string, string | undefined, string]> = [
    // name, recorded mark, new mark, legacy suffix, name wanted
    ['web (grainline mirror)', ' (grainline mirror)', ' (grainline mirror) (point 3)', ' (grainline mirror)', 'web (grainline mirror) (point 3)'],
    ['web (grainline mirror)', undefined, ' (grainline mirror) (point 3)', ' (grainline mirror)', 'web (grainline mirror) (point 3)'],
    ['web (point 3)', ' (point 3)', ' (point 3)', undefined, 'web (point 3)'],
    ['build (opened) (grainline mirror)', ' (grainline mirror)', ' (opened)', ' (grainline mirror)', 'build (opened) (opened)'],
    ['build (opened)', undefined, ' (point 2)', ' (grainline mirror)', 'build (opened) (point 2)'],
    ['renamed', ' (grainline mirror) (point 2)', ' (grainline mirror)', undefined, 'renamed (grainline mirror)'],
    ['web [DR]', ' [DR]', ' [DR] (opened)', ' (grainline mirror)', 'web [DR] (opened)'],
    [' (opened)', ' (opened)', ' (point 2)', undefined, ' (opened) (point 2)'],
  ]
  for (const [name, recorded, suffix, legacy, want] of cases) {
    t.equal(markedDisplayName(name, suffix, recorded, legacy), want, `${JSON.stringify(name)} (recorded ${JSON.stringify(recorded)}) + ${JSON.stringify(suffix)}`)
    const text = `a = "1"\r\ndisplayName = "${name}"\r\n${recorded === undefined ? '' : `${DISPLAY_MARK_KEY.toUpperCase()} = "${recorded}"\r\n`}b = "2"\r\n`
    t.equal(markVmx(text, suffix, legacy), `a = "1"\r\ndisplayName = "${want}"\r\n${DISPLAY_MARK_KEY} = "${suffix}"\r\nb = "2"\r\n`, 'as a .vmx: one record, the new mark, its line ends kept')
  }
  t.equal(markVmx('displayName = "web (point 2)"\ngrainline.displayMark = " (point 2)"\n', ''), 'displayName = "web"\n', 'an empty mark: the recorded one taken off, no record')
  t.equal(markVmx('memSize = "4"\n', ' (x)'), 'memSize = "4"\n', 'no display name: the .vmx as it is')
  t.equal(
    markVmx('displayName = "web (m)"\ngrainline.displayMark = " (m)"\n', (r) => `${r ?? ''} (archived point 4)`),
    'displayName = "web (m) (archived point 4)"\ngrainline.displayMark = " (m) (archived point 4)"\n',
    'a mark made of the recorded one',
  )
})
