import t from 'tap'
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { once } from 'node:events'
import { createFlatDisk, createDelta, openWriter, openChain, consolidate, isVmdkError } from '../src/index.ts'
import { chainDigest, prng, qemuDigest } from './helpers.ts'

const MiB = 1024 * 1024
const SIZE = 24 * MiB
const indexUrl = new URL('../src/index.js', import.meta.url).href

/** base (flat) ← mid (SEsparse, the one consolidated) ← top (hosted); returns the top's digest. */
async function build (dir: string, seed: number): Promise<string> {
  const rand = prng(seed)
  const model = Buffer.alloc(SIZE)
  await createFlatDisk(join(dir, 'vm.vmdk'), SIZE)
  const fill = async (path: string, n: number): Promise<void> => {
    const w = await openWriter(path)
    for (let i = 0; i < n; i++) {
      const len = 4096 * (1 + Math.floor(rand() * 64))
      const off = Math.floor(rand() * (SIZE - len) / 512) * 512
      const data = Buffer.alloc(len, 1 + Math.floor(rand() * 250))
      await w.write(off, data)
      model.set(data, off)
    }
    await w.close()
  }
  await fill(join(dir, 'vm.vmdk'), 20)
  await createDelta(join(dir, 'vm.vmdk'), join(dir, 'vm-000001.vmdk'), { format: 'sesparse' })
  await fill(join(dir, 'vm-000001.vmdk'), 400)
  await createDelta(join(dir, 'vm-000001.vmdk'), join(dir, 'vm-000002.vmdk'), { format: 'hosted' })
  await fill(join(dir, 'vm-000002.vmdk'), 30)
  return createHash('sha256').update(model).digest('hex')
}

/** Run consolidate in a child process, SIGKILL it after `ms` (or let it finish). */
async function runChild (dir: string, ms: number | undefined): Promise<number> {
  const script = join(dir, 'run.mjs')
  writeFileSync(script, `const m = await import(${JSON.stringify(indexUrl)}); await m.consolidate(${JSON.stringify(join(dir, 'vm-000001.vmdk'))}); process.stdout.write('done')`)
  const started = performance.now()
  const cp = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] })
  let timer: NodeJS.Timeout | undefined
  if (ms !== undefined) timer = setTimeout(() => { cp.kill('SIGKILL') }, ms)
  await once(cp, 'exit')
  if (timer !== undefined) clearTimeout(timer)
  return performance.now() - started
}

t.test('consolidate killed at random points: the top reads the same, a rerun finishes', async t => {
  const root = t.testdir()
  const ref = join(root, 'ref')
  mkdirSync(ref)
  const want = await build(ref, 1)
  const full = await runChild(ref, undefined)
  t.equal(qemuDigest(join(ref, 'vm-000002.vmdk'), ref), want, 'uninterrupted run')
  const rand = prng(5)
  const phases = new Set<string>()
  let sawBroken = 0
  let sawIntact = 0
  for (let i = 0; i < 10; i++) {
    const dir = join(root, `run${i}`)
    mkdirSync(dir)
    t.equal(await build(dir, 1), want)
    await runChild(dir, 40 + rand() * full)
    const top = join(dir, 'vm-000002.vmdk')
    const mid = join(dir, 'vm-000001.vmdk')
    phases.add(!existsSync(mid) ? 'finished' : readFileSync(mid, 'utf8').includes('consolidateCID') ? 'interrupted after recording the CID' : 'interrupted before recording the CID')
    try {
      const c = await openChain(top)
      t.equal(await chainDigest(c), want, `kill ${i}: the top still reads the same`)
      await c.close()
      sawIntact++
    } catch (err) {
      // only the documented window: a grandchild already points at the parent's new CID
      t.ok(isVmdkError(err) && err.code === 'E_CHAIN_CID', `kill ${i}: ${String(err)}`)
      sawBroken++
    }
    if (existsSync(join(dir, 'vm-000001.vmdk'))) await consolidate(join(dir, 'vm-000001.vmdk'))
    const c = await openChain(top)
    t.equal(c.layers.length, 2, 'merged')
    t.equal(await chainDigest(c), want, `kill ${i}: after the rerun`)
    await c.close()
    t.equal(qemuDigest(top, dir), want, 'and QEMU agrees')
  }
  t.comment(`full run ${full.toFixed(0)} ms; phases hit: ${[...phases].join(', ')}`)
  t.ok(phases.has('interrupted after recording the CID'), 'some kills landed mid-merge')
  t.comment(`intact after kill: ${sawIntact}, grandchild waiting for the rerun: ${sawBroken}`)
})
