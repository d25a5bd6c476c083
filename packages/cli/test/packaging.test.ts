/**
 * What ships beside the code: the systemd units in contrib/systemd verify
 * with `systemd-analyze verify` (pointed at this checkout's `grainline`), and
 * the command lines they run are ones the CLI accepts; the package's tarball
 * holds the `grainline` bin and its compiled code.
 */
import t from 'tap'
import { execFile } from 'node:child_process'
import { readdir, readFile, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { createSampleVm } from '@grainline/agent'
import { runNode, scratchDir } from '@grainline/test-utils'

const exec = promisify(execFile)
// packing and installing 65 packages takes minutes on a loaded 2-core machine
t.setTimeout(30 * 60_000)
const here = dirname(fileURLToPath(import.meta.url))
// compiled to dist/test/: the package folder is two up
const cliDir = resolve(here, '../..')
const repo = resolve(cliDir, '../..')
const unitsDir = join(repo, 'contrib/systemd')
const binJs = join(cliDir, 'bin/grainline.js')

async function haveSystemdAnalyze(): Promise<boolean> {
  try {
    await exec('systemd-analyze', ['--version'])
    return true
  } catch {
    return false
  }
}

/** The ExecStart= lines of a unit, split into words (the units use no quoting). */
const execStarts = (unit: string): string[][] =>
  unit
    .split('\n')
    .filter((l) => l.startsWith('ExecStart='))
    .map((l) => l.slice('ExecStart='.length).trim().split(/\s+/))

t.test('the systemd units verify and run commands the CLI accepts', async (t) => {
  const names = (await readdir(unitsDir)).sort()
  t.same(names, ['grainline-agent.service', 'grainline-agent.timer', 'grainline-receiver.service'])
  const dir = scratchDir(t)
  const files: string[] = []
  for (const n of names) {
    const text = await readFile(join(unitsDir, n), 'utf8')
    // the units name the installed command; verify them against this checkout's
    await writeFile(join(dir, n), text.replaceAll('/usr/bin/grainline', binJs))
    files.push(join(dir, n))
  }
  if (await haveSystemdAnalyze()) {
    const r = await exec('systemd-analyze', ['verify', ...files]).then(
      (o) => ({ code: 0, stderr: o.stderr }),
      (err: { code?: number; stderr?: string }) => ({ code: err.code ?? 1, stderr: err.stderr ?? '' }),
    )
    t.equal(r.code, 0, `systemd-analyze verify: ${r.stderr}`)
    // unknown keys and bad values are only warnings to systemd: none allowed here
    t.notMatch(r.stderr, /Unknown|ignoring|Failed|invalid/i, r.stderr)
  } else {
    t.fail('systemd-analyze is not installed (apt install systemd); .ci/run installs it')
  }

  // every ExecStart is a grainline command whose flags the CLI knows: with the
  // settings files absent it stops on the missing file (exit 2), never on an
  // unknown flag
  const commands = (await Promise.all(names.map(async (n) => execStarts(await readFile(join(unitsDir, n), 'utf8'))))).flat()
  t.equal(commands.length, 2, 'one command per service')
  for (const words of commands) {
    t.equal(words[0], '/usr/bin/grainline')
    const args = words.slice(1).map((w) => w.replace('/etc/grainline', join(dir, 'etc')).replace('/var/lib/grainline', join(dir, 'state')))
    const r = await runNode(binJs, args)
    t.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`)
    t.notMatch(r.stderr, /Unknown argument|Invalid values/, String(args[0]))
    t.match(r.stderr, /etc\/(receiver|job)\.json/, `${String(args[0])} names the missing settings file`)
  }
})

t.test("the agent's unit gives Node a compile cache in a folder systemd makes writable", async (t) => {
  const unit = await readFile(join(unitsDir, 'grainline-agent.service'), 'utf8')
  const lines = unit.split('\n')
  t.ok(lines.includes('ProtectSystem=strict'), "the file system is read-only but for the unit's own folders")
  t.ok(lines.includes('CacheDirectory=grainline'), "systemd creates /var/cache/grainline, owned by the unit's user, writable")
  // %C: the cache root (/var/cache for a system unit); Node >= 22.1 reads NODE_COMPILE_CACHE, Node 20 ignores it
  t.ok(lines.includes('Environment=NODE_COMPILE_CACHE=%C/grainline/node-compile-cache'), 'inside the CacheDirectory')
})

t.test('the grainline package tarball holds its bin, the compiled code and no tests', async (t) => {
  const { stdout } = await exec('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: cliDir })
  const [pack] = JSON.parse(stdout) as Array<{ name: string; files: Array<{ path: string; mode: number }> }>
  t.equal(pack?.name, 'grainline')
  const paths = new Set(pack?.files.map((f) => f.path))
  t.ok(paths.has('bin/grainline.js'), 'bin/grainline.js')
  t.ok(paths.has('dist/src/bin.js'), 'dist/src/bin.js')
  t.ok(paths.has('package.json'))
  t.notOk(
    [...paths].some((p) => p.startsWith('test/') || p.startsWith('dist/test/') || (p.endsWith('.ts') && !p.endsWith('.d.ts'))),
    'no tests or TypeScript sources',
  )
  const bin = pack?.files.find((f) => f.path === 'bin/grainline.js')
  t.ok(((bin?.mode ?? 0) & 0o111) !== 0, 'the bin is executable')
})

t.test('scripts/pack.mjs makes one tarball that installs globally without a registry and runs', async (t) => {
  const dir = scratchDir(t)
  const { stdout } = await exec(process.execPath, [join(repo, 'scripts/pack.mjs'), join(dir, 'out')], { timeout: 900_000 })
  const tarball = stdout.trim().split('\n').at(-1) as string
  t.match(tarball, /grainline-\d+\.\d+\.\d+\.tgz$/)
  const prefix = join(dir, 'prefix')
  // --offline: everything it needs is inside the tarball
  await exec('npm', ['install', '-g', '--offline', '--ignore-scripts', '--no-audit', '--no-fund', '--prefix', prefix, tarball], { timeout: 900_000 })
  const grainline = join(prefix, 'bin/grainline')
  const version = await exec(grainline, ['--version'])
  t.equal(version.stdout.trim(), JSON.parse(await readFile(join(cliDir, 'package.json'), 'utf8')).version)
  // a command that loads the receiver, the protocol and the vmdk code (and the zod schemas): status of a store that does not exist is UNKNOWN (3)
  const st = await exec(grainline, ['status', '--store', join(dir, 'no-store')]).then(
    () => ({ code: 0, stdout: '' }),
    (err: { code?: number; stdout?: string }) => ({ code: err.code ?? -1, stdout: err.stdout ?? '' }),
  )
  t.equal(st.code, 3, st.stdout)
  t.match(st.stdout, /^GRAINLINE UNKNOWN - store .*no-store does not exist/)
  // the vmdk reader of the installed package describes a real disk
  const vm = await createSampleVm(join(dir, 'vm'), { name: 'packed', disks: [{ sizeBytes: 4 * 1024 * 1024 }] })
  const disk = join(dirname(vm.vmxPath), 'packed.vmdk')
  const info = await exec(grainline, ['info', disk, '--output', 'json'])
  t.match(JSON.parse(info.stdout), { capacity: 4 * 1024 * 1024 })
})
