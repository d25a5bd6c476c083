/**
 * Datastores reached only over SFTP on the driver's SSH connection (a real
 * sshd on loopback, its sftp-server read-only, the vim-cmd stand-in): no local
 * mount is configured at all. Seed + incrementals end with an exact mirror
 * (qemu-img of the frozen source as the oracle); a connection dropped in the
 * middle of the reads is retried and the cycle completes; an sftp-server that
 * hangs (SIGSTOP: a stuck datastore while SSH stays alive) is given up after
 * its deadline and the reads go on on a new channel, and a stop while it hangs
 * is heard at once; FIFOs, folders and write opens are refused over SFTP as
 * they are locally.
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { symlinkSync } from 'node:fs'
import { readdir, readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { pino } from 'pino'
import { openChain, openWriter } from '@grainline/vmdk'
import { startReceiverProcess, tokensFixture, TEST_TOKEN } from '@grainline/test-utils'
import { replicate } from '../src/replicate.ts'
import { createEsxiDriver, type EsxiDriver, type EsxiDriverInit } from '../src/esxi/esxi-driver.ts'
import { readChainFiles } from '../src/esxi/chain-files.ts'
import { DatastoreMap, resolveVmFile, type DatastoreSetting } from '../src/esxi/datastore-path.ts'
import type { VmHandle } from '../src/driver.ts'
import { startSshHarness, qemuRaw as harnessQemuRaw, mirrorFlat } from './esxi-harness.ts'
import { buildVm } from './esxi-vm-builder.ts'

const h = await startSshHarness()
t.teardown(() => h.stop())
const uuid = '5f1a2b3c-4d5e6f70-8192-a1b2c3d4e5f6'
/** the test's own view of the files (the oracle reads them locally; the agent never does) */
const localMap = { [`/vmfs/volumes/${uuid}`]: h.datastore, '/vmfs/volumes/datastore1': h.datastore }

const rx = await startReceiverProcess({ store: path.join(h.dir, 'store'), tokens: tokensFixture(h.dir).file })
t.teardown(() => rx.stop())

const VMS = [
  { id: '41', name: 'sftp 01', stem: 'sftp01', deltaFormat: 'sesparse' as const, sizes: [2 * 1024 * 1024, 1024 * 1024] },
  // large enough that reads are still outstanding when the first extent leaves (read-ahead is 8 MiB)
  { id: '42', name: 'sftp 02', stem: 'sftp02', deltaFormat: 'vmfssparse' as const, sizes: [24 * 1024 * 1024, 1024 * 1024] },
  { id: '43', name: 'sftp 03', stem: 'sftp03', deltaFormat: 'sesparse' as const, sizes: [24 * 1024 * 1024, 1024 * 1024] },
  { id: '44', name: 'sftp 04', stem: 'sftp04', deltaFormat: 'vmfssparse' as const, sizes: [24 * 1024 * 1024, 1024 * 1024] },
]
const s = await h.readState()
for (const v of VMS) {
  await buildVm(h.datastore, uuid, v.name, v.stem, { sizes: v.sizes })
  s.vms.push({ id: v.id, name: v.name, vmx: `[datastore1] ${v.name}/${v.stem}.vmx`, deltaFormat: v.deltaFormat, absoluteHints: true })
}
await h.writeState(s)

const esxi: EsxiDriverInit = {
  ssh: { host: '127.0.0.1', port: h.port, username: h.user, privateKey: h.userKey, hostKeyFingerprint: h.hostKeyFingerprint },
  // SFTP only: the host's folder of the datastore (on ESXi the default /vmfs/volumes/datastore1)
  datastores: { datastore1: { access: 'sftp', uuid, hostPath: h.datastore } },
  verifyTimeoutMs: 5000,
  pollIntervalMs: 50,
  // a loaded test machine runs the stand-in slowly; not a timing assertion
  commandTimeoutMs: 600_000,
  sftp: { retry: { initialBackoffMs: 20, maxBackoffMs: 200 } },
}

/** the frozen point of each disk (the parent of the running delta), through qemu-img */
async function frozenPoint(vm: VmHandle): Promise<Buffer[]> {
  const out: Buffer[] = []
  for (const d of vm.disks) {
    const chain = await openChain(d.path, { pathMap: localMap })
    const parent = chain.layers[1]?.path
    await chain.close()
    if (parent === undefined) throw new Error('no frozen layer')
    out.push(harnessQemuRaw(parent, localMap, h.dir))
  }
  return out
}

async function guestWrites(vm: VmHandle, seed: number, bytes: number): Promise<void> {
  for (const [k, d] of vm.disks.entries()) {
    const cap = (VMS.find((v) => v.name === vm.ref)?.sizes[k] as number) ?? 1024 * 1024
    const w = await openWriter(d.path, { pathMap: localMap })
    try {
      for (let off = 0, i = 0; off < Math.min(bytes, cap); off += 64 * 1024, i++) await w.write(((seed * 7919 + i * 104729) % (cap / 65536)) * 65536, randomBytes(4096 * (1 + (i % 4))))
      await w.writeZeroes(128 * 1024 * (1 + (seed % 3)), 16384)
    } finally {
      await w.close()
    }
  }
}

/** One cycle through `replicate`: with a driver of the test's, or (`driver` an init) one replicate makes itself, as a job does. */
async function cycle(driver: EsxiDriver | EsxiDriverInit, v: (typeof VMS)[number], n: number, opts: { writeBytes: number; onExtentSent?: () => void; signal?: AbortSignal }) {
  let frozen: Buffer[] = []
  const report = await replicate(
    { logger: pino({ level: process.env.DBG ?? 'silent' }) },
    {
      vm: v.name,
      ...('ssh' in driver ? { driver: 'esxi' as const, esxi: driver } : { driver }),
      to: `ws://127.0.0.1:${rx.port}`,
      token: TEST_TOKEN,
      stateDir: path.join(h.dir, 'agent-state'),
      progress: 'none',
      trivialMiB: 1,
      certify: 'sha256',
      maxExtentBytes: 64 * 1024,
      ...(opts.onExtentSent === undefined ? {} : { onExtentSent: opts.onExtentSent }),
      ...(opts.signal === undefined ? {} : { signal: opts.signal }),
      afterSnapshot: async (vm) => {
        frozen = await frozenPoint(vm)
        await guestWrites(vm, n * 10, opts.writeBytes)
      },
    },
  )
  return { report, frozen }
}

t.test('seed and incrementals of a VM whose datastore is reached only over SFTP', async (t) => {
  const v = VMS[0] as (typeof VMS)[number]
  const driver = createEsxiDriver({ logger: pino({ level: process.env.DBG ?? 'silent' }) }, esxi)
  t.teardown(() => driver.close())
  for (const n of [1, 2, 3]) {
    const before = { ...(driver.sftpCounters as NonNullable<EsxiDriver['sftpCounters']>) }
    const { report, frozen } = await cycle(driver, v, n, { writeBytes: 512 * 1024 })
    const vr = report.vms[0]
    t.equal(report.ok, true, `cycle ${n}: ${JSON.stringify(vr?.error ?? vr)}`)
    t.same(
      vr?.disks.map((d) => d.mode),
      n === 1 ? ['seed', 'seed'] : ['incremental', 'incremental'],
    )
    t.same(await readFile(await mirrorFlat(h, v.stem)), frozen[0], `cycle ${n}: disk 0 mirror = frozen source`)
    t.same(await readFile(await mirrorFlat(h, `${v.stem}_1`)), frozen[1], `cycle ${n}: disk 1 mirror = frozen source`)
    const c = driver.sftpCounters as NonNullable<EsxiDriver['sftpCounters']>
    // every byte shipped was read over SFTP (plus grain tables and descriptors)
    const shipped = vr?.disks.reduce((a, d) => a + d.dataBytes, 0) ?? 0
    t.ok(c.bytes - before.bytes >= shipped, `cycle ${n}: ${c.bytes - before.bytes} bytes read over SFTP ≥ ${shipped} shipped`)
    t.ok(c.opens > before.opens, 'files opened over SFTP')
    t.equal(c.retried, 0, 'no retries on a healthy connection')
  }
  const vmsd = await readFile(path.join(h.datastore, `${v.name}/${v.stem}.vmsd`), 'utf8')
  t.match(vmsd, /snapshot\.numSnapshots = "1"/)
  t.match(vmsd, /displayName = "grainline-3"/)
})

t.test('an SSH connection dropped in the middle of the reads is retried and the cycle completes', async (t) => {
  const v = VMS[1] as (typeof VMS)[number]
  const driver = createEsxiDriver({ logger: pino({ level: process.env.DBG ?? 'silent' }) }, esxi)
  t.teardown(() => driver.close())
  for (const n of [1, 2]) {
    let dropped = 0
    const { report, frozen } = await cycle(driver, v, n, {
      writeBytes: 12 * 1024 * 1024,
      onExtentSent: () => {
        // kill the sshd session processes once, when the first extent of the cycle left: reads are in flight
        if (dropped === 0) dropped = h.dropConnections()
      },
    })
    const vr = report.vms[0]
    t.equal(report.ok, true, `cycle ${n}: ${JSON.stringify(vr?.error ?? vr)}`)
    t.ok(dropped >= 1, `cycle ${n}: the SSH connection was dropped (${dropped} sshd session processes killed)`)
    t.same(await readFile(await mirrorFlat(h, v.stem)), frozen[0], `cycle ${n}: disk 0 mirror = frozen source`)
    t.same(await readFile(await mirrorFlat(h, `${v.stem}_1`)), frozen[1], `cycle ${n}: disk 1 mirror = frozen source`)
    const c = driver.sftpCounters as NonNullable<EsxiDriver['sftpCounters']>
    t.ok(c.retried >= n, `reads retried after the drop (${c.retried})`)
    t.ok(c.reopened >= n, `handles reopened on the new connection (${c.reopened})`)
  }
})

/** SIGKILL the sftp-servers a test stopped (a stopped process takes SIGKILL). */
function killStopped(pids: readonly number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
  }
}

t.test('an sftp-server that hangs in the middle of the reads is given up after its deadline; the reads go on on a new channel', async (t) => {
  const v = VMS[2] as (typeof VMS)[number]
  // the deadline also covers opening a channel, which takes seconds on a loaded machine (a new sshd session, its
  // shell, sftp-server): 5 s and 20 attempts keep this a deadline, not a race
  const driver = createEsxiDriver(
    { logger: pino({ level: process.env.DBG ?? 'silent' }) },
    { ...esxi, sftp: { requestTimeoutMs: 5000, retry: { attempts: 20, initialBackoffMs: 20, maxBackoffMs: 200 } } },
  )
  const stopped: number[] = []
  t.teardown(async () => {
    await driver.close()
    killStopped(stopped)
  })
  for (const n of [1, 2]) {
    const before = { ...(driver.sftpCounters as NonNullable<EsxiDriver['sftpCounters']>) }
    let hung = false
    const { report, frozen } = await cycle(driver, v, n, {
      writeBytes: 12 * 1024 * 1024,
      onExtentSent: () => {
        // once per cycle, when the first extent left (reads are in flight): the sftp-server stops answering, SSH stays up
        if (hung) return
        hung = true
        stopped.push(...h.signalSftpServers('SIGSTOP'))
      },
    })
    const vr = report.vms[0]
    t.equal(report.ok, true, `cycle ${n}: ${JSON.stringify(vr?.error ?? vr)}`)
    t.ok(stopped.length >= n, `cycle ${n}: sftp-servers stopped so far: ${stopped.join(', ')}`)
    t.same(await readFile(await mirrorFlat(h, v.stem)), frozen[0], `cycle ${n}: disk 0 mirror = frozen source`)
    t.same(await readFile(await mirrorFlat(h, `${v.stem}_1`)), frozen[1], `cycle ${n}: disk 1 mirror = frozen source`)
    const c = driver.sftpCounters as NonNullable<EsxiDriver['sftpCounters']>
    t.ok(c.timedOut > before.timedOut, `cycle ${n}: requests given up after their deadline (${c.timedOut - before.timedOut})`)
    t.ok(c.retried > before.retried && c.reopened > before.reopened, `cycle ${n}: retried and reopened on a new channel`)
  }
})

t.test('a stop while the sftp-server hangs is heard at once (not at the 60 s deadline); the next run resumes and is exact', async (t) => {
  const v = VMS[3] as (typeof VMS)[number]
  const stopped: number[] = []
  t.teardown(() => killStopped(stopped))
  const seedDriver = createEsxiDriver({ logger: pino({ level: process.env.DBG ?? 'silent' }) }, esxi)
  const seed = await cycle(seedDriver, v, 1, { writeBytes: 64 * 1024 })
  await seedDriver.close()
  t.equal(seed.report.ok, true, 'the seed')

  const stop = new AbortController()
  // the default deadline (60 s): only the stop can end the hung reads in time. The driver is replicate's own
  // (from the esxi settings, as in a job), so the stop reaches it the way it does in production
  let stoppedAt = 0
  const { report } = await cycle(esxi, v, 2, {
    writeBytes: 12 * 1024 * 1024,
    signal: stop.signal,
    onExtentSent: () => {
      if (stoppedAt !== 0) return
      stoppedAt = Date.now()
      stopped.push(...h.signalSftpServers('SIGSTOP'))
      setTimeout(() => stop.abort(new Error('SIGTERM')), 300)
    },
  })
  const heardIn = Date.now() - stoppedAt - 300
  t.ok(stopped.length >= 1, `sftp-servers stopped: ${stopped.join(', ')}`)
  const vr = report.vms[0]
  t.equal(report.ok, false)
  t.equal(vr?.error?.code, 'E_ABORTED', JSON.stringify(vr?.error))
  t.match(vr?.error?.message ?? '', /SIGTERM.*grainline-2 is kept/)
  t.notMatch(vr?.error?.message ?? '', /\(and /, 'the aborted reads are the stop itself, not an error beside it')
  t.ok(heardIn < 10_000, `the run ended ${heardIn} ms after the stop (the SFTP deadline is 60 s)`)
  killStopped(stopped)

  const next = createEsxiDriver({ logger: pino({ level: process.env.DBG ?? 'silent' }) }, esxi)
  t.teardown(() => next.close())
  const { report: again, frozen } = await cycle(next, v, 3, { writeBytes: 64 * 1024 })
  t.equal(again.ok, true, JSON.stringify(again.vms[0]?.error))
  t.same(await readFile(await mirrorFlat(h, v.stem)), frozen[0], 'the next run: disk 0 mirror = frozen source')
  t.same(await readFile(await mirrorFlat(h, `${v.stem}_1`)), frozen[1], 'the next run: disk 1 mirror = frozen source')
})

t.test('sftp-servers that never answer, many in a row: each costs its SSH connection (not one of the few sessions of one); then reads and vim-cmd go on', async (t) => {
  const driver = createEsxiDriver(
    { logger: pino({ level: process.env.DBG ?? 'silent' }) },
    // opening a channel here (ForceCommand's shell, then sftp-server) takes ~0.5–0.8 s on a quiet machine and
    // seconds on a loaded one: 3 s and 60 attempts keep this a deadline, not a race
    { ...esxi, sftp: { requestTimeoutMs: 3000, retry: { attempts: 60, initialBackoffMs: 10, maxBackoffMs: 50 } } },
  )
  t.teardown(async () => {
    await h.hangSftp(false)
    await driver.close()
  })
  const vmx = path.join(h.datastore, 'sftp 01', 'sftp01.vmx')
  t.ok((await driver.listVms()).length >= 1, 'vim-cmd over the connection, before')
  await h.hangSftp(true)
  const stat = driver.files.stat(vmx)
  stat.catch(() => {})
  // more hung subsystems than OpenSSH's MaxSessions (10) on one connection
  const deadline = Date.now() + 120_000
  while ((await h.hungSftpStarts()) < 11 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
  const hung = await h.hungSftpStarts()
  await h.hangSftp(false)
  t.ok(hung >= 11, `${hung} SFTP subsystems started and never answered`)
  t.equal((await stat).kind, 'file', 'the stat completed once the host answered again')
  const c = driver.sftpCounters as NonNullable<EsxiDriver['sftpCounters']>
  t.ok(c.timedOut >= 11, `${c.timedOut} channel openings given up after their deadline`)
  t.ok((await driver.listVms()).length >= 1, 'vim-cmd over the connection, after')
})

t.test('over SFTP: FIFOs and folders are refused before any open, write opens are refused', async (t) => {
  const driver = createEsxiDriver({ logger: pino({ level: process.env.DBG ?? 'silent' }) }, esxi)
  t.teardown(() => driver.close())
  const dir = path.join(h.datastore, 'hostile')
  execFileSync('mkdir', ['-p', dir])
  execFileSync('mkfifo', [path.join(dir, 'fifo.vmdk')])
  await t.rejects(driver.files.open(path.join(dir, 'fifo.vmdk'), 'r'), { code: 'ENXIO', message: /fifo, not a regular file/ })
  await t.rejects(driver.files.open(dir, 'r'), { code: 'EISDIR' })
  t.equal((await driver.files.stat(path.join(dir, 'fifo.vmdk'))).kind, 'fifo')
  await t.rejects(driver.files.stat(path.join(dir, 'missing.vmdk')), { code: 'ENOENT' })
  await t.rejects(
    readChainFiles(path.join(dir, 'fifo.vmdk'), (b, n) => path.join(b, n), { files: driver.files }),
    { code: 'E_CHAIN', message: /not a regular file \(a fifo\)/ },
  )
  const vmx = path.join(h.datastore, 'sftp 01', 'sftp01.vmx')
  await t.rejects(driver.files.open(vmx, 'r+'), { code: 'EROFS' })
  // a chain through vmdk's readers over SFTP reads what qemu-img reads locally
  const chain = await openChain(path.join(h.datastore, 'sftp 01', 'sftp01_1.vmdk'), { files: driver.files, pathMap: { ...driver.pathMap } })
  try {
    const mine = await chain.read(0, chain.capacity)
    const flat = (await readdir(path.join(h.datastore, 'sftp 01'))).filter((f) => f.startsWith('sftp01_1') && f.endsWith('.vmdk'))
    t.ok(flat.length > 0)
    t.same(Buffer.from(mine), harnessQemuRaw(chain.layers[0]?.path as string, localMap, h.dir), 'the running disk read over SFTP = qemu-img locally')
  } finally {
    await chain.close()
  }
})

t.test('over SFTP: a descriptor naming a file off the datastore ("..", absolute, a link out) is refused; nothing falls back to the proxy\'s disk', async (t) => {
  const driver = createEsxiDriver({ logger: pino({ level: process.env.DBG ?? 'silent' }) }, esxi)
  t.teardown(() => driver.close())
  const dir = path.join(h.datastore, 'hostile-paths')
  execFileSync('mkdir', ['-p', dir])
  // a file of the proxy (here the same machine as the host) outside the datastore
  const secret = path.join(h.dir, 'proxy-secret.txt')
  await writeFile(secret, Buffer.alloc(4096, 'TOKEN=supersecret\n'))
  const descriptor = (extent: string): string => `# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="vmfs"\n\nRW 8 VMFS "${extent}"\n\nddb.virtualHWVersion = "19"\n`
  const names = { up: path.relative(dir, secret), absolute: secret, link: 'linked-flat.vmdk' }
  symlinkSync(secret, path.join(dir, 'linked-flat.vmdk'))
  for (const [kind, name] of Object.entries(names)) {
    const p = path.join(dir, `${kind}.vmdk`)
    await writeFile(p, descriptor(name))
    await t.rejects(openChain(p, { files: driver.files, pathMap: { ...driver.pathMap } }), { name: 'VmdkError', code: 'E_OUTSIDE_ROOT', file: p }, `${kind}: openChain`)
    if (kind !== 'link') {
      const map = DatastoreMap.from(esxi.datastores as Record<string, DatastoreSetting>)
      await t.rejects(
        readChainFiles(p, (b, n) => resolveVmFile(map, b, n), { files: driver.files }),
        { code: 'E_DATASTORE', message: /outside every mapped datastore/ },
        `${kind}: readChainFiles`,
      )
    }
  }
  // the link itself, and a path off every datastore, through the driver's own reader
  await t.rejects(driver.files.open(path.join(dir, 'linked-flat.vmdk'), 'r'), { code: 'E_OUTSIDE_ROOT', message: /through a symbolic link/ })
  await t.rejects(driver.files.stat(secret), { code: 'E_OUTSIDE_ROOT', message: /on no mapped datastore/ })
})
