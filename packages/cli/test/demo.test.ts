import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readdir } from 'node:fs/promises'
import { join, dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const bin = resolve(dirname(fileURLToPath(import.meta.url)), '../src/bin.js')

t.test('demo: sample VM, TLS receiver process, seed + incremental cycles with a writing guest, certify', async (t) => {
  const dir = join(t.testdir(), 'demo')
  const p = spawn(process.execPath, [bin, 'demo', '--dir', dir, '--disk-size', '64M', '--guest-write', '4M', '--cycles', '2'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  p.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d
  })
  p.stderr.resume()
  const [code] = (await once(p, 'exit')) as [number | null]
  t.equal(code, 0, 'demo exits 0')
  t.comment(out)
  t.match(out, /seed\s+\S+ \S+\s+\S+ \S+.*ok.*committed/)
  t.match(out, /incremental 2.*xxh64 ok\s+committed/)
  t.match(out, /all cycles committed and verified/)
  t.match(out, /points:\s+cycles 1, 2 \(restore points, .* in all\) and the mirror at cycle 3/, 'the DR site kept the earlier cycles as restore points')
  t.match(out, /grainline points --store .* --vm 'Demo VM'/)
  t.same(
    await readdir(join(dir, 'mirrors', 'Demo VM')).then((f) => f.filter((n) => n.endsWith('.vmdk')).sort()),
    ['Demo VM-flat.vmdk', 'Demo VM.vmdk', 'Demo VM_1-flat.vmdk', 'Demo VM_1.vmdk'],
    'one descriptor and one flat file per disk',
  )
  // the receiver process was stopped: nothing listens any more, no stray process holds the folder
  t.match(out, /logs:/)
})

t.test('demo refuses to wipe a folder it did not create', async (t) => {
  const dir = t.testdir({ 'precious.txt': 'keep me' })
  const p = spawn(process.execPath, [bin, 'demo', '--dir', dir, '--disk-size', '16M'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let err = ''
  p.stderr.setEncoding('utf8').on('data', (d: string) => {
    err += d
  })
  p.stdout.resume()
  const [code] = (await once(p, 'exit')) as [number | null]
  t.equal(code, 1)
  t.match(err, /not a grainline demo folder/)
  t.same(await readdir(dir), ['precious.txt'])
})

t.test('Ctrl-C stops the demo and its receiver process, exit 130', async (t) => {
  const dir = join(t.testdir(), 'demo-int')
  const p = spawn(process.execPath, [bin, 'demo', '--dir', dir, '--disk-size', '256M', '--guest-write', '8M'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  p.stderr.resume()
  await new Promise<void>((resolve) => {
    p.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d
      if (/cycle 1 \(seed/.test(out)) resolve()
    })
  })
  p.kill('SIGINT')
  const [code] = (await once(p, 'exit')) as [number | null]
  t.equal(code, 130, 'exit status 130')
  t.match(out, /interrupted/)
  const { execFileSync } = await import('node:child_process')
  const ps = execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' })
  t.notMatch(ps, new RegExp(dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')), 'no process of the demo is left running')
})
