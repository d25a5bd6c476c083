/**
 * The agent's durable record per VM (SPEC §5.8): the committed point it
 * replicated last — cycle, the receiver's generation of that commit, and the
 * snapshot that holds it on the source (name and hypervisor id) — the
 * snapshot of a cycle in flight (kept for resume), the Commit sent and not
 * (yet) answered (adopted by the next run when the receiver names it), and
 * checks that failed.
 * An incremental is planned only when this record, the receiver's VmState
 * and the VM's snapshots agree; anything else is a full resync.
 *
 * One JSON file per VM in the state folder (`stateDir`), replaced atomically.
 * Losing it is safe: the next cycle of every VM resyncs.
 */
import { createHash } from 'node:crypto'
import { access, constants as fsConstants, mkdir } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { AgentError } from './errors.ts'
import { readRegularFile, writeFileAtomic } from './fs-util.ts'
import { VmRunLock } from './vm-run-lock.ts'

/** A snapshot as the agent records it: its name and the hypervisor's id. */
export interface SnapshotRecord {
  readonly name: string
  readonly id: string
}

/** The last committed point of the VM, as this agent made it. */
export interface CommittedRecord {
  readonly cycle: number
  /** Committed.generation (32 lowercase hex digits) */
  readonly generation: string
  /** the snapshot whose frozen view the mirror holds (`grainline-<cycle>`) */
  readonly snapshot: SnapshotRecord
  /** the receiver URL it was committed to (informational) */
  readonly receiver: string
  /** ISO time of the commit */
  readonly at: string
}

/** A cycle taken but not (known to be) committed: its snapshot is kept so the next run resumes it. */
export interface InflightRecord {
  readonly cycle: number
  readonly snapshot: SnapshotRecord
  /** the receiver URL the cycle was shipped to (informational) */
  readonly receiver?: string
  readonly at: string
  /**
   * the extent size the cycle was planned with: a resume must cut the same
   * extents (the receiver resumes at an extent number), even when the rate
   * limit, which sizes new plans, changed in between
   */
  readonly chunkBytes?: number
  /**
   * the disks (names) this cycle resyncs (SPEC §5.9): a rerun with the same
   * snapshot resyncs them again under the same cycle identity, so that the
   * receiver resumes the resync instead of it being rolled back for an
   * incremental it would refuse
   */
  readonly resync?: readonly string[]
}

/**
 * A Commit sent whose Committed was not (yet) recorded: saved before the
 * Commit goes out. When a later run finds the receiver's committed cycle to
 * be `cycle` with this very committed cycle identity (VmState v8, SPEC
 * §5.10), the commit is this agent's own and is recorded as Committed would
 * have (`snapshot` becomes the committed one); anything else — another
 * identity, "" or an older receiver, another cycle — and it is dropped.
 */
export interface PendingCommitRecord {
  readonly cycle: number
  /** committedCycleIdentity() of the cycle's disks' names and cycleIds (64 lowercase hex digits) */
  readonly committedCycleId: string
  /** the shipped snapshot: the committed one (the next base) once the commit is adopted */
  readonly snapshot: SnapshotRecord
  /** the snapshot of the commit recorded before (null: none), removed once a later cycle commits on the adopted base */
  readonly replaces: SnapshotRecord | null
  /** the receiver URL the Commit was sent to (informational) */
  readonly receiver: string
  readonly at: string
}

/** Checks that failed after a commit: those disks are resynced by the next cycle. */
export interface DivergedRecord {
  readonly cycle: number
  readonly generation: string
  /** mirror disk names whose trivial check or certify failed */
  readonly disks: readonly string[]
  readonly reason: string
  readonly at: string
}

/** The durable record of one VM. */
export interface AgentVmState {
  readonly version: 1
  /** the VM's name (the mirror's name) */
  readonly vm: string
  /** the key the file is named by: driver, host and the driver's VM id */
  readonly key: string
  committed: CommittedRecord | null
  inflight: InflightRecord | null
  /** a Commit sent, its Committed not recorded (see {@link PendingCommitRecord}) */
  pendingCommit?: PendingCommitRecord
  diverged?: DivergedRecord
  /** `--scrub N`: per disk name, where the rotation stands and when the mirror was last fully proven */
  scrub?: Record<string, ScrubRecord>
}

/** The scrub rotation of one disk (SPEC §5.6 BlockCheck over 1/N of the disk per cycle). */
export interface ScrubRecord {
  /** the first block the next cycle checks */
  readonly next: number
  readonly blockSize: number
  /** no block of this rotation differed so far */
  readonly clean: boolean
  /** when the whole mirror was last proven equal to its source: a clean completed rotation, or a seed or resync */
  readonly provenAt?: string
}

/**
 * The default state folder: `/var/lib/grainline` when running as root, else
 * `$XDG_STATE_HOME/grainline` (`~/.local/state/grainline` when unset).
 */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env, uid: number | undefined = process.getuid?.()): string {
  if (uid === 0) return '/var/lib/grainline'
  const xdg = env['XDG_STATE_HOME']
  return join(xdg !== undefined && xdg !== '' ? xdg : join(homedir(), '.local', 'state'), 'grainline')
}

/** The identity of a VM for the state file: the driver, the host its ids belong to, and its id there. */
export function stateKey(vm: { readonly driver: string; readonly host?: string | undefined; readonly id: string }): string {
  return `${vm.driver}:${vm.host ?? ''}:${vm.id}`
}

/** `<name>-<16 hex of sha256(key)>.json`: readable, unique per key, a safe file name whatever the VM is called. */
export function stateFileName(name: string, key: string): string {
  const safe = name
    .replace(/[^A-Za-z0-9._-]+/g, '_')
    .replace(/^[.]+/, '_')
    .slice(0, 64)
  return `${safe}-${createHash('sha256').update(key).digest('hex').slice(0, 16)}.json`
}

const HEX32 = /^[0-9a-f]{32}$/
const HEX64 = /^[0-9a-f]{64}$/
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)
const isCycle = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 1
const isSnap = (v: unknown): v is SnapshotRecord => isObj(v) && typeof v['name'] === 'string' && typeof v['id'] === 'string' && v['id'] !== ''

/** Check a parsed state file; returns a problem description, or undefined when it is well-formed for `key`. */
export function checkStateShape(v: unknown, key: string): string | undefined {
  if (!isObj(v) || v['version'] !== 1) return 'not a version 1 agent state'
  if (v['key'] !== key) return `recorded for another VM (${String(v['key'])})`
  const c = v['committed']
  if (c !== null && !(isObj(c) && isCycle(c['cycle']) && typeof c['generation'] === 'string' && HEX32.test(c['generation']) && isSnap(c['snapshot']))) return 'malformed committed record'
  const f = v['inflight']
  if (f !== null && !(isObj(f) && isCycle(f['cycle']) && isSnap(f['snapshot']))) return 'malformed in-flight record'
  if (f !== null && f['resync'] !== undefined && !(Array.isArray(f['resync']) && f['resync'].every((n) => typeof n === 'string'))) return 'malformed in-flight record'
  const p = v['pendingCommit']
  if (
    p !== undefined &&
    !(isObj(p) && isCycle(p['cycle']) && typeof p['committedCycleId'] === 'string' && HEX64.test(p['committedCycleId']) && isSnap(p['snapshot']) && (p['replaces'] === null || isSnap(p['replaces'])))
  ) {
    return 'malformed pending commit record'
  }
  const d = v['diverged']
  if (d !== undefined && !(isObj(d) && isCycle(d['cycle']) && Array.isArray(d['disks']) && d['disks'].every((n) => typeof n === 'string'))) return 'malformed diverged record'
  const s = v['scrub']
  if (
    s !== undefined &&
    !(
      isObj(s) &&
      Object.values(s).every(
        (r) => isObj(r) && Number.isSafeInteger(r['next']) && (r['next'] as number) >= 0 && Number.isSafeInteger(r['blockSize']) && (r['blockSize'] as number) > 0 && typeof r['clean'] === 'boolean',
      )
    )
  ) {
    return 'malformed scrub record'
  }
  return undefined
}

/** Record the snapshot of cycle `cycle` as in flight (before anything is shipped). */
export function markInflight(state: AgentVmState, cycle: number, snapshot: SnapshotRecord, receiver: string, chunkBytes?: number): AgentVmState {
  state.inflight = { cycle, snapshot: { name: snapshot.name, id: snapshot.id }, receiver, at: new Date().toISOString(), ...(chunkBytes === undefined ? {} : { chunkBytes }) }
  return state
}

/** Record the disks the in-flight cycle resyncs (see {@link InflightRecord.resync}). */
export function markInflightResync(state: AgentVmState, disks: readonly string[]): AgentVmState {
  if (state.inflight !== null) state.inflight = { ...state.inflight, resync: [...disks] }
  return state
}

/** Record the Commit of `cycle` about to be sent (before it is sent; see {@link PendingCommitRecord}). */
export function markPendingCommit(state: AgentVmState, cycle: number, committedCycleId: string, snapshot: SnapshotRecord, receiver: string): AgentVmState {
  const replaces = state.committed === null ? null : { name: state.committed.snapshot.name, id: state.committed.snapshot.id }
  state.pendingCommit = { cycle, committedCycleId, snapshot: { name: snapshot.name, id: snapshot.id }, replaces, receiver, at: new Date().toISOString() }
  return state
}

/** Drop the record of a Commit sent (a rollback, or a receiver that does not name it as its commit). */
export function clearPendingCommit(state: AgentVmState): AgentVmState {
  delete state.pendingCommit
  return state
}

/**
 * What the receiver's committed point says of the recorded pending Commit:
 * `own` — the receiver committed that cycle under the identity this agent
 * computed for it (a non-empty committedCycleId, version 8); `other` — that
 * cycle number was committed under another identity (another writer);
 * `unknown` — no pending Commit, another cycle, or no identity to compare ("",
 * an older receiver): nothing proves the commit is this agent's.
 */
export function pendingCommitMatch(pending: PendingCommitRecord | undefined, mirror: { readonly committedCycle: number; readonly committedCycleId?: string | undefined }): 'own' | 'other' | 'unknown' {
  if (pending === undefined || mirror.committedCycle !== pending.cycle) return 'unknown'
  const theirs = mirror.committedCycleId ?? ''
  if (theirs === '') return 'unknown'
  return theirs === pending.committedCycleId ? 'own' : 'other'
}

/**
 * Record a commit: its generation beside the shipped snapshot; nothing in
 * flight, no Commit pending. Every disk of the cycle was written from the
 * point the record names, so earlier failed checks are settled.
 */
export function markCommitted(state: AgentVmState, cycle: number, generation: string, snapshot: SnapshotRecord, receiver: string): AgentVmState {
  state.committed = { cycle, generation, snapshot: { name: snapshot.name, id: snapshot.id }, receiver, at: new Date().toISOString() }
  state.inflight = null
  delete state.pendingCommit
  delete state.diverged
  return state
}

/** Record disks whose trivial check or certify failed after the commit of `cycle`: the next cycle resyncs them. */
export function markDiverged(state: AgentVmState, cycle: number, disks: readonly string[], reason: string): AgentVmState {
  state.diverged = { cycle, generation: state.committed?.generation ?? '', disks: [...disks], reason, at: new Date().toISOString() }
  return state
}

/** Largest state file read (a few hundred bytes in practice). */
const MAX_STATE_BYTES = 1024 * 1024

/** What loading found. */
export interface LoadedState {
  readonly state: AgentVmState
  /** why a file that exists was not usable (the VM resyncs; the file is replaced at the next write) */
  readonly problem?: string
}

/** The agent state folder. */
export class AgentStateStore {
  readonly dir: string

  constructor(dir: string) {
    this.dir = dir
  }

  /** Path of a VM's state file. */
  pathOf(name: string, key: string): string {
    return join(this.dir, stateFileName(name, key))
  }

  /**
   * Take the run lock of a VM (vm-run-lock.ts): before its record is loaded,
   * released when the cycle is disposed. The folder is created (mode 0700).
   * @throws AgentError E_BUSY (another run holds it), E_STATE
   */
  async lock(name: string, key: string): Promise<VmRunLock> {
    await this.#usableDir()
    return await VmRunLock.acquire(`${this.pathOf(name, key)}.lock`, name)
  }

  /** The folder, created (mode 0700) and writable. @throws AgentError E_STATE */
  async #usableDir(): Promise<void> {
    try {
      await mkdir(this.dir, { recursive: true, mode: 0o700 })
      await access(this.dir, fsConstants.W_OK)
    } catch (err) {
      throw new AgentError('E_STATE', `agent state folder ${this.dir} is not usable: ${(err as Error).message} (set --state-dir / stateDir)`, { cause: err })
    }
  }

  /**
   * Load a VM's record (a fresh, empty one when there is none). The folder is
   * created (mode 0700) and must be writable: `E_STATE` before the cycle
   * touches the VM otherwise. A file that is not a regular file is `E_STATE`;
   * one that does not parse or belongs to another VM is reported as a problem
   * and replaced.
   */
  async load(name: string, key: string): Promise<LoadedState> {
    const fresh: AgentVmState = { version: 1, vm: name, key, committed: null, inflight: null }
    await this.#usableDir()
    const file = this.pathOf(name, key)
    let text: string
    try {
      text = (await readRegularFile(file, { maxBytes: MAX_STATE_BYTES, code: 'E_STATE', what: 'agent state file' })).toString('utf8')
    } catch (err) {
      if ((err as { code?: unknown }).code === 'ENOENT') return { state: fresh }
      if (err instanceof AgentError) throw err
      throw new AgentError('E_STATE', `cannot read agent state file ${file}: ${(err as Error).message}`, { cause: err })
    }
    let parsed: unknown
    try {
      parsed = JSON.parse(text)
    } catch (err) {
      return { state: fresh, problem: `agent state file ${file} does not parse (${(err as Error).message})` }
    }
    const problem = checkStateShape(parsed, key)
    if (problem !== undefined) return { state: fresh, problem: `agent state file ${file}: ${problem}` }
    const s = parsed as AgentVmState
    return {
      state: {
        version: 1,
        vm: name,
        key,
        committed: s.committed,
        inflight: s.inflight,
        ...(s.pendingCommit === undefined ? {} : { pendingCommit: s.pendingCommit }),
        ...(s.diverged === undefined ? {} : { diverged: s.diverged }),
        ...(s.scrub === undefined ? {} : { scrub: s.scrub }),
      },
    }
  }

  /** Replace a VM's record atomically (temp file, fsync, rename, fsync the folder). @throws AgentError E_STATE */
  async save(state: AgentVmState): Promise<void> {
    const file = this.pathOf(state.vm, state.key)
    try {
      await writeFileAtomic(file, JSON.stringify(state, null, 2) + '\n')
    } catch (err) {
      throw new AgentError('E_STATE', `cannot write agent state file ${file}: ${(err as Error).message}`, { cause: err })
    }
  }
}
