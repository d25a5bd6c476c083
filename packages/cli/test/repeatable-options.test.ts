/**
 * Options that take several values (`--mail-to`, `--mail-on`, `--webhook-on`,
 * `--datastore-root`, `--path-map`, `--network`) take ONE value per
 * occurrence: written before a positional (`grainline replicate --mail-to
 * ops@x.net vm.vmx`) they leave it alone. A yargs `array` option would take
 * every word up to the next flag: the VM would become a second address.
 */
import t from 'tap'
import { mkdir } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import yargs from 'yargs'
import { createSampleVm } from '@grainline/agent'
import { runNode, scratchDir, tokenFileFixture } from '@grainline/test-utils'
import type { CliCommand } from '../src/command.ts'
import { mirrorCommand } from '../src/commands/mirror.ts'
import { infoCommand, mapCommand } from '../src/commands/info.ts'
import { replicateCommand } from '../src/commands/replicate.ts'
import { jobFromArgs } from '../src/commands/replicate-run.ts'
import { COMMANDS } from '../src/main.ts'
import { runMain } from './helpers.ts'

const bin = resolve(dirname(fileURLToPath(import.meta.url)), '../src/bin.js')

/** Parse `argv` as `command` does (strict, choices checked), without running it. */
function parse(command: CliCommand, argv: readonly string[]): Record<string, unknown> {
  return yargs([...argv])
    .strict()
    .command(command.command, command.describe, command.builder)
    .fail((msg, err) => {
      throw err ?? new Error(msg)
    })
    .parseSync() as Record<string, unknown>
}

t.test('no command declares an array option: only a positional (replicate [vm..]) takes several words', async (t) => {
  for (const c of COMMANDS) {
    const positionals = new Set([...c.command.matchAll(/[<[]([\w-]+)(?:\.\.)?[>\]]/g)].map((m) => m[1]))
    // getOptions() is yargs' own (not in its typings): the keys declared `array`
    const declared = c.builder(yargs([])) as unknown as { getOptions(): { array: string[] } }
    const arrays = declared.getOptions().array.filter((k) => !positionals.has(k))
    t.same(arrays, [], `${c.command}: no greedy option`)
  }
})

t.test('replicate: --mail-to, --mail-on, --webhook-on and --datastore-root before the VMs leave the VMs alone', async (t) => {
  const secret = tokenFileFixture(scratchDir(t))
  const common = [
    '--to',
    'wss://dr.example.net:7443',
    '--mail-from',
    'dr@example.net',
    '--smtp-host',
    'smtp.example.net',
    '--webhook',
    'https://hooks.example.net/x',
    '--webhook-secret-file',
    secret,
    '--token-file',
    secret,
  ]
  // a datastore root of its own (not /tmp: a root may not contain the agent's token file)
  const ds = scratchDir(t)
  const args = parse(replicateCommand, ['replicate', '--mail-to', 'ops@example.net', '--mail-on', 'failure', '--webhook-on', 'warning', '--datastore-root', ds, 'a/a.vmx', 'b/b.vmx', ...common])
  t.same(args['vm'], ['a/a.vmx', 'b/b.vmx'], 'both VMs are positionals')
  t.same(args['mail-to'], ['ops@example.net'])
  t.same(args['mail-on'], ['failure'])
  t.same(args['webhook-on'], ['warning'])
  t.same(args['datastore-root'], [ds])
  const job = await jobFromArgs(args, '/tmp')
  t.same(
    job.vms.map((v) => v.vm),
    ['/tmp/a/a.vmx', '/tmp/b/b.vmx'].map((p) => resolve(p)),
  )
  t.same(job.email?.to, 'ops@example.net', 'one address')
  t.same(job.email?.on, 'failure')
  t.same(job.webhooks[0]?.on, 'warning')
  // without the flag whose value it could be, such a word is a VM (an ESXi VM may be named so)
  const bare = ['replicate', '--to', 'wss://dr.example.net:7443', '--token-file', secret]
  t.same(parse(replicateCommand, [...bare, 'failure', 'a@b'])['vm'], ['failure', 'a@b'], 'a VM named failure or a@b is taken when no mail or webhook flag is given')
  // one at a time: two .vmx of one folder are one mirror at the receiver (refused, load-job.ts duplicateVms)
  for (const word of ['failure', 'a@b'])
    t.same(
      (await jobFromArgs(parse(replicateCommand, [...bare, word]), '/tmp')).vms.map((v) => v.vm),
      [resolve('/tmp', word)],
      word,
    )
})

t.test('every repeatable option refuses an occurrence without a value and its --no- negation: exit 2 naming the flag and what it takes', async (t) => {
  // the positionals and demanded options a command needs beside the flag under test
  const beside: Record<string, string[]> = { info: ['x.vmdk'], map: ['x.vmdk'], mirror: ['failover', '--store', '/s', '--vm', 'x'] }
  const what: Record<string, string> = {
    'datastore-root': 'DIR',
    'mail-to': 'ADDRESS',
    'mail-on': 'OUTCOME (one of success, warning, failure)',
    'webhook-on': 'OUTCOME (one of success, warning, failure)',
    'path-map': 'DATASTORE=LOCALPATH',
    network: "'SOURCE LABEL=DR LABEL'",
  }
  const run = runMain
  const found: string[] = []
  for (const c of COMMANDS) {
    const name = c.command.split(' ')[0] as string
    // yargs' own descriptions (not in its typings): a repeatable option's help says how to give several
    const declared = c.builder(yargs([])) as unknown as { getInternalMethods(): { getUsageInstance(): { getDescriptions(): Record<string, string | undefined> } } }
    for (const [flag, d] of Object.entries(declared.getInternalMethods().getUsageInstance().getDescriptions())) {
      if (d?.includes('repeat the flag') !== true) continue
      found.push(`${name} --${flag}`)
      const empty = `grainline: --${flag}: no value given: write --${flag} ${what[flag] ?? '?'}, or leave the flag out\n`
      const negated = `grainline: --no-${flag}: --${flag} takes a value and has nothing to turn off: leave the flag out for none, or give --${flag} ${what[flag] ?? '?'}\n`
      for (const [argv, message] of [
        [[`--${flag}=`], empty],
        [[`--${flag}`, ' '], empty],
        [[`--${flag}`], empty],
        [[`--no-${flag}`], negated],
        [[`--${flag}`, 'x', `--no-${flag}`], negated],
      ] as const) {
        const r = await run([name, ...(beside[name] ?? []), ...argv])
        t.equal(r.code, 2, `${name} ${argv.join(' ')}: exit 2`)
        t.equal(r.err, `${message}Run "grainline --help" for usage.\n`, `${name} ${argv.join(' ')}`)
        t.equal(r.out, '')
      }
    }
  }
  t.same(
    found.sort(),
    ['info --path-map', 'map --path-map', 'mirror --network', 'replicate --datastore-root', 'replicate --mail-on', 'replicate --mail-to', 'replicate --webhook-on'],
    'every repeatable option of every command was tried',
  )
})

t.test('replicate: repeated occurrences accumulate; comma lists are split (addresses, events), never paths', async (t) => {
  const secret = tokenFileFixture(scratchDir(t))
  const ds = scratchDir(t)
  const args = parse(replicateCommand, [
    'replicate',
    '--mail-to',
    'a@example.net, b@example.net',
    'vm.vmx',
    '--mail-to',
    'c@example.net',
    '--mail-on',
    'warning,failure',
    '--webhook-on',
    'success',
    '--webhook-on',
    'failure',
    '--datastore-root',
    '/usr',
    '--datastore-root',
    ds,
    '--to',
    'wss://dr.example.net:7443',
    '--mail-from',
    'dr@example.net',
    '--smtp-host',
    'smtp.example.net',
    '--webhook',
    'https://hooks.example.net/x',
    '--webhook-secret-file',
    secret,
    '--token-file',
    secret,
  ])
  t.same(args['vm'], ['vm.vmx'])
  t.same(args['mail-to'], ['a@example.net', 'b@example.net', 'c@example.net'], 'comma list split and trimmed, then the repeat')
  t.same(args['mail-on'], ['warning', 'failure'])
  t.same(args['webhook-on'], ['success', 'failure'])
  t.same(args['datastore-root'], ['/usr', ds])
  const job = await jobFromArgs(args, '/tmp')
  t.same(job.email?.to, ['a@example.net', 'b@example.net', 'c@example.net'])
  t.same(job.email?.on, ['warning', 'failure'])
  t.same(job.webhooks[0]?.on, ['success', 'failure'])
  t.equal(job.vms.length, 1)
  const paths = parse(mirrorCommand, ['mirror', 'failover', '--store', '/s', '--vm', 'x', '--network', 'A,B=C', '--network', 'D=E'])
  t.same(paths['network'], ['A,B=C', 'D=E'], '--network: a label may hold a comma, no split')
  t.same(parse(infoCommand, ['info', '--path-map', 'ds1=/a,b', 'x.vmdk'])['path-map'], ['ds1=/a,b'], '--path-map: a path may hold a comma, no split')
  t.equal(parse(replicateCommand, ['replicate', 'vm.vmx'])['mail-to'], undefined, 'absent: undefined')
})

t.test('info, map and mirror: --path-map and --network before the positional leave it alone', async (t) => {
  const info = parse(infoCommand, ['info', '--path-map', 'ds1=/mnt/ds1', 'disk.vmdk'])
  t.equal(info['disk'], 'disk.vmdk')
  t.same(info['path-map'], ['ds1=/mnt/ds1'])
  const map = parse(mapCommand, ['map', '--path-map', 'ds1=/mnt/ds1', '--path-map', 'ds2=/mnt/ds2', 'disk.vmdk'])
  t.equal(map['disk'], 'disk.vmdk')
  t.same(map['path-map'], ['ds1=/mnt/ds1', 'ds2=/mnt/ds2'])
  const mirror = parse(mirrorCommand, ['mirror', '--network', 'VM Network=DR Network', 'failover', '--store', '/s', '--vm', 'x'])
  t.equal(mirror['action'], 'failover')
  t.same(mirror['network'], ['VM Network=DR Network'])
})

t.test('as processes: the flag before the positional reaches the command; bad values still exit 2 naming the flag', async (t) => {
  const dir = scratchDir(t)
  const vm = await createSampleVm(join(dir, 'src'), { name: 'kept', disks: [{ sizeBytes: 1024 * 1024 }] })
  const token = tokenFileFixture(dir)
  const mail = ['--mail-from', 'dr@example.net', '--smtp-host', 'smtp.example.net']
  const base = ['--to', 'wss://127.0.0.1:9', '--token-file', token, '--state-dir', join(dir, 'state'), ...mail]
  // --driver esxi without its settings: refused before anything, naming the VM (the positional after --mail-to)
  const kept = await runNode(bin, ['replicate', '--mail-to', 'ops@example.net', vm.vmxPath, ...base, '--driver', 'esxi'])
  t.equal(kept.code, 2)
  t.match(kept.stderr, /^grainline: VM ".*kept\.vmx": driver "esxi" needs its settings/, 'the VM is the positional, not a second address')
  const cases: Array<[string[], RegExp]> = [
    [['--mail-to', 'ops'], /^grainline: --mail-to: is not an e-mail address/],
    [['--mail-to', 'ops@example.net,'], /^grainline: --mail-to\[1\]: is not an e-mail address/],
    [['--mail-to', 'ops@example.net', '--mail-on', 'always'], /^grainline: Invalid values:\n {2}Argument: mail-on, Given: "always", Choices: "success", "warning", "failure"\n/],
    [['--mail-to', 'ops@example.net', '--mail-on', 'failure,always'], /^grainline: Invalid values:\n {2}Argument: mail-on, Given: "always"/],
    [
      ['--webhook', 'https://hooks.example.net/x', '--webhook-secret-file', token, '--webhook-on', 'success,', '--webhook-on', 'failure'],
      /^grainline: Invalid values:\n {2}Argument: webhook-on, Given: ""/,
    ],
  ]
  for (const [extra, message] of cases) {
    const r = await runNode(bin, ['replicate', ...extra, vm.vmxPath, ...base])
    t.equal(r.code, 2, `${extra.join(' ')}: exit 2`)
    t.match(r.stderr, message, extra.join(' '))
    t.equal(r.stdout, '')
  }
  // the old array form (`--mail-on success failure`) would make the second word a VM: refused, naming the flag to repeat
  const oldForm: Array<[string[], string]> = [
    [
      ['--mail-to', 'ops@example.net', '--mail-on', 'success', 'failure'],
      '`failure` looks like a value of --mail-on, not a VM: repeat the flag (--mail-on success --mail-on failure) or give a comma list (--mail-on success,failure)',
    ],
    [['--webhook', 'https://hooks.example.net/x', '--webhook-secret-file', token, '--webhook-on', 'success', 'warning'], '`warning` looks like a value of --webhook-on, not a VM'],
    [['--mail-to', 'ops@example.net', 'dr@example.net'], '`dr@example.net` looks like a value of --mail-to, not a VM: repeat the flag (--mail-to ops@example.net --mail-to dr@example.net)'],
  ]
  for (const [extra, message] of oldForm) {
    const r = await runNode(bin, ['replicate', ...extra, vm.vmxPath, ...base])
    t.equal(r.code, 2, `${extra.join(' ')}: exit 2`)
    t.ok(r.stderr.startsWith(`grainline: ${message}`), `${extra.join(' ')}: ${r.stderr}`)
    t.equal(r.stdout, '')
  }
  const info = await runNode(bin, ['info', '--path-map', 'ds1=/mnt/ds1', join(dir, 'missing.vmdk')])
  t.equal(info.code, 1, 'info ran: the disk was not taken as a second --path-map')
  t.match(info.stderr, /missing\.vmdk/)
  await mkdir(join(dir, 'store'))
  const mirror = await runNode(bin, ['mirror', '--network', 'VM Network=DR Network', 'rollback', '--store', join(dir, 'store'), '--vm', 'x'])
  t.equal(mirror.code, 1, 'mirror ran its action')
  t.match(mirror.stderr, /^grainline: no mirror of VM x .* \[E_NOT_FOUND\]\n$/)
})
