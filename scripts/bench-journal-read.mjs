#!/usr/bin/env node
/**
 * How long the receiver takes to read a disk's journal back — what a resume
 * (DiskOpen of a cycle in flight) and a rollback wait for before they answer —
 * and, with `--undo`, to undo it (a rollback: every extent's old contents
 * written back, newest first, then fdatasync).
 *
 *   node scripts/bench-journal-read.mjs [--records 200000] [--grains 0] [--rounds 3] [--build DIR …] [--undo] [--help]
 *
 * Writes one journal of `--records` extent records (over zeros, ~140 bytes
 * each, as an incremental of 4 KiB extents into a thin mirror journals them;
 * every 997th with 4 KiB of old contents) with the receiver's own `Journal`,
 * then per round, in the same invocation: the baseline `dd` of the file to
 * /dev/null (1 MiB blocks, the page cache warm as for the reads), and
 * the read of each build given (`--build`, repeatable, default this
 * checkout; each must be built: `npx tsc -b`) in a fresh process each:
 * `scanJournal` where the build has it (what a resume and a rollback read
 * first, holding no record; the undo then reads the records back a window at
 * a time), else `readJournal` (every record held).
 * Printed: per build the median time, records per second, µs per record and
 * the ratio to dd's median, with the load average. `--undo`: each read is
 * followed by `undoJournal` onto a fresh sparse target, timed apart, against
 * the baseline `dd` writing the same bytes sequentially (4 KiB blocks,
 * `conv=notrunc,fdatasync`) into another fresh target.
 * `--grains N`: the journal also indexes N grains of a reverse increment (a
 * disk that keeps restore points; type 4 records of 2,048 entries, one per
 * saved 8 MiB run, as the receiver writes them, after every 5,000th extent
 * record and at the end). Each read also prints what it returns holds in
 * memory (heapUsed + arrayBuffers after a full GC).
 */
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { loadavg, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { parseArgs, promisify } from 'node:util'

const exec = promisify(execFile)
const here = dirname(fileURLToPath(import.meta.url))
const { values } = parseArgs({
  options: {
    records: { type: 'string', default: '200000' },
    rounds: { type: 'string', default: '3' },
    build: { type: 'string', multiple: true },
    undo: { type: 'boolean', default: false },
    grains: { type: 'string', default: '0' },
    help: { type: 'boolean', default: false },
    // internal: the child that reads (a fresh process per read)
    'read-with': { type: 'string' },
    file: { type: 'string' },
    target: { type: 'string' },
  },
})
if (values.help) {
  const src = await import('node:fs').then((fs) => fs.readFileSync(fileURLToPath(import.meta.url), 'utf8'))
  process.stdout.write(`${(/\/\*\*\n([\s\S]*?)\*\//.exec(src)?.[1] ?? '').replace(/^ \* ?/gm, '')}`)
  process.exit(0)
}
const journalModule = (build) => pathToFileURL(join(build, 'packages/receiver/dist/src/journal.js')).href

if (values['read-with'] !== undefined) {
  const { readJournal, scanJournal, undoJournal } = await import(journalModule(values['read-with']))
  const { setFlagsFromString } = await import('node:v8')
  const { runInNewContext } = await import('node:vm')
  setFlagsFromString('--expose_gc')
  const gc = runInNewContext('gc')
  // settled, then two full GCs: the read's freed windows (1 MiB buffers) are not counted as held
  const mem = async () => {
    await new Promise((r) => setTimeout(r, 50))
    gc()
    gc()
    const m = process.memoryUsage()
    return m.heapUsed + m.arrayBuffers
  }
  const m0 = await mem()
  const t0 = performance.now()
  // a build with scanJournal reads as a resume and a rollback do (no record held); an older one holds them all
  const c = scanJournal === undefined ? await readJournal(values.file) : await scanJournal(values.file)
  const ms = performance.now() - t0
  const bytes = (await mem()) - m0
  let undoMs
  if (values.target !== undefined && c !== undefined) {
    const t1 = performance.now()
    await undoJournal(values.file, c, values.target)
    undoMs = performance.now() - t1
  }
  const read = scanJournal === undefined ? 'readJournal' : 'scanJournal'
  process.stdout.write(JSON.stringify({ ms, undoMs, bytes, read, records: c?.extentRecords ?? c?.extents.length ?? 0, grains: c?.grains.length ?? 0 }))
  process.exit(0)
}

const records = Number(values.records)
const rounds = Number(values.rounds)
if (!Number.isSafeInteger(records) || records < 1) throw new Error('--records: a positive integer')
const grains = Number(values.grains)
if (!Number.isSafeInteger(grains) || grains < 0 || grains > 2 ** 28) throw new Error('--grains: a whole number up to 2^28')
const builds = (values.build ?? [join(here, '..')]).map((b) => resolve(b))
const median = (xs) => {
  const v = [...xs].sort((p, q) => p - q)
  return v.length % 2 === 1 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2
}

const dir = await mkdtemp(join(tmpdir(), 'grainline-bench-journal-'))
try {
  const file = join(dir, 'disk.journal')
  const { Journal } = await import(journalModule(join(here, '..')))
  const head = { cycleId: 'ab'.repeat(8), cycle: 2, name: 'disk.vmdk', mode: 'incremental', capacity: 2 ** 40, baseSize: 2 ** 40 }
  const j = await Journal.create(file, head)
  const old = Buffer.alloc(4096, 0x5a)
  // grains of 8 MiB runs spread over the 1 TiB disk (2^28 grains), crcs over the whole u32 range
  // (run r at grain (r × 7919 mod 2^17) × 2048: distinct grains for the first 2^17 runs)
  let grainsDone = 0
  let run = 0
  const appendGrains = (upTo) => {
    while (grainsDone < upTo) {
      const n = Math.min(2048, upTo - grainsDone)
      const base = ((run++ * 7919) % 2 ** 17) * 2048
      j.appendGrains(Array.from({ length: n }, (_, k) => ({ grain: base + k, crc: Math.imul(base + k, 2654435761) >>> 0 })))
      grainsDone += n
    }
  }
  for (let i = 0; i < records; i++) {
    const e = { seq: i, offset: i * 8192, length: 4096, zero: false, digest: i.toString(16).padStart(16, '0') }
    if (i % 997 === 0) j.appendExtent(e, old)
    else j.appendExtentOverZeros(e, e.offset, 4096)
    if (i % 5000 === 4999) {
      appendGrains(Math.floor((grains * (i + 1)) / records))
      j.appendApplied(i)
      await j.flush(false)
    }
  }
  appendGrains(grains)
  await j.flush(true)
  await j.close()
  const { size } = await import('node:fs').then((fs) => fs.statSync(file))
  process.stderr.write(`journal: ${records} records${grains > 0 ? ` and ${grains} grains` : ''}, ${(size / 2 ** 20).toFixed(1)} MiB\n`)

  const dd = []
  const ddWrite = []
  const reads = new Map(builds.map((b) => [b, []]))
  const held = new Map(builds.map((b) => [b, []]))
  const how = new Map()
  const undos = new Map(builds.map((b) => [b, []]))
  const target = join(dir, 'disk-flat.vmdk')
  // a fresh sparse target of the journal's span (its base size): what a rollback writes the old contents into
  const freshTarget = async () => {
    await rm(target, { force: true })
    await exec('truncate', ['-s', String(records * 8192), target])
  }
  const loads = []
  for (let r = 0; r < rounds; r++) {
    loads.push(loadavg()[0])
    let t0 = performance.now()
    await exec('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M'])
    dd.push(performance.now() - t0)
    if (values.undo) {
      await freshTarget()
      t0 = performance.now()
      await exec('dd', ['if=/dev/zero', `of=${target}`, 'bs=4096', `count=${records}`, 'conv=notrunc,fdatasync'])
      ddWrite.push(performance.now() - t0)
    }
    // the builds' order rotates per round
    for (const b of [...builds.slice(r % builds.length), ...builds.slice(0, r % builds.length)]) {
      if (values.undo) await freshTarget()
      const { stdout } = await exec(process.execPath, [fileURLToPath(import.meta.url), '--read-with', b, '--file', file, ...(values.undo ? ['--target', target] : [])], {
        maxBuffer: 1 << 20,
      })
      const got = JSON.parse(stdout)
      if (got.records !== records) throw new Error(`${b}: read ${got.records} records of ${records}`)
      if (got.grains !== grains) throw new Error(`${b}: read ${got.grains} grains of ${grains}`)
      reads.get(b).push(got.ms)
      how.set(b, got.read)
      held.get(b).push(got.bytes)
      if (values.undo) undos.get(b).push(got.undoMs)
    }
  }
  /** `median ms [each round]` of a build's times */
  const summary = (times) => `${median(times).toFixed(0)} ms [${times.map((x) => x.toFixed(0)).join(' ')}]`
  const ddMs = median(dd)
  console.log(`dd of the journal (baseline): ${ddMs.toFixed(1)} ms (${(size / 2 ** 20 / (ddMs / 1000)).toFixed(0)} MiB/s)`)
  for (const b of builds) {
    const ms = median(reads.get(b))
    console.log(`${how.get(b)} ${b}: ${summary(reads.get(b))}, ${Math.round(records / (ms / 1000))} records/s, ${((ms * 1000) / records).toFixed(1)} µs per record, ${(ms / ddMs).toFixed(1)}× dd`)
    const mib = median(held.get(b)) / 2 ** 20
    console.log(
      `  what it returns held in memory: ${mib.toFixed(1)} MiB median (${((mib * 2 ** 20) / records).toFixed(1)} bytes a record${grains > 0 ? `, ${((mib * 2 ** 20) / grains).toFixed(1)} a grain with the extents' share` : ''})`,
    )
  }
  if (values.undo) {
    const wMs = median(ddWrite)
    console.log(`dd writing the same ${records} × 4 KiB sequentially, fdatasync (undo baseline): ${wMs.toFixed(1)} ms`)
    for (const b of builds) {
      const ms = median(undos.get(b))
      console.log(`undoJournal ${b}: ${summary(undos.get(b))}, ${((ms * 1000) / records).toFixed(1)} µs per extent, ${(ms / wMs).toFixed(1)}× dd`)
    }
  }
  console.log(`load average over the rounds: ${loads.map((l) => l.toFixed(1)).join(' ')}`)
} finally {
  await rm(dir, { recursive: true, force: true })
}
