// `grainline status` of a Ceph store (and /metrics, which reads the same
// status) counts the resume point of a disk in flight from its extent log
// without the VM's lease and without holding the log (ceph-admin.ts
// resumePoint: `rados stat`, then one `rados get -` streamed and parsed a
// pipe's piece at a time, only the count kept). On a real one-node cluster,
// a VM of one 256 MiB disk with an incremental in flight, its log replaced
// behind the store; each status is taken in a child process whose peak RSS
// is measured (the log's bytes held whole — as the old `rados get` into one
// buffer did, bounded only by extentLogMaxBytes, 75 MB for this disk and
// 20–30 GB for a 100 GiB one — show there twice over):
// - 200 000 valid records (~25 MB): resume point 200 000, the status's peak
//   RSS grows by a fraction of the log;
// - 1000 valid records, then 64 MiB without a newline (a hostile tail):
//   resume point 1000, read no further than the longest record line past
//   them (same bound on RSS);
// - a log larger than a cycle of the disk can write: not read; the disk's
//   problem says so (the object, the disk, the VM, the bound, the rollback),
//   the VM WARNING, the rest of its status there (was: resume point 0 and
//   nothing said);
// - a log whose `rados get` fails: the same, with Ceph's words.
import t from 'tap'
import { execFile, execFileSync } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { haveCeph, scratchDir, startCephCluster } from '@grainline/test-utils'
import { extentLogMaxBytes, extentLogShape } from '../src/store/ceph/ceph-apply.ts'
import { CephNames, readCephState } from '../src/store/ceph/ceph-state.ts'
import { runCeph } from '../src/store/ceph/rbd-cli.ts'
import { Agent, MiB, TOKEN, incPlan, makeEnv, runCycle, seedPlan, startReceiver } from './helpers.ts'

const POOL = 'glstlog'
const cid = (n: number): string => n.toString(16).padStart(32, '0')
const skip = (await haveCeph()) ? false : 'Ceph is not installed here (.ci/run installs ceph-mon ceph-osd ceph-common)'
const run = promisify(execFile)

// The child takes one status of the pool (cephStoreReader, as `grainline status` and /metrics do) and says what it
// found and how much its peak RSS grew over it (a small young generation: garbage is collected as it goes, what is
// held shows).
const CHILD = `
import { readFileSync, writeFileSync } from 'node:fs'
const [src, pool, conf, vm] = process.argv.slice(2)
const { cephStoreReader } = await import(src + '/store/ceph/ceph-overview.js')
const { assessMirror } = await import(src + '/store-health.js')
const reader = cephStoreReader({ pool, conf })
// the peak RSS (VmHWM) reset to the RSS now (Linux clear_refs 5): a forked child starts with its parent's peak
const hwm = () => Number(/VmHWM:\\s+(\\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1])
writeFileSync('/proc/self/clear_refs', '5')
const rss = hwm()
const st = await reader.status()
const after = hwm()
const grew = after - rss
const v = st.vms.find((x) => x.vm === vm)
process.stdout.write(JSON.stringify({ rssKiB: rss, afterKiB: after, grewKiB: grew, inflight: v?.disks[0]?.inflight ?? null, committedCycle: v?.committedCycle, error: v?.error ?? null, health: v === undefined ? null : assessMirror(v) }))
`

interface Seen {
  rssKiB: number
  afterKiB: number
  grewKiB: number
  inflight: { cycle: number; mode: string; resumeSeq: number; problem?: string } | null
  committedCycle: number
  error: string | null
  health: { state: string; problems: string[] } | null
}

t.test(
  'Ceph status: the resume point of a disk in flight is counted from its extent log a piece at a time (memory bounded whatever its size), a hostile tail is read no further, a log above the bound or unreadable is named in the problems',
  { skip },
  async (t) => {
    const ceph = await startCephCluster({ pools: [POOL] })
    t.teardown(() => ceph.stop())
    const target = { pool: POOL, conf: ceph.conf }
    const env = makeEnv(join(scratchDir(t, 'grainline-ceph-stlog-'), 'env'))
    const { receiver, url } = await startReceiver(env, { store: `ceph:${POOL}`, cephConf: ceph.conf, cephLeaseSeconds: 10, retention: { keep: 10 } })
    t.teardown(() => receiver.close())
    const vm = 'vm-status-log'
    // zeros: the seed and the incremental ship zero extents only (a 256 MiB disk costs no data)
    const SIZE = 256 * MiB
    const img = Buffer.alloc(SIZE)
    let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', img, cid(1))])
    a.close()
    const ranges = [{ offset: 0, length: 64 * 1024 }]
    a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    await runCycle(a, vm, 2, [incPlan(0, 'd.vmdk', img, 1, cid(2), ranges, 'd-000001.vmdk', 'd-000002.vmdk')], { commit: false })
    a.close()
    await a.whenClosed()
    const st = await readCephState(target, new CephNames(vm).state, vm)
    const inf = st?.inflight?.disks['d.vmdk']
    if (inf === undefined) throw new Error('no d.vmdk in flight')
    const shape = extentLogShape(inf)
    const max = extentLogMaxBytes(shape)
    t.ok(max > 70 * MiB, `the bound of the log of a ${SIZE}-byte disk (sha256): ${max} bytes, above the 64 MiB tail below`)

    const dir = scratchDir(t, 'grainline-ceph-stlog-child-')
    const child = join(dir, 'status.mjs')
    await writeFile(child, CHILD)
    const src = fileURLToPath(new URL('../src', import.meta.url))
    const status = async (path = process.env.PATH): Promise<Seen> => {
      const { stdout } = await run(process.execPath, ['--max-semi-space-size=1', child, src, POOL, ceph.conf, vm], { maxBuffer: 1024 * 1024, env: { ...process.env, PATH: path } })
      const seen = JSON.parse(stdout) as Seen
      t.comment(`the status's RSS: ${seen.rssKiB} KiB at its start, its peak ${seen.afterKiB} KiB`)
      return seen
    }
    /** `n` whole records from seq 0 (data extents, sector by sector from the disk's end down: the longest offsets), each line its newline. */
    const records = (n: number): Buffer => {
      const digest = 'ab'.repeat(shape.digestBytes)
      const lines: string[] = []
      for (let seq = 0; seq < n; seq++) lines.push(`${JSON.stringify({ seq, offset: SIZE - 512 * (seq + 1), length: 512, zero: false, digest })}\n`)
      return Buffer.from(lines.join(''))
    }
    const put = async (b: Buffer): Promise<void> => {
      await runCeph(target, 'rados', ['-p', POOL, 'put', inf.log, '-'], b)
    }

    // the log as the apply left it: its one record
    const base = await status()
    t.match(base, { inflight: { cycle: 2, mode: 'incremental', resumeSeq: 1 }, committedCycle: 1, error: null }, 'the log as the apply left it: resume point 1')
    t.equal(base.inflight?.problem, undefined, 'no problem')
    t.comment(`status of a log of 1 record: peak RSS +${base.grewKiB} KiB`)

    // a large log of valid records
    const N = 200_000
    const large = records(N)
    t.ok(large.length > 24 * MiB, `${N} records: ${large.length} bytes`)
    await put(large)
    const big = await status()
    t.comment(`status of a log of ${large.length} bytes: peak RSS +${big.grewKiB} KiB`)
    t.match(big, { inflight: { cycle: 2, resumeSeq: N }, error: null }, `every record counted: resume point ${N}`)
    t.equal(big.inflight?.problem, undefined, 'no problem')
    t.ok(big.grewKiB * 1024 < large.length / 2, `the status's peak RSS grew by ${big.grewKiB} KiB, under half the log's ${large.length} bytes (it is never held whole)`)

    // valid records, then a hostile tail: 64 MiB without a newline
    const tail = Buffer.alloc(64 * MiB, 0x41)
    await put(Buffer.concat([records(1000), tail]))
    const hostile = await status()
    t.comment(`status of 1000 records and a 64 MiB line: peak RSS +${hostile.grewKiB} KiB`)
    t.match(hostile, { inflight: { cycle: 2, resumeSeq: 1000 }, error: null }, 'the records before the tail counted: resume point 1000 (as a resume starts there)')
    t.equal(hostile.inflight?.problem, undefined, 'a torn or foreign tail ends the log, as at a resume: no problem')
    t.ok(hostile.grewKiB * 1024 < 16 * MiB, `the status's peak RSS grew by ${hostile.grewKiB} KiB, not the 64 MiB tail (read no further than a record line past the records)`)

    // a log above the bound: not read, named in the problems; the status is whole
    await put(records(10))
    await runCeph(target, 'rados', ['-p', POOL, 'truncate', inf.log, String(max + 1)])
    const above = await status()
    t.match(above, { inflight: { cycle: 2, mode: 'incremental', resumeSeq: 0 }, committedCycle: 1, error: null }, 'a log above the bound: resume point 0, the rest of the status there')
    const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
    const problem = new RegExp(
      `^resume point of d\\.vmdk not counted: the extent log ${esc(inf.log)} of disk d\\.vmdk of VM ${vm} in pool ${POOL} is ${max + 1} bytes, larger than the ${max} bytes a cycle of its ${SIZE}-byte capacity can log: .*grainline mirror rollback --store ceph:${POOL} --vm ${vm}, which removes the log unread`,
    )
    t.match(above.inflight?.problem, problem, "the disk's problem: the object, the disk, the VM, the bound and the rollback")
    t.equal(above.health?.state, 'WARNING', 'the VM WARNING (a cycle in flight, its log not counted)')
    t.match(above.health?.problems, [problem, /^cycle 2 in flight/], 'the problem in its health, with the cycle in flight')
    t.ok(above.grewKiB * 1024 < 16 * MiB, `not read: peak RSS +${above.grewKiB} KiB`)

    // a log that cannot be read (its `rados get` fails, through a wrapper first on PATH): said, the status whole
    await put(records(10))
    const wrap = join(dir, 'bin')
    await mkdir(wrap)
    const realRados = execFileSync('sh', ['-c', 'command -v rados'], { encoding: 'utf8' }).trim()
    await writeFile(join(wrap, 'rados'), `#!/bin/sh\ncase "$*" in *" get ${inf.log} "*) echo "error getting ${POOL}/${inf.log}: (5) Input/output error" >&2; exit 1;; esac\nexec ${realRados} "$@"\n`, {
      mode: 0o755,
    })
    const unreadable = await status(`${wrap}:${process.env.PATH}`)
    t.match(unreadable, { inflight: { cycle: 2, mode: 'incremental', resumeSeq: 0 }, committedCycle: 1, error: null }, 'a log that cannot be read: resume point 0, the rest of the status there')
    t.match(
      unreadable.inflight?.problem,
      new RegExp(
        `^resume point of d\\.vmdk not counted: its extent log ${esc(inf.log)} in pool ${POOL} could not be read after 0 records \\(.*Input/output error.*\\); grainline status again, and if it stays, ceph -s$`,
      ),
      "the disk's problem: the object, Ceph's words, what to do",
    )
    t.match(unreadable.health?.problems, [/^resume point of d\.vmdk not counted/, /^cycle 2 in flight/], 'in its health')
    t.match((await status()).inflight, { resumeSeq: 10 }, 'read again: resume point 10')
  },
)
