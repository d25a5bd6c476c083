#!/usr/bin/env node
/**
 * The agent's side of a `--scrub 32` slice (issue #13: a scrub's extra time
 * against 1/32 of a certify), A/B in one process, interleaved per round:
 *
 *   blocks  the former path: each 1 MiB block read alone through the chain (4 in flight), then digested
 *   spans   block-check.ts now: ViewBlockDigests over the slice (2 MiB reads into reused buffers;
 *           a slice of ≥ 64 MiB asks the view's holes and does not read them)
 *   certify/32  1/32 of the agent's certify read (4 MiB sequential reads digested), for scale
 *
 *   node scripts/bench-scrub-read.mjs [--size-gib 1] [--rounds 9] [--fill sparse|realistic]
 *
 * Each round takes the next slice of the rotation. Medians and the load average are printed.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { createSampleVm } = await import(join(root, 'packages/agent/dist/src/index.js'))
const { ViewBlockDigests } = await import(join(root, 'packages/agent/dist/src/view-block-digests.js'))
const { SCRUB_HOLE_ASK_MIN_BYTES } = await import(join(root, 'packages/agent/dist/src/block-check.js'))
const { openChain, keptSeekHelper } = await import(join(root, 'packages/vmdk/dist/src/index.js'))
const { blockDigest, createDigest, initDigests } = await import(join(root, 'protocol/dist/src/index.js'))

const { values } = parseArgs({ options: { 'size-gib': { type: 'string', default: '1' }, rounds: { type: 'string', default: '9' }, fill: { type: 'string', default: 'sparse' } } })
const MiB = 1024 ** 2
const size = Number(values['size-gib']) * 1024 * MiB
const rounds = Number(values.rounds)
const load = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}
await initDigests()
const dir = mkdtempSync(join(tmpdir(), 'grainline-bench-scrub-read-'))
try {
  const vm = await createSampleVm(dir, { name: 'b', disks: [{ sizeBytes: size, fill: values.fill }], seed: 1 })
  const chain = await openChain(vm.disks[0])
  const blocks = Math.ceil(size / MiB)
  const per = Math.ceil(blocks / 32)
  const sliceBytes = per * MiB
  const noHoles = { capacity: chain.capacity, read: (o, n, d) => chain.read(o, n, d), readInto: (b, at, o, n, d) => chain.readInto(b, at, o, n, d) }
  const byBlock = async (from, to) => {
    const reads = []
    let issued = from
    let x = 0
    for (let b = from; b < to; b++) {
      while (reads.length < 4 && issued < to) reads.push(chain.read(issued++ * MiB, MiB, { depth: 0 }))
      x ^= blockDigest('xxh64', await reads.shift())[0]
    }
    return x
  }
  const bySpan = async (from, to, holes = sliceBytes >= SCRUB_HOLE_ASK_MIN_BYTES) => {
    // the agent runs once per cycle: its SEEK_DATA helper starts once per slice
    keptSeekHelper.close()
    const src = new ViewBlockDigests({
      chain: holes ? chain : noHoles,
      depth: 0,
      blockSize: MiB,
      algorithm: 'xxh64',
      fromBlock: from,
      toBlock: to,
      aheadBlocks: 65536,
    })
    src.start()
    let x = 0
    for (let b = from; b < to; b++) x ^= (await src.next())[0]
    await src.close()
    return x
  }
  const certifyPart = async (from, to) => {
    const h = createDigest('xxh64')
    for (let o = from * MiB; o < to * MiB; o += 4 * MiB) h.update(await chain.read(o, Math.min(4 * MiB, to * MiB - o), { depth: 0 }))
    return h.digest()[0]
  }
  const t = { blocks: [], spans: [], read: [], certify: [] }
  console.error(`# ${values['size-gib']} GiB ${values.fill}, slices of ${per} MiB (holes ${sliceBytes >= SCRUB_HOLE_ASK_MIN_BYTES ? 'asked' : 'read'}), ${rounds} rounds; load ${load()}`)
  for (let r = 0; r < rounds; r++) {
    const from = (r % 32) * per
    const to = Math.min(blocks, from + per)
    const order = r % 2 === 0 ? ['blocks', 'spans', 'read', 'certify'] : ['read', 'spans', 'blocks', 'certify']
    const ms = {}
    for (const k of order) {
      const t0 = performance.now()
      await (k === 'blocks' ? byBlock(from, to) : k === 'spans' ? bySpan(from, to) : k === 'read' ? bySpan(from, to, false) : certifyPart(from, to))
      ms[k] = performance.now() - t0
      t[k].push(ms[k])
    }
    console.error(
      `slice ${from}–${to}: blocks ${ms.blocks.toFixed(0)} ms, spans ${ms.spans.toFixed(0)} ms, spans with the holes read ${ms.read.toFixed(0)} ms, certify part ${ms.certify.toFixed(0)} ms; load ${load()}`,
    )
  }
  await chain.close()
  console.log(
    `| ${values['size-gib']} GiB ${values.fill}, a 1/32 slice (${per} MiB), agent side | block by block (before) | spans (now) | before / now | spans, holes read, not asked | 1/32 of the certify read | now / (certify / 32) | load |`,
  )
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |')
  console.log(
    `| median of ${rounds}, interleaved | ${median(t.blocks).toFixed(0)} ms | ${median(t.spans).toFixed(0)} ms | ${(median(t.blocks) / median(t.spans)).toFixed(2)}× | ${median(t.read).toFixed(0)} ms | ${median(t.certify).toFixed(0)} ms | ${(median(t.spans) / median(t.certify)).toFixed(2)} | ${load()} |`,
  )
} finally {
  rmSync(dir, { recursive: true, force: true })
}
