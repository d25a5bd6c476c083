/** Usage errors stop the command before anything happens: exit 2, one message, no snapshot, no connection. */
import t from 'tap'
import { once } from 'node:events'
import { readdir, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createSampleVm } from '@grainline/agent'
import { runNode, scratchDir, tokenFileFixture } from '@grainline/test-utils'

const bin = resolve(dirname(fileURLToPath(import.meta.url)), '../src/bin.js')

/** A TCP listener that only counts who connects (a receiver must never be reached). */
async function witness(t: { teardown: (fn: () => unknown) => void }): Promise<{ port: number; connections: () => number }> {
  let n = 0
  const srv = createServer((s) => {
    n++
    s.destroy()
  })
  srv.listen(0, '127.0.0.1')
  await once(srv, 'listening')
  t.teardown(() => new Promise((r) => srv.close(r)))
  return { port: (srv.address() as { port: number }).port, connections: () => n }
}

t.test('replicate: a misspelt flag, a bad choice, bad values — exit 2 before any snapshot or connection', async (t) => {
  const dir = scratchDir(t)
  const vm = await createSampleVm(join(dir, 'src'), { name: 'untouched', disks: [{ sizeBytes: 1024 * 1024 }] })
  const before = (await readdir(dirname(vm.vmxPath))).sort()
  const w = await witness(t)
  const token = tokenFileFixture(dir)
  const base = [vm.vmxPath, '--to', `wss://127.0.0.1:${w.port}`, '--token-file', token, '--state-dir', join(dir, 'state')]
  const cases: Array<[string[], RegExp]> = [
    [['--cerify', 'sha256'], /^grainline: --cerify: unknown option — did you mean --certify\?\n/],
    [['--parralel=2', '--xyzzy-plugh', '3'], /^grainline: --parralel: unknown option — did you mean --parallel\?; --xyzzy-plugh: unknown option\n/],
    [['--zzzzzz'], /^grainline: Unknown argument: zzzzzz\n/],
    [['--certify', 'SHA256'], /^grainline: Invalid values:\n {2}Argument: certify, Given: "SHA256", Choices: "md5", "sha1", "sha256", "xxh64", "none"\n/],
    [['--bwlimit', '20 MB per second'], /^grainline: --bwlimit: "20 MB per second" is not a rate/],
    [['--give-up', 'soon', '--trivial-mb', '-4'], /^grainline: 2 problems:\n {2}--trivial-mb: must be at least 0\n {2}--give-up: "soon" is not a duration/],
    [['--ca', join(dir, 'missing.crt')], /^grainline: --ca: cannot read .*missing\.crt \(ENOENT\)/],
    [['--to', `ws://127.0.0.1:${w.port}`], /^grainline: --to: given 2 times; give it once\n/],
    [['--datastore-root', 'ds2'], /^grainline: --datastore-root: "ds2" is not an absolute path: give the folder from \//],
    [['--datastore-root', dir, '--datastore-root', join(dir, 'no-ds')], /^grainline: --datastore-root\[1\]: .*no-ds does not exist \(is the datastore mounted\?\)\n/],
    [['--driver', 'esxi'], /^grainline: VM ".*untouched\.vmx": driver "esxi" needs its settings: set "esxi" \(or --esxi-config FILE\)/],
  ]
  for (const [extra, message] of cases) {
    const r = await runNode(bin, ['replicate', ...base, ...extra])
    t.equal(r.code, 2, `${extra.join(' ')}: exit 2`)
    t.match(r.stderr, message, extra.join(' '))
    t.notMatch(r.stderr, /TypeError|at .*\.js:\d+/, 'no stack trace')
    t.equal(r.stdout, '', 'nothing on stdout')
  }
  const clear = await runNode(bin, ['replicate', vm.vmxPath, '--to', `ws://dr.example.net:${w.port}`, '--token-file', token])
  t.equal(clear.code, 2)
  t.match(clear.stderr, /^grainline: --to: refusing to send the token in clear text to dr\.example\.net/)
  t.same((await readdir(dirname(vm.vmxPath))).sort(), before, 'no snapshot was taken (no delta, no .vmsd)')
  t.equal(w.connections(), 0, 'the receiver was never contacted')
  const portless = await runNode(bin, ['replicate', vm.vmxPath, '--to', 'wss://dr.example', '--token-file', token])
  t.equal(portless.code, 2, 'a receiver URL without a port: exit 2')
  t.equal(
    portless.stderr,
    'grainline: --to: receiver URL "wss://dr.example" names no port: wss:// would use 443, and a receiver listens on the port of its "listen" (7443 in the docs) — give it, e.g. wss://dr.example:7443 (or :443 if the receiver really is there)\n',
  )
  const none = await runNode(bin, ['replicate'])
  t.equal(none.code, 2)
  t.match(none.stderr, /name a VM/)
})

t.test('an e-mail or webhook from the flags with a value missing: named by the flag that sets it; exit 2', async (t) => {
  const dir = scratchDir(t)
  const token = tokenFileFixture(dir)
  const base = ['replicate', join(dir, 'vm.vmx'), '--to', 'wss://127.0.0.1:9', '--token-file', token]
  const cases: Array<[string[], string]> = [
    [['--mail-to', 'ops@example.net'], 'grainline: 2 problems:\n  --mail-from: is required\n  --smtp-host: is required\n'],
    [['--mail-to', 'ops@example.net', '--mail-from', 'dr@example.net', '--smtp-port', '70000'], 'grainline: 2 problems:\n  --smtp-host: is required\n  --smtp-port: must be at most 65535\n'],
    [['--webhook', 'https://hooks.example.net/x'], 'grainline: --webhook-secret-file: is required\n'],
    [['--webhook-on', 'failure'], 'grainline: 2 problems:\n  --webhook: is required\n  --webhook-secret-file: is required\n'],
  ]
  for (const [extra, message] of cases) {
    const r = await runNode(bin, [...base, ...extra])
    t.equal(r.code, 2, `${extra.join(' ')}: exit 2`)
    t.equal(r.stderr, message, extra.join(' '))
  }
  // the same values missing from a job file are named by its keys, not by flags never given
  const job = join(dir, 'job.json')
  await writeFile(job, JSON.stringify({ to: 'wss://127.0.0.1:9', tokenFile: token, email: { to: 'ops@example.net' }, vms: [{ vm: 'vm.vmx' }] }))
  const fromFile = await runNode(bin, ['replicate', '--job', job])
  t.equal(fromFile.code, 2)
  t.equal(fromFile.stderr, 'grainline: 2 problems:\n  job.email.from: is required\n  job.email.smtp: is required\n')
})

t.test('a job file: every problem at once, named by key; exit 2', async (t) => {
  const dir = scratchDir(t)
  const job = join(dir, 'job.json')
  await writeFile(job, JSON.stringify({ to: 'wss://dr:7443', tokenFile: 'nope.token', parallel: 0, vms: [{ vm: 'a.vmx' }, { vm: 'b.vmx' }, { vm: 'c.vmx', certify: 'SHA256' }] }))
  const r = await runNode(bin, ['replicate', '--job', job])
  t.equal(r.code, 2)
  t.match(r.stderr, /^grainline: 3 problems:\n/)
  t.match(r.stderr, /job\.vms\[2\]\.certify: expected one of md5\|sha1\|sha256\|xxh64\|none, got "SHA256"/)
  t.match(r.stderr, /job\.tokenFile: cannot read .*nope\.token \(ENOENT\)/)
  t.match(r.stderr, /job\.parallel: must be at least 1/)
})

t.test('status without --store: one UNKNOWN line (a monitoring plugin), exit 3, no TypeError; a store that does not exist: UNKNOWN, exit 3', async (t) => {
  const r = await runNode(bin, ['status'])
  t.equal(r.code, 3)
  t.equal(r.stdout, 'GRAINLINE UNKNOWN - Missing required argument: store\n')
  t.equal(r.stderr, '')
  const missing = await runNode(bin, ['status', '--store', '/nonexistent/store'])
  t.equal(missing.code, 3)
  t.equal(missing.stdout, 'GRAINLINE UNKNOWN - store /nonexistent/store does not exist (ENOENT)\n')
  const badAge = await runNode(bin, ['status', '--store', '/tmp', '--max-age', 'a while'])
  t.equal(badAge.code, 3)
  t.match(badAge.stdout, /^GRAINLINE UNKNOWN - --max-age: "a while" is not a duration/)
})

t.test('other commands: unknown command, missing argument, bad sizes, help', async (t) => {
  t.equal((await runNode(bin, ['no-such-command'])).code, 2)
  t.equal((await runNode(bin, [])).code, 2)
  t.equal((await runNode(bin, ['info'])).code, 2)
  t.match((await runNode(bin, ['info', 'x.vmdk', '--path-map', 'nope'])).stderr, /DATASTORE=LOCALPATH/)
  const demo = await runNode(bin, ['demo', '--disk-size', 'huge', '--dir', join(scratchDir(t), 'd')])
  t.equal(demo.code, 2)
  t.match(demo.stderr, /--disk-size: "huge" is not a size/)
  t.equal((await runNode(bin, ['demo', '--cycles', '-1'])).code, 2)
  const help = await runNode(bin, ['replicate', '--help'])
  t.equal(help.code, 0)
  t.match(help.stdout, /--parallel/)
  const mirror = await runNode(bin, ['mirror', 'rollback', '--store', join(scratchDir(t), 'none'), '--vm', 'x'])
  t.equal(mirror.code, 1)
  t.match(mirror.stderr, /^grainline: no mirror of VM x .* \[E_NOT_FOUND\]\n$/)
})

t.test('an unknown command or action is refused with or without --help or --version: exit 2, the nearest spelling, nothing on stdout', async (t) => {
  const cases: Array<[string[], string]> = [
    [['replicat', '--help'], "grainline: unknown command 'replicat' — did you mean 'replicate'?\n"],
    [['replicat'], "grainline: unknown command 'replicat' — did you mean 'replicate'?\n"],
    [['--help', 'replicat'], "grainline: unknown command 'replicat' — did you mean 'replicate'?\n"],
    [['--log-level', 'debug', 'recieve', '--version'], "grainline: unknown command 'recieve' — did you mean 'receive'?\n"],
    [['frobnicate', '--help'], "grainline: unknown command 'frobnicate' — one of: info, map, receive, replicate, status, mirror, points, restore, demo\n"],
    [['mirror', 'rolback', '--help'], "grainline: unknown mirror action 'rolback' — did you mean 'rollback'?\n"],
    [['points', 'lsit', '--help'], "grainline: unknown points action 'lsit' — did you mean 'list'?\n"],
  ]
  for (const [argv, message] of cases) {
    const r = await runNode(bin, argv)
    t.equal(r.code, 2, `${argv.join(' ')}: exit 2`)
    t.equal(r.stderr, message + 'Run "grainline --help" for usage.\n', argv.join(' '))
    t.equal(r.stdout, '', `${argv.join(' ')}: no help on stdout`)
  }
  // what is known still shows its help, exit 0; an option before the command keeps its value
  for (const argv of [['--help'], ['replicate', '--help'], ['mirror', 'rollback', '--help'], ['points', '--help'], ['--log-level', 'debug', 'receive', '--help']]) {
    const r = await runNode(bin, argv)
    t.equal(r.code, 0, `${argv.join(' ')}: exit 0`)
    t.match(r.stdout, /^grainline /, `${argv.join(' ')}: help`)
  }
})
