/**
 * `grainline replicate` and `grainline status` as processes against a real
 * receiver: JSON progress lines off a terminal, the report, SIGINT/SIGTERM
 * (the durable step finishes, the snapshot is kept, the report says so, exit
 * 130/143, the next run resumes), status exit codes, and the progress display
 * on a real pseudo-terminal (util-linux `script`).
 */
import t from 'tap'
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, symlinkSync } from 'node:fs'
import { appendFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createSampleVm } from '@grainline/agent'
import { runNode, scratchDir, tokenFileFixture } from '@grainline/test-utils'
import { BIN, cliSite, runMain } from './helpers.ts'

const MiB = 1024 * 1024

/** Lines of JSON logs (stderr off a terminal). */
const jsonLines = (text: string): Array<Record<string, unknown>> =>
  text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)

/**
 * Send `signal` once the run has shipped for a while: after its `lines`-th
 * progress line of the send phase (they come every 5 s per disk), so the
 * receiver has made part of the disk durable.
 */
function signalWhenShipping(signal: NodeJS.Signals, lines = 1): (p: ChildProcess) => void {
  return (p) => {
    let seen = ''
    let sends = 0
    p.stderr?.on('data', (d: Buffer) => {
      seen += d.toString('utf8')
      const parts = seen.split('\n')
      seen = parts.pop() ?? ''
      for (const l of parts) if (/"msg":"progress"/.test(l) && /"phase":"send"/.test(l) && ++sends === lines) p.kill(signal)
    })
  }
}

t.test('off a terminal: JSON logs with progress lines, a human summary, the report file; status OK', async (t) => {
  const s = await cliSite(t)
  const vm = await createSampleVm(join(s.dir, 'src'), { name: 'alpha', disks: [{ sizeBytes: 8 * MiB }, { sizeBytes: 4 * MiB, fill: 'zero' }] })
  const report = join(s.dir, 'out', 'report.json')
  const r = await runNode(BIN, s.args(vm.vmxPath, '--certify', 'xxh64', '--report', report))
  t.equal(r.code, 0, r.stderr.slice(-2000))
  t.match(r.stdout, /^OK {3}alpha cycle 1 \(grainline-1\), [\d.]+ (ms|s)\n/)
  t.match(r.stdout, /ok {3}scsi0:0 alpha\.vmdk: seed, [\d.]+ MiB data, [\d.]+ (KiB|MiB|B) zero, [\d.]+ MiB on the wire, trivial ok, certify xxh64 ok/)
  const logs = jsonLines(r.stderr)
  t.ok(logs.length > 0 && logs.length === r.stderr.trim().split('\n').length, 'every stderr line is JSON: no terminal output off a terminal')
  t.notMatch(r.stderr, /\u001b/)
  t.ok(
    logs.some((l) => l['msg'] === 'progress' && l['phase'] === 'send'),
    'per-disk progress lines',
  )
  const job = logs.filter((l) => l['msg'] === 'job progress')
  t.match(job[job.length - 1], { vmsDone: 1, vmsTotal: 1, estimated: false, etaSeconds: 0 }, 'job totals and ETA')
  const rep = JSON.parse(await readFile(report, 'utf8')) as { ok: boolean; vms: Array<{ vm: string; cycle: number }> }
  t.match(rep, { ok: true, vms: [{ vm: 'alpha', cycle: 1 }] })
  const st = await runNode(BIN, ['status', '--store', s.store, '--max-age', '30m'])
  t.equal(st.code, 0)
  t.match(st.stdout, /^GRAINLINE OK - 1 mirror OK, oldest commit \d+ s ago \| 'alpha_age'=\d+s;;1800\n/)
  t.match(st.stdout, /alpha +alpha\.vmdk +1 +\d+ s ago +8\.00 MiB +ok +xxh64 ok +certify at cycle 1, \d+ s ago +- +OK/, 'the certify proved the disk: last proven')
  const json = await runNode(BIN, ['status', '--store', s.store, '--output', 'json'])
  t.match(JSON.parse(json.stdout), { state: 'OK', exitCode: 0, vms: [{ vm: 'alpha', health: { state: 'OK', problems: [] } }] })
  // someone boots the mirror: CRITICAL
  await appendFile(join(s.store, 'alpha', 'alpha-flat.vmdk'), Buffer.alloc(512))
  const modified = await runNode(BIN, ['status', '--store', s.store])
  t.equal(modified.code, 2)
  t.match(modified.stdout, /^GRAINLINE CRITICAL - 1 of 1 mirror not OK: alpha CRITICAL \(alpha\.vmdk modified since its last commit/)
})

t.test('SIGINT while shipping: the report says so, the snapshot is kept, status warns, exit 130; the next run resumes', async (t) => {
  const s = await cliSite(t)
  const vm = await createSampleVm(join(s.dir, 'src'), { name: 'beta', disks: [{ sizeBytes: 24 * MiB, fill: 'random' }] })
  const report = join(s.dir, 'report.json')
  const r = await runNode(BIN, s.args(vm.vmxPath, '--bwlimit', '2M', '--compress', 'none', '--report', report), { onSpawn: signalWhenShipping('SIGINT', 2) })
  t.equal(r.code, 130, 'exit 130 after SIGINT')
  t.match(r.stderr, /grainline: interrupted by SIGINT; the report says what was kept for the next run \(.*report\.json\)/)
  t.match(r.stdout, /^FAIL beta cycle 1 \(grainline-1\), .*: E_ABORTED interrupted by SIGINT: snapshot grainline-1 is kept and the next run resumes from it/)
  t.match(r.stdout, /stopped: interrupted by SIGINT/)
  const rep = JSON.parse(await readFile(report, 'utf8')) as { interrupted: string; vms: Array<{ error: { code: string } }> }
  t.equal(rep.interrupted, 'interrupted by SIGINT')
  t.equal(rep.vms[0]?.error.code, 'E_ABORTED')
  const vmsd = await readFile(vm.vmxPath.replace(/\.vmx$/, '.vmsd'), 'utf8')
  t.match(vmsd, /displayName = "grainline-1"/, 'the snapshot of the interrupted cycle is still on the VM')
  const st = await runNode(BIN, ['status', '--store', s.store])
  t.equal(st.code, 1, 'a cycle in flight: WARNING')
  t.match(st.stdout, /^GRAINLINE WARNING - .*beta WARNING \(never committed \(seed not finished\); cycle 1 in flight/)
  const again = await runNode(BIN, s.args(vm.vmxPath, '--report', report))
  t.equal(again.code, 0, again.stderr.slice(-2000))
  t.match(again.stdout, /^OK {3}beta cycle 1 \(grainline-1, resumed\)/)
  const rep2 = JSON.parse(await readFile(report, 'utf8')) as { vms: Array<{ disks: Array<{ resumedFrom: number[] }> }> }
  t.ok((rep2.vms[0]?.disks[0]?.resumedFrom[0] ?? 0) > 0, `resumed from extent ${rep2.vms[0]?.disks[0]?.resumedFrom[0]}, not from the start`)
  t.equal((await runNode(BIN, ['status', '--store', s.store])).code, 0)
})

t.test('SIGTERM (systemd stop): exit 143, same guarantees', async (t) => {
  const s = await cliSite(t)
  const vm = await createSampleVm(join(s.dir, 'src'), { name: 'gamma', disks: [{ sizeBytes: 16 * MiB, fill: 'random' }] })
  const r = await runNode(BIN, s.args(vm.vmxPath, '--bwlimit', '2M', '--compress', 'none'), { onSpawn: signalWhenShipping('SIGTERM') })
  t.equal(r.code, 143)
  t.match(r.stdout, /E_ABORTED interrupted by SIGTERM: snapshot grainline-1 is kept/)
  t.ok(
    jsonLines(r.stderr).some((l) => l['signal'] === 'SIGTERM' && /stopping after the step in flight/.test(String(l['msg']))),
    'the stop is logged',
  )
})

t.test('a job file with several VMs in parallel: one report, a failed VM fails the run (exit 1) and is named', async (t) => {
  const s = await cliSite(t)
  const a = await createSampleVm(join(s.dir, 'src'), { name: 'job-a', disks: [{ sizeBytes: 2 * MiB }] })
  const b = await createSampleVm(join(s.dir, 'src'), { name: 'job-b', disks: [{ sizeBytes: 2 * MiB }], seed: 3 })
  const job = join(s.dir, 'job.json')
  await writeFile(job, JSON.stringify({ parallel: 3, bwlimit: '64M', vms: [a.vmxPath, { vm: b.vmxPath, certify: 'md5' }, { vm: join(s.dir, 'gone', 'gone.vmx') }] }))
  const args = s.args('', '--job', job).filter((x) => x !== '')
  const r = await runNode(BIN, args)
  t.equal(r.code, 1)
  t.match(r.stdout, /OK {3}job-a cycle 1[\s\S]*OK {3}job-b cycle 1[\s\S]*certify md5 ok[\s\S]*FAIL .*gone\.vmx/)
  t.match(r.stderr, /grainline: 1 of 3 VMs failed: .*gone.* \[E_VM_NOT_FOUND\]/)
})

t.test("a VM with a disk on a second datastore: refused without --datastore-root (exit 1, E_VMX naming the flag), replicated with the flag or the job file's datastoreRoots", async (t) => {
  const s = await cliSite(t)
  const ds2 = join(s.dir, 'ds2')
  const vm = await createSampleVm(join(s.dir, 'ds1'), { name: 'two-ds', disks: [{ sizeBytes: 2 * MiB }, { sizeBytes: 2 * MiB, folder: join(ds2, 'two-ds') }] })
  const refused = await runNode(BIN, s.args(vm.vmxPath))
  t.equal(refused.code, 1, refused.stderr.slice(-2000))
  t.match(refused.stdout, /^FAIL .*E_VMX VM two-ds: disk scsi0:1 .*add the folder it is mounted at with --datastore-root DIR \(job file: "datastoreRoots": \["DIR", …\]\)/)
  t.match(refused.stderr, /grainline: 1 of 1 VM failed: .*\[E_VMX\]/)
  // the flag before the VM: repeated, not an array that would take the .vmx for a root
  const [, ...rest] = s.args(vm.vmxPath)
  const flag = await runNode(BIN, ['replicate', '--datastore-root', ds2, ...rest])
  t.equal(flag.code, 0, flag.stderr.slice(-2000))
  t.match(flag.stdout, /^OK {3}two-ds cycle 1 /)
  t.match(flag.stdout, /ok {3}scsi0:1 two-ds_1\.vmdk: seed, /)
  const job = join(s.dir, 'job.json')
  await writeFile(job, JSON.stringify({ datastoreRoots: ds2, vms: [vm.vmxPath] }))
  const fromJob = await runNode(
    BIN,
    s.args('', '--job', job).filter((x) => x !== ''),
  )
  t.equal(fromJob.code, 0, fromJob.stderr.slice(-2000))
  t.match(fromJob.stdout, /^OK {3}two-ds cycle 2 /)
  t.match(fromJob.stdout, /ok {3}scsi0:1 two-ds_1\.vmdk: incremental, /)
})

t.test('--datastore-root with --driver esxi: exit 2 before anything runs, naming both flags and esxi.datastores', async (t) => {
  const dir = scratchDir(t)
  const token = tokenFileFixture(dir)
  const ds2 = join(dir, 'ds2')
  await mkdir(join(dir, 'ds1'), { recursive: true })
  await mkdir(ds2)
  await writeFile(join(dir, 'esx.key'), '-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n-----END OPENSSH PRIVATE KEY-----\n')
  const esxi = join(dir, 'esxi.json')
  await writeFile(esxi, JSON.stringify({ ssh: { host: 'esx1', privateKeyFile: 'esx.key', hostKeyFingerprint: `SHA256:${'A'.repeat(43)}` }, datastores: { ds1: 'ds1' } }))
  const r = await runNode(BIN, ['replicate', '--driver', 'esxi', '--esxi-config', esxi, '--datastore-root', ds2, 'db01', '--to', 'wss://127.0.0.1:9', '--token-file', token])
  t.equal(r.code, 2, r.stderr)
  t.equal(
    r.stderr,
    `grainline: --datastore-root: the local driver's datastore roots, but every VM of this run uses --driver "esxi", which reads only the datastores its esxi settings map: map the datastore in esxi.datastores (the esxi settings of --esxi-config) and remove --datastore-root\n`,
  )
  t.equal(r.stdout, '')
})

t.test('--datastore-root holding the --token-file (or the --job file): exit 2 before anything runs, naming the root and the file', async (t) => {
  const dir = scratchDir(t)
  const vm = await createSampleVm(join(dir, 'ds1'), { name: 'tok', disks: [{ sizeBytes: MiB }] })
  const ds2 = join(dir, 'ds2')
  await mkdir(ds2)
  const token = join(ds2, 'agent.token')
  await writeFile(token, 'secret-token-0123456789\n')
  const r = await runNode(BIN, ['replicate', '--datastore-root', ds2, vm.vmxPath, '--to', 'wss://127.0.0.1:9', '--token-file', token, '--state-dir', join(dir, 'state')])
  t.equal(r.code, 2, r.stderr)
  t.ok(r.stderr.startsWith(`grainline: --datastore-root: ${ds2} contains the agent's own ${token} (its state, credentials or settings), which a descriptor could then name and ship: `), r.stderr)
  const job = join(ds2, 'job.json')
  await writeFile(job, JSON.stringify({ datastoreRoots: ds2, vms: [vm.vmxPath] }))
  const j = await runNode(BIN, ['replicate', '--job', job, '--to', 'wss://127.0.0.1:9', '--token-file', tokenFileFixture(dir), '--state-dir', join(dir, 'state')])
  t.equal(j.code, 2, j.stderr)
  t.ok(j.stderr.startsWith(`grainline: job.datastoreRoots: ${ds2} contains the agent's own ${job} `), j.stderr)
  t.notOk(existsSync(join(vm.dir, 'tok.vmsd')), 'no snapshot was taken')
})

t.test('--datastore-root (or an --esxi-config mount) inside --state-dir, or the state dir itself: exit 2 before anything runs, naming the flag or the settings file and key', async (t) => {
  const dir = scratchDir(t)
  const vm = await createSampleVm(join(dir, 'ds1'), { name: 'st', disks: [{ sizeBytes: MiB }] })
  const state = join(dir, 'state')
  await mkdir(join(state, 'ds2'), { recursive: true })
  symlinkSync(state, join(dir, 'state-link'))
  symlinkSync(join(state, 'ds2'), join(dir, 'ds2-link'))
  const token = tokenFileFixture(dir)
  const refused = (setting: string, root: string, remedy = 'give the folder a datastore is mounted at (e.g. /vmfs/volumes/ds2 or /mnt/nfs/ds2)'): string =>
    `grainline: ${setting}: ${root} lies inside the agent's own ${state} (its state: cycle records, snapshot lists, locks), whose files a .vmx or descriptor could then name as disks and ship: ${remedy}, one outside the agent's state dir\n`
  const run = async (args: readonly string[]): Promise<{ code: number; out: string; err: string }> =>
    await runMain(['replicate', ...args, '--to', 'wss://127.0.0.1:9', '--token-file', token, '--give-up', '1s'])
  for (const [what, args, root] of [
    ['by name', ['--datastore-root', join(state, 'ds2'), '--state-dir', state, vm.vmxPath], join(state, 'ds2')],
    ['through a link to a folder in it', ['--datastore-root', join(dir, 'ds2-link'), '--state-dir', state, vm.vmxPath], join(dir, 'ds2-link')],
    ['--state-dir named through a link (its real path)', ['--state-dir', join(dir, 'state-link'), '--datastore-root', join(state, 'ds2'), vm.vmxPath], join(state, 'ds2')],
  ] as const) {
    const r = await run(args)
    t.equal(r.code, 2, `${what}: ${r.err}`)
    t.equal(r.err, refused('--datastore-root', root), what)
    t.equal(r.out, '', `${what}: nothing on stdout`)
  }
  const same = await run(['--datastore-root', state, '--state-dir', state, vm.vmxPath])
  t.equal(same.code, 2, same.err)
  t.ok(same.err.startsWith(`grainline: --datastore-root: ${state} is the agent's own ${state} `), same.err)
  // the esxi driver: a settings file's mount inside --state-dir, named by the file and its key
  await writeFile(join(dir, 'esx.key'), '-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n-----END OPENSSH PRIVATE KEY-----\n')
  const esxi = join(dir, 'esxi.json')
  await writeFile(esxi, JSON.stringify({ ssh: { host: 'esx1', privateKeyFile: 'esx.key', hostKeyFingerprint: `SHA256:${'A'.repeat(43)}` }, datastores: { ds1: 'ds2-link' } }))
  const e = await run(['--driver', 'esxi', '--esxi-config', esxi, '--state-dir', state, 'db01'])
  t.equal(e.code, 2, e.err)
  t.equal(e.err, refused(`${esxi}: datastores.ds1`, join(dir, 'ds2-link'), 'map the datastore to the folder it is mounted at on this proxy (e.g. /mnt/nfs/ds2)'))
  t.notOk(existsSync(join(vm.dir, 'st.vmsd')), 'no snapshot was taken')
  t.same(await readdir(join(state, 'ds2')), [], "nothing written in the state dir's folder")
})

t.test('--smtp-tls none with --smtp-user to a non-loopback host, or an http:// --webhook with user:password@: exit 2 before anything runs, naming the flag and the opt-in', async (t) => {
  const dir = scratchDir(t)
  const vm = await createSampleVm(join(dir, 'ds1'), { name: 'mail', disks: [{ sizeBytes: MiB }] })
  await writeFile(join(dir, 'pw'), 'bob-secret\n')
  await writeFile(join(dir, 'hook.key'), 'hook-secret-0123456789\n')
  const token = tokenFileFixture(dir)
  const base = [vm.vmxPath, '--to', 'wss://127.0.0.1:9', '--token-file', token, '--state-dir', join(dir, 'state'), '--give-up', '1s']
  const mail = ['--mail-to', 'ops@example.net', '--mail-from', 'g@example.net', '--smtp-port', '2525', '--smtp-tls', 'none']
  const creds = ['--smtp-user', 'bob', '--smtp-password-file', join(dir, 'pw')]
  const r = await runMain(['replicate', ...base, ...mail, '--smtp-host', '192.0.2.2', ...creds])
  t.equal(r.code, 2, r.err)
  t.equal(
    r.err,
    'grainline: --smtp-tls: "none" would send the SMTP password of "bob" in clear to 192.0.2.2, which is not a loopback relay: use tls "starttls" or "implicit" (--smtp-tls), a relay on this host, or set smtp.insecurePlaintext (--smtp-insecure-plaintext) on a network you trust\n',
  )
  t.equal(r.out, '')
  t.notOk(existsSync(join(vm.dir, 'mail.vmsd')), 'no snapshot was taken')
  const hook = await runMain(['replicate', ...base, '--webhook', 'http://ops:hunter2@192.0.2.2/hook', '--webhook-secret-file', join(dir, 'hook.key')])
  t.equal(hook.code, 2, hook.err)
  t.equal(
    hook.err,
    "grainline: --webhook: the URL's credentials would go in clear (HTTP Basic auth over http://) to 192.0.2.2: use https://, or set insecurePlaintext (--webhook-insecure-plaintext) on a network you trust\n",
  )
  t.notMatch(hook.err, /hunter2/, 'the password is not echoed')
  // allowed: the opt-in, a loopback relay, none without credentials (the report leaks, no secret); these runs fail later (no receiver), not at config
  for (const [what, args] of [
    ['--smtp-insecure-plaintext', [...mail, '--mail-on', 'success', '--smtp-host', '192.0.2.2', ...creds, '--smtp-insecure-plaintext']],
    ['a loopback relay', [...mail, '--mail-on', 'success', '--smtp-host', '127.0.0.1', ...creds]],
    ['no credentials', [...mail, '--mail-on', 'success', '--smtp-host', '192.0.2.2']],
    ['--webhook-insecure-plaintext', ['--webhook', 'http://ops:hunter2@127.0.0.2/hook', '--webhook-secret-file', join(dir, 'hook.key'), '--webhook-insecure-plaintext', '--webhook-on', 'success']],
  ] as const) {
    const ok = await runMain(['replicate', ...base, ...args])
    t.equal(ok.code, 1, `${what}: not refused at config; the run fails on the missing receiver: ${ok.err}`)
    t.notMatch(ok.err, /insecurePlaintext|in clear|hunter2/, what)
  }
})

t.test('a VM named twice (the same .vmx by any spelling or link, or two folders the receiver would keep as one mirror): exit 2 before anything runs, naming both', async (t) => {
  const dir = scratchDir(t)
  const vm = await createSampleVm(join(dir, 'ds1'), { name: 'dup', disks: [{ sizeBytes: MiB }] })
  const twin = await createSampleVm(join(dir, 'ds2'), { name: 'dup', disks: [{ sizeBytes: MiB }] })
  symlinkSync(vm.dir, join(dir, 'ds1', 'dup-link'))
  const token = tokenFileFixture(dir)
  const opts = ['--to', 'wss://127.0.0.1:9', '--token-file', token, '--state-dir', join(dir, 'state'), '--give-up', '1s']
  const spellings: Array<[string, string, string]> = [
    ['the same path', vm.vmxPath, 'the same .vmx'],
    ['./a/../X.vmx', `${vm.dir}/../dup/./dup.vmx`, 'the same .vmx'],
    ['a link to its folder', join(dir, 'ds1', 'dup-link', 'dup.vmx'), 'one .vmx reached by two paths'],
  ]
  for (const [what, second, how] of spellings) {
    const r = await runMain(['replicate', vm.vmxPath, second, ...opts])
    t.equal(r.code, 2, `${what}: ${r.err}`)
    t.equal(
      r.err,
      `grainline: VM ${JSON.stringify(vm.vmxPath)} (${JSON.stringify(vm.vmxPath)}) and VM ${JSON.stringify(second)} (${JSON.stringify(second)}) are the same VM (${how}): a run replicates a VM once; remove one\n`,
      what,
    )
    t.equal(r.out, '', what)
  }
  // two VMs whose folders share a name: one mirror "dup" at the same receiver
  const same = await runMain(['replicate', vm.vmxPath, twin.vmxPath, ...opts])
  t.equal(same.code, 2, same.err)
  t.equal(
    same.err,
    `grainline: VM ${JSON.stringify(vm.vmxPath)} (${JSON.stringify(vm.vmxPath)}) and VM ${JSON.stringify(twin.vmxPath)} (${JSON.stringify(twin.vmxPath)}) are two VMs the receiver at wss://127.0.0.1:9 would keep as one mirror "dup" (a mirror is named by the folder of its .vmx): rename one folder, or replicate them to different receivers\n`,
  )
  // a job file: named by entry
  const job = join(dir, 'job.json')
  await writeFile(job, JSON.stringify({ vms: ['ds1/dup/dup.vmx', { vm: 'ds1/dup/../dup/dup.vmx', certify: 'none' }] }))
  const j = await runMain(['replicate', '--job', job, ...opts])
  t.equal(j.code, 2, j.err)
  t.match(j.err, /^grainline: job\.vms\[0\] \(".*\/ds1\/dup\/dup\.vmx"\) and job\.vms\[1\] \(".*\/ds1\/dup\/dup\.vmx"\) are the same VM \(the same \.vmx\)/)
  t.notOk(existsSync(join(vm.dir, 'dup.vmsd')), 'no snapshot was taken')
  // the same folder name to two receivers: two mirrors, not refused at config (the run fails on the missing receivers)
  const jobTwo = join(dir, 'job-two.json')
  await writeFile(jobTwo, JSON.stringify({ to: 'wss://127.0.0.1:9', vms: ['ds1/dup/dup.vmx', { vm: 'ds2/dup/dup.vmx', to: 'wss://127.0.0.2:9' }] }))
  const two = await runMain(['replicate', '--job', jobTwo, ...opts.slice(2)])
  t.equal(two.code, 1, two.err)
  t.notMatch(two.err, /one mirror|same VM/)
})

const haveScript = (() => {
  try {
    execFileSync('script', ['--version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
})()

t.test(
  'on a real terminal (a pty through util-linux script): the redrawn display fits 60 columns and a 0-column pty',
  { skip: haveScript ? false : 'util-linux script is not installed' },
  async (t) => {
    const s = await cliSite(t)
    for (const cols of [60, 0]) {
      const vm = await createSampleVm(join(s.dir, 'src'), { name: `pty-${cols}`, disks: [{ sizeBytes: 12 * MiB, fill: 'random' }, { sizeBytes: 4 * MiB }] })
      const cmd = [process.execPath, BIN, ...s.args(vm.vmxPath, '--bwlimit', '8M')].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' ')
      const r = await new Promise<{ code: number | null; out: string }>((res) => {
        let out = ''
        const p = spawn('script', ['-qefc', `stty cols ${cols} rows 24; exec ${cmd}`, '/dev/null'], { stdio: ['ignore', 'pipe', 'pipe'] })
        p.stdout?.on('data', (d: Buffer) => {
          out += d.toString('utf8')
        })
        p.on('exit', (code) => res({ code, out }))
      })
      t.equal(r.code, 0, `${cols} columns: ${r.out.slice(-500)}`)
      const width = cols > 0 ? cols : 80
      t.match(r.out, /\u001b\[2K/, `${cols}: lines are cleared and redrawn in place`)
      t.match(r.out, /\r\u001b\[\d+A\u001b\[J/, `${cols}: the block moves up over itself`)
      t.notMatch(r.out, /"msg":/, `${cols}: no JSON logs on a terminal (only failures, unless --log-level)`)
      const visible = r.out
        .replace(/\u001b\[[0-9;]*[A-Za-z]/g, '')
        .split(/\r?\n|\r/)
        .filter((l) => l !== '')
      const drawn = visible.filter((l) => /%/.test(l))
      t.ok(drawn.length > 0, `${cols}: progress lines were drawn`)
      // one assertion for every line drawn (how many depends on timing): the suite's count stays the same run to run
      t.same(
        drawn.filter((l) => l.length > width - 1),
        [],
        `${cols}: every one of the ${drawn.length} progress lines drawn fits in ${width - 1} columns`,
      )
      t.ok(
        drawn.some((l) => /^job 0\/1 VMs/.test(l)),
        `${cols}: a job line`,
      )
      t.match(r.out, new RegExp(`ok {4}pty-${cols}: cycle 1 seed`), `${cols}: the finished VM stays on the screen`)
      t.match(r.out, new RegExp(`OK {3}pty-${cols} cycle 1`), `${cols}: then the summary`)
    }
  },
)
