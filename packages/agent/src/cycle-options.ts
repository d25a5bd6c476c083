/** The resolved options of one VM cycle (`replicate()` fills them from `ReplicateInit`, where the defaults are documented). */
import type { CompressionAlgorithm, DigestAlgorithm, RetentionSpec } from '@grainline/protocol'
import type { ConnectOptions } from './connection.ts'
import type { HypervisorDriver, VmHandle } from './driver.ts'
import type { ProgressSink } from './progress.ts'
import type { RateLimiter } from './rate-limiter.ts'

/** Options of one VM cycle (resolved; see ReplicateInit for the documented defaults). */
export interface CycleOptions {
  readonly ref: string
  readonly connect: Omit<ConnectOptions, 'signal'>
  readonly driver: HypervisorDriver
  /** the agent state folder (agent-state.ts) */
  readonly stateDir: string
  readonly certify: DigestAlgorithm | 'none'
  readonly trivialMiB: number
  readonly rateLimiter: RateLimiter
  readonly compressions: readonly CompressionAlgorithm[]
  readonly digests: readonly DigestAlgorithm[]
  readonly consolidateExisting: boolean
  readonly giveUpMs: number
  readonly maxBackoffMs: number
  readonly windowBytes: number
  readonly maxExtentBytes: number
  /** `changed`: after the commit, compare the digests of every block the cycle wrote (SPEC §5.6 BlockCheck) */
  readonly verify: 'none' | 'changed'
  /** compare 1/N of every disk with the mirror per cycle, in rotation (0: off) */
  readonly scrub: number
  /** the job's restore-point retention request (null: the receiver's policy) */
  readonly retention: RetentionSpec | null
  /** resync every disk whose mirror exists, even when an incremental is safe (`--resync`) */
  readonly resync: boolean
  /** resync block size, bytes (a power of two; halved until it fits the negotiated maxExtentBytes) */
  readonly blockSize: number
  readonly progress: ProgressSink
  readonly signal?: AbortSignal
  /** called after the snapshot is taken and before shipping starts (tests: guest writes) */
  readonly afterSnapshot?: (vm: VmHandle) => Promise<void>
  /** called after the commit, before the checks (tests: the mirror changed behind the receiver's back) */
  readonly afterCommit?: (vm: VmHandle) => Promise<void>
  /**
   * called after the commit and checks, before older snapshots are removed
   * (demo/tests: a guest writing concurrently with shipping settles here, the
   * way a hypervisor serializes guest I/O with a snapshot removal)
   */
  readonly beforeRemove?: (vm: VmHandle) => Promise<void>
  /** called after every extent handed to the socket (tests: cut the link) */
  readonly onExtentSent?: (info: { disk: string; seq: number; wireBytes: number }) => void
}
