import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdirSync } from 'node:fs'
import { readdir } from 'node:fs/promises'
import { join, dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const bin = resolve(dirname(fileURLToPath(import.meta.url)), '../src/bin.js')

t.test('demo: sample VM, TLS receiver process, seed + incremental cycles with a writing guest, certify', async (t) => {
  // run from a folder of its own, the demo's folder given relative to it and named as a shell would mangle it
  const work = t.testdir()
  const rel = "demo it's here"
  const dir = join(work, rel)
  const p = spawn(process.execPath, [bin, 'demo', '--dir', rel, '--disk-size', '64M', '--guest-write', '4M', '--cycles', '2'], { cwd: work, stdio: ['ignore', 'pipe', 'pipe'] })
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

  // "Try next": each command split as /bin/sh splits it and run from another folder works on the demo's files
  const tryNext = out.slice(out.indexOf('Try next:'))
  const commands = tryNext.split('\n').filter((l) => l.startsWith('  grainline '))
  t.equal(commands.length, 6, 'six commands to try')
  const elsewhere = join(work, 'elsewhere')
  mkdirSync(elsewhere)
  for (const line of commands) {
    const argv = shWords(line)
    t.equal(argv[0], 'grainline', line)
    const paths = argv.filter((a) => a.includes(rel))
    t.ok(paths.length > 0 && paths.every((a) => a.startsWith(`${dir}/`)), `${argv[1]}: its paths absolute, in the demo's folder, whole`)
  }
  for (const sub of ['status', 'info', 'points', 'restore']) {
    const line = commands.find((l) => l.startsWith(`  grainline ${sub} `)) ?? ''
    const argv = shWords(line)
    const r = spawnSync(process.execPath, [bin, ...argv.slice(1)], { cwd: elsewhere, encoding: 'utf8' })
    t.equal(r.status, 0, `grainline ${sub}, run from another folder: ${r.stderr}`)
  }
  t.ok(
    (await readdir(join(dir, 'restored-2'))).some((f) => f.endsWith('.vmx')),
    "restore's command made the VM folder it names",
  )
  // the receiver and replicate lines name files that are there
  for (const sub of ['receive', 'replicate']) {
    const argv = shWords(commands.find((l) => l.startsWith(`  grainline ${sub} `)) ?? '')
    for (const a of argv.filter((a) => a.startsWith(`${dir}/`) && !a.endsWith('agent-state'))) t.ok(existsSync(a), `${sub}: ${a} is there`)
  }
  const rm = /^Remove it all: (.*?) {3}\(/m.exec(tryNext)?.[1] ?? ''
  t.same(shWords(rm), ['rm', '-rf', dir], 'the removal names the demo folder, absolute')
  t.equal(spawnSync('/bin/sh', ['-c', rm], { cwd: elsewhere }).status, 0)
  t.notOk(existsSync(dir), 'and removes it when pasted in another folder')
})

/** The words /bin/sh makes of a command line (its `# comment` dropped). */
function shWords(line: string): string[] {
  const r = spawnSync('/bin/sh', ['-c', `set -- ${line}\nfor a in "$@"; do printf '%s\\0' "$a"; done`], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`/bin/sh could not split ${line}: ${r.stderr}`)
  return r.stdout.split('\0').slice(0, -1)
}

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
