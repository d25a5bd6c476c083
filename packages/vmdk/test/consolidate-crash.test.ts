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
async function build(dir: string, seed: number): Promise<string> {
  const rand = prng(seed)
  const model = Buffer.alloc(SIZE)
  await createFlatDisk(join(dir, 'vm.vmdk'), SIZE)
  const fill = async (path: string, n: number): Promise<void> => {
    const w = await openWriter(path)
    for (let i = 0; i < n; i++) {
      const len = 4096 * (1 + Math.floor(rand() * 64))
      const off = Math.floor((rand() * (SIZE - len)) / 512) * 512
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

/**
 * Run consolidate in a child process that reports every completed step on stdout
 * and then waits for a go-ahead on stdin. Resolves the number of steps it
 * reported. With `killAt` = k, the child is killed with SIGKILL right after its
 * k-th step: while it waits (`exact`, the kill lands exactly there), or just
 * after it was let go (`after`, the kill lands somewhere in the next step).
 * No timers: every kill point is defined by the child's own progress.
 */
async function runChild(dir: string, killAt?: { step: number; mode: 'exact' | 'after' }): Promise<number> {
  const script = join(dir, 'run.mjs')
  writeFileSync(
    script,
    [
      "import { readSync, writeSync } from 'node:fs'",
      `const m = await import(${JSON.stringify(indexUrl)})`,
      'const go = Buffer.alloc(1)',
      'const wait = () => { for (;;) { try { if (readSync(0, go, 0, 1, null) === 1) return } catch (e) { if (e.code !== "EAGAIN") throw e; Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1) } } }',
      `await m.consolidate(${JSON.stringify(join(dir, 'vm-000001.vmdk'))}, { onProgress: (p) => { writeSync(1, p.step + '\\n'); wait() } })`,
      "writeSync(1, 'done\\n')",
    ].join('\n'),
  )
  const cp = spawn(process.execPath, [script], { stdio: ['pipe', 'pipe', 'inherit'] })
  let steps = 0
  let buffered = ''
  cp.stdout.setEncoding('utf8')
  cp.stdout.on('data', (chunk: string) => {
    buffered += chunk
    for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
      const line = buffered.slice(0, nl)
      buffered = buffered.slice(nl + 1)
      if (line === 'done') continue
      steps++
      if (killAt !== undefined && steps === killAt.step) {
        if (killAt.mode === 'after') cp.stdin.write('g')
        cp.kill('SIGKILL')
      } else {
        cp.stdin.write('g')
      }
    }
  })
  cp.stdin.on('error', () => {}) // the child may be gone when we answer
  await once(cp, 'exit')
  return steps
}

t.test('consolidate killed after each kind of step: the top reads the same, a rerun finishes', async (t) => {
  const root = t.testdir()
  const ref = join(root, 'ref')
  mkdirSync(ref)
  const want = await build(ref, 1)
  const total = await runChild(ref)
  t.equal(qemuDigest(join(ref, 'vm-000002.vmdk'), ref), want, 'uninterrupted run')
  t.ok(total > 5, `the merge reports its steps (${total})`)
  const rand = prng(5)
  // kill points: right after recording the CID, mid-copy, after the flush, after the
  // grandchild is re-pointed, after the parent's new CID, and random ones in between
  const points: Array<{ step: number; mode: 'exact' | 'after' }> = [
    { step: 1, mode: 'exact' },
    { step: Math.floor(total / 2), mode: 'exact' },
    { step: total - 3, mode: 'exact' },
    { step: total - 2, mode: 'exact' },
    { step: total - 1, mode: 'exact' },
  ]
  for (let i = 0; i < 5; i++) points.push({ step: 1 + Math.floor(rand() * (total - 1)), mode: i % 2 === 0 ? 'after' : 'exact' })
  const phases = new Set<string>()
  let sawBroken = 0
  let sawIntact = 0
  for (const [i, kill] of points.entries()) {
    const dir = join(root, `run${i}`)
    mkdirSync(dir)
    t.equal(await build(dir, 1), want)
    await runChild(dir, kill)
    const top = join(dir, 'vm-000002.vmdk')
    const mid = join(dir, 'vm-000001.vmdk')
    phases.add(!existsSync(mid) ? 'finished' : readFileSync(mid, 'utf8').includes('consolidateCID') ? 'interrupted after recording the CID' : 'interrupted before recording the CID')
    try {
      const c = await openChain(top)
      t.equal(await chainDigest(c), want, `kill after step ${kill.step} (${kill.mode}): the top still reads the same`)
      await c.close()
      sawIntact++
    } catch (err) {
      // only the documented window: a grandchild already points at the parent's new CID
      t.ok(isVmdkError(err) && err.code === 'E_CHAIN_CID', `kill after step ${kill.step}: ${String(err)}`)
      sawBroken++
    }
    if (existsSync(join(dir, 'vm-000001.vmdk'))) await consolidate(join(dir, 'vm-000001.vmdk'))
    const c = await openChain(top)
    t.equal(c.layers.length, 2, 'merged')
    t.equal(await chainDigest(c), want, `kill after step ${kill.step}: after the rerun`)
    await c.close()
    t.equal(qemuDigest(top, dir), want, 'and QEMU agrees')
  }
  t.comment(`${total} steps in a full run; phases hit: ${[...phases].join(', ')}`)
  t.ok(phases.has('interrupted after recording the CID'), 'kills landed mid-merge')
  t.ok(sawBroken > 0, 'a kill landed between re-pointing the grandchild and the parent CID (the documented window)')
  t.comment(`intact after kill: ${sawIntact}, grandchild waiting for the rerun: ${sawBroken}`)
})
