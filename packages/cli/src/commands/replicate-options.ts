/**
 * The flags of `grainline replicate`, one entry each: the flag, the job key it
 * sets (a per-VM option of the agent's `vmOptionsShape`, or a job-level key),
 * and its help. Values are validated by the agent's job schema (the flag is
 * named in every message), never here; enums come from the schema's lists.
 *
 * Extension point: a new option is one entry here, one key in the agent's
 * schema (job/vm-options-schema.ts or job/job-schema.ts) and one field of
 * `ReplicateInit`.
 */
import { resolve } from 'node:path'
import type { Options } from 'yargs'
// the value lists alone (narrow entry points): the flags load neither the agent nor zod
import { CertifyChoices, DeltaFormats, DriverNames, EmailLayouts, NotifyOutcomes, SmtpTlsModes } from '@grainline/agent/choices'
import { CompressionAlgorithms } from '@grainline/protocol/messages'
import { UsageError } from '../exit-codes.ts'
import { repeatableOption } from '../repeatable-option.ts'

/** One flag. */
export interface FlagSpec {
  /** the flag without dashes */
  readonly flag: string
  /** the job key it sets: a per-VM option (`certify`) or a dotted job-level key (`email.smtp.host`) */
  readonly key: string
  /** per-VM option, or the job's */
  readonly level: 'vm' | 'job'
  /** a path: made absolute against the working folder */
  readonly path?: boolean
  /** a whole number written as text (validated by the schema, which names the flag) */
  readonly integer?: boolean
  /** the value is a list: a repeatable single-value flag (`--mail-to a --mail-to b`, yargs from `repeatableOption`) */
  readonly list?: boolean
  readonly yargs: Options
}

const s = (describe: string, extra: Options = {}): Options => ({ type: 'string', describe, ...extra })
const b = (describe: string): Options => ({ type: 'boolean', describe })

/** Every flag of `grainline replicate` that sets a job value. */
export const REPLICATE_FLAGS: readonly FlagSpec[] = [
  { flag: 'job', key: '', level: 'job', yargs: s('JSON job file: {"to", "tokenFile", "parallel", "bwlimit", …, "vms": [{"vm": …}]} (docs/config/job.md)') },
  { flag: 'to', key: 'to', level: 'vm', yargs: s("receiver URL, wss://HOST:PORT (the port is required: the receiver's listen port, 7443 in the docs)") },
  { flag: 'token-file', key: 'tokenFile', level: 'vm', path: true, yargs: s('file holding the bearer token') },
  { flag: 'ca', key: 'caFile', level: 'vm', path: true, yargs: s("PEM CA file trusted for the receiver certificate (or the receiver's self-signed certificate)") },
  { flag: 'insecure-tls', key: 'insecureTls', level: 'vm', yargs: b('skip TLS certificate verification (testing only)') },
  { flag: 'insecure-plaintext', key: 'insecurePlaintext', level: 'vm', yargs: b('allow a plain ws:// URL to a non-loopback host: the token travels in clear (refused otherwise)') },
  { flag: 'driver', key: 'driver', level: 'vm', yargs: s('hypervisor driver (default local)', { choices: DriverNames }) },
  { flag: 'esxi-config', key: 'esxi', level: 'vm', path: true, yargs: s('JSON file with the esxi driver settings (docs/config/esxi.md)') },
  { flag: 'delta-format', key: 'deltaFormat', level: 'vm', yargs: s('local driver: delta format of new snapshots (default sesparse)', { choices: DeltaFormats }) },
  {
    flag: 'datastore-root',
    key: 'datastoreRoots',
    level: 'vm',
    // repeated, not a yargs array: an array would swallow the .vmx paths that follow it (no comma list: a path may hold one)
    list: true,
    yargs: repeatableOption(
      'datastore-root',
      "local driver: a folder the VM's files may also be read from, another datastore its .vmx names a disk on (an absolute path of an existing folder). The folder that holds the VM's folder is readable too (only the VM's own folder when it holds --state-dir or another agent file); a disk outside every such folder is refused (E_VMX)",
      { value: 'DIR' },
    ),
  },
  { flag: 'certify', key: 'certify', level: 'vm', yargs: s('full digest of source and mirror after commit (default none)', { choices: CertifyChoices }) },
  { flag: 'trivial-mb', key: 'trivialMiB', level: 'vm', integer: true, yargs: s('MiB of the disk prefix compared after every cycle (default 16; 0 = off)') },
  { flag: 'compress', key: 'compress', level: 'vm', yargs: s('preferred compression (default lz4)', { choices: CompressionAlgorithms }) },
  { flag: 'verify', key: 'verify', level: 'vm', yargs: s('after the commit compare the digests of every block the cycle wrote, source vs mirror (default none)', { choices: ['none', 'changed'] }) },
  {
    flag: 'scrub',
    key: 'scrub',
    level: 'vm',
    integer: true,
    yargs: s('also compare 1/N of every disk with the mirror each cycle, in rotation: the whole mirror is proven every N cycles (default 0 = off)'),
  },
  {
    flag: 'retention',
    key: 'retention',
    level: 'vm',
    yargs: s(
      "restore points this job asks the receiver to keep of the VM, e.g. keep=14,maxAge=30d,daily=7,weekly=4 (keys: keep, maxAge, maxBytes, hourly, daily, weekly, monthly); the receiver applies it within its retentionLimits (default: the receiver's policy)",
    ),
  },
  {
    flag: 'resync',
    key: 'resync',
    level: 'vm',
    yargs: b('compare block digests of source and mirror and send only the blocks that differ, even when an incremental would be safe (chosen on its own when it is not)'),
  },
  { flag: 'consolidate-existing', key: 'consolidateExisting', level: 'vm', yargs: b('remove foreign snapshots first instead of refusing') },
  {
    flag: 'independent',
    key: 'independentDisks',
    level: 'vm',
    yargs: s('esxi driver: independent disks and physical RDMs are skipped with a warning, or the VM refused (default skip)', { choices: ['skip', 'refuse'] }),
  },
  { flag: 'consolidate', key: 'consolidate', level: 'vm', yargs: b('esxi driver: run snapshot.consolidate when ESXi reports the disks need it, then verify the chain') },
  {
    flag: 'state-dir',
    key: 'stateDir',
    level: 'vm',
    path: true,
    yargs: s("folder of the agent's record per VM (last commit's generation and snapshot); default /var/lib/grainline as root, else $XDG_STATE_HOME/grainline"),
  },
  {
    flag: 'give-up',
    key: 'giveUp',
    level: 'vm',
    yargs: s('how long the receiver may stay unreachable, or acknowledge nothing new, before the run gives up: 90s, 10m (a bare number is seconds; default 10m)'),
  },
  {
    flag: 'keepalive',
    key: 'keepAlive',
    level: 'vm',
    yargs: s(
      "the longest the agent stays silent on a connection: it pings the receiver when idle (a certify's digest of a large disk), below the receiver's idle timeout and the path's NAT or firewall timeouts: 30s, 2m (0 = off; default 30s)",
    ),
  },
  { flag: 'parallel', key: 'parallel', level: 'job', integer: true, yargs: s('VMs replicated at the same time (default 2; snapshot operations stay one at a time per ESXi host)') },
  {
    flag: 'bwlimit',
    key: 'bwlimit',
    level: 'job',
    yargs: s(
      'bandwidth limit of the whole run in bytes/s, shared by all its streams: 500k, 20M (0 or off = unlimited), or a timetable in local time: "08:00,512k 18:00,off", "Mon-08:00,2M Fri-18:00,off"',
    ),
  },
  { flag: 'report', key: 'report', level: 'job', path: true, yargs: s('write the JSON report to this file') },
  { flag: 'mail-to', key: 'email.to', level: 'job', list: true, yargs: repeatableOption('mail-to', 'e-mail the report to this address', { commaList: true, value: 'ADDRESS' }) },
  { flag: 'mail-from', key: 'email.from', level: 'job', yargs: s('sender address of the report e-mail') },
  {
    flag: 'mail-on',
    key: 'email.on',
    level: 'job',
    list: true,
    yargs: repeatableOption('mail-on', 'send the e-mail after clean runs, runs with a warning, failed runs (default all; failure covers warnings)', {
      commaList: true,
      choices: NotifyOutcomes,
      value: 'OUTCOME',
    }),
  },
  { flag: 'mail-layout', key: 'email.layout', level: 'job', yargs: s('e-mail layout (default auto: certified when a VM was certified)', { choices: EmailLayouts }) },
  { flag: 'smtp-host', key: 'email.smtp.host', level: 'job', yargs: s('SMTP server') },
  { flag: 'smtp-port', key: 'email.smtp.port', level: 'job', integer: true, yargs: s('SMTP port (default 587; 465 with --smtp-tls implicit)') },
  { flag: 'smtp-tls', key: 'email.smtp.tls', level: 'job', yargs: s('SMTP protection (default starttls, required)', { choices: SmtpTlsModes }) },
  { flag: 'smtp-user', key: 'email.smtp.user', level: 'job', yargs: s('SMTP AUTH user') },
  { flag: 'smtp-password-file', key: 'email.smtp.passwordFile', level: 'job', path: true, yargs: s('file holding the SMTP password') },
  {
    flag: 'smtp-insecure-plaintext',
    key: 'email.smtp.insecurePlaintext',
    level: 'job',
    yargs: b('allow --smtp-tls none with --smtp-user to a non-loopback host: the SMTP password travels in clear (refused otherwise)'),
  },
  { flag: 'smtp-ca', key: 'email.smtp.caFile', level: 'job', path: true, yargs: s('PEM CA trusted for the SMTP server') },
  { flag: 'webhook', key: 'webhooks.url', level: 'job', yargs: s('POST the JSON report, HMAC-signed, to this URL after the run') },
  { flag: 'webhook-secret-file', key: 'webhooks.secretFile', level: 'job', path: true, yargs: s("file holding the webhook's HMAC key") },
  {
    flag: 'webhook-insecure-plaintext',
    key: 'webhooks.insecurePlaintext',
    level: 'job',
    yargs: b('allow an http:// --webhook URL carrying user:password@ to a non-loopback host: the credentials travel in clear (refused otherwise)'),
  },
  {
    flag: 'webhook-on',
    key: 'webhooks.on',
    level: 'job',
    list: true,
    yargs: repeatableOption('webhook-on', 'POST after clean runs, runs with a warning, failed runs (default all; failure covers warnings)', {
      commaList: true,
      choices: NotifyOutcomes,
      value: 'OUTCOME',
    }),
  },
]

/** What the flags say, ready for the agent's `loadJob`. */
export interface FlagValues {
  readonly file?: string
  readonly options: Record<string, unknown>
  readonly jobOptions: Record<string, unknown>
  /** dotted key → `--flag`, for messages */
  readonly names: Record<string, string>
}

function setPath(o: Record<string, unknown>, path: readonly string[], v: unknown): void {
  let cur = o
  for (const k of path.slice(0, -1)) {
    const next = cur[k]
    if (typeof next !== 'object' || next === null) cur[k] = {}
    cur = cur[k] as Record<string, unknown>
  }
  cur[path[path.length - 1] as string] = v
}

/** A whole number written as text becomes a number; anything else stays as written (the schema names it). */
const integerOf = (v: unknown): unknown => (typeof v === 'string' && /^-?\d{1,15}$/.test(v.trim()) ? Number(v.trim()) : v)

/** Sort the parsed flags into per-VM options and job values, paths made absolute against `cwd`. */
export function flagValues(args: Readonly<Record<string, unknown>>, cwd: string): FlagValues {
  const options: Record<string, unknown> = {}
  const jobOptions: Record<string, unknown> = {}
  const names: Record<string, string> = {}
  let file: string | undefined
  for (const f of REPLICATE_FLAGS) {
    let v = args[f.flag]
    if (v === undefined || v === false) continue
    if (f.flag === 'job') {
      file = resolve(cwd, String(v))
      continue
    }
    if (f.path === true && typeof v === 'string') v = resolve(cwd, v)
    if (f.integer === true) v = integerOf(v)
    if (Array.isArray(v) && f.list !== true) throw new UsageError(`--${f.flag}: given ${v.length} times; give it once`)
    if (f.list === true && Array.isArray(v) && v.length === 1) v = v[0]
    const path = f.key.split('.')
    if (f.level === 'vm') options[f.key] = v
    else if (path[0] === 'webhooks') {
      // one webhook from the flags: { url, secretFile, on }
      const hooks = (jobOptions['webhooks'] ?? [{}]) as Array<Record<string, unknown>>
      setPath(hooks[0] as Record<string, unknown>, path.slice(1), v)
      jobOptions['webhooks'] = hooks
    } else setPath(jobOptions, path, v)
    names[f.key] = `--${f.flag}`
  }
  if (names['webhooks.url'] !== undefined || names['webhooks.secretFile'] !== undefined) names['webhooks.0'] = '--webhook'
  for (const k of ['url', 'secretFile', 'on']) if (names[`webhooks.${k}`] !== undefined) names[`webhooks.0.${k}`] = names[`webhooks.${k}`] as string
  if (jobOptions['email'] !== undefined) names['email'] ??= '--mail-to'
  // a value the flags' e-mail or webhook needs but was not given (--mail-to without --mail-from) is named by
  // the flag that sets it, not by a path under another flag ("--mail-to.from"); only when the flags made the group
  for (const f of REPLICATE_FLAGS) {
    const [group, ...rest] = f.key.split('.')
    if (f.level !== 'job' || rest.length === 0 || (group !== 'email' && group !== 'webhooks') || jobOptions[group] === undefined) continue
    names[group === 'webhooks' ? `webhooks.0.${rest.join('.')}` : f.key] ??= `--${f.flag}`
  }
  if (jobOptions['email'] !== undefined) names['email.smtp'] ??= '--smtp-host'
  return { ...(file === undefined ? {} : { file }), options, jobOptions, names }
}
