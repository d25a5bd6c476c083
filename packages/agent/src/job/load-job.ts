/**
 * A job from its sources — a job file, the VMs and options given on the
 * command line — validated completely before anything runs: every value
 * parsed, every referenced file (tokens, CA certificates, keys, secrets,
 * esxi settings) read and checked, every receiver URL checked (SPEC §1.2),
 * and every problem reported at once, named by key or flag
 * (`job.vms[2].certify: expected one of …`, `--bwlimit: …`).
 */
import { stat } from 'node:fs/promises'
import { basename, dirname, isAbsolute, resolve } from 'node:path'
import { z } from 'zod'
import { defaultStateDir } from '../agent-state.ts'
import { pinEsxiDatastores } from '../esxi/pin-datastores.ts'
import { pinLocalRoots } from '../local-driver.ts'
import { canonicalReceiverUrl, checkReceiverUrl } from '../receiver-url.ts'
import type { ReplicateInit } from '../replicate.ts'
import { toEsxiDriverInit, definedOnly } from './esxi-settings-schema.ts'
import type { SchemaContext } from './fields.ts'
import { ConfigError, configIssues, describeIssues, formatIssuePath, renameByPrefix } from './issues.ts'
import { jobFileSchema, jobShape } from './job-schema.ts'
import type { EmailSettings, WebhookSettings } from './notify-schema.ts'
import { readJsonFile } from './settings-file.ts'
import { vmOptionsSchema, type VmOptions } from './vm-options-schema.ts'
import type { Bandwidth } from '../rate-schedule.ts'

/** Where a job comes from. */
export interface JobSources {
  /** a job file (`--job`) */
  readonly file?: string
  /** VMs named on the command line (each replicated with the file's top-level options and the flags) */
  readonly vms?: readonly string[]
  /** per-VM options from flags, keyed by option name (`certify`, `tokenFile`, …); they win over the file */
  readonly options?: Readonly<Record<string, unknown>>
  /** job-level values from flags (`parallel`, `bwlimit`, `report`, `email`, `webhooks`); merged into the file's */
  readonly jobOptions?: Readonly<Record<string, unknown>>
  /** how to name a value given by a flag in messages: dotted key (`certify`, `email.smtp.host`) → flag (`--certify`) */
  readonly names?: Readonly<Record<string, string>>
  /** where relative paths given by flags resolve. @default process.cwd() */
  readonly cwd?: string
}

/** One VM of a job: a complete `ReplicateInit`, plus where its settings came from (for messages). */
export interface VmJob extends ReplicateInit {
  /** where the VM was named: `job.vms[2]` or `the command line` */
  readonly label: string
  /** where the token came from (`--token-file /etc/grainline/proxy-a.token`, `job.tokenFile …`) */
  readonly tokenSource: string
  /** where the CA came from, if one was given */
  readonly caSource?: string
}

/** A validated job. */
export interface Job {
  readonly vms: readonly VmJob[]
  /** VMs replicated at once. @default 2 */
  readonly parallel: number
  /** bytes/s for the whole job; Infinity = unlimited */
  readonly bwlimit: Bandwidth
  readonly report?: string
  readonly email?: EmailSettings
  readonly webhooks: readonly WebhookSettings[]
}

/** Default of `parallel`. */
export const DEFAULT_PARALLEL = 2

const JOB_LEVEL_KEYS = ['parallel', 'bwlimit', 'report', 'email', 'webhooks'] as const

type Layer = { readonly label: string; readonly names?: Readonly<Record<string, string>>; readonly values: VmOptions }

/** The winning value of `key` over the layers (last defined wins) and where it came from. */
function pick<K extends keyof VmOptions>(layers: readonly Layer[], key: K): { value: VmOptions[K]; from: string } | undefined {
  for (let i = layers.length - 1; i >= 0; i--) {
    const l = layers[i] as Layer
    if (l.values[key] !== undefined) return { value: l.values[key], from: l.names?.[key as string] ?? `${l.label}.${key as string}` }
  }
  return undefined
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Merge job-level flag values into the file's (objects one level deep: `email.smtp`). */
function mergeJobLevel(file: Record<string, unknown>, flags: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const out = { ...file }
  for (const [k, v] of Object.entries(flags)) {
    if (v === undefined) continue
    const prev = out[k]
    if (isObject(prev) && isObject(v)) {
      const merged: Record<string, unknown> = { ...prev }
      for (const [k2, v2] of Object.entries(v)) merged[k2] = isObject(merged[k2]) && isObject(v2) ? { ...merged[k2], ...v2 } : v2
      out[k] = merged
    } else {
      out[k] = v
    }
  }
  return out
}

/**
 * Validate a job completely.
 * @throws ConfigError (AgentError `E_CONFIG`) listing every problem
 */
export async function loadJob(src: JobSources): Promise<Job> {
  const cwd = src.cwd ?? process.cwd()
  const names = src.names ?? {}
  const rename = renameByPrefix(names)
  const problems: string[] = []

  // 1. the job file, with the job-level flags merged in (their paths are absolute)
  let fileTop: Record<string, unknown> = {}
  let fileCtx: SchemaContext = { baseDir: cwd }
  if (src.file !== undefined) {
    const abs = resolve(cwd, src.file)
    fileCtx = { baseDir: dirname(abs) }
    const json = await readJsonFile(abs)
    if (!json.ok) throw new ConfigError([`--job: ${json.problem}`])
    if (!isObject(json.value)) throw new ConfigError([`--job: ${abs} must hold a JSON object ({ "vms": [ … ] })`])
    fileTop = json.value
  }
  const jobFlags = Object.fromEntries(Object.entries(src.jobOptions ?? {}).filter(([, v]) => v !== undefined))
  const merged = mergeJobLevel(fileTop, jobFlags)
  let job: z.output<ReturnType<typeof jobFileSchema>> | undefined
  let jobLevel: { parallel?: number; bwlimit?: Bandwidth; report?: string; email?: EmailSettings; webhooks?: WebhookSettings[] } = {}
  if (src.file !== undefined) {
    const r = await jobFileSchema(fileCtx).safeParseAsync(merged)
    if (r.success) job = r.data
    else problems.push(...describeIssues('job', configIssues(r.error.issues as never, merged), rename))
    if (job !== undefined) jobLevel = job
  } else {
    const shape = jobShape(fileCtx)
    const schema = z.strictObject(Object.fromEntries(JOB_LEVEL_KEYS.map((k) => [k, shape[k]])) as Pick<typeof shape, (typeof JOB_LEVEL_KEYS)[number]>)
    const r = await schema.safeParseAsync(merged)
    if (r.success) jobLevel = r.data
    else problems.push(...describeIssues('options', configIssues(r.error.issues as never, merged), rename))
  }

  // 2. the per-VM flags: named by flag, paths against the working folder
  let flagOptions: VmOptions = {}
  if (src.options !== undefined) {
    const raw = Object.fromEntries(Object.entries(src.options).filter(([, v]) => v !== undefined))
    const r = await vmOptionsSchema({ baseDir: cwd }).safeParseAsync(raw)
    if (r.success) flagOptions = r.data
    else problems.push(...describeIssues('options', configIssues(r.error.issues as never, raw), (p) => rename(p) ?? (p[0] !== undefined ? `--${String(p[0])}` : undefined)))
  }
  if (problems.length > 0) throw new ConfigError(problems)

  // 3. every VM: the layers merged, the required values present, the receiver URL allowed
  const flagLayer: Layer = { label: 'options', names, values: flagOptions }
  const fileLayers: Layer[] = []
  if (job !== undefined) {
    const { vms: _vms, defaults, parallel: _p, bwlimit: _b, report: _r, email: _e, webhooks: _w, ...top } = job
    fileLayers.push({ label: 'job', values: top })
    if (defaults !== undefined) fileLayers.push({ label: 'job.defaults', values: stripJobOnly(defaults) })
  }
  const entries: Array<{ vm: string; label: string; layers: Layer[]; baseDir: string }> = []
  for (const [i, e] of (job?.vms ?? []).entries()) {
    const label = `job.vms[${i}]`
    if (typeof e === 'string') entries.push({ vm: e, label, layers: [...fileLayers, flagLayer], baseDir: fileCtx.baseDir })
    else {
      const { vm, ...own } = e
      entries.push({ vm, label, layers: [...fileLayers, { label, values: stripJobOnly(own) }, flagLayer], baseDir: fileCtx.baseDir })
    }
  }
  for (const vm of src.vms ?? []) entries.push({ vm, label: `VM ${JSON.stringify(vm)}`, layers: [...fileLayers, flagLayer], baseDir: cwd })
  if (entries.length === 0) throw new ConfigError(['name a VM (a .vmx path or, with --driver esxi, a VM name) or a --job file'])

  // the local driver's roots given where no VM can use them are refused, not dropped (below, per VM)
  const anyLocal = entries.some((e) => (pick(e.layers, 'driver')?.value ?? 'local') === 'local')
  // every file of the agent's this job names (any VM's, any layer's): no datastore root of any VM may contain one
  const ownFiles = [...(src.file === undefined ? [] : [resolve(cwd, src.file)]), ...jobFilesOf(jobLevel), ...entries.flatMap((e) => e.layers.flatMap((l) => vmFilesOf(l.values)))].filter(
    (p, i, all) => all.indexOf(p) === i,
  )
  const resolved: Array<{ vm: VmJob; rootsFrom: string; mountOf: (datastore: string) => string }> = []
  for (const e of entries) {
    const vm = resolveVm(e, names, problems, anyLocal, ownFiles)
    if (vm !== undefined) resolved.push({ vm, rootsFrom: pick(e.layers, 'datastoreRoots')?.from ?? 'datastoreRoots', mountOf: esxiMountNames(e.layers, names) })
  }
  if (problems.length === 0) problems.push(...(await duplicateVms(resolved.map((r) => r.vm))))
  if (problems.length > 0) throw new ConfigError(problems)
  // the local VMs' roots and the esxi VMs' local datastore mounts pinned now, once for the run (their real
  // paths: a link re-pointed later moves nothing), and checked against the agent's own files (replicate()
  // checks the pinned folders again)
  const vms: VmJob[] = []
  for (const { vm, rootsFrom, mountOf } of resolved) {
    const protect = [vm.stateDir ?? defaultStateDir(), ...(vm.caFile === undefined ? [] : [vm.caFile]), ...ownFiles]
    try {
      // where each came from goes with it: replicate() names them so when it checks them again at the VM's start
      if (vm.datastoreRoots !== undefined) vms.push({ ...vm, datastoreRoots: await pinLocalRoots(vm.datastoreRoots, rootsFrom, protect), datastoreRootsSource: rootsFrom })
      else if (vm.driver === 'esxi' && vm.esxi !== undefined) {
        const esxiDatastoreSources = Object.fromEntries(Object.keys(vm.esxi.datastores).map((ds) => [ds, mountOf(ds)]))
        vms.push({ ...vm, esxi: { ...vm.esxi, datastores: await pinEsxiDatastores(vm.esxi.datastores, protect, mountOf) }, esxiDatastoreSources })
      } else vms.push(vm)
    } catch (err) {
      const m = (err as Error).message
      if (!problems.includes(m)) problems.push(m)
    }
  }
  if (problems.length > 0) throw new ConfigError(problems)
  return definedOnly({
    vms,
    parallel: jobLevel.parallel ?? DEFAULT_PARALLEL,
    bwlimit: jobLevel.bwlimit ?? Infinity,
    report: jobLevel.report,
    email: jobLevel.email,
    webhooks: jobLevel.webhooks ?? [],
  }) as Job
}

/** The receiver a VM replicates to, as one string for comparisons (`wss://dr.example.net:7443`). */
function receiverOf(to: string): string {
  return canonicalReceiverUrl(to)
}

/**
 * VMs a job names twice, before anything starts: one entry would commit and
 * the other fail E_BUSY on its own run's lock (or, with two .vmx files of one
 * folder name, both would write one mirror). Refused:
 * - a local .vmx reached twice: the same file (device and inode: `./a/../X.vmx`,
 *   a link, a hard link), whatever the spelling;
 * - two local VMs the receiver would keep as one mirror: the receiver keys
 *   mirrors by VM name, the local driver's is the .vmx's folder name, so two
 *   folders of one name replicated to the same receiver collide (to two
 *   receivers they do not);
 * - an esxi VM named twice (the same name or id on the same host). Its mirror
 *   name (displayName) is known only once its .vmx is read: two names of one
 *   VM (name and id) are caught by the run lock, which says so.
 */
async function duplicateVms(vms: readonly VmJob[]): Promise<string[]> {
  const problems: string[] = []
  const byFile = new Map<string, VmJob>()
  const byMirror = new Map<string, VmJob>()
  const byEsxi = new Map<string, VmJob>()
  const said = (a: VmJob, b: VmJob): string => `${a.label} (${JSON.stringify(a.vm)}) and ${b.label} (${JSON.stringify(b.vm)})`
  for (const vm of vms) {
    if (vm.driver === 'esxi') {
      const key = JSON.stringify([vm.esxi?.ssh.host.toLowerCase(), vm.esxi?.ssh.port ?? 22, vm.vm])
      const first = byEsxi.get(key)
      if (first !== undefined) problems.push(`${said(first, vm)} name the same VM of ESXi host ${vm.esxi?.ssh.host ?? ''} twice: a run replicates a VM once; remove one`)
      else byEsxi.set(key, vm)
      continue
    }
    // the file itself: a missing .vmx is the VM's own error when it starts (E_VM_NOT_FOUND), compared by its path here
    const st = await stat(vm.vm).catch(() => undefined)
    const fileKey = st === undefined ? `path:${vm.vm}` : `inode:${st.dev}:${st.ino}`
    const first = byFile.get(fileKey)
    if (first !== undefined) {
      problems.push(`${said(first, vm)} are the same VM (${resolve(vm.vm) === resolve(first.vm) ? 'the same .vmx' : 'one .vmx reached by two paths'}): a run replicates a VM once; remove one`)
      continue
    }
    byFile.set(fileKey, vm)
    const name = basename(dirname(vm.vm))
    const mirrorKey = JSON.stringify([receiverOf(vm.to), name])
    const other = byMirror.get(mirrorKey)
    if (other !== undefined)
      problems.push(
        `${said(other, vm)} are two VMs the receiver at ${receiverOf(vm.to)} would keep as one mirror ${JSON.stringify(name)} (a mirror is named by the folder of its .vmx): rename one folder, or replicate them to different receivers`,
      )
    else byMirror.set(mirrorKey, vm)
  }
  return problems
}

/** The files a VM's options name that hold the agent's secrets or trust: token, CA, esxi key and settings file. */
function vmFilesOf(o: VmOptions): string[] {
  const esxi = o.esxi
  return [o.tokenFile?.path, o.caFile?.path, esxi?.ssh.privateKeyFile, esxi !== undefined && 'settingsFile' in esxi ? esxi.settingsFile : undefined].filter((p): p is string => p !== undefined)
}

/** The files the job-level settings name: the SMTP password and CA, each webhook's secret and CA. */
function jobFilesOf(j: { email?: EmailSettings; webhooks?: readonly WebhookSettings[] }): string[] {
  return [j.email?.smtp.passwordFile?.path, j.email?.smtp.caFile?.path, ...(j.webhooks ?? []).flatMap((w) => [w.secretFile.path, w.caFile?.path])].filter((p): p is string => p !== undefined)
}

/**
 * How a VM's esxi settings name the mount of one datastore, for messages:
 * `/etc/grainline/esxi.json: datastores.ds1` (a settings file: named as its
 * other problems are), `job.vms[1].esxi.datastores.ds1` (inline).
 */
function esxiMountNames(layers: readonly Layer[], names: Readonly<Record<string, string>>): (datastore: string) => string {
  const esxi = pick(layers, 'esxi')
  const value = esxi?.value
  const file = value !== undefined && 'settingsFile' in value ? value.settingsFile : undefined
  return (ds) => {
    const entry = value?.datastores[ds]
    const key = ['datastores', ds, ...(typeof entry === 'object' ? ['localPath'] : [])]
    return file === undefined ? formatIssuePath(esxi?.from ?? names['esxi'] ?? 'esxi', key) : `${file}: ${formatIssuePath('', key)}`
  }
}

function stripJobOnly(o: VmOptions & { bwlimit?: unknown; parallel?: unknown }): VmOptions {
  const { bwlimit: _b, parallel: _p, ...rest } = o
  return rest
}

/**
 * `datastoreRoots` reaching a VM of the esxi driver, which reads only the
 * datastores its settings map: a mistake, unless the key is shared by the
 * job's VMs (top level, `defaults`, a flag) and some of them use the local
 * driver — then it is theirs, and this VM does without it. The message is the
 * same for every VM it concerns (said once).
 */
function esxiRootsProblem(e: { vm: string; label: string; layers: Layer[] }, names: Readonly<Record<string, string>>, anyLocal: boolean): string | undefined {
  const roots = pick(e.layers, 'datastoreRoots')
  if (roots === undefined) return undefined
  const own = e.layers.findLast((l) => l.values.datastoreRoots !== undefined)?.label === e.label
  if (!own && anyLocal) return undefined
  const driverFrom = pick(e.layers, 'driver')?.from ?? names['driver'] ?? '--driver'
  const esxiFrom = pick(e.layers, 'esxi')?.from ?? names['esxi'] ?? '--esxi-config'
  return `${roots.from}: the local driver's datastore roots, but ${own ? `VM ${JSON.stringify(e.vm)}` : 'every VM of this run'} uses ${driverFrom} "esxi", which reads only the datastores its esxi settings map: map the datastore in esxi.datastores (the esxi settings of ${esxiFrom}) and remove ${roots.from}`
}

function resolveVm(
  e: { vm: string; label: string; layers: Layer[]; baseDir: string },
  names: Readonly<Record<string, string>>,
  problems: string[],
  anyLocal: boolean,
  ownFiles: readonly string[],
): VmJob | undefined {
  const L = e.layers
  const val = <K extends keyof VmOptions>(k: K): VmOptions[K] => pick(L, k)?.value
  const before = problems.length
  const to = pick(L, 'to')
  const token = pick(L, 'token')
  const tokenFile = pick(L, 'tokenFile')
  const driver = val('driver') ?? 'local'
  const esxi = val('esxi')
  if (to === undefined) problems.push(`${e.label}: no receiver URL: set "to" (or ${names['to'] ?? '--to'} wss://HOST:PORT)`)
  // the more specific of the two wins; a token file given as a flag beats a token in the file
  const lastLayer = (k: keyof VmOptions): number => L.findLastIndex((l) => l.values[k] !== undefined)
  const tokenPick =
    token !== undefined && (tokenFile === undefined || lastLayer('token') > lastLayer('tokenFile'))
      ? { secret: token.value, from: token.from }
      : tokenFile !== undefined
        ? { secret: tokenFile.value?.secret, from: `${tokenFile.from} ${tokenFile.value?.path ?? ''}`.trim() }
        : undefined
  if (tokenPick?.secret === undefined) problems.push(`${e.label}: no token: set "tokenFile" (or ${names['tokenFile'] ?? '--token-file'} FILE)`)
  if (driver === 'esxi' && esxi === undefined) problems.push(`${e.label}: driver "esxi" needs its settings: set "esxi" (or ${names['esxi'] ?? '--esxi-config'} FILE)`)
  const rootsProblem = driver === 'esxi' ? esxiRootsProblem(e, names, anyLocal) : undefined
  // said once for all the VMs it concerns
  if (rootsProblem !== undefined && !problems.includes(rootsProblem)) problems.push(rootsProblem)
  const insecurePlaintext = val('insecurePlaintext') === true
  if (to !== undefined) {
    try {
      checkReceiverUrl(to.value as string, { insecurePlaintext })
    } catch (err) {
      // a shared "to" (the job's, its defaults', a flag's) is said once, not once per VM
      const problem = `${to.from}: ${(err as Error).message}`
      if (!problems.includes(problem)) problems.push(problem)
    }
  }
  if (problems.length > before || rootsProblem !== undefined) return undefined
  const ca = pick(L, 'caFile')
  const giveUp = val('giveUp')
  const maxBackoff = val('maxBackoff')
  const keepAlive = val('keepAlive')
  return definedOnly({
    label: e.label,
    vm: driver === 'local' && !isAbsolute(e.vm) ? resolve(e.baseDir, e.vm) : e.vm,
    to: canonicalReceiverUrl(to?.value as string),
    token: tokenPick?.secret as string,
    tokenSource: tokenPick?.from as string,
    ca: ca?.value?.pem,
    caFile: ca?.value?.path,
    caSource: ca === undefined ? undefined : `${ca.from} ${ca.value?.path ?? ''}`.trim(),
    driver,
    // --independent / --consolidate (or the per-VM keys) win over the esxi settings file
    esxi: esxi === undefined ? undefined : definedOnly({ ...toEsxiDriverInit(esxi), ...definedOnly({ independentDisks: val('independentDisks'), consolidate: val('consolidate') }) }),
    insecure: val('insecureTls'),
    insecurePlaintext: insecurePlaintext ? true : undefined,
    deltaFormat: val('deltaFormat'),
    datastoreRoots: driver === 'local' ? val('datastoreRoots') : undefined,
    // the local driver's roots and the esxi driver's local mounts alike: no folder the VM's files are read from may hold one
    ownFiles: ownFiles.length > 0 ? ownFiles : undefined,
    certify: val('certify'),
    trivialMiB: val('trivialMiB'),
    compress: val('compress'),
    digests: val('digests'),
    consolidateExisting: val('consolidateExisting'),
    resync: val('resync'),
    verify: val('verify'),
    scrub: val('scrub'),
    retention: val('retention'),
    stateDir: val('stateDir'),
    giveUpMs: giveUp,
    maxBackoffMs: maxBackoff,
    keepAliveMs: keepAlive,
    windowBytes: val('windowBytes'),
    maxExtentBytes: val('maxExtentBytes'),
  }) as VmJob
}
