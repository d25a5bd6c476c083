/** Job files and flags: one schema, every problem named by key or flag, every referenced file read before anything runs. */
import t from 'tap'
import { realpathSync, symlinkSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { loadJob } from '../src/job/load-job.ts'
import { loadJobConfig } from '../src/job-config.ts'
import { scratch } from './helpers.ts'

const PEM = '-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n'
const KEY = '-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n-----END OPENSSH PRIVATE KEY-----\n'
const FP = 'SHA256:' + 'A'.repeat(43)

async function fixture(t: Parameters<typeof scratch>[0]): Promise<string> {
  const dir = scratch(t)
  await writeFile(join(dir, 'token.txt'), '\n  secret-token-0123456789\n')
  await writeFile(join(dir, 'ca.pem'), PEM)
  await writeFile(join(dir, 'esx.key'), KEY)
  await mkdir(join(dir, 'mnt', 'ds1'), { recursive: true })
  return dir
}

/** A root as loadJob pins it: the name given and its real path at load. */
const pinned = (p: string): { named: string; real: string } => ({ named: p, real: realpathSync(p) })

async function problems(p: Promise<unknown>): Promise<readonly string[]> {
  const err = (await p.then(
    () => undefined,
    (e: unknown) => e,
  )) as { code?: string; issues?: readonly string[] } | undefined
  if (err?.code !== 'E_CONFIG' || err.issues === undefined) throw new Error(`expected a ConfigError, got ${String(err)}`)
  return err.issues
}

t.test('a job file: top level, defaults and per-VM options, the most specific wins; paths against the file', async (t) => {
  const dir = await fixture(t)
  const file = join(dir, 'job.json')
  await writeFile(
    file,
    JSON.stringify({
      to: 'wss://dr.example:7443',
      tokenFile: 'token.txt',
      caFile: 'ca.pem',
      bwlimit: '20M',
      parallel: 3,
      trivialMiB: 64,
      defaults: { certify: 'xxh64', giveUp: '2m' },
      vms: [
        'a/a.vmx',
        {
          vm: 'db01',
          driver: 'esxi',
          certify: 'sha256',
          trivialMiB: 4,
          esxi: { ssh: { host: 'esx1', privateKeyFile: 'esx.key', hostKeyFingerprint: FP }, datastores: { ds1: 'mnt/ds1' }, sftpConcurrency: 8, sftpTimeout: '90s' },
        },
      ],
      report: 'out/last.json',
    }),
  )
  const job = await loadJob({ file })
  t.equal(job.parallel, 3)
  t.equal(job.bwlimit, 20 * 1024 * 1024, "bwlimit is the job's, parsed by parseRate")
  t.equal(job.report, join(dir, 'out/last.json'))
  t.equal(job.vms.length, 2)
  t.match(job.vms[0], {
    vm: join(dir, 'a/a.vmx'),
    to: 'wss://dr.example:7443',
    token: 'secret-token-0123456789',
    caFile: join(dir, 'ca.pem'),
    ca: PEM,
    certify: 'xxh64',
    trivialMiB: 64,
    giveUpMs: 120_000,
    label: 'job.vms[0]',
  })
  t.match(job.vms[0]?.tokenSource, /^job\.tokenFile .*token\.txt$/)
  t.match(job.vms[1], { vm: 'db01', driver: 'esxi', certify: 'sha256', trivialMiB: 4 })
  t.same(job.vms[1]?.esxi?.ssh, { host: 'esx1', privateKeyFile: join(dir, 'esx.key'), hostKeyFingerprint: FP })
  t.same(job.vms[1]?.esxi?.datastores, { ds1: { localPath: join(dir, 'mnt/ds1'), realPath: realpathSync(join(dir, 'mnt/ds1')) } }, 'the mount pinned: its real path resolved at load')
  t.same(job.vms[1]?.esxi?.sftp, { concurrency: 8, requestTimeoutMs: 90_000 }, 'sftpConcurrency and sftpTimeout reach the driver')
  t.same(
    (await loadJobConfig(file)).map((v) => v.vm),
    [join(dir, 'a/a.vmx'), 'db01'],
    'loadJobConfig: the same VMs',
  )
})

t.test('every problem of a file at once, each named by its key', async (t) => {
  const dir = await fixture(t)
  const file = join(dir, 'job.json')
  await writeFile(
    file,
    JSON.stringify({
      to: 'wss://dr:7443',
      tokenFile: 'token.txt',
      colour: 'red',
      bwlimit: '20 furlongs',
      defaults: { bwlimit: '1M' },
      vms: [{ vm: 'a.vmx' }, { vm: 'b.vmx', compress: 'zstd' }, { vm: 'c.vmx', certify: 'SHA256' }, { vm: '' }, { vm: 'e.vmx', trivialMiB: -1, giveUp: 'soon', windowBytes: '12' }],
    }),
  )
  const p = await problems(loadJob({ file }))
  t.ok(p.includes('job.vms[2].certify: expected one of md5|sha1|sha256|xxh64|none, got "SHA256"'), p.join('\n'))
  t.ok(p.includes('job.colour: unknown key'))
  t.ok(p.includes('job.bwlimit: "20 furlongs" is not a rate (e.g. 500k, 20M, off) or a timetable (e.g. "08:00,512k 18:00,off")'), p.join('; '))
  t.ok(
    p.some((m) => /^job\.defaults\.bwlimit: bwlimit is the job's total/.test(m)),
    'bwlimit per VM is refused with where it goes',
  )
  t.ok(p.some((m) => /^job\.vms\[1\]\.compress: expected one of lz4\|deflate\|none/.test(m)))
  t.ok(
    p.some((m) => /^job\.vms\[3\](\.vm)?: /.test(m)),
    'an empty VM name',
  )
  t.ok(p.includes('job.vms[4].trivialMiB: must be at least 0'))
  t.ok(p.some((m) => /^job\.vms\[4\]\.giveUp: "soon" is not a duration/.test(m)))
  t.ok(p.some((m) => /^job\.vms\[4\]\.windowBytes: must be at least/.test(m)))
  t.equal(p.length, 9, p.join('\n'))
})

t.test('referenced files are read and checked while validating', async (t) => {
  const dir = await fixture(t)
  const file = join(dir, 'job.json')
  await writeFile(join(dir, 'empty.txt'), '\n\n')
  await writeFile(join(dir, 'notpem.txt'), 'hello')
  await writeFile(join(dir, 'esxi.json'), JSON.stringify({ ssh: { host: 'esx1', privateKeyFile: 'missing.key', hostKeyFingerprint: 'md5:xx' }, datastores: { ds1: '/nonexistent/mount' } }))
  await writeFile(
    file,
    JSON.stringify({
      to: 'wss://dr:7443',
      vms: [
        { vm: 'a.vmx', tokenFile: 'nope.txt' },
        { vm: 'b.vmx', tokenFile: 'empty.txt', caFile: 'notpem.txt' },
        { vm: 'c', driver: 'esxi', tokenFile: 'token.txt', esxi: 'esxi.json' },
      ],
    }),
  )
  const p = await problems(loadJob({ file }))
  t.ok(
    p.some((m) => /^job\.vms\[0\]\.tokenFile: cannot read .*nope\.txt \(ENOENT\)$/.test(m)),
    p.join('\n'),
  )
  t.ok(p.some((m) => /^job\.vms\[1\]\.tokenFile: .*empty\.txt is empty$/.test(m)))
  t.ok(p.some((m) => /^job\.vms\[1\]\.caFile: .*notpem\.txt holds no PEM certificate/.test(m)))
  // problems inside the esxi settings file are named by that file and its keys
  t.ok(
    p.some((m) => /^job\.vms\[2\]\.esxi: .*esxi\.json: ssh\.privateKeyFile: cannot read .*missing\.key/.test(m)),
    p.join('\n'),
  )
  t.ok(p.some((m) => /esxi\.json: ssh\.hostKeyFingerprint: "md5:xx" is not an SSH host key fingerprint/.test(m)))
  t.ok(p.some((m) => /esxi\.json: datastores\.ds1: .*\/nonexistent\/mount: ENOENT/.test(m)))
})

t.test('sftpTimeout: 1 s to 1 h (a longer timer would fire at once)', async (t) => {
  const dir = await fixture(t)
  const file = join(dir, 'job.json')
  const esxi = (sftpTimeout: string) => ({ ssh: { host: 'esx1', privateKeyFile: 'esx.key', hostKeyFingerprint: FP }, datastores: { ds1: 'mnt/ds1' }, sftpTimeout })
  await writeFile(
    file,
    JSON.stringify({
      to: 'wss://dr:7443',
      tokenFile: 'token.txt',
      vms: [
        { vm: 'a', driver: 'esxi', esxi: esxi('30d') },
        { vm: 'b', driver: 'esxi', esxi: esxi('500ms') },
      ],
    }),
  )
  const p = await problems(loadJob({ file }))
  t.ok(
    p.some((m) => /^job\.vms\[0\]\.esxi\.sftpTimeout: /.test(m)),
    p.join('\n'),
  )
  t.ok(p.some((m) => /^job\.vms\[1\]\.esxi\.sftpTimeout: /.test(m)))
  t.equal(p.length, 2, p.join('\n'))
})

t.test('required values, receiver URL rule, driver settings: named with their flag or key', async (t) => {
  const dir = await fixture(t)
  const file = join(dir, 'job.json')
  await writeFile(file, JSON.stringify({ vms: [{ vm: 'a.vmx' }, { vm: 'b', driver: 'esxi', to: 'ws://dr.example:7443', tokenFile: 'token.txt' }] }))
  const p = await problems(loadJob({ file }))
  t.ok(p.includes('job.vms[0]: no receiver URL: set "to" (or --to wss://HOST:PORT)'), p.join('\n'))
  t.ok(p.includes('job.vms[0]: no token: set "tokenFile" (or --token-file FILE)'))
  t.ok(p.includes('job.vms[1]: driver "esxi" needs its settings: set "esxi" (or --esxi-config FILE)'))
  t.ok(
    p.some((m) => /^job\.vms\[1\]\.to: refusing to send the token in clear text to dr\.example:7443/.test(m)),
    'ws:// to another host is refused before anything runs',
  )
  t.rejects(loadJob({}), { code: 'E_CONFIG', message: /name a VM/ })
  await t.rejects(loadJob({ file: join(dir, 'missing.json') }), { message: /^--job: cannot read .*missing\.json \(ENOENT\)/ })
  await writeFile(file, '{"vms": [')
  await t.rejects(loadJob({ file }), { message: /^--job: .*job\.json: not JSON/ })
  await writeFile(file, '[]')
  await t.rejects(loadJob({ file }), { message: /must hold a JSON object/ })
})

t.test('flags: validated as flags, winning over the file, relative paths against the working folder', async (t) => {
  const dir = await fixture(t)
  const file = join(dir, 'job.json')
  await writeFile(file, JSON.stringify({ to: 'wss://dr:7443', tokenFile: 'token.txt', certify: 'md5', vms: [{ vm: 'a.vmx', certify: 'sha1' }] }))
  const names = { certify: '--certify', tokenFile: '--token-file', bwlimit: '--bwlimit', giveUp: '--give-up', 'email.smtp.port': '--smtp-port' }
  await writeFile(join(dir, 'other.token'), 'flag-token-0123456789\n')
  const job = await loadJob({ file, cwd: dir, options: { certify: 'xxh64', tokenFile: 'other.token' }, jobOptions: { bwlimit: '5M' }, names })
  t.equal(job.vms[0]?.certify, 'xxh64', "a flag beats the VM's own entry")
  t.equal(job.vms[0]?.token, 'flag-token-0123456789')
  t.equal(job.vms[0]?.tokenSource, `--token-file ${join(dir, 'other.token')}`)
  t.equal(job.bwlimit, 5 * 1024 * 1024)
  const p = await problems(loadJob({ file, cwd: dir, options: { certify: 'SHA256', giveUp: 'later' }, jobOptions: { bwlimit: 'fast', email: { smtp: { port: 99999 } } }, names }))
  t.ok(p.includes('--certify: expected one of md5|sha1|sha256|xxh64|none, got "SHA256"'), p.join('\n'))
  t.ok(p.some((m) => /^--give-up: "later" is not a duration/.test(m)))
  t.ok(p.some((m) => /^--bwlimit: "fast" is not a rate/.test(m)))
  t.ok(p.some((m) => /^--smtp-port: must be at most 65535/.test(m)))
  // VMs named on the command line, no file
  const cli = await loadJob({ cwd: dir, vms: ['vm dir/x.vmx'], options: { to: 'wss://127.0.0.1:1', tokenFile: 'token.txt' } })
  t.equal(cli.vms[0]?.vm, join(dir, 'vm dir/x.vmx'))
  t.equal(cli.parallel, 2, 'parallel defaults to 2')
  t.equal(cli.bwlimit, Infinity)
})

t.test('--independent and --consolidate (or the per-VM keys) win over the esxi settings file', async (t) => {
  const dir = await fixture(t)
  const esxi = { ssh: { host: 'esx1', privateKeyFile: 'esx.key', hostKeyFingerprint: FP }, datastores: { ds1: 'mnt/ds1' }, independentDisks: 'skip', consolidate: false }
  const file = join(dir, 'job.json')
  await writeFile(file, JSON.stringify({ to: 'wss://dr.example:7443', tokenFile: 'token.txt', driver: 'esxi', esxi, vms: ['web01', { vm: 'db01', independentDisks: 'refuse' }] }))
  const fromFile = await loadJob({ file })
  t.match(fromFile.vms[0]?.esxi, { independentDisks: 'skip', consolidate: false }, 'the settings file')
  t.match(fromFile.vms[1]?.esxi, { independentDisks: 'refuse', consolidate: false }, 'a VM entry overrides it')
  const flagged = await loadJob({ file, options: { independentDisks: 'refuse', consolidate: true } })
  for (const v of flagged.vms) t.match(v.esxi, { independentDisks: 'refuse', consolidate: true }, `${v.vm}: the flags win`)
  const bad = await problems(loadJob({ file, options: { independentDisks: 'maybe' as never } }))
  t.match(bad.join('\n'), /independentDisks|--independent/)
})

t.test('datastoreRoots (--datastore-root): absolute folders that exist, a string or a list; the most specific wins; every mistake named before anything runs', async (t) => {
  const dir = await fixture(t)
  const ds2 = join(dir, 'mnt', 'ds2')
  const ds3 = join(dir, 'mnt', 'ds3')
  await mkdir(ds2, { recursive: true })
  await mkdir(ds3, { recursive: true })
  await writeFile(join(dir, 'a-file'), 'x')
  const file = join(dir, 'job.json')
  const esxi = { ssh: { host: 'esx1', privateKeyFile: 'esx.key', hostKeyFingerprint: FP }, datastores: { ds1: 'mnt/ds1' } }
  await writeFile(
    file,
    JSON.stringify({
      to: 'wss://dr.example:7443',
      tokenFile: 'token.txt',
      datastoreRoots: `${ds2}/`,
      vms: ['a/a.vmx', { vm: 'b/b.vmx', datastoreRoots: [ds2, ds3] }, { vm: 'db01', driver: 'esxi', esxi }],
    }),
  )
  const job = await loadJob({ file })
  t.same(job.vms[0]?.datastoreRoots, [pinned(ds2)], 'a string is a list of one, normalized, pinned (its real path resolved now)')
  t.same(job.vms[1]?.datastoreRoots, [pinned(ds2), pinned(ds3)], "a VM's own list replaces the job's")
  t.equal(job.vms[2]?.datastoreRoots, undefined, 'not passed to the esxi driver (its datastores)')
  const flagged = await loadJob({ file, cwd: dir, options: { datastoreRoots: [ds3] }, names: { datastoreRoots: '--datastore-root' } })
  t.same(
    flagged.vms.slice(0, 2).map((v) => v.datastoreRoots),
    [[pinned(ds3)], [pinned(ds3)]],
    'the flag wins over the file',
  )
  await writeFile(
    file,
    JSON.stringify({
      to: 'wss://dr.example:7443',
      tokenFile: 'token.txt',
      datastoreRoots: 'mnt/ds2',
      vms: [
        { vm: 'a.vmx', datastoreRoots: [ds2, join(dir, 'nope'), join(dir, 'a-file')] },
        { vm: 'b.vmx', datastoreRoots: [] },
      ],
    }),
  )
  const p = await problems(loadJob({ file }))
  t.ok(p.includes('job.datastoreRoots: "mnt/ds2" is not an absolute path: give the folder from / (e.g. /vmfs/volumes/ds2 or /mnt/nfs/ds2)'), p.join('\n'))
  t.ok(p.includes(`job.vms[0].datastoreRoots[1]: ${join(dir, 'nope')} does not exist (is the datastore mounted?)`), p.join('\n'))
  t.ok(p.includes(`job.vms[0].datastoreRoots[2]: ${join(dir, 'a-file')} is not a folder`), p.join('\n'))
  t.ok(p.includes('job.vms[1].datastoreRoots: needs at least 1 entry'), p.join('\n'))
  t.equal(p.length, 4, p.join('\n'))
  const f = await problems(loadJob({ cwd: dir, vms: ['a.vmx'], options: { to: 'wss://dr:7443', tokenFile: 'token.txt', datastoreRoots: 'ds2' }, names: { datastoreRoots: '--datastore-root' } }))
  t.same(f, ['--datastore-root: "ds2" is not an absolute path: give the folder from / (e.g. /vmfs/volumes/ds2 or /mnt/nfs/ds2)'], 'a flag: named by the flag, a relative path refused (not resolved)')

  // the esxi driver reads its esxi.datastores: roots given where only it would see them are refused, never dropped
  await writeFile(
    file,
    JSON.stringify({
      to: 'wss://dr.example:7443',
      tokenFile: 'token.txt',
      vms: ['a.vmx', { vm: 'db01', driver: 'esxi', esxi, datastoreRoots: [ds2] }],
    }),
  )
  t.same(
    await problems(loadJob({ file })),
    [
      `job.vms[1].datastoreRoots: the local driver's datastore roots, but VM "db01" uses job.vms[1].driver "esxi", which reads only the datastores its esxi settings map: map the datastore in esxi.datastores (the esxi settings of job.vms[1].esxi) and remove job.vms[1].datastoreRoots`,
    ],
    'a VM entry of the esxi driver with its own roots: refused, even beside a local VM',
  )
  await writeFile(file, JSON.stringify({ to: 'wss://dr.example:7443', tokenFile: 'token.txt', driver: 'esxi', esxi, datastoreRoots: [ds2], vms: ['db01', 'db02'] }))
  t.same(
    await problems(loadJob({ file })),
    [
      `job.datastoreRoots: the local driver's datastore roots, but every VM of this run uses job.driver "esxi", which reads only the datastores its esxi settings map: map the datastore in esxi.datastores (the esxi settings of job.esxi) and remove job.datastoreRoots`,
    ],
    "the job's roots with no local VM to use them: refused, said once for the two VMs",
  )
  await writeFile(join(dir, 'esxi.json'), JSON.stringify(esxi))
  const byFlags = { to: 'wss://dr.example:7443', tokenFile: 'token.txt', driver: 'esxi', esxi: 'esxi.json', datastoreRoots: [ds2] }
  const flagNames = { datastoreRoots: '--datastore-root', driver: '--driver', esxi: '--esxi-config' }
  t.same(
    await problems(loadJob({ cwd: dir, vms: ['db01'], options: byFlags, names: flagNames })),
    [
      `--datastore-root: the local driver's datastore roots, but every VM of this run uses --driver "esxi", which reads only the datastores its esxi settings map: map the datastore in esxi.datastores (the esxi settings of --esxi-config) and remove --datastore-root`,
    ],
    '--datastore-root with --driver esxi: both flags named',
  )
  await writeFile(file, JSON.stringify({ datastoreRoots: [ds2], vms: ['a/a.vmx', 'db01/db01.vmx'] }))
  const mixed = await loadJob({ file, cwd: dir, options: { to: 'wss://dr.example:7443', tokenFile: 'token.txt' }, names: flagNames })
  t.same(
    mixed.vms.map((v) => v.datastoreRoots),
    [[pinned(ds2)], [pinned(ds2)]],
    'local VMs: the roots are theirs',
  )
  const esxiByFlag = await problems(loadJob({ file, cwd: dir, options: { to: 'wss://dr.example:7443', tokenFile: 'token.txt', driver: 'esxi', esxi: 'esxi.json' }, names: flagNames }))
  t.same(
    esxiByFlag,
    [
      `job.datastoreRoots: the local driver's datastore roots, but every VM of this run uses --driver "esxi", which reads only the datastores its esxi settings map: map the datastore in esxi.datastores (the esxi settings of --esxi-config) and remove job.datastoreRoots`,
    ],
    "--driver esxi over a job file's roots: refused, the key and the flag named",
  )

  // a root of / (given, normalised from "..", or through a link) would let a descriptor read any file of the proxy
  symlinkSync('/', join(dir, 'to-root'))
  await writeFile(file, JSON.stringify({ to: 'wss://dr.example:7443', tokenFile: 'token.txt', vms: [{ vm: 'a.vmx', datastoreRoots: ['/', `${ds2}/../..`, join(dir, 'to-root')] }] }))
  const r = await problems(loadJob({ file }))
  t.ok(
    r.includes(
      'job.vms[0].datastoreRoots[0]: / is the whole filesystem, which would let a descriptor read any file of this machine: give the folder a datastore is mounted at (e.g. /vmfs/volumes/ds2)',
    ),
    r.join('\n'),
  )
  t.ok(r.includes(`job.vms[0].datastoreRoots[1]: ${JSON.stringify(`${ds2}/../..`)} contains "..": give the folder without ".." (e.g. /vmfs/volumes/ds2 or /mnt/nfs/ds2)`), r.join('\n'))
  t.ok(
    r.includes(
      `job.vms[0].datastoreRoots[2]: ${join(dir, 'to-root')} leads to / and is the whole filesystem, which would let a descriptor read any file of this machine: give the folder a datastore is mounted at (e.g. /vmfs/volumes/ds2)`,
    ),
    r.join('\n'),
  )
  t.equal(r.length, 3, r.join('\n'))
})

t.test('retention: an object in a job file, a string as a flag, both the wire request; every mistake named', async (t) => {
  const dir = await fixture(t)
  const file = join(dir, 'job.json')
  await writeFile(
    file,
    JSON.stringify({
      to: 'wss://dr.example:7443',
      tokenFile: 'token.txt',
      retention: { keep: 14, maxAge: '30d', maxBytes: '2G', gfs: 'daily=7,weekly=4' },
      vms: ['a/a.vmx', { vm: 'b/b.vmx', retention: 'keep=3,monthly=12' }],
    }),
  )
  const job = await loadJob({ file })
  t.same(job.vms[0]?.retention, { keep: 14, maxAgeSeconds: 30 * 86_400, maxBytes: 2 * 1024 ** 3, hourly: 0, daily: 7, weekly: 4, monthly: 0 })
  t.same(job.vms[1]?.retention, { keep: 3, maxAgeSeconds: 0, maxBytes: 0, hourly: 0, daily: 0, weekly: 0, monthly: 12 })
  const flag = await loadJob({ file, options: { retention: 'hourly=24' }, names: { retention: '--retention' } })
  t.equal(flag.vms[1]?.retention?.hourly, 24, 'the flag wins')
  const cases: Array<[unknown, RegExp]> = [
    ['keep=x', /keep must be a whole number/],
    ['keep=1,keep=2', /keep given twice/],
    ['keep', /is not KEY=VALUE/],
    ['forever=1', /unknown retention key forever/],
    ['maxBytes=1G', /needs keep, maxAge or a GFS level/],
    ['maxAge=soon', /maxAge/],
    ['daily=10000000', /daily must be a whole number/],
    [{ keep: -1 }, /retention/],
    [{ keep: 1, extra: true }, /retention/],
  ]
  for (const [value, re] of cases) {
    const p = await problems(loadJob({ file, options: { retention: value as string }, names: { retention: '--retention' } }))
    t.match(p.join('\n'), re, `${JSON.stringify(value)}: ${p.join(' | ')}`)
  }
})

t.test("datastoreRoots: a root holding one of the agent's own files (token, job file, esxi key and settings, notification secrets) is refused before anything runs", async (t) => {
  const dir = await fixture(t)
  // every file of the agent's in a folder of its own, each a candidate root
  const own = join(dir, 'own')
  await mkdir(own)
  for (const [name, text] of [
    ['token.txt', 'secret-token-0123456789\n'],
    ['esx.key', KEY],
    ['smtp.pw', 'pw\n'],
    ['hook.key', 'k\n'],
  ] as const)
    await writeFile(join(own, name), text)
  await writeFile(join(own, 'esxi.json'), JSON.stringify({ ssh: { host: 'esx1', privateKeyFile: join(dir, 'esx.key'), hostKeyFingerprint: FP }, datastores: { ds1: join(dir, 'mnt', 'ds1') } }))
  const ds2 = join(dir, 'mnt', 'ds2')
  await mkdir(ds2)
  const file = join(dir, 'job.json')
  const base = { to: 'wss://dr.example:7443', tokenFile: 'token.txt' }
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['the token file', { ...base, tokenFile: 'own/token.txt', datastoreRoots: own }, join(own, 'token.txt')],
    [
      "an esxi VM's key",
      {
        ...base,
        datastoreRoots: own,
        vms: ['a.vmx', { vm: 'db01', driver: 'esxi', esxi: { ssh: { host: 'esx1', privateKeyFile: 'own/esx.key', hostKeyFingerprint: FP }, datastores: { ds1: 'mnt/ds1' } } }],
      },
      join(own, 'esx.key'),
    ],
    ["an esxi VM's settings file", { ...base, datastoreRoots: own, vms: ['a.vmx', { vm: 'db01', driver: 'esxi', esxi: 'own/esxi.json' }] }, join(own, 'esxi.json')],
    [
      'the SMTP password',
      { ...base, datastoreRoots: own, email: { to: 'ops@example.net', from: 'dr@example.net', smtp: { host: 'smtp.example.net', user: 'u', passwordFile: 'own/smtp.pw' } } },
      join(own, 'smtp.pw'),
    ],
    ["a webhook's secret", { ...base, datastoreRoots: own, webhooks: [{ url: 'https://hooks.example.net/x', secretFile: 'own/hook.key' }] }, join(own, 'hook.key')],
    ['the job file itself', { ...base, datastoreRoots: dir }, file],
  ]
  for (const [what, job, path] of cases) {
    await writeFile(file, JSON.stringify({ vms: ['a.vmx'], ...job }))
    const p = await problems(loadJob({ file }))
    t.equal(p.length, 1, `${what}: ${p.join('\n')}`)
    t.match(
      p[0],
      new RegExp(`^job\\.datastoreRoots: ${job['datastoreRoots'] as string} contains the agent's own ${path} \\(its state, credentials or settings\\), which a descriptor could then name and ship: `),
      what,
    )
  }
  // by flags: --datastore-root holding the --token-file, also through a symbolic link to the folder
  const link = join(dir, 'own-link')
  symlinkSync(own, link)
  for (const root of [own, link]) {
    const f = await problems(
      loadJob({
        cwd: dir,
        vms: ['a.vmx'],
        options: { to: 'wss://dr:7443', tokenFile: join(own, 'token.txt'), datastoreRoots: [ds2, root] },
        names: { datastoreRoots: '--datastore-root', tokenFile: '--token-file' },
      }),
    )
    t.equal(f.length, 1, f.join('\n'))
    t.match(f[0], `--datastore-root: ${root} contains the agent's own ${join(own, 'token.txt')}`, `--datastore-root ${root}`)
  }
  // a root beside the agent's files, not above them: accepted, and the list reaches replicate() (which checks again)
  await writeFile(file, JSON.stringify({ ...base, tokenFile: 'own/token.txt', datastoreRoots: ds2, vms: ['a.vmx'] }))
  const ok = await loadJob({ file })
  t.same(ok.vms[0]?.datastoreRoots, [pinned(ds2)])
  t.same(ok.vms[0]?.ownFiles, [file, join(own, 'token.txt')], 'the job file and the token file')
})

t.test("esxi.datastores: a local datastore mount holding one of the agent's own files (token, job file, settings file, state dir) is refused before anything runs", async (t) => {
  const dir = await fixture(t)
  // the agent's files in a folder of their own; the mounts below are that folder, a folder above it, or a link to one
  const own = join(dir, 'own')
  await mkdir(join(own, 'state'), { recursive: true })
  await writeFile(join(own, 'token.txt'), 'secret-token-0123456789\n')
  const file = join(dir, 'job.json')
  const ssh = { host: 'esx1', privateKeyFile: join(dir, 'esx.key'), hostKeyFingerprint: FP }
  const base = { to: 'wss://dr.example:7443', tokenFile: 'token.txt', driver: 'esxi', vms: ['db01'] }
  const remedy = ': map the datastore to the folder it is mounted at on this proxy (e.g. /mnt/nfs/ds2), one that holds no agent file'
  const refused = (setting: string, mount: string, path: string): string =>
    `${setting}: ${mount} contains the agent's own ${path} (its state, credentials or settings), which a descriptor could then name and ship${remedy}`
  const ownLink = join(dir, 'own-link')
  symlinkSync(own, ownLink)
  // the state dir named through a link from outside every mount: its real path lies in the mount
  const stateLink = join(dir, 'state-link')
  symlinkSync(join(own, 'state'), stateLink)
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['the token file', { ...base, tokenFile: 'own/token.txt', esxi: { ssh, datastores: { ds1: 'mnt/ds1', ds2: 'own' } } }, refused('job.esxi.datastores.ds2', own, join(own, 'token.txt'))],
    [
      'the token file, the mount through a symbolic link',
      { ...base, tokenFile: 'own/token.txt', esxi: { ssh, datastores: { ds2: { localPath: 'own-link', uuid: 'u-2' } } } },
      refused('job.esxi.datastores.ds2.localPath', ownLink, join(own, 'token.txt')),
    ],
    ['the job file itself', { ...base, esxi: { ssh, datastores: { 'datastore 1': dir } } }, refused('job.esxi.datastores["datastore 1"]', dir, file)],
    ['the state dir by name', { ...base, stateDir: 'own/state', esxi: { ssh, datastores: { ds2: 'own' } } }, refused('job.esxi.datastores.ds2', own, join(own, 'state'))],
    [
      'the state dir, the mount through a symbolic link',
      { ...base, stateDir: 'own/state', esxi: { ssh, datastores: { ds2: 'own-link' } } },
      refused('job.esxi.datastores.ds2', ownLink, join(own, 'state')),
    ],
    [
      'the state dir by its real path (named through a link)',
      { ...base, stateDir: 'state-link', esxi: { ssh, datastores: { ds2: 'own' } } },
      refused('job.esxi.datastores.ds2', own, join(own, 'state')),
    ],
    [
      "a VM entry's own settings",
      { to: base.to, tokenFile: 'own/token.txt', vms: [{ vm: 'db01', driver: 'esxi', esxi: { ssh, datastores: { ds2: 'own' } } }] },
      refused('job.vms[0].esxi.datastores.ds2', own, join(own, 'token.txt')),
    ],
  ]
  for (const [what, job, message] of cases) {
    await writeFile(file, JSON.stringify(job))
    t.same(await problems(loadJob({ file })), [message], what)
  }
  // a settings file (--esxi-config): named by the file and the key, as its other problems are
  const esxiJson = join(own, 'esxi.json')
  await writeFile(esxiJson, JSON.stringify({ ssh, datastores: { ds1: '.' } }))
  const flags = { names: { driver: '--driver', esxi: '--esxi-config', tokenFile: '--token-file' }, cwd: dir, vms: ['db01'] }
  t.same(
    await problems(loadJob({ ...flags, options: { to: base.to, tokenFile: join(dir, 'token.txt'), driver: 'esxi', esxi: esxiJson } })),
    [refused(`${esxiJson}: datastores.ds1`, own, esxiJson)],
    'the settings file in its own mount',
  )
  await writeFile(esxiJson, JSON.stringify({ ssh, datastores: { ds1: { localPath: join(dir, 'mnt', 'ds1') }, ds2: join(dir, 'own-link') } }))
  t.same(
    await problems(loadJob({ ...flags, options: { to: base.to, tokenFile: join(own, 'token.txt'), driver: 'esxi', esxi: esxiJson, stateDir: join(dir, 'state') } })),
    [refused(`${esxiJson}: datastores.ds2`, ownLink, join(own, 'token.txt'))],
    '--token-file in a mount reached through a link',
  )
  // SFTP datastores are read on the host, never from the proxy's disk: not checked
  await writeFile(file, JSON.stringify({ ...base, esxi: { ssh, datastores: { ds1: 'mnt/ds1', ds2: { access: 'sftp', hostPath: own } } } }))
  const ok = await loadJob({ file })
  t.same(
    ok.vms[0]?.esxi?.datastores,
    { ds1: { localPath: join(dir, 'mnt', 'ds1'), realPath: realpathSync(join(dir, 'mnt', 'ds1')) }, ds2: { access: 'sftp', hostPath: own } },
    'a mount beside the agent files: accepted and pinned; an SFTP datastore as it was',
  )
  t.same(ok.vms[0]?.ownFiles, [file, join(dir, 'token.txt'), join(dir, 'esx.key')], 'the job file, the token and the key reach replicate() (which checks again)')
})

t.test("datastoreRoots and esxi.datastores: a root or mount that is the agent's state dir or lies inside it (by name, through a link, by real path) is refused at load", async (t) => {
  const dir = await fixture(t)
  const state = join(dir, 'state')
  await mkdir(join(state, 'ds'), { recursive: true })
  symlinkSync(join(state, 'ds'), join(dir, 'ds-link'))
  symlinkSync(state, join(dir, 'state-link'))
  const file = join(dir, 'job.json')
  const base = { to: 'wss://dr.example:7443', tokenFile: 'token.txt', vms: ['a.vmx'] }
  const inside = (setting: string, root: string, remedy = 'give the folder a datastore is mounted at (e.g. /vmfs/volumes/ds2 or /mnt/nfs/ds2)'): string =>
    `${setting}: ${root} lies inside the agent's own ${state} (its state: cycle records, snapshot lists, locks), whose files a .vmx or descriptor could then name as disks and ship: ${remedy}, one outside the agent's state dir`
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['a root inside the state dir, by name', { ...base, stateDir: 'state', datastoreRoots: join(state, 'ds') }, inside('job.datastoreRoots', join(state, 'ds'))],
    ['a root inside the state dir, through a link to it', { ...base, stateDir: 'state', datastoreRoots: join(dir, 'ds-link') }, inside('job.datastoreRoots', join(dir, 'ds-link'))],
    [
      'a root inside the state dir, the state dir named through a link (its real path)',
      { ...base, stateDir: 'state-link', datastoreRoots: [join(dir, 'mnt', 'ds1'), join(state, 'ds')] },
      inside('job.datastoreRoots', join(state, 'ds')),
    ],
    [
      'the state dir itself',
      { ...base, stateDir: 'state', datastoreRoots: state },
      `job.datastoreRoots: ${state} is the agent's own ${state} (its state, credentials or settings), which a descriptor could then name and ship: give the folder a datastore is mounted at (e.g. /vmfs/volumes/ds2 or /mnt/nfs/ds2), one that holds no agent file and lies outside the agent's state dir`,
    ],
    [
      'an esxi mount inside the state dir',
      { ...base, vms: ['db01'], driver: 'esxi', stateDir: 'state', esxi: { ssh: { host: 'esx1', privateKeyFile: 'esx.key', hostKeyFingerprint: FP }, datastores: { ds1: 'mnt/ds1', ds2: 'ds-link' } } },
      inside('job.esxi.datastores.ds2', join(dir, 'ds-link'), 'map the datastore to the folder it is mounted at on this proxy (e.g. /mnt/nfs/ds2)'),
    ],
  ]
  for (const [what, job, message] of cases) {
    await writeFile(file, JSON.stringify(job))
    t.same(await problems(loadJob({ file })), [message], what)
  }
  // by flags: --datastore-root inside --state-dir; an esxi settings file's mount inside it, named by the file and key
  const flags = { cwd: dir, names: { datastoreRoots: '--datastore-root', stateDir: '--state-dir', esxi: '--esxi-config', driver: '--driver' } }
  t.same(
    await problems(loadJob({ ...flags, vms: ['a.vmx'], options: { to: base.to, tokenFile: join(dir, 'token.txt'), stateDir: state, datastoreRoots: [join(dir, 'ds-link')] } })),
    [inside('--datastore-root', join(dir, 'ds-link'))],
    '--datastore-root inside --state-dir',
  )
  const esxiJson = join(dir, 'esxi.json')
  await writeFile(
    esxiJson,
    JSON.stringify({ ssh: { host: 'esx1', privateKeyFile: join(dir, 'esx.key'), hostKeyFingerprint: FP }, datastores: { ds1: join(dir, 'mnt', 'ds1'), ds2: { localPath: join(state, 'ds') } } }),
  )
  t.same(
    await problems(loadJob({ ...flags, vms: ['db01'], options: { to: base.to, tokenFile: join(dir, 'token.txt'), driver: 'esxi', esxi: esxiJson, stateDir: join(dir, 'state-link') } })),
    [inside(`${esxiJson}: datastores.ds2.localPath`, join(state, 'ds'), 'map the datastore to the folder it is mounted at on this proxy (e.g. /mnt/nfs/ds2)')],
    'a settings file mount inside the state dir named through a link',
  )
  // beside the state dir: accepted, and where each setting came from reaches replicate() (which checks again at the VM's start)
  await writeFile(file, JSON.stringify({ ...base, stateDir: 'state', datastoreRoots: join(dir, 'mnt', 'ds1') }))
  t.equal((await loadJob({ file })).vms[0]?.datastoreRootsSource, 'job.datastoreRoots')
  const ok = await loadJob({ ...flags, vms: ['db01'], options: { to: base.to, tokenFile: join(dir, 'token.txt'), driver: 'esxi', esxi: join(dir, 'esxi.json'), stateDir: join(dir, 'elsewhere') } })
  t.same(ok.vms[0]?.esxiDatastoreSources, { ds1: `${esxiJson}: datastores.ds1`, ds2: `${esxiJson}: datastores.ds2.localPath` })
})

t.test('an esxi VM named twice on one host is refused at load; the same name on two hosts is two VMs', async (t) => {
  const dir = await fixture(t)
  const esxi = (host: string) => ({ ssh: { host, privateKeyFile: 'esx.key', hostKeyFingerprint: FP }, datastores: { ds1: 'mnt/ds1' } })
  const file = join(dir, 'job.json')
  await writeFile(file, JSON.stringify({ to: 'wss://dr.example:7443', tokenFile: 'token.txt', driver: 'esxi', esxi: esxi('esx1'), vms: ['web01', { vm: 'db01' }, { vm: 'web01', certify: 'none' }] }))
  t.same(await problems(loadJob({ file })), ['job.vms[0] ("web01") and job.vms[2] ("web01") name the same VM of ESXi host esx1 twice: a run replicates a VM once; remove one'])
  await writeFile(
    file,
    JSON.stringify({ to: 'wss://dr.example:7443', tokenFile: 'token.txt', driver: 'esxi', esxi: esxi('esx1'), vms: ['web01', { vm: 'web01', esxi: esxi('esx2'), to: 'wss://dr2.example:7443' }] }),
  )
  t.equal((await loadJob({ file })).vms.length, 2, 'web01 of esx1 and web01 of esx2, to two receivers')
})
