// Benchmark of the esxi driver's SFTP datastore access (packages/agent
// src/esxi/sftp-files.ts) against loopback OpenSSH, same run, interleaved
// (A B A B …, each measurement in a fresh process after one warm-up of each),
// medians and ratios printed, met / NOT met per target:
//
//  1. reading a delta's changed extents over SFTP (changedRanges of the top
//     layer, each range read through the chain, 8 reads in flight like the
//     agent's read-ahead) reaches >= 70 % of the throughput of
//     `ssh host cat <the delta's extent file> > /dev/null` (the same bytes and
//     its metadata, at the speed of one SSH stream);
//  2. map() of an SEsparse delta of a 2 TiB disk holding 100,000 scattered
//     4 KiB grains, over SFTP, in < 3 s (wall, fresh process, SSH handshake
//     included).
//
// Usage: npx tsc -b && node scripts/bench-sftp.mjs [workdir] [rounds]
// (needs ~1.5 GiB of disk; a given workdir keeps its disks for the next run.)
// The SSH server is /usr/sbin/sshd on a free loopback port with fresh keys
// (the agent's test harness, packages/agent/dist/test/esxi-harness.js).
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, readSync, statSync, writeFileSync, chmodSync } from 'node:fs'
import { cpus, loadavg, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const vmdk = await import(join(root, 'packages/vmdk/dist/src/index.js'))
const GiB = 1024 ** 3
const MiB = 1024 ** 2
const self = fileURLToPath(import.meta.url)

function prng(seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

async function driverFor(conn) {
  const { createEsxiDriver } = await import(join(root, 'packages/agent/dist/src/esxi/esxi-driver.js'))
  const { pino } = await import('pino')
  return createEsxiDriver(
    { logger: pino({ level: 'silent' }) },
    {
      ssh: { host: '127.0.0.1', port: conn.port, username: conn.user, privateKeyFile: conn.keyFile, hostKeyFingerprint: conn.fingerprint },
      datastores: { bench: { access: 'sftp', hostPath: conn.dir } },
    },
  )
}

// ---- child measurements (one per process) ----
if (process.argv[2] === '--child') {
  const [, , , mode, connFile, target] = process.argv
  const conn = JSON.parse(readFileSync(connFile, 'utf8'))
  const t0 = performance.now()
  let out
  if (mode === 'sftp-changed') {
    const driver = await driverFor(conn)
    const chain = await vmdk.openChain(target, { files: driver.files })
    let bytes = 0
    let ranges = 0
    const inflight = new Set()
    for await (const r of chain.changedRanges(0)) {
      ranges++
      if (r.zero) continue
      for (let off = 0; off < r.length; off += MiB) {
        const len = Math.min(MiB, r.length - off)
        const p = chain.read(r.offset + off, len, { depth: 0 }).then((b) => {
          bytes += b.length
          inflight.delete(p)
        })
        inflight.add(p)
        if (inflight.size >= 8) await Promise.race(inflight)
      }
    }
    await Promise.all(inflight)
    await chain.close()
    await driver.close()
    out = { bytes, ranges, seconds: (performance.now() - t0) / 1000, requests: driver.sftpCounters?.requests, scratch: driver.sftpCounters?.scratchAllocated }
  } else if (mode === 'ssh-cat' || mode === 'ssh-dd') {
    const [skip, count] = [process.argv[6], process.argv[7]]
    const remote = mode === 'ssh-cat' ? `cat '${target}'` : `dd if='${target}' bs=1M iflag=skip_bytes,count_bytes skip=${skip} count=${count} status=none`
    const devnull = openSync('/dev/null', 'w')
    const code = await new Promise((resolve) => {
      const p = spawn(
        'ssh',
        ['-q', '-p', String(conn.port), '-i', conn.keyFile, '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'BatchMode=yes', `${conn.user}@127.0.0.1`, remote],
        { stdio: ['ignore', devnull, 'inherit'] },
      )
      p.on('exit', resolve)
    })
    closeSync(devnull)
    if (code !== 0) throw new Error(`ssh cat exited ${code}`)
    out = { bytes: mode === 'ssh-cat' ? statSync(target).size : Number(count), seconds: (performance.now() - t0) / 1000 }
  } else if (mode === 'sftp-map') {
    const driver = await driverFor(conn)
    const chain = await vmdk.openChain(target, { files: driver.files })
    let entries = 0
    for await (const _ of chain.map({ depth: 0 })) entries++
    await chain.close()
    await driver.close()
    out = { entries, seconds: (performance.now() - t0) / 1000, requests: driver.sftpCounters?.requests, scratch: driver.sftpCounters?.scratchAllocated, rssMB: process.resourceUsage().maxRSS / 1024 }
  }
  process.stdout.write(JSON.stringify(out))
  process.exit(0)
}

function child(...args) {
  const r = spawnSync(process.execPath, [self, '--child', ...args.map(String)], { encoding: 'utf8', maxBuffer: 64 * MiB })
  if (r.status !== 0) throw new Error(r.stderr)
  return JSON.parse(r.stdout)
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  const n = s.length
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
}
const load = () =>
  `load average ${loadavg()
    .map((x) => x.toFixed(2))
    .join(' ')} on ${cpus().length} CPUs`
function interleave(a, b, rounds) {
  child(...a)
  if (b !== undefined) child(...b)
  const ra = []
  const rb = []
  for (let i = 0; i < rounds; i++) {
    ra.push(child(...a))
    if (b !== undefined) rb.push(child(...b))
  }
  return [ra, rb]
}
const list = (rs, f) =>
  rs
    .map(f)
    .map((x) => x.toFixed(2))
    .join(' ')

const dir = process.argv[2] ?? mkdtempSync(join(tmpdir(), 'bench-sftp-'))
const ROUNDS = Math.max(3, Number(process.argv[3] ?? 5))
mkdirSync(dir, { recursive: true })
const { startSshHarness } = await import(join(root, 'packages/agent/dist/test/esxi-harness.js'))
const h = await startSshHarness()
const verdicts = []
try {
  const keyFile = join(h.dir, 'bench_user_key')
  writeFileSync(keyFile, h.userKey)
  chmodSync(keyFile, 0o600)
  const connFile = join(h.dir, 'bench-conn.json')
  writeFileSync(connFile, JSON.stringify({ port: h.port, user: h.user, keyFile, fingerprint: h.hostKeyFingerprint, dir }))
  console.log(`node ${process.version}; ${load()}; ${ROUNDS} interleaved rounds per comparison; loopback OpenSSH (${spawnSync('ssh', ['-V'], { encoding: 'utf8' }).stderr.trim()})`)
  const rand = prng(7)

  // 1. a delta with 256 MiB of changes in 1 MiB runs over a 4 GiB disk
  const base = join(dir, 'changed.vmdk')
  const top = join(dir, 'changed-000001.vmdk')
  if (!existsSync(top)) {
    const t0 = performance.now()
    await vmdk.createFlatDisk(base, 4 * GiB)
    await vmdk.createDelta(base, top, { format: 'sesparse' })
    const w = await vmdk.openWriter(top)
    const chunk = Buffer.alloc(MiB)
    const slots = new Set()
    while (slots.size < 256) slots.add(Math.floor(rand() * 4096))
    for (const s of slots) {
      for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((rand() * 2 ** 32) >>> 0, i)
      await w.write(s * MiB, chunk)
    }
    await w.close()
    console.log(`setup: 256 x 1 MiB changed runs in an SEsparse delta of a 4 GiB disk in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  }
  const extent = join(dir, /SESPARSE\s+"([^"]+)"/.exec(readFileSync(top, 'utf8'))[1])
  const [ours, cat] = interleave(['sftp-changed', connFile, top], ['ssh-cat', connFile, extent], ROUNDS)
  const oursT = median(ours.map((r) => r.bytes / r.seconds))
  const catT = median(cat.map((r) => r.bytes / r.seconds))
  console.log(
    `changed extents over SFTP: ${(ours[0].bytes / MiB).toFixed(0)} MiB in ${ours[0].ranges} ranges, ${ours[0].requests} SFTP requests (${ours[0].scratch} scratch buffers allocated): median ${(oursT / MiB).toFixed(0)} MiB/s (rounds ${list(ours, (r) => r.bytes / r.seconds / MiB)})`,
  )
  console.log(
    `baseline: ssh cat of the extent file (${(cat[0].bytes / MiB).toFixed(0)} MiB) > /dev/null: median ${(catT / MiB).toFixed(0)} MiB/s (rounds ${list(cat, (r) => r.bytes / r.seconds / MiB)})`,
  )
  const ratio = oursT / catT
  console.log(`ratio ours/baseline ${ratio.toFixed(2)}`)
  verdicts.push(`changed extents over SFTP >= 70 % of ssh cat: ${ratio >= 0.7 ? 'met' : 'NOT met'} (${(ratio * 100).toFixed(0)} %)`)

  // 2. map of a 2 TiB SEsparse delta with 100,000 scattered 4 KiB grains
  const bigBase = join(dir, 'big.vmdk')
  const bigTop = join(dir, 'big-000001.vmdk')
  if (!existsSync(bigTop)) {
    const t0 = performance.now()
    await vmdk.createFlatDisk(bigBase, 2 * 1024 * GiB)
    await vmdk.createDelta(bigBase, bigTop, { format: 'sesparse' })
    const w = await vmdk.openWriter(bigTop)
    const grains = (2 * 1024 * GiB) / 4096
    const g = Buffer.alloc(4096, 0xab)
    const picked = new Set()
    while (picked.size < 100000) picked.add(Math.floor(rand() * grains))
    for (const k of picked) await w.write(k * 4096, g)
    await w.close()
    console.log(`setup: 100,000 scattered 4 KiB grains in a 2 TiB SEsparse delta in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  }
  // the grain tables map() must read: the in-use part of the SEsparse grain-table area
  const bigExtent = join(dir, /SESPARSE\s+"([^"]+)"/.exec(readFileSync(bigTop, 'utf8'))[1])
  const fd = openSync(bigExtent, 'r')
  const hb = Buffer.alloc(512)
  readSync(fd, hb, 0, 512, 0)
  const sh = vmdk.parseSeSparseHeader(hb, bigExtent)
  readSync(fd, hb, 0, 512, sh.volatileHeaderOffset * 512)
  const vh = vmdk.parseSeSparseVolatileHeader(hb, bigExtent)
  closeSync(fd)
  const gtStart = sh.grainTablesOffset * 512
  const gtBytes = vh.freeGtNumber * sh.grainTableSize * 512
  const [maps, dds] = interleave(['sftp-map', connFile, bigTop], ['ssh-dd', connFile, bigExtent, gtStart, gtBytes], ROUNDS)
  const mapS = median(maps.map((r) => r.seconds))
  const ddS = median(dds.map((r) => r.seconds))
  console.log(
    `baseline: ssh dd of the ${vh.freeGtNumber} grain tables in use (${(gtBytes / MiB).toFixed(0)} MiB, what map() must read) > /dev/null: median ${ddS.toFixed(2)} s (rounds ${list(dds, (r) => r.seconds)}); ratio map/baseline ${(mapS / ddS).toFixed(2)}`,
  )
  console.log(
    `map over SFTP (2 TiB, 100k grains, fresh process, SSH handshake included): median ${mapS.toFixed(2)} s (rounds ${list(maps, (r) => r.seconds)}), ${maps[0].entries} entries, ${maps[0].requests} SFTP requests (${maps[0].scratch} scratch buffers allocated), max RSS ${Math.max(...maps.map((r) => r.rssMB)).toFixed(0)} MB`,
  )
  verdicts.push(`map of the 2 TiB / 100k-grain delta over SFTP < 3 s: ${mapS < 3 ? 'met' : 'NOT met'} (median ${mapS.toFixed(2)} s)`)
  console.log(load())
  for (const v of verdicts) console.log(v)
} finally {
  await h.stop()
}
