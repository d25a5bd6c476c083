/**
 * Restore points whose files are not as the receiver wrote them (edited by
 * hand, damaged, carried in a store from elsewhere): a prune must never
 * merge old grains into the mirror or into a file outside the store, and a
 * restore must never read another file (point-chain.ts).
 */
import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { execFileSync } from 'node:child_process'
import { copyFileSync, existsSync, linkSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { formatCid, parseDescriptor, serializeDescriptor } from '@grainline/vmdk'
import { Agent, MiB, TOKEN, evolve, incPlan, makeEnv, runCycle, seedPlan, startReceiver, pattern, whenFree } from './helpers.ts'
import { listHolds, openPoint, prunePoints, restorePoint, rollbackMirror, storeHealth, storeStatus, type VmStateFile } from '../src/index.ts'

const log = pino({ level: 'silent' })

function qemuRead(dir: string, desc: string): Buffer {
  const out = join(dir, `read-${Math.random().toString(16).slice(2)}.raw`)
  execFileSync('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', desc, out])
  const b = readFileSync(out)
  rmSync(out)
  return b
}

/** Move `file` to `outside` as a copy and leave a symbolic link to it in its place; returns its bytes. */
function linkOutside(file: string, outside: string): Buffer {
  copyFileSync(file, outside)
  const b = readFileSync(file)
  rmSync(file)
  symlinkSync(outside, file)
  return b
}

t.test('a point whose files are not the receiver’s: no merge writes through it, no restore reads through it', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const vm = 'web-links'
  const images: Buffer[] = [Buffer.alloc(0), Buffer.concat([pattern(MiB, 1), Buffer.alloc(2 * MiB), pattern(MiB, 2)])]
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', images[1] as Buffer, 'cd01cd01cd01cd01')])
  a.close()
  for (let c = 2; c <= 5; c++) {
    const ranges = [{ offset: c * 300 * 1024, length: 256 * 1024 }]
    images[c] = evolve(images[c - 1] as Buffer, c * 13, ranges)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, c, [incPlan(0, 'd.vmdk', images[c] as Buffer, c - 1, `cd0${c}cd0${c}cd0${c}cd0${c}`, ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)])
    a.close()
  }
  const stateFile = join(env.store, vm, '.grainline', 'state.json')
  const state = JSON.parse(readFileSync(stateFile, 'utf8')) as VmStateFile
  t.same(
    (state.points ?? []).map((p) => p.cycle),
    [1, 2, 3, 4],
    'points 1–4 kept',
  )
  const pdir = join(env.store, vm, '.grainline', 'points')
  const mirror = join(env.store, vm, 'd.vmdk')
  const p2 = join(pdir, 'd.p2.vmdk')
  const p3 = join(pdir, 'd.p3.vmdk')
  const p3ext = join(pdir, 'd.p3-sesparse.vmdk')
  t.ok(qemuRead(env.dir, mirror).equals(images[5] as Buffer), 'the mirror reads as cycle 5')
  const saved = new Map([p2, p3, p3ext].map((f) => [f, readFileSync(f)]))
  const putBack = (): void => {
    for (const [f, b] of saved) {
      rmSync(f, { force: true })
      writeFileSync(f, b)
    }
  }
  const relink = (file: string, hint: string, cid: string): void => {
    writeFileSync(file, serializeDescriptor(parseDescriptor(readFileSync(file, 'utf8')).withParent(hint, cid)))
  }
  const mirrorCid = formatCid(parseDescriptor(readFileSync(mirror, 'utf8')).cid)
  const p3Cid = formatCid(parseDescriptor(readFileSync(p3, 'utf8')).cid)

  await t.test('point 2 linked to the mirror: dropping point 3 would merge old grains into the mirror', async (t) => {
    relink(p2, '../../d.vmdk', mirrorCid)
    await t.rejects(
      whenFree(() => prunePoints(env.store, vm, { cycles: [3] }, { logger: log })),
      { code: 'E_STATE', message: /d\.p2\.vmdk of VM web-links: its parent is "\.\.\/\.\.\/d\.vmdk", but the merge expects d\.p3\.vmdk.*--keep 0/ },
      'the drop is refused before anything is written',
    )
    t.ok(qemuRead(env.dir, mirror).equals(images[5] as Buffer), 'the mirror still reads as cycle 5')
    t.same(
      (JSON.parse(readFileSync(stateFile, 'utf8')) as VmStateFile).points?.map((p) => p.cycle),
      [1, 2, 3, 4],
      'no point dropped',
    )
    t.equal((JSON.parse(readFileSync(stateFile, 'utf8')) as VmStateFile).pending ?? null, null, 'no prune pending')
    putBack()
  })

  await t.test('point 3’s extent a symbolic link to a file outside the store: neither merged into nor read', async (t) => {
    const outside = join(env.dir, 'outside-sesparse.vmdk')
    const before = linkOutside(p3ext, outside)
    await t.rejects(
      whenFree(() => prunePoints(env.store, vm, { cycles: [3] }, { logger: log })),
      { code: 'E_STORE_FILE', message: /d\.p3-sesparse\.vmdk is a symbolic link/ },
      'drop refused',
    )
    t.ok(readFileSync(outside).equals(before), 'the file outside the store is untouched')
    await t.rejects(
      whenFree(() => restorePoint(env.store, vm, 3, join(env.dir, 'restore-link'), { logger: log })),
      { code: 'E_STORE_FILE' },
      'restore of point 3 refused',
    )
    await t.rejects(
      whenFree(() => restorePoint(env.store, vm, 1, join(env.dir, 'restore-link1'), { logger: log })),
      { code: 'E_STORE_FILE' },
      'restore of point 1, whose chain passes point 3, refused',
    )
    putBack()
  })

  await t.test('point 2 linked to a copy of point 3 outside the store: not read, not merged', async (t) => {
    const outDesc = join(env.dir, 'elsewhere.vmdk')
    writeFileSync(outDesc, readFileSync(p3, 'utf8').replace('"d.p3-sesparse.vmdk"', '"elsewhere-sesparse.vmdk"'))
    copyFileSync(p3ext, join(env.dir, 'elsewhere-sesparse.vmdk'))
    relink(outDesc, '../store/web-links/d.vmdk', mirrorCid)
    relink(p2, outDesc, p3Cid)
    const before = readFileSync(join(env.dir, 'elsewhere-sesparse.vmdk'))
    await t.rejects(
      whenFree(() => restorePoint(env.store, vm, 2, join(env.dir, 'restore-out'), { logger: log })),
      { code: 'E_STATE', message: /neither a point of the same folder nor the mirror/ },
      'restore of point 2 refused',
    )
    await t.rejects(
      whenFree(() => prunePoints(env.store, vm, { cycles: [3] }, { logger: log })),
      { code: 'E_STATE' },
      'drop of point 3 refused',
    )
    t.ok(readFileSync(join(env.dir, 'elsewhere-sesparse.vmdk')).equals(before), 'the copy outside the store is untouched')
    putBack()
  })

  await t.test('point 3’s descriptor naming an extent outside its folder', async (t) => {
    const outside = join(env.dir, 'victim-sesparse.vmdk')
    copyFileSync(p3ext, outside)
    const before = readFileSync(outside)
    writeFileSync(p3, readFileSync(p3, 'utf8').replace('"d.p3-sesparse.vmdk"', '"../../../victim-sesparse.vmdk"'))
    await t.rejects(
      whenFree(() => prunePoints(env.store, vm, { cycles: [3] }, { logger: log })),
      { code: 'E_STATE', message: /names the extents \["\.\.\/\.\.\/\.\.\/victim-sesparse\.vmdk"\]/ },
      'drop refused',
    )
    await t.rejects(
      whenFree(() => restorePoint(env.store, vm, 3, join(env.dir, 'restore-ext'), { logger: log })),
      { code: 'E_STATE' },
      'restore refused',
    )
    t.ok(readFileSync(outside).equals(before), 'the file outside the store is untouched')
    putBack()
  })

  // put back as written, the same drop merges point 2 into point 3's file and every point reads as its cycle
  const r = await whenFree(() => prunePoints(env.store, vm, { cycles: [3] }, { logger: log }))
  t.same(r.dropped, [3], 'point 3 dropped once its files are the receiver’s again')
  for (const k of [1, 2, 4]) {
    const to = join(env.dir, `restore-${k}`)
    await whenFree(() => restorePoint(env.store, vm, k, to, { logger: log }))
    t.ok(readFileSync(join(to, 'd-flat.vmdk')).equals(images[k] as Buffer), `point ${k} restores as cycle ${k}`)
  }
  t.ok(qemuRead(env.dir, mirror).equals(images[5] as Buffer), 'the mirror reads as cycle 5')
})

t.test('a commit whose retention would merge through a hand-edited point commits the cycle, prunes nothing and logs why', async (t) => {
  const env = makeEnv(scratchDir(t))
  const first = await startReceiver(env, { retention: { keep: 10 } })
  const vm = 'web-links-gfs'
  const images: Buffer[] = [Buffer.alloc(0), Buffer.concat([pattern(MiB, 5), Buffer.alloc(MiB)])]
  const cycle = async (url: string, c: number): Promise<void> => {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    if (c === 1) await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', images[1] as Buffer, 'ce01ce01ce01ce01')])
    else {
      const ranges = [{ offset: c * 100 * 1024, length: 64 * 1024 }]
      images[c] = evolve(images[c - 1] as Buffer, c * 7, ranges)
      await runCycle(a, vm, c, [incPlan(0, 'd.vmdk', images[c] as Buffer, c - 1, `ce0${c}ce0${c}ce0${c}ce0${c}`, ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)])
    }
    a.close()
  }
  for (let c = 1; c <= 5; c++) await cycle(first.url, c)
  await first.receiver.close()
  // points 1–4 spread over past hours: hourly GFS keeps the newest of each hour, so the next commit drops point 2
  // between kept points 1 and 3 — a merge of point 1 into point 2's file
  const stateFile = join(env.store, vm, '.grainline', 'state.json')
  const s = JSON.parse(readFileSync(stateFile, 'utf8')) as VmStateFile
  const hour = 3_600_000
  const top = Math.floor(Date.now() / hour) * hour
  const at = [top - 3 * hour + 60_000, top - 2 * hour + 60_000, top - 2 * hour + 120_000, top - hour + 60_000]
  writeFileSync(stateFile, JSON.stringify({ ...s, points: (s.points ?? []).map((p, i) => ({ ...p, committedAt: new Date(at[i] as number).toISOString() })) }))
  const pdir = join(env.store, vm, '.grainline', 'points')
  const p1 = join(pdir, 'd.p1.vmdk')
  const good = readFileSync(p1)
  const mirror = join(env.store, vm, 'd.vmdk')
  // point 1 relinked onto the mirror: the merge would consolidate week-old grains into the live mirror
  writeFileSync(p1, serializeDescriptor(parseDescriptor(good.toString('utf8')).withParent('../../d.vmdk', formatCid(parseDescriptor(readFileSync(mirror, 'utf8')).cid))))
  const second = await startReceiver(env, { retention: { gfs: { hourly: 4 } } })
  t.teardown(() => second.receiver.close())
  await cycle(second.url, 6)
  const after = JSON.parse(readFileSync(stateFile, 'utf8')) as VmStateFile
  t.equal(after.committedCycle, 6, 'the cycle committed')
  t.same(
    (after.points ?? []).map((p) => p.cycle),
    [1, 2, 3, 4, 5],
    'no point pruned this time',
  )
  t.ok(
    second.logs.lines.some((l) => l.level === 50 && /not pruned at this commit/.test(String(l.msg)) && /d\.p1\.vmdk/.test(String(l['err']))),
    'an error names the point',
  )
  t.ok(qemuRead(env.dir, mirror).equals(images[6] as Buffer), 'the mirror reads as cycle 6')
  // put back, the next commit prunes by the same policy and every kept point reads as its cycle
  writeFileSync(p1, good)
  await cycle(second.url, 7)
  const pruned = JSON.parse(readFileSync(stateFile, 'utf8')) as VmStateFile
  t.notOk(
    (pruned.points ?? []).some((p) => p.cycle === 2),
    'point 2 merged away once point 1 is the receiver’s again',
  )
  for (const p of pruned.points ?? []) {
    t.ok(qemuRead(env.dir, join(pdir, p.disks['d.vmdk']?.file as string)).equals(images[p.cycle] as Buffer), `point ${p.cycle} reads as cycle ${p.cycle}`)
  }
})

t.test('a rollback refuses an increment that is a link out of the store, and completes once it is put back', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const vm = 'web-links-rb'
  const images: Buffer[] = [Buffer.alloc(0), Buffer.concat([pattern(MiB, 8), Buffer.alloc(MiB)])]
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', images[1] as Buffer, 'cf01cf01cf01cf01')])
  a.close()
  const ranges = [{ offset: 256 * 1024, length: 512 * 1024 }]
  const next = evolve(images[1] as Buffer, 99, ranges)
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 2, [incPlan(0, 'd.vmdk', next, 1, 'cf02cf02cf02cf02', ranges, 'd-000001.vmdk', 'd-000002.vmdk')], { commit: false })
  a.close()
  const stateFile = join(env.store, vm, '.grainline', 'state.json')
  const inc = (JSON.parse(readFileSync(stateFile, 'utf8')) as VmStateFile).inflight?.disks['d.vmdk']?.increment as string
  t.ok(inc, 'the in-flight apply keeps a reverse increment')
  const ext = join(env.store, vm, '.grainline', 'points', inc.replace(/\.vmdk$/, '-sesparse.vmdk'))
  const saved = linkOutside(ext, join(env.dir, 'outside-inc-sesparse.vmdk'))
  await t.rejects(
    whenFree(() => rollbackMirror(env.store, vm)),
    { code: 'E_STORE_FILE' },
    'the undo does not read old grains through a link',
  )
  t.equal((JSON.parse(readFileSync(stateFile, 'utf8')) as VmStateFile).inflight?.cycle, 2, 'the cycle stays in flight: nothing lost')
  rmSync(ext)
  writeFileSync(ext, saved)
  const r = await whenFree(() => rollbackMirror(env.store, vm))
  t.same([r.rolledBack, r.committedCycle], [true, 1], 'rolled back once the increment is the receiver’s again')
  t.ok(qemuRead(env.dir, join(env.store, vm, 'd.vmdk')).equals(images[1] as Buffer), 'the mirror reads as cycle 1')
})

t.test("a base point's flat hard-linked to the mirror's flat: dropping it merges nothing into the live mirror", async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const vm = 'web-hard'
  const ranges = [{ offset: 64 * 1024, length: 512 * 1024 }]
  const images: Buffer[] = [Buffer.alloc(0), pattern(2 * MiB, 41)]
  images[2] = evolve(images[1] as Buffer, 42, ranges)
  images[3] = pattern(2 * MiB, 43)
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', images[1] as Buffer, 'ce01ce01ce01ce01')])
  a.close()
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 2, [incPlan(0, 'd.vmdk', images[2] as Buffer, 1, 'ce02ce02ce02ce02', ranges, 'd-000001.vmdk', 'd-000002.vmdk')])
  a.close()
  // a re-seed: the mirror as committed at cycle 2 is kept whole as base point 2, point 1 reads through it
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 3, [seedPlan(0, 'd.vmdk', images[3] as Buffer, 'ce03ce03ce03ce03')])
  a.close()
  const stateFile = join(env.store, vm, '.grainline', 'state.json')
  const points = (): number[] => ((JSON.parse(readFileSync(stateFile, 'utf8')) as VmStateFile).points ?? []).map((p) => p.cycle)
  t.same(points(), [1, 2], 'point 1 and base point 2')
  const flat = join(env.store, vm, 'd-flat.vmdk')
  const baseFlat = join(env.store, vm, '.grainline', 'points', 'd.p2-flat.vmdk')
  const saved = readFileSync(baseFlat)
  t.ok(saved.equals(images[2] as Buffer), "base point 2's flat is the old mirror")
  // the base point's flat replaced by a hard link to the live mirror's flat: a regular file of the points folder, the same size
  rmSync(baseFlat)
  linkSync(flat, baseFlat)
  await t.rejects(
    whenFree(() => prunePoints(env.store, vm, { cycles: [2] }, { logger: log })),
    { code: 'E_STATE', message: /restore point d\.p2\.vmdk of VM web-hard: d\.p2-flat\.vmdk has 2 names \(a hard link.*nothing was read, merged or removed/ },
    'the drop of base point 2 is refused',
  )
  t.ok(readFileSync(flat).equals(images[3] as Buffer), 'the live mirror is untouched')
  t.same(points(), [1, 2], 'no point dropped')
  t.equal((JSON.parse(readFileSync(stateFile, 'utf8')) as VmStateFile).pending ?? null, null, 'no prune pending')
  // its own file again: the same drop merges point 1 into it, and point 1 still restores as cycle 1
  rmSync(baseFlat)
  writeFileSync(baseFlat, saved)
  t.same((await whenFree(() => prunePoints(env.store, vm, { cycles: [2] }, { logger: log }))).dropped, [2], 'dropped once the flat is its own')
  const to = join(env.dir, 'restore-1')
  await whenFree(() => restorePoint(env.store, vm, 1, to, { logger: log }))
  t.ok(readFileSync(join(to, 'd-flat.vmdk')).equals(images[1] as Buffer), 'point 1 restores as cycle 1')
  t.ok(readFileSync(flat).equals(images[3] as Buffer), 'the mirror reads as cycle 3')
})

t.test('a mirror descriptor that keeps its CID but names a file outside the store: status not OK, nothing read through it', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const vm = 'web-mirror-desc'
  const images: Buffer[] = [Buffer.alloc(0), Buffer.concat([pattern(MiB, 11), Buffer.alloc(MiB)])]
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', images[1] as Buffer, 'd101d101d101d101')])
  a.close()
  for (let c = 2; c <= 3; c++) {
    const ranges = [{ offset: c * 128 * 1024, length: 64 * 1024 }]
    images[c] = evolve(images[c - 1] as Buffer, c * 17, ranges)
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, c, [incPlan(0, 'd.vmdk', images[c] as Buffer, c - 1, `d10${c}d10${c}d10${c}d10${c}`, ranges, `d-00000${c - 1}.vmdk`, `d-00000${c}.vmdk`)])
    a.close()
  }
  const mirror = join(env.store, vm, 'd.vmdk')
  const good = readFileSync(mirror, 'utf8')
  // the auditor's file: same size as the disk, other bytes; reached from the VM folder as ../../outside/secret.bin
  const outsideDir = join(env.store, '..', 'outside')
  mkdirSync(outsideDir, { recursive: true })
  const secret = pattern(2 * MiB, 99)
  writeFileSync(join(outsideDir, 'secret.bin'), secret)
  const edited = good.replace('"d-flat.vmdk"', '"../../outside/secret.bin"')
  t.not(edited, good, 'the extent line is edited')
  t.equal(formatCid(parseDescriptor(edited).cid), formatCid(parseDescriptor(good).cid), 'the CID is the recorded one')
  writeFileSync(mirror, edited)
  t.ok(qemuRead(env.dir, mirror).equals(secret), 'a reader following the descriptor reads the outside file')

  const disk = (await storeStatus(env.store)).vms.find((v) => v.vm === vm)?.disks.find((d) => d.name === 'd.vmdk')
  t.equal(disk?.modified, true, 'status: the mirror is modified')
  t.not((await storeHealth(env.store)).vms.find((v) => v.vm === vm)?.health.state, 'OK', 'health: the VM is not OK')
  const refused = { code: 'E_STATE', message: /mirror .*d\.vmdk of disk d\.vmdk of VM web-mirror-desc: its descriptor names the extents \["\.\.\/\.\.\/outside\/secret\.bin"\].*resync/ }
  await t.rejects(
    whenFree(() => restorePoint(env.store, vm, 3, join(env.dir, 'restore-m3'), { logger: log })),
    refused,
    'restore of the mirror refused',
  )
  await t.rejects(
    whenFree(() => restorePoint(env.store, vm, 2, join(env.dir, 'restore-m2'), { logger: log })),
    refused,
    'restore of point 2, whose chain ends at the mirror, refused',
  )
  for (const f of ['restore-m3', 'restore-m2']) {
    const flat = join(env.dir, f, 'd-flat.vmdk')
    t.notOk(existsSync(flat) && readFileSync(flat).equals(secret), `${f}: the outside file was not copied`)
  }
  await t.rejects(
    whenFree(() => openPoint(env.store, vm, 2, join(env.dir, 'open-m2'), { logger: log })),
    refused,
    'open of point 2 refused',
  )
  await t.rejects(
    whenFree(() => openPoint(env.store, vm, 3, join(env.dir, 'failover-m'), { logger: log, kind: 'failover' })),
    refused,
    'failover refused',
  )
  t.same(await listHolds(env.store, vm), [], 'no hold left by the refused open and failover')
  t.ok(readFileSync(join(outsideDir, 'secret.bin')).equals(secret), 'the outside file is untouched')

  // the CID changed as well (a boot): the same refusal names the CID
  writeFileSync(mirror, good.replace(/^CID=.*$/m, 'CID=0badc1d0'))
  await t.rejects(
    whenFree(() => restorePoint(env.store, vm, 3, join(env.dir, 'restore-cid'), { logger: log })),
    { code: 'E_STATE', message: /CID is 0badc1d0, the last commit recorded/ },
    'another CID: refused',
  )

  // put back as the receiver wrote it: status OK, every point restores as its cycle
  writeFileSync(mirror, good)
  t.equal((await storeStatus(env.store)).vms.find((v) => v.vm === vm)?.disks[0]?.modified, false, 'status: unmodified once put back')
  for (const k of [2, 3]) {
    const to = join(env.dir, `restore-ok-${k}`)
    await whenFree(() => restorePoint(env.store, vm, k, to, { logger: log }))
    t.ok(readFileSync(join(to, 'd-flat.vmdk')).equals(images[k] as Buffer), `point ${k} restores as cycle ${k}`)
  }
})

t.test('a disk named outside ASCII ("café disk.vmdk"): its mirror descriptor reads as the receiver wrote it, so the next cycle is an incremental and a restore reads through it', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, { retention: { keep: 10 } })
  t.teardown(() => receiver.close())
  const vm = 'web-cafe'
  const name = 'café disk.vmdk'
  const img1 = pattern(MiB, 71)
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, name, img1, 'cafe01cafe01cafe')])
  a.close()
  const ranges = [{ offset: 64 * 1024, length: 64 * 1024 }]
  const img2 = evolve(img1, 72, ranges)
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const c2 = await runCycle(a, vm, 2, [incPlan(0, name, img2, 1, 'cafe02cafe02cafe', ranges, 'café disk-000001.vmdk', 'café disk-000002.vmdk')])
  a.close()
  t.equal(c2.committed?.cycle, 2, 'the incremental is accepted: the mirror is not "modified"')
  const st = (await storeStatus(env.store)).vms.find((v) => v.vm === vm)
  t.notOk(st?.error, 'status reads it')
  const to = join(env.dir, 'restore-cafe')
  await whenFree(() => restorePoint(env.store, vm, 1, to, { logger: pino({ level: 'silent' }) }))
  t.ok(readFileSync(join(to, 'café disk-flat.vmdk')).equals(img1), 'point 1 restored through the mirror descriptor')
})
