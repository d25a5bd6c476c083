import type { LocalCapabilities } from '@grainline/protocol'
import type { ReceiverObserver } from './metrics.ts'
import type { RefusalLog } from './refusal-log.ts'
import type { RetentionLimits, RetentionPolicy } from './retention.ts'
import type { CephTarget } from './store/ceph/rbd-cli.ts'
import type { FramePool } from './frame-pool.ts'
import type { PayloadPool } from './payload-pool.ts'
import type { PendingOpens } from './quota-room.ts'

/** Settings shared by all sessions of a receiver. */
export interface SessionSettings {
  readonly storeDir: string
  /** when set, mirrors live on this Ceph pool instead of `storeDir` (docs/CEPH.md) */
  readonly ceph?: { readonly target: CephTarget; readonly holder: string; readonly leaseSeconds?: number }
  /** `grainline-receiver/<version>`, sent in Welcome */
  readonly software: string
  readonly local: LocalCapabilities
  readonly displaySuffix: string
  /** flush a batch (journal, write, fsync, ack) at this many payload bytes */
  readonly batchBytes: number
  /** when the inbox runs dry mid-batch, wait this long for more extents before flushing, ms */
  readonly batchIdleMs: number
  /** pause the socket when this many inbound bytes wait to be processed */
  readonly highWaterBytes: number
  /** how long a session waits for a VM lock held by another session, ms */
  readonly lockWaitMs: number
  /** largest prefix a trivial check may digest, bytes */
  readonly trivialMaxBytes: number
  /** Hello must arrive within this many ms of the upgrade (E_TIMEOUT) */
  readonly helloTimeoutMs: number
  /** a session idle this long after Hello is ended (E_TIMEOUT), releasing its VM lock */
  readonly idleTimeoutMs: number
  /** where timeouts are logged, rate-limited */
  readonly refusals: RefusalLog
  /** the restore-point retention of a VM (undefined: no points) */
  readonly retentionFor?: (vm: string) => RetentionPolicy | undefined
  /** what an agent's per-job retention request may ask (undefined: requests are ignored) */
  readonly retentionLimits?: RetentionLimits
  /** told of sealed disks, commits and checks as they happen (metrics) */
  readonly observer?: ReceiverObserver
  /**
   * Reused memory for inbound frames and payloads, shared by every session of
   * the receiver (frame-pool.ts, payload-pool.ts): kept from one agent
   * connection to the next. Undefined: each session makes its own.
   */
  readonly buffers?: { readonly frames: FramePool; readonly payloads: PayloadPool }
  /**
   * The DiskOpens of every session being decided, so that a token's quota
   * counts those of its other sessions too (quota-room.ts). Undefined: a
   * session sees the others' applies only once their in-flight records are written.
   */
  readonly pendingOpens?: PendingOpens
}
