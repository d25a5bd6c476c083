import { readFileSync } from 'node:fs'
import yargs, { type Argv } from 'yargs'
import { infoCommand, mapCommand } from './commands/disk-info.ts'
import { receiveCommand } from './commands/receive.ts'
import { replicateCommand } from './commands/replicate.ts'
import { statusCommand, rollbackCommand } from './commands/store.ts'
import { demoCommand } from './commands/demo.ts'
import { createCliLogger } from './logger.ts'
import { parseByteSize } from '@grainline/protocol'
import { parsePathMap } from './util.ts'
import type { LevelWithSilent } from 'pino'

/** This package's version (dist/src/main.js → package.json), never a literal. */
const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version

/** Exit codes of the `grainline` command. */
export const ExitCode = { Ok: 0, Failed: 1, Usage: 2, Interrupted: 130 } as const

const write = (text: string): void => { process.stdout.write(text) }

function loggerOf (args: { 'log-level'?: string, 'log-file'?: string }): ReturnType<typeof createCliLogger> {
  return createCliLogger({ level: (args['log-level'] ?? 'info') as LevelWithSilent, ...(args['log-file'] !== undefined ? { file: args['log-file'] } : {}) })
}

/** Build the yargs parser (exported so tests and the README reference use the same one). */
export function buildCli (argv: readonly string[]): Argv {
  return yargs([...argv])
    .scriptName('grainline')
    .usage('$0 <command> [options]\n\nReplicate running VMware ESXi VMs to a DR site, block by block, from snapshot deltas.')
    .strict()
    .demandCommand(1, 'name a command')
    .recommendCommands()
    .option('log-level', { type: 'string', choices: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'], default: 'info', describe: 'log level of the JSON logs (stderr)' })
    .option('log-file', { type: 'string', describe: 'write JSON logs to this file instead of stderr' })
    .command('info <disk>', 'describe a VMDK: createType, capacity, CIDs, extents and the whole chain', (y) => y
      .positional('disk', { type: 'string', demandOption: true, describe: 'descriptor (.vmdk) of any layer' })
      .option('output', { alias: 'o', choices: ['json', 'human'] as const, default: 'human' as const })
      .option('path-map', { type: 'string', array: true, describe: 'DATASTORE=LOCALPATH for absolute /vmfs/volumes/... parent hints' }),
    async (args) => {
      await infoCommand({ disk: args.disk, output: args.output, pathMap: parsePathMap(args['path-map']), write })
    })
    .command('map <disk>', 'list what each layer of the chain holds (same meaning as qemu-img map --output=json)', (y) => y
      .positional('disk', { type: 'string', demandOption: true })
      .option('output', { alias: 'o', choices: ['json', 'human'] as const, default: 'human' as const })
      .option('path-map', { type: 'string', array: true, describe: 'DATASTORE=LOCALPATH for absolute parent hints' }),
    async (args) => {
      await mapCommand({ disk: args.disk, output: args.output, pathMap: parsePathMap(args['path-map']), write })
    })
    .command('receive', 'run a receiver at the DR site (mirror store, TLS, tokens)', (y) => y
      .option('listen', { type: 'string', describe: 'HOST:PORT to listen on (default 127.0.0.1:0 from the config)' })
      .option('store', { type: 'string', describe: 'folder holding the mirrors' })
      .option('tokens', { type: 'string', describe: 'tokens file {"tokens":[{"name","token","vms":["glob"]}]}' })
      .option('tls-cert', { type: 'string', describe: 'PEM certificate (wss://)' })
      .option('tls-key', { type: 'string', describe: 'PEM private key' })
      .option('insecure', { type: 'boolean', default: false, describe: 'allow plain ws:// on a non-loopback address' })
      .option('config', { type: 'string', describe: 'JSON config file with the same settings (flags win)' })
      .option('display-suffix', { type: 'string', describe: 'appended to the mirror VM display name' })
      .option('trivial-mb', { type: 'number', describe: 'largest prefix (MiB) a trivial check may digest' }),
    async (args) => {
      await receiveCommand({
        ...(args.listen !== undefined ? { listen: args.listen } : {}),
        ...(args.store !== undefined ? { store: args.store } : {}),
        ...(args.tokens !== undefined ? { tokens: args.tokens } : {}),
        ...(args['tls-cert'] !== undefined ? { tlsCert: args['tls-cert'] } : {}),
        ...(args['tls-key'] !== undefined ? { tlsKey: args['tls-key'] } : {}),
        ...(args.config !== undefined ? { config: args.config } : {}),
        ...(args['display-suffix'] !== undefined ? { displaySuffix: args['display-suffix'] } : {}),
        ...(args['trivial-mb'] !== undefined ? { trivialMb: args['trivial-mb'] } : {}),
        insecure: args.insecure,
        logger: loggerOf(args),
      })
    })
    .command('replicate [vmx]', 'run one replication cycle of a VM (or of every VM in a job file)', (y) => y
      .positional('vmx', { type: 'string', describe: '.vmx path (local driver) or VM name/id (esxi driver)' })
      .option('to', { type: 'string', describe: 'receiver URL, wss://HOST:PORT' })
      .option('token-file', { type: 'string', describe: 'file holding the bearer token' })
      .option('job', { type: 'string', describe: 'JSON job file: {"to", "tokenFile", ..., "vms": [{"vm": ...}]}' })
      .option('driver', { choices: ['local', 'esxi'] as const, describe: 'hypervisor driver (default local)' })
      .option('esxi-config', { type: 'string', describe: 'JSON file with the esxi driver settings (host, user, key, fingerprint, datastores)' })
      .option('certify', { choices: ['none', 'xxh64', 'sha256', 'sha1', 'md5'] as const, describe: 'full digest of source and mirror after commit (default none)' })
      .option('trivial-mb', { type: 'number', describe: 'MiB of the disk prefix compared after every cycle (default 16; 0 = off)' })
      .option('bwlimit', { type: 'string', describe: 'bandwidth limit in bytes/s, e.g. 500k, 10M' })
      .option('compress', { choices: ['lz4', 'deflate', 'none'] as const, describe: 'preferred compression (default lz4)' })
      .option('delta-format', { choices: ['sesparse', 'vmfssparse', 'hosted'] as const, describe: 'local driver: delta format of new snapshots (default sesparse)' })
      .option('consolidate-existing', { type: 'boolean', describe: 'remove foreign snapshots first instead of refusing' })
      .option('ca', { type: 'string', describe: 'PEM CA file trusted for the receiver certificate' })
      .option('insecure-tls', { type: 'boolean', describe: 'skip TLS certificate verification (testing only)' })
      .option('insecure-plaintext', { type: 'boolean', describe: 'allow a plain ws:// URL to a non-loopback host: the token travels in clear (refused otherwise)' })
      .option('give-up', { type: 'number', describe: 'seconds to keep reconnecting before giving up (default 600)' })
      .option('state-dir', { type: 'string', describe: 'folder of the agent\'s record per VM (last commit\'s generation and snapshot); default /var/lib/grainline as root, else $XDG_STATE_HOME/grainline' })
      .option('report', { type: 'string', describe: 'write the JSON report to this file' }),
    async (args) => {
      const report = await replicateCommand({
        ...(args.vmx !== undefined ? { vmx: args.vmx } : {}),
        ...(args.job !== undefined ? { job: args.job } : {}),
        ...(args.to !== undefined ? { to: args.to } : {}),
        ...(args['token-file'] !== undefined ? { tokenFile: args['token-file'] } : {}),
        ...(args.driver !== undefined ? { driver: args.driver } : {}),
        ...(args['esxi-config'] !== undefined ? { esxiConfig: args['esxi-config'] } : {}),
        ...(args.certify !== undefined ? { certify: args.certify } : {}),
        ...(args['trivial-mb'] !== undefined ? { trivialMb: args['trivial-mb'] } : {}),
        ...(args.bwlimit !== undefined ? { bwlimit: args.bwlimit } : {}),
        ...(args.compress !== undefined ? { compress: args.compress } : {}),
        ...(args['delta-format'] !== undefined ? { deltaFormat: args['delta-format'] } : {}),
        ...(args['consolidate-existing'] === true ? { consolidateExisting: true } : {}),
        ...(args.ca !== undefined ? { caFile: args.ca } : {}),
        ...(args['insecure-tls'] === true ? { insecureTls: true } : {}),
        ...(args['insecure-plaintext'] === true ? { insecurePlaintext: true } : {}),
        ...(args['give-up'] !== undefined ? { giveUp: args['give-up'] } : {}),
        ...(args['state-dir'] !== undefined ? { stateDir: args['state-dir'] } : {}),
        ...(args.report !== undefined ? { report: args.report } : {}),
        logger: loggerOf(args),
      })
      if (!report.ok) process.exitCode = ExitCode.Failed
    })
    .command('status', 'show the mirrors of a store: committed cycle, checks, in-flight work', (y) => y
      .option('store', { type: 'string', demandOption: true })
      .option('output', { alias: 'o', choices: ['json', 'human'] as const, default: 'human' as const }),
    async (args) => { await statusCommand({ store: args.store, output: args.output, write }) })
    .command('mirror <action>', 'act on a mirror in a store', (y) => y
      .positional('action', { choices: ['rollback'] as const, demandOption: true, describe: 'rollback: discard an interrupted cycle' })
      .option('store', { type: 'string', demandOption: true })
      .option('vm', { type: 'string', demandOption: true }),
    async (args) => { await rollbackCommand({ store: args.store, vm: args.vm, logger: loggerOf(args), write }) })
    .command('demo', 'the main job on an embedded default: sample VM, local TLS receiver, seed, 3 incremental cycles with a writing guest, certify', (y) => y
      .option('dir', { type: 'string', default: 'demo-run', describe: 'working folder (recreated)' })
      .option('cycles', { type: 'number', default: 3, describe: 'incremental cycles after the seed' })
      .option('disk-size', { type: 'string', default: '2G', describe: 'size of the first disk (the second is half)' })
      .option('guest-write', { type: 'string', default: '48M', describe: 'bytes the guest writes per disk per cycle' })
      .option('delta-format', { choices: ['sesparse', 'vmfssparse', 'hosted'] as const, default: 'sesparse' as const }),
    async (args) => {
      const ok = await demoCommand({ dir: args.dir, cycles: args.cycles, diskBytes: parseByteSize(args['disk-size'], '--disk-size'), guestBytes: parseByteSize(args['guest-write'], '--guest-write'), deltaFormat: args['delta-format'], write })
      if (!ok && process.exitCode !== ExitCode.Interrupted) process.exitCode = ExitCode.Failed
    })
    .help()
    .version(VERSION)
    .wrap(Math.min(110, process.stdout.columns ?? 100))
}

/** Run the CLI; returns the exit code. */
export async function main (argv: readonly string[]): Promise<number> {
  let failed: Error | undefined
  const cli = buildCli(argv).fail((msg, err, y) => {
    if (err !== undefined && err !== null) { failed = err; return }
    process.stderr.write(`${y.help !== undefined ? '' : ''}grainline: ${msg}\nRun "grainline --help" for usage.\n`)
    process.exitCode = ExitCode.Usage
  })
  try {
    await cli.parseAsync()
  } catch (err) {
    failed = err as Error
  }
  if (failed !== undefined) {
    const code = (failed as { code?: unknown }).code
    process.stderr.write(`grainline: ${failed.message}${typeof code === 'string' ? ` [${code}]` : ''}\n`)
    return ExitCode.Failed
  }
  return typeof process.exitCode === 'number' ? process.exitCode : ExitCode.Ok
}
