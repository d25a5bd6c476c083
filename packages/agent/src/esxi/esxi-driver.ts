/**
 * (Over ~400 lines: the snapshot operations and the checks each makes after
 * ESXi ran it belong together; the parsers, the disk classification, the
 * path map and the SFTP reader are in their own files.)
 *
 * The `esxi` hypervisor driver: snapshots through `vim-cmd` over SSH, disks
 * read through locally mounted datastores or over SFTP on the same SSH
 * connection. It never writes a source file;
 * after every snapshot operation it re-reads the .vmx and the descriptor
 * chains to check that ESXi did what was asked.
 */
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Logger } from 'pino'
import type { HypervisorDriver, SkippedDisk, SnapshotDisk, SnapshotRef, VmDisk, VmHandle } from '../driver.ts'
import { classifyDisk, type IndependentPolicy } from './disk-kind.ts'
import { parseGrainlineSnapshotName } from '../driver.ts'
import { VmxConfig, vmxDisks } from '../vmx.ts'
import type { FileAccess } from '@grainline/vmdk'
import { MAX_CONFIG_BYTES, readRegularFileVia } from '../fs-util.ts'
import { parseVmsd } from '../vmsd.ts'
import { EsxiError, EsxiErrorCodes, type EsxiErrorCode } from './errors.ts'
import { DatastoreMap, resolveVmFile, type DatastoreSetting } from './datastore-path.ts'
import { datastoreFileAccess } from './datastore-files.ts'
import { SftpFileAccess, type SftpCounters, type SftpRetryOptions } from './sftp-files.ts'
import { EsxiSsh, type EsxiSshConfig, type ExecResult } from './ssh.ts'
import { shJoin } from './shell-quote.ts'
import { readChainFiles, type ChainFile } from './chain-files.ts'
import {
  parseRemoveUsage,
  checkSnapshotOpOutput,
  decodeVmName,
  isVmNotFound,
  parseConsolidationNeeded,
  parseFault,
  parseGetAllVms,
  parseSnapshotTree,
  type SnapshotNode,
  type SnapshotTree,
  type VmListEntry,
} from './vim-cmd-output.ts'

/** Configuration of one esxi driver (one host). */
export interface EsxiDriverInit {
  /** how to reach the host; the host key is pinned by fingerprint */
  readonly ssh: EsxiSshConfig
  /** datastore name/UUID → local mount path, or `{ access: "sftp" }` (read on the host over SSH) */
  readonly datastores: DatastoreMap | Readonly<Record<string, DatastoreSetting>>
  /** reading `access: "sftp"` datastores */
  readonly sftp?: {
    /** requests in flight per load or read. @default 16 */
    readonly concurrency?: number
    /** largest request (capped at OpenSSH's 261120). @default 261120 */
    readonly maxReadBytes?: number
    /** reconnect policy after a dropped connection */
    readonly retry?: SftpRetryOptions
    /** how long one request may go unanswered before its channel counts as dead and the request is retried on a new one. @default 60000 */
    readonly requestTimeoutMs?: number
  }
  /** recorded in the VM handle for the compatibility record. @default "vmfs" */
  readonly datastoreType?: string
  /** the vim-cmd program on the host. @default "vim-cmd" */
  readonly vimCmd?: string
  /** timeout of quick commands (getallvms, snapshot.get). @default 60000 */
  readonly commandTimeoutMs?: number
  /** timeout of snapshot.create / snapshot.remove (a remove merges data). @default 1800000 */
  readonly snapshotTimeoutMs?: number
  /** how long to wait for the result of an operation to show in snapshot.get and on the mount. @default 60000 */
  readonly verifyTimeoutMs?: number
  /** poll interval while verifying. @default 500 */
  readonly pollIntervalMs?: number
  /**
   * Disks ESXi takes no snapshot of (independent disks, physical RDMs):
   * `skip` them with a warning in the report, or `refuse` the VM
   * (`E_UNSUPPORTED_DISK`) before any snapshot. @default "skip"
   */
  readonly independentDisks?: IndependentPolicy
  /**
   * When ESXi reports that the VM's disks need consolidation (a removed
   * snapshot whose delta was not merged), run `vim-cmd vmsvc/snapshot.consolidate`
   * and verify the chain, instead of failing with E_CONSOLIDATION_NEEDED. @default false
   */
  readonly consolidate?: boolean
  /** ask VMware Tools to quiesce the guest file systems. @default false */
  readonly quiesce?: boolean
  /** snapshot description. @default "grainline replication snapshot" */
  readonly description?: string
}

/** The esxi driver: a {@link HypervisorDriver} plus host-level helpers. */
export interface EsxiDriver extends HypervisorDriver {
  readonly name: 'esxi'
  readonly host: string
  /** every VM `vim-cmd vmsvc/getallvms` lists */
  listVms(opts?: { signal?: AbortSignal }): Promise<VmListEntry[]>
  /** the snapshot tree of a VM */
  snapshotTree(vm: VmHandle, opts?: { signal?: AbortSignal }): Promise<SnapshotTree>
  /** `consolidationNeeded` from `vim-cmd vmsvc/get.runtime` (undefined when not printed) */
  consolidationNeeded(vm: VmHandle, opts?: { signal?: AbortSignal }): Promise<boolean | undefined>
  /** run `snapshot.consolidate` and verify no delta is orphaned */
  consolidate(vm: VmHandle, opts?: { signal?: AbortSignal }): Promise<void>
  /** the VM's files: local mounts and/or SFTP */
  readonly files: FileAccess
  /** what the SFTP reader did (undefined without SFTP datastores) */
  readonly sftpCounters: SftpCounters | undefined
  close(): Promise<void>
}

interface DiskState {
  readonly node: string
  readonly fileName: string
  readonly path: string
  readonly chain: readonly ChainFile[]
}

/**
 * Create an esxi driver. Nothing connects until the first operation.
 * @throws EsxiError E_CONFIG on a bad datastore map or fingerprint
 */
/**
 * An esxi driver for one host. `components.signal` (a run's stop) ends the
 * waits of its SFTP reads at once; snapshot operations take theirs per call.
 */
export function createEsxiDriver(components: { logger: Logger; signal?: AbortSignal }, init: EsxiDriverInit): EsxiDriver {
  return new EsxiDriverImpl(components, init)
}

class EsxiDriverImpl implements EsxiDriver {
  readonly name = 'esxi' as const
  readonly host: string
  readonly pathMap: Readonly<Record<string, string>>
  readonly #log: Logger
  readonly #init: EsxiDriverInit
  readonly #map: DatastoreMap
  readonly files: FileAccess
  readonly sftpCounters: SftpCounters | undefined
  readonly #sftpFiles: SftpFileAccess | undefined
  #ssh: Promise<EsxiSsh> | undefined
  /** the connected `#ssh` */
  #sshNow: EsxiSsh | undefined
  #closed = false
  /** the host's snapshot.remove argument order, checked once */
  #removeUsage: Promise<void> | undefined

  constructor(components: { logger: Logger; signal?: AbortSignal }, init: EsxiDriverInit) {
    this.host = init.ssh.host
    this.#log = components.logger.child({ driver: 'esxi', esxiHost: init.ssh.host })
    this.#init = init
    this.#map = init.datastores instanceof DatastoreMap ? init.datastores : DatastoreMap.from(init.datastores)
    this.pathMap = Object.freeze(this.#map.pathMap())
    if (init.ssh.hostKeyFingerprint === undefined) throw new EsxiError('E_CONFIG', 'esxi: hostKeyFingerprint is required (no trust on first use)', { host: this.host })
    this.#sftpFiles = this.#map.hasSftp
      ? new SftpFileAccess(
          {
            sftp: async (opts) => await (await this.#connection(opts.signal)).sftp(opts),
            invalidateSftp: (c) => {
              this.#sshNow?.invalidateSftp(c)
            },
            dropConnection: (c) => {
              this.#sshNow?.dropConnection(c)
            },
          },
          { logger: this.#log, ...(init.sftp ?? {}), ...(components.signal === undefined ? {} : { signal: components.signal }) },
        )
      : undefined
    this.files = datastoreFileAccess(this.#map, this.#sftpFiles)
    // a plain field, not a getter: readable through the host-lock Proxy too
    this.sftpCounters = this.#sftpFiles?.counters
  }

  async #connection(signal?: AbortSignal): Promise<EsxiSsh> {
    if (this.#closed) throw new EsxiError('E_SSH_CONNECT', 'esxi: driver closed', { host: this.host })
    if (this.#ssh === undefined) {
      const p = EsxiSsh.connect(this.#init.ssh, { logger: this.#log }, signal === undefined ? {} : { signal })
      this.#ssh = p
      p.then(
        (s) => {
          if (this.#ssh === p) this.#sshNow = s
        },
        () => {
          if (this.#ssh === p) this.#ssh = undefined
        },
      )
    }
    return await this.#ssh
  }

  /** Run `vim-cmd <args>`; a printed fault or a non-zero exit is an error. */
  async #vim(args: readonly string[], opts: { vm?: string; timeoutMs?: number; signal?: AbortSignal }): Promise<ExecResult> {
    const command = shJoin([this.#init.vimCmd ?? 'vim-cmd', ...args])
    const ssh = await this.#connection(opts.signal)
    const r = await ssh.exec(command, {
      timeoutMs: opts.timeoutMs ?? this.#init.commandTimeoutMs ?? 60_000,
      ...(opts.signal === undefined ? {} : { signal: opts.signal }),
      ...(opts.vm === undefined ? {} : { vm: opts.vm }),
    })
    const ctx = { host: this.host, command, ...(opts.vm === undefined ? {} : { vm: opts.vm }) }
    const fault = parseFault(r.stdout) ?? parseFault(r.stderr)
    if (fault !== undefined) {
      const code: EsxiErrorCode = isVmNotFound(fault) ? 'E_VM_NOT_FOUND' : 'E_VIM_FAULT'
      throw new EsxiError(code, `esxi: vim-cmd reported ${fault.type}`, { ...ctx, fault: fault.type, esxiMessage: fault.msg !== '' ? fault.msg : fault.text })
    }
    if (r.code === null && r.signal === undefined) {
      throw new EsxiError('E_SSH_CONNECT', 'esxi: the connection ended before the command reported an exit status (the operation may still complete on the host)', {
        ...ctx,
        esxiMessage: (r.stderr + r.stdout).trim(),
      })
    }
    if (r.code !== 0) {
      const said = (r.stderr.trim() !== '' ? r.stderr : r.stdout).trim()
      throw new EsxiError('E_COMMAND', `esxi: command exited with ${r.code === null ? `signal ${r.signal ?? '?'}` : `code ${r.code}`}`, { ...ctx, esxiMessage: said })
    }
    return r
  }

  #wrapParse<T>(fn: () => T, ctx: { vm?: string; command: string; output: string }): T {
    try {
      return fn()
    } catch (err) {
      if (err instanceof EsxiError && err.code === 'E_PARSE') {
        throw new EsxiError('E_PARSE', err.message, { host: this.host, command: ctx.command, esxiMessage: ctx.output, ...(ctx.vm === undefined ? {} : { vm: ctx.vm }), cause: err })
      }
      throw err
    }
  }

  async listVms(opts: { signal?: AbortSignal } = {}): Promise<VmListEntry[]> {
    const r = await this.#vim(['vmsvc/getallvms'], opts)
    return this.#wrapParse(() => parseGetAllVms(r.stdout), { command: 'vim-cmd vmsvc/getallvms', output: r.stdout })
  }

  async openVm(ref: string, opts: { signal?: AbortSignal } = {}): Promise<VmHandle> {
    const vms = await this.listVms(opts)
    let matches = /^\d+$/.test(ref) ? vms.filter((v) => v.id === ref) : []
    if (matches.length === 0) matches = vms.filter((v) => v.name === ref || decodeVmName(v.name) === ref)
    if (matches.length === 0) {
      const names = vms
        .slice(0, 20)
        .map((v) => `${v.id}:${JSON.stringify(decodeVmName(v.name))}`)
        .join(', ')
      throw new EsxiError('E_VM_NOT_FOUND', `esxi: no VM named or numbered ${JSON.stringify(ref)} (registered: ${names === '' ? 'none' : names}${vms.length > 20 ? ', ...' : ''})`, {
        host: this.host,
        vm: ref,
      })
    }
    if (matches.length > 1) {
      throw new EsxiError('E_VM_AMBIGUOUS', `esxi: ${matches.length} VMs are named ${JSON.stringify(ref)} (ids ${matches.map((m) => m.id).join(', ')}): use the id`, { host: this.host, vm: ref })
    }
    const entry = matches[0] as VmListEntry
    if (entry.ambiguous !== undefined) {
      // the parsed File column may be another VM's .vmx: reading it would replicate (and snapshot) the wrong VM
      throw new EsxiError(
        'E_VM_AMBIGUOUS',
        `esxi: the getallvms row of VM ${entry.id} (${JSON.stringify(decodeVmName(entry.name))}) cannot be read safely: ${entry.ambiguous}; rename the VM or edit its annotation on the host so that it holds no "[datastore] ….vmx" text`,
        { host: this.host, vm: ref },
      )
    }
    const vmxPath = this.#resolveOrThrow(entry.vmxPath, ref)
    const config = await this.#readVmx(vmxPath, ref)
    const dir = path.dirname(vmxPath)
    const { disks, skipped } = await this.#classify(config, this.#disksOf(config, dir, ref), ref)
    const handle: VmHandle = {
      ref,
      id: entry.id,
      name: config.get('displayName') ?? decodeVmName(entry.name),
      vmxPath,
      dir,
      config,
      disks,
      ...(skipped.length === 0 ? {} : { skippedDisks: skipped }),
      datastoreType: this.#init.datastoreType ?? 'vmfs',
    }
    this.#log.debug({ vm: ref, vmid: entry.id, vmxPath, disks: disks.map((d) => d.fileName) }, 'esxi vm opened')
    return handle
  }

  /**
   * Classify every disk before any snapshot (disk-kind.ts): vSAN/vVol disks
   * are refused; independent disks and physical RDMs are skipped or refused
   * (`independentDisks`).
   * @throws EsxiError E_UNSUPPORTED_DISK, E_CHAIN
   */
  async #classify(config: VmxConfig, all: VmDisk[], vm: string): Promise<{ disks: VmDisk[]; skipped: SkippedDisk[] }> {
    const disks: VmDisk[] = []
    const skipped: SkippedDisk[] = []
    const policy = this.#init.independentDisks ?? 'skip'
    for (const d of all) {
      const c = classifyDisk(config.get(`${d.node}.mode`), await this.#chainOf(d, vm))
      if (c.replicated) {
        disks.push(d)
        continue
      }
      const reason = c.reason ?? c.kind
      if (c.kind === 'object' || policy === 'refuse') {
        const hint = c.kind === 'object' ? '' : ' (independentDisks is "refuse"; set it to "skip" to replicate the other disks without it)'
        throw new EsxiError('E_UNSUPPORTED_DISK', `esxi: disk ${d.node} (${d.fileName}) cannot be replicated: ${reason}${hint}`, { host: this.host, vm })
      }
      this.#log.warn({ vm, node: d.node, fileName: d.fileName, kind: c.kind, reason }, 'disk skipped: not replicated')
      skipped.push({ node: d.node, fileName: d.fileName, kind: c.kind, reason })
    }
    if (disks.length === 0) {
      throw new EsxiError('E_UNSUPPORTED_DISK', `esxi: no disk of the VM can be replicated (${skipped.map((s) => `${s.node}: ${s.reason}`).join('; ')})`, { host: this.host, vm })
    }
    return { disks, skipped }
  }

  async #chainOf(d: VmDisk, vm: string): Promise<ChainFile[]> {
    try {
      return await readChainFiles(d.path, (base, name) => this.#resolveFile(base, name, vm), { files: this.files })
    } catch (err) {
      if (err instanceof EsxiError) throw new EsxiError(err.code, `esxi: disk ${d.node}: ${err.message}`, { host: this.host, vm, cause: err })
      throw err
    }
  }

  #resolveOrThrow(p: string, vm: string): string {
    try {
      return this.#map.resolve(p)
    } catch (err) {
      if (err instanceof EsxiError) throw new EsxiError(err.code, err.message, { host: this.host, vm, cause: err })
      throw err
    }
  }

  async #readVmx(vmxPath: string, vm: string): Promise<VmxConfig> {
    let text: string
    try {
      text = (await readRegularFileVia(this.files, vmxPath, { maxBytes: MAX_CONFIG_BYTES, code: 'E_VMX', what: 'VM config' })).toString('utf8')
    } catch (err) {
      throw new EsxiError('E_VMX', `esxi: cannot read ${vmxPath} through its datastore (${this.#map.isSftpPath(vmxPath) ? 'SFTP' : 'local mount'}): ${(err as Error).message}`, {
        host: this.host,
        vm,
        cause: err,
      })
    }
    try {
      return VmxConfig.parse(text, vmxPath)
    } catch (err) {
      throw new EsxiError('E_VMX', `esxi: ${(err as Error).message}`, { host: this.host, vm, cause: err })
    }
  }

  #disksOf(config: VmxConfig, dir: string, vm: string): VmDisk[] {
    const disks = vmxDisks(config).map((d) => ({ node: d.node, fileName: d.fileName, path: this.#resolveFile(dir, d.fileName, vm) }))
    if (disks.length === 0) throw new EsxiError('E_VMX', 'esxi: the .vmx names no hard disk', { host: this.host, vm })
    return disks
  }

  #resolveFile(dir: string, name: string, vm: string): string {
    try {
      return resolveVmFile(this.#map, dir, name)
    } catch (err) {
      if (err instanceof EsxiError) throw new EsxiError(err.code, err.message, { host: this.host, vm, cause: err })
      throw err
    }
  }

  resolvePath(vm: VmHandle, p: string): string {
    return this.#resolveFile(vm.dir, p, vm.ref)
  }

  /** The disks as the .vmx names them now, each with its descriptor chain. */
  async #diskStates(vm: VmHandle): Promise<DiskState[]> {
    const config = await this.#readVmx(vm.vmxPath, vm.ref)
    const out: DiskState[] = []
    for (const d of this.#disksOf(config, vm.dir, vm.ref)) {
      const chain = await this.#chainOf(d, vm.ref)
      const c = classifyDisk(config.get(`${d.node}.mode`), chain)
      if (c.kind === 'object') throw new EsxiError('E_UNSUPPORTED_DISK', `esxi: disk ${d.node} (${d.fileName}) cannot be replicated: ${c.reason ?? ''}`, { host: this.host, vm: vm.ref })
      // ESXi leaves independent disks and physical RDMs as they are: not part of the snapshot checks
      if (!c.replicated) continue
      out.push({ ...d, chain })
    }
    return out
  }

  async snapshotTree(vm: VmHandle, opts: { signal?: AbortSignal } = {}): Promise<SnapshotTree> {
    const r = await this.#vim(['vmsvc/snapshot.get', vm.id], { ...opts, vm: vm.ref })
    return this.#wrapParse(() => parseSnapshotTree(r.stdout), { vm: vm.ref, command: `vim-cmd vmsvc/snapshot.get ${vm.id}`, output: r.stdout })
  }

  async consolidationNeeded(vm: VmHandle, opts: { signal?: AbortSignal } = {}): Promise<boolean | undefined> {
    const r = await this.#vim(['vmsvc/get.runtime', vm.id], { ...opts, vm: vm.ref })
    return parseConsolidationNeeded(r.stdout)
  }

  async #vmsdDisks(vm: VmHandle): Promise<Map<string, SnapshotDisk[]>> {
    const vmsdPath = path.join(vm.dir, path.basename(vm.vmxPath).replace(/\.vmx$/i, '') + '.vmsd')
    let text: string
    try {
      text = (await readRegularFileVia(this.files, vmsdPath, { maxBytes: MAX_CONFIG_BYTES, code: 'E_VMX', what: 'snapshot database' })).toString('utf8')
    } catch (err) {
      if ((err as { code?: unknown }).code !== 'ENOENT') this.#log.warn({ vm: vm.ref, vmsdPath, err }, 'esxi .vmsd unreadable, snapshot disk records unknown')
      return new Map()
    }
    try {
      const db = parseVmsd(text)
      return new Map(db.snapshots.map((s) => [String(s.uid), s.disks.map((d) => ({ node: d.node, fileName: d.fileName }))]))
    } catch (err) {
      this.#log.warn({ vm: vm.ref, vmsdPath, err }, 'esxi .vmsd unreadable, snapshot disk records unknown')
      return new Map()
    }
  }

  #ref(node: SnapshotNode, disks: readonly SnapshotDisk[]): SnapshotRef {
    const cycle = parseGrainlineSnapshotName(node.name)
    return Object.freeze({ id: node.id, name: node.name, grainline: cycle > 0, cycle, disks })
  }

  async listSnapshots(vm: VmHandle, opts: { signal?: AbortSignal } = {}): Promise<SnapshotRef[]> {
    const tree = await this.snapshotTree(vm, opts)
    const disks = await this.#vmsdDisks(vm)
    return [...tree.all].sort((a, b) => Number(a.id) - Number(b.id)).map((n) => this.#ref(n, disks.get(n.id) ?? []))
  }

  /**
   * Take the snapshot and check what ESXi did. When anything fails after the
   * create was sent (a check, a timeout, a dropped connection, an abort), the
   * snapshot it made is removed again before the error is thrown; if that
   * removal fails too the error is `E_SNAPSHOT_LEFT` and the next run removes
   * the leftover (a grainline snapshot of the cycle's name that the agent did
   * not record is removed before a new one is taken).
   */
  async createSnapshot(vm: VmHandle, name: string, opts: { signal?: AbortSignal } = {}): Promise<SnapshotRef> {
    // never take a snapshot this host could not remove safely
    await this.#checkRemoveUsage(opts.signal)
    if (this.#init.consolidate === true && (await this.consolidationNeeded(vm, opts)) === true) await this.consolidate(vm, opts)
    const beforeTree = await this.snapshotTree(vm, opts)
    const beforeIds = new Set(beforeTree.all.map((n) => n.id))
    const before = await this.#diskStates(vm)
    try {
      return await this.#createVerified(vm, name, beforeIds, before, opts)
    } catch (err) {
      throw await this.#undoCreate(vm, name, beforeIds, err)
    }
  }

  /** Remove the snapshot(s) named `name` made since `beforeIds`; the error to throw (augmented). */
  async #undoCreate(vm: VmHandle, name: string, beforeIds: ReadonlySet<string>, err: unknown): Promise<unknown> {
    const log = this.#log.child({ vm: vm.ref, vmid: vm.id, snapshot: name })
    const code = (err as { code?: unknown }).code
    const keep = typeof code === 'string' && (EsxiErrorCodes as readonly string[]).includes(code) ? (code as EsxiErrorCode) : 'E_SNAPSHOT'
    const augment = (c: EsxiErrorCode, what: string): EsxiError => new EsxiError(c, `${(err as Error).message}; ${what}`, { cause: err })
    const leftover = `the snapshot ${JSON.stringify(name)} may be left on the VM: the next run removes it before taking a new one (or remove it on the host)`
    let fresh: SnapshotNode[]
    try {
      fresh = (await this.snapshotTree(vm)).all.filter((n) => n.name === name && !beforeIds.has(n.id))
    } catch (e) {
      log.error({ err: e }, 'cannot list snapshots after a failed snapshot.create')
      return augment('E_SNAPSHOT_LEFT', `listing the snapshots failed (${(e as Error).message}): ${leftover}`)
    }
    if (fresh.length === 0) return err
    log.warn({ ids: fresh.map((n) => n.id), err }, 'snapshot.create failed its checks: removing the snapshot it made')
    try {
      await this.#checkRemoveUsage()
    } catch (e) {
      return augment('E_SNAPSHOT_LEFT', `not removing it: ${(e as Error).message}: ${leftover}`)
    }
    const problems: string[] = []
    for (const n of fresh) {
      try {
        const r = await this.#vim(['vmsvc/snapshot.remove', vm.id, n.id], { vm: vm.ref, timeoutMs: this.#init.snapshotTimeoutMs ?? 1_800_000 })
        this.#checkOpOutput('Remove', r.stdout, log)
      } catch (e) {
        problems.push(`snapshot.remove ${n.id}: ${(e as Error).message}`)
      }
    }
    const ids = new Set(fresh.map((n) => n.id))
    const gone =
      problems.length === fresh.length
        ? undefined
        : await this.#poll(undefined, async () => {
            const t = await this.snapshotTree(vm).catch(() => undefined)
            return t !== undefined && !t.all.some((n) => ids.has(n.id)) ? true : undefined
          }).catch(() => undefined)
    if (gone === true) {
      log.warn({ ids: [...ids] }, 'the snapshot of the failed create was removed')
      return augment(keep, `the snapshot ${JSON.stringify(name)} (id ${[...ids].join(', ')}) it made was removed again`)
    }
    log.error({ ids: [...ids], problems }, 'the snapshot of the failed create could not be removed')
    return augment('E_SNAPSHOT_LEFT', `removing it failed (${problems.join('; ') || 'still in the snapshot tree'}): ${leftover}`)
  }

  async #createVerified(vm: VmHandle, name: string, beforeIds: ReadonlySet<string>, before: DiskState[], opts: { signal?: AbortSignal }): Promise<SnapshotRef> {
    const log = this.#log.child({ vm: vm.ref, vmid: vm.id, snapshot: name })
    const args = ['vmsvc/snapshot.create', vm.id, name, this.#init.description ?? 'grainline replication snapshot', '0', this.#init.quiesce === true ? '1' : '0']
    log.info({ disks: before.map((d) => d.fileName) }, 'esxi snapshot create')
    const r = await this.#vim(args, { vm: vm.ref, timeoutMs: this.#init.snapshotTimeoutMs ?? 1_800_000, ...(opts.signal === undefined ? {} : { signal: opts.signal }) })
    this.#checkOpOutput('Create', r.stdout, log)

    let lastProblem = ''
    const result = await this.#poll(opts.signal, async () => {
      const tree = await this.snapshotTree(vm, opts)
      const fresh = tree.all.filter((n) => n.name === name && !beforeIds.has(n.id))
      if (fresh.length === 0) {
        lastProblem = `no new snapshot named ${JSON.stringify(name)} in snapshot.get`
        return undefined
      }
      const node = fresh.reduce((a, b) => (Number(b.id) > Number(a.id) ? b : a))
      const after = await this.#diskStates(vm)
      for (const b of before) {
        const a = after.find((d) => d.node.toLowerCase() === b.node.toLowerCase())
        if (a === undefined) throw new EsxiError('E_SNAPSHOT', `esxi: disk ${b.node} vanished from the .vmx after snapshot.create`, { host: this.host, vm: vm.ref })
        const parent = a.chain[1]
        if (a.path === b.path || parent === undefined || parent.path !== b.path) {
          lastProblem = `disk ${b.node} still runs on ${a.fileName}, no new delta on top of ${b.fileName}`
          return undefined
        }
        const top = a.chain[0] as ChainFile
        if (!/^(vmfsSparse|seSparse|monolithicSparse|twoGbMaxExtentSparse|vsanSparse)$/i.test(top.createType)) {
          throw new EsxiError('E_SNAPSHOT', `esxi: new delta ${a.path} of disk ${b.node} has createType ${top.createType}, not a redo log`, { host: this.host, vm: vm.ref })
        }
      }
      return { node, disks: before.map((b) => ({ node: b.node, fileName: b.fileName })) }
    })
    if (result === undefined) {
      throw new EsxiError('E_SNAPSHOT', `esxi: snapshot.create returned but within ${this.#verifyTimeout()} ms ${lastProblem}`, { host: this.host, vm: vm.ref, command: shJoin(['vim-cmd', ...args]) })
    }
    const ref = this.#ref(result.node, result.disks)
    log.info({ snapshotId: ref.id }, 'esxi snapshot created and verified')
    return ref
  }

  /**
   * Once per host: the argument order of `snapshot.remove` (its usage text).
   * Before ESXi 5.1 the second argument was `removeChildren`: our snapshot id
   * would be read as "remove the children too", removing the mirror's base.
   * @throws EsxiError E_HOST_VERSION
   */
  async #checkRemoveUsage(signal?: AbortSignal): Promise<void> {
    if (this.#removeUsage === undefined) {
      const p = (async (): Promise<void> => {
        const command = shJoin([this.#init.vimCmd ?? 'vim-cmd', 'vmsvc/snapshot.remove'])
        const ssh = await this.#connection(signal)
        const r = await ssh.exec(command, { timeoutMs: this.#init.commandTimeoutMs ?? 60_000, ...(signal === undefined ? {} : { signal }) })
        const said = `${r.stdout}\n${r.stderr}`.trim()
        const usage = parseRemoveUsage(said)
        this.#log.debug({ usage, said }, 'esxi snapshot.remove usage')
        if (usage === 'snapshot-id') return
        throw new EsxiError(
          'E_HOST_VERSION',
          usage === 'pre-5.1'
            ? "esxi: this host's snapshot.remove takes [removeChildren] [snapshotLevel] [snapshotIndex] (ESXi before 5.1): a snapshot id would be read as removeChildren and remove the mirror's base snapshot; grainline needs ESXi 5.1 or later"
            : 'esxi: the host\'s snapshot.remove usage is not one grainline knows (it needs "snapshot.remove vmid snapId"); refusing, as a wrong argument order removes more snapshots than asked',
          { host: this.host, command, esxiMessage: said },
        )
      })()
      this.#removeUsage = p
      // a transport failure is asked again next time; a refusal stays
      p.catch((err: unknown) => {
        if (!(err instanceof EsxiError && err.code === 'E_HOST_VERSION') && this.#removeUsage === p) this.#removeUsage = undefined
      })
    }
    await this.#removeUsage
  }

  /**
   * Run `vim-cmd vmsvc/snapshot.consolidate` and verify: every layer above
   * each disk's base is the running delta or a disk a snapshot record names
   * (nothing orphaned), and `consolidationNeeded` is no longer true.
   * @throws EsxiError E_CONSOLIDATION_NEEDED when the chain still holds an orphaned delta
   */
  async consolidate(vm: VmHandle, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const log = this.#log.child({ vm: vm.ref, vmid: vm.id })
    const args = ['vmsvc/snapshot.consolidate', vm.id]
    log.warn("esxi consolidating the VM's disks (consolidate is set)")
    await this.#vim(args, { vm: vm.ref, timeoutMs: this.#init.snapshotTimeoutMs ?? 1_800_000, ...(opts.signal === undefined ? {} : { signal: opts.signal }) })
    let problem = ''
    const ok = await this.#poll(opts.signal, async () => {
      const named = new Set<string>()
      for (const recs of (await this.#vmsdDisks(vm)).values()) for (const r of recs) named.add(`${r.node.toLowerCase()}\0${this.#resolveFile(vm.dir, r.fileName, vm.ref)}`)
      for (const d of await this.#diskStates(vm)) {
        const orphan = d.chain.slice(1).find((c) => !named.has(`${d.node.toLowerCase()}\0${c.path}`))
        if (orphan !== undefined) {
          problem = `disk ${d.node}: ${path.basename(orphan.path)} is in the chain but no snapshot names it`
          return undefined
        }
      }
      if ((await this.consolidationNeeded(vm, opts)) === true) {
        problem = 'get.runtime still says consolidationNeeded = true'
        return undefined
      }
      return true
    })
    if (ok !== true) {
      throw new EsxiError('E_CONSOLIDATION_NEEDED', `esxi: snapshot.consolidate returned but within ${this.#verifyTimeout()} ms ${problem}: consolidate the VM's disks on the host`, {
        host: this.host,
        vm: vm.ref,
        command: shJoin(['vim-cmd', ...args]),
      })
    }
    log.info('esxi disks consolidated and chain verified')
  }

  /**
   * After a removal: the newest grainline snapshot (other than the one
   * removed) must still be in the tree, and the delta made when it was taken
   * must still be in each disk's chain — a host that read our snapshot id as
   * `removeChildren` would have removed it, and with it the mirror's base.
   */
  async #checkNewestKept(vm: VmHandle, removed: SnapshotRef, newest: SnapshotNode, opts: { signal?: AbortSignal }): Promise<void> {
    const what = `removing snapshot ${removed.id} (${JSON.stringify(removed.name)}) removed more than asked`
    const tree = await this.snapshotTree(vm, opts)
    if (!tree.all.some((n) => n.id === newest.id)) {
      throw new EsxiError(
        'E_SNAPSHOT',
        `esxi: ${what}: the newest grainline snapshot ${JSON.stringify(newest.name)} (id ${newest.id}) is gone too; the mirror's base no longer exists on the VM, so the next cycle resyncs every disk`,
        {
          host: this.host,
          vm: vm.ref,
        },
      )
    }
    const records = (await this.#vmsdDisks(vm)).get(newest.id) ?? []
    const states = await this.#diskStates(vm)
    for (const rec of records) {
      const d = states.find((s) => s.node.toLowerCase() === rec.node.toLowerCase())
      const repr = this.#resolveFile(vm.dir, rec.fileName, vm.ref)
      const i = d === undefined ? -1 : d.chain.findIndex((c) => c.path === repr)
      if (i < 1) {
        throw new EsxiError(
          'E_SNAPSHOT',
          `esxi: ${what}: disk ${rec.node}: the delta made when ${JSON.stringify(newest.name)} was taken (on top of ${rec.fileName}) is gone from the chain; the next cycle resyncs`,
          {
            host: this.host,
            vm: vm.ref,
          },
        )
      }
    }
  }

  async removeSnapshot(vm: VmHandle, snap: SnapshotRef, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const log = this.#log.child({ vm: vm.ref, vmid: vm.id, snapshot: snap.name, snapshotId: snap.id })
    await this.#checkRemoveUsage(opts.signal)
    const tree = await this.snapshotTree(vm, opts)
    const newest = tree.all
      .filter((n) => n.id !== snap.id && parseGrainlineSnapshotName(n.name) > 0)
      .reduce<SnapshotNode | undefined>(
        (a, b) =>
          a === undefined ||
          parseGrainlineSnapshotName(b.name) > parseGrainlineSnapshotName(a.name) ||
          (parseGrainlineSnapshotName(b.name) === parseGrainlineSnapshotName(a.name) && Number(b.id) > Number(a.id))
            ? b
            : a,
        undefined,
      )
    if (!tree.all.some((n) => n.id === snap.id)) {
      throw new EsxiError('E_SNAPSHOT_NOT_FOUND', `esxi: snapshot ${snap.id} (${JSON.stringify(snap.name)}) is not in the snapshot tree`, { host: this.host, vm: vm.ref })
    }
    const before = await this.#diskStates(vm)
    let records = snap.disks
    if (records.length === 0) records = (await this.#vmsdDisks(vm)).get(snap.id) ?? []
    // For each disk: the delta created when the snapshot was taken is the child
    // of the file that represents the snapshot; removing the snapshot merges it.
    const expect: Array<{ node: string; delta: string; parent: string; depth: number }> = []
    for (const d of before) {
      const rec = records.find((r) => r.node.toLowerCase() === d.node.toLowerCase())
      if (rec === undefined) {
        // no record of this disk while others have one: the snapshot never covered it (ESXi skipped it)
        if (records.length === 0) expect.push({ node: d.node, delta: '', parent: '', depth: d.chain.length })
        continue
      }
      const repr = this.#resolveFile(vm.dir, rec.fileName, vm.ref)
      const i = d.chain.findIndex((c) => c.path === repr)
      const child = i > 0 ? d.chain[i - 1] : undefined
      if (child === undefined) {
        throw new EsxiError(
          'E_SNAPSHOT',
          `esxi: disk ${d.node}: ${rec.fileName}, which represents snapshot ${snap.id}, has no child delta in the running chain (${d.chain.map((c) => path.basename(c.path)).join(' → ')})`,
          { host: this.host, vm: vm.ref },
        )
      }
      expect.push({ node: d.node, delta: child.path, parent: repr, depth: d.chain.length })
    }
    const args = ['vmsvc/snapshot.remove', vm.id, snap.id]
    log.info({ merge: expect.map((e) => e.delta) }, 'esxi snapshot remove')
    const r = await this.#vim(args, { vm: vm.ref, timeoutMs: this.#init.snapshotTimeoutMs ?? 1_800_000, ...(opts.signal === undefined ? {} : { signal: opts.signal }) })
    this.#checkOpOutput('Remove', r.stdout, log)

    let gone = false
    let lastProblem = ''
    const ok = await this.#poll(opts.signal, async () => {
      const t = await this.snapshotTree(vm, opts)
      gone = !t.all.some((n) => n.id === snap.id)
      if (!gone) {
        lastProblem = `snapshot ${snap.id} is still in the tree`
        return undefined
      }
      const after = await this.#diskStates(vm)
      for (const e of expect) {
        const a = after.find((d) => d.node.toLowerCase() === e.node.toLowerCase())
        if (a === undefined) throw new EsxiError('E_SNAPSHOT', `esxi: disk ${e.node} vanished from the .vmx after snapshot.remove`, { host: this.host, vm: vm.ref })
        const stillThere = e.delta !== '' ? a.chain.some((c) => c.path === e.delta) : a.chain.length >= e.depth
        if (stillThere) {
          lastProblem = `disk ${e.node}: delta ${e.delta !== '' ? path.basename(e.delta) : '(unknown)'} is still in the chain ${a.chain.map((c) => path.basename(c.path)).join(' → ')}`
          return undefined
        }
        if (e.parent !== '' && !a.chain.some((c) => c.path === e.parent)) {
          throw new EsxiError('E_SNAPSHOT', `esxi: disk ${e.node}: after the remove, ${path.basename(e.parent)} (the disk the delta should merge into) is not in the chain`, {
            host: this.host,
            vm: vm.ref,
          })
        }
      }
      return true
    })
    if (ok === true) {
      if (newest !== undefined) await this.#checkNewestKept(vm, snap, newest, opts)
      log.info('esxi snapshot removed and consolidation verified')
      return
    }
    if (gone) {
      let needed: boolean | undefined
      try {
        needed = await this.consolidationNeeded(vm, opts)
      } catch (err) {
        log.warn({ err }, 'esxi get.runtime failed')
      }
      if (this.#init.consolidate === true) {
        log.warn({ problem: lastProblem, consolidationNeeded: needed }, 'esxi snapshot removed but its delta not merged: consolidating')
        await this.consolidate(vm, opts)
        if (newest !== undefined) await this.#checkNewestKept(vm, snap, newest, opts)
        return
      }
      throw new EsxiError(
        'E_CONSOLIDATION_NEEDED',
        `esxi: snapshot ${snap.id} was removed but ESXi did not merge its delta (${lastProblem}); consolidationNeeded=${String(needed ?? 'unknown')}: consolidate the VM's disks on the host`,
        { host: this.host, vm: vm.ref, command: shJoin(['vim-cmd', ...args]) },
      )
    }
    throw new EsxiError('E_SNAPSHOT', `esxi: snapshot.remove returned but within ${this.#verifyTimeout()} ms ${lastProblem}`, { host: this.host, vm: vm.ref, command: shJoin(['vim-cmd', ...args]) })
  }

  /**
   * The chain check after the operation is what counts: output in a layout we
   * do not know (another ESXi build) is logged, not fatal, when vim-cmd exited
   * 0 without a fault.
   */
  #checkOpOutput(op: 'Create' | 'Remove', stdout: string, log: Logger): void {
    try {
      checkSnapshotOpOutput(op, stdout)
    } catch (err) {
      if (!(err instanceof EsxiError) || err.code !== 'E_PARSE') throw err
      log.warn({ stdout, reason: err.message }, `unexpected snapshot.${op.toLowerCase()} output; verifying the result on disk`)
    }
  }

  #verifyTimeout(): number {
    return this.#init.verifyTimeoutMs ?? 60_000
  }

  /** Call `check` until it returns a value or the verify timeout passes. */
  async #poll<T>(signal: AbortSignal | undefined, check: () => Promise<T | undefined>): Promise<T | undefined> {
    const deadline = Date.now() + this.#verifyTimeout()
    for (;;) {
      if (signal?.aborted === true) throw new EsxiError('E_ABORTED', 'esxi: aborted while verifying', { host: this.host, cause: signal.reason })
      const v = await check()
      if (v !== undefined) return v
      if (Date.now() >= deadline) return undefined
      await sleep(this.#init.pollIntervalMs ?? 500)
    }
  }

  async close(): Promise<void> {
    this.#closed = true
    this.#sftpFiles?.close()
    const p = this.#ssh
    this.#ssh = undefined
    this.#sshNow = undefined
    if (p === undefined) return
    try {
      await (await p).close()
    } catch {}
  }
}
