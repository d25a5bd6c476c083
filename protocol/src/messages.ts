/**
 * grainline wire protocol v2 — message types.
 *
 * `protocol/SPEC.md` is the authority; this file is its TypeScript image.
 * Every WebSocket binary message carries exactly one frame:
 *
 *   frame := u8(kind) • msgpack(map of the fields below, records off)
 *
 * Byte strings (`Uint8Array`) travel as msgpack `bin`. Integers are unsigned
 * and below 2^53 unless said otherwise.
 */

/** The protocol version the subprotocol names: the oldest one this package speaks (SPEC §9). */
export const PROTOCOL_VERSION = 2

/** Every protocol version this package speaks, most preferred first (SPEC §9: v3 is v2 plus DiskProgress, v4 is v3 plus CommitProgress, v5 is v4 plus VmProgress, v6 is v5 plus PointsDropped, v7 is v6 plus PointsDropped before the VmState of a cycle committed already, v8 is v7 plus VmState.committedCycleId, v9 is v8 plus DiskState.detail). */
export const PROTOCOL_VERSIONS: readonly number[] = [9, 8, 7, 6, 5, 4, 3, 2]

/** The first version in which the receiver may send DiskProgress (SPEC §5.1, §9). */
export const DISK_PROGRESS_VERSION = 3

/** The first version in which the receiver may send CommitProgress (SPEC §5.5, §9). */
export const COMMIT_PROGRESS_VERSION = 4

/** The first version in which the receiver may send VmProgress (SPEC §4.2, §4.3, §9). */
export const VM_PROGRESS_VERSION = 5

/** The first version in which the receiver may send PointsDropped (SPEC §5.5, §9). */
export const POINTS_DROPPED_VERSION = 6

/**
 * The first version in which the receiver may also send PointsDropped between
 * a VmOpen and its VmState, when the VmOpen's cycle is the one the receiver
 * committed last: the notice of a commit whose Committed was lost with its
 * connection (SPEC §4.2, §5.5, §9).
 */
export const POINTS_DROPPED_AT_OPEN_VERSION = 7

/**
 * The first version whose VmState carries `committedCycleId`, the identity of
 * the mirror's last committed cycle (SPEC §4.2, §5.10): an agent whose
 * Committed was lost with its connection takes that commit for its own only
 * when the identity is the one of the cycle it sent. Before it the field is
 * absent.
 */
export const COMMITTED_CYCLE_ID_VERSION = 8

/**
 * The first version whose refused DiskState carries `detail`, the receiver's
 * own words for the refusal (SPEC §5.1, §9): what it found and what to do,
 * the text its log says. Before it, and on an accepted DiskState, the field is
 * absent.
 */
export const REFUSAL_DETAIL_VERSION = 9

/** Longest DiskState `detail` on the wire, UTF-8 bytes (SPEC §5.1, §6). */
export const MAX_REFUSAL_DETAIL_BYTES = 2048

/** WebSocket subprotocol carrying the major version (SPEC §1). */
export const SUBPROTOCOL = 'grainline.v2'

/** Message kinds (the first byte of every frame). */
export const MessageKind = {
  /** agent → receiver: versions, algorithms and limits, in order of preference */
  Hello: 0x01,
  /** receiver → agent: the negotiated choice */
  Welcome: 0x02,
  /** agent → receiver: start a VM cycle: config files and compatibility record */
  VmOpen: 0x08,
  /** receiver → agent: the VM mirror's committed state */
  VmState: 0x09,
  /** receiver → agent (v5): a long VmOpen or Rollback is still being worked on (an interrupted commit finished, an undo); no reply */
  VmProgress: 0x0a,
  /** agent → receiver: open one disk of the VM for this cycle */
  DiskOpen: 0x10,
  /** receiver → agent: the disk mirror's state and the resume point */
  DiskState: 0x11,
  /** receiver → agent (v3): a long DiskOpen is still being worked on (a base copy); no reply */
  DiskProgress: 0x12,
  /** agent → receiver: one extent (data or zero) */
  Extent: 0x20,
  /** receiver → agent: cumulative acknowledgement (all seq ≤ ack.seq durable) */
  ExtentAck: 0x21,
  /** agent → receiver: all extents of the disk for this cycle were sent */
  DiskEnd: 0x22,
  /** receiver → agent: counts and cycle digest matched; the disk is sealed */
  DiskEnded: 0x23,
  /** agent → receiver (resync): send the mirror's block digests of a run of blocks */
  BlockMapRequest: 0x24,
  /** receiver → agent (resync): the mirror's block digests of the requested run */
  BlockMap: 0x25,
  /** agent → receiver: commit every sealed disk of the VM atomically */
  Commit: 0x30,
  /** receiver → agent: the VM's new committed cycle is durable */
  Committed: 0x31,
  /** receiver → agent (v4): a long Commit is still being worked on (restore points merged); no reply */
  CommitProgress: 0x32,
  /** receiver → agent (v6): this Commit dropped every restore point the VM had; no reply */
  PointsDropped: 0x33,
  /** agent → receiver: size + digest of the first N MiB of the frozen source */
  TrivialCheck: 0x40,
  /** receiver → agent: the mirror's values and the verdict */
  TrivialResult: 0x41,
  /** agent → receiver: full digest of the frozen source disk */
  Certify: 0x42,
  /** receiver → agent: the mirror's full digest and the verdict */
  CertifyResult: 0x43,
  /** agent → receiver: digests of listed blocks of the frozen source (`--verify changed`) */
  BlockCheck: 0x44,
  /** receiver → agent: the listed blocks whose mirror digests differ */
  BlockCheckResult: 0x45,
  /** agent → receiver: discard an interrupted (uncommitted) cycle of the VM */
  Rollback: 0x50,
  /** receiver → agent: the VM mirror is back at its last committed point */
  RolledBack: 0x51,
  /** either side: a typed error; fatal ones are followed by a close */
  Error: 0x7f,
} as const
/** A message kind byte. */
export type MessageKind = (typeof MessageKind)[keyof typeof MessageKind]

/** Digest algorithms (SPEC §3). */
export const DigestAlgorithms = ['xxh64', 'sha256', 'sha1', 'md5'] as const
/** A digest algorithm name. */
export type DigestAlgorithm = (typeof DigestAlgorithms)[number]

/** Compression algorithms (SPEC §3). `none` is always supported. */
export const CompressionAlgorithms = ['lz4', 'deflate', 'none'] as const
/** A compression algorithm name. */
export type CompressionAlgorithm = (typeof CompressionAlgorithms)[number]

/** Limits a side announces; the effective limit is the minimum of both. */
export interface Limits {
  /** largest WebSocket message accepted, bytes */
  readonly maxMessageBytes: number
  /** largest extent payload (uncompressed), bytes */
  readonly maxExtentBytes: number
  /** largest number of unacknowledged payload bytes in flight per connection */
  readonly windowBytes: number
}

/** Agent → receiver, first message: what the agent speaks, most preferred first (SPEC §3.1). The lists may hold names this build does not know; `negotiate` skips them. */
export interface HelloMessage {
  readonly kind: typeof MessageKind.Hello
  /** protocol versions, most preferred first */
  readonly versions: readonly number[]
  /** free text, e.g. "grainline-agent/0.1.0" */
  readonly software: string
  readonly digests: readonly DigestAlgorithm[]
  readonly compressions: readonly CompressionAlgorithm[]
  readonly limits: Limits
}

/** Receiver → agent: the negotiated version, algorithms and limits (SPEC §3.1, §3.4). */
export interface WelcomeMessage {
  readonly kind: typeof MessageKind.Welcome
  readonly version: number
  readonly software: string
  readonly digest: DigestAlgorithm
  readonly compression: CompressionAlgorithm
  readonly limits: Limits
  /** receiver-chosen session id (for logs) */
  readonly session: string
}

/** A VM configuration file shipped so that the mirror can boot. */
export interface VmFile {
  /** bare file name, e.g. "web01.vmx", "web01.nvram" (no path separators) */
  readonly name: string
  readonly data: Uint8Array
}

/** What must match between the source VM and an existing mirror. */
export interface CompatRecord {
  /** virtual hardware version (`virtualHW.version`), e.g. 14 */
  readonly hwVersion: number
  /** datastore type of the source, e.g. "vmfs6", "nfs", "local" */
  readonly datastoreType: string
  /** `guestOS` from the .vmx, informational */
  readonly guestOS: string
}

/** Agent → receiver: start a VM cycle with its configuration files and compatibility record (SPEC §4.2). */
export interface VmOpenMessage {
  readonly kind: typeof MessageKind.VmOpen
  /** VM name = mirror folder name; no "/", "\\", NUL, not "." or ".." */
  readonly vm: string
  /** the cycle the agent means to ship (committed + 1, or 1 for a seed) */
  readonly cycle: number
  readonly compat: CompatRecord
  readonly files: readonly VmFile[]
  /** the disk file names the .vmx references, in .vmx order */
  readonly disks: readonly string[]
}

/** Identity of one layer of the source chain. */
export interface ChainLayer {
  /** descriptor file name (basename) */
  readonly file: string
  /** CID, 8 lowercase hex digits */
  readonly cid: string
  /** parentCID, 8 lowercase hex digits ("ffffffff" for a base) */
  readonly parentCid: string
}

/** Identity of the source chain a cycle reads. */
export interface SourceIdentity {
  /** the frozen layers this cycle ships, bottom first (seed: the base layers) */
  readonly layers: readonly ChainLayer[]
  /**
   * descriptor file name of the delta the VM writes to after this cycle's
   * snapshot: the first delta the next incremental cycle must ship
   */
  readonly successor: string
}

/** Receiver → agent: the VM mirror's committed and in-flight cycles (SPEC §4.2). */
export interface VmStateMessage {
  readonly kind: typeof MessageKind.VmState
  readonly vm: string
  /** whether a mirror of this VM exists */
  readonly exists: boolean
  /** last committed cycle, 0 if none */
  readonly committedCycle: number
  /** cycle of an interrupted, uncommitted apply, 0 if none */
  readonly inflightCycle: number
  /** false when the mirror's compat record differs from the VmOpen's */
  readonly compatible: boolean
  /**
   * generation id of the mirror's last commit (SPEC §5.8): 32 lowercase hex
   * digits, "" when there is no committed point
   */
  readonly generation: string
  /**
   * version 8 and later (present exactly then): the identity of the mirror's
   * last committed cycle (SPEC §5.10, `committedCycleIdentity()`), 64
   * lowercase hex digits; "" when nothing is committed or the receiver does
   * not know it (a commit made before version 8 or by an older agent)
   */
  readonly committedCycleId?: string
}

/** Agent → receiver: open one disk of the VM for this cycle (SPEC §5.1). */
export interface DiskOpenMessage {
  readonly kind: typeof MessageKind.DiskOpen
  /** per-connection disk handle chosen by the agent (0…255) */
  readonly disk: number
  /** source disk name (basename of the base descriptor), e.g. "web01_1.vmdk" */
  readonly name: string
  /** virtual capacity in bytes (multiple of 512) */
  readonly capacity: number
  readonly cycle: number
  readonly mode: DiskMode
  /** for incremental: the committed cycle this one applies on; 0 for seed and resync */
  readonly baseCycle: number
  /**
   * for incremental: the generation id of the commit the agent planned this
   * cycle against (SPEC §5.8); "" for a seed
   */
  readonly baseGeneration: string
  readonly source: SourceIdentity
  /**
   * digest (hex) identifying this exact cycle: see SPEC §5 "cycle identity";
   * a resume is accepted only for the same value
   */
  readonly cycleId: string
  /** DDB values of the source base disk to keep in the mirror descriptor */
  readonly ddb: Readonly<Record<string, string>>
  /** total payload bytes (data + zero) the cycle will ship, for progress */
  readonly totalBytes: number
  /** number of extents the cycle will ship (resync: 0, unknown until the maps are compared) */
  readonly totalExtents: number
  /**
   * resync: bytes per block of the digest maps (a power of two, 4 KiB … 64 MiB,
   * ≤ maxExtentBytes; SPEC §5.9); 0 for seed and incremental
   */
  readonly blockSize: number
}

/**
 * How a disk cycle ships (SPEC §5.1): the whole frozen view, the changed
 * ranges of the frozen deltas, or the blocks whose digests differ from the
 * mirror's (SPEC §5.9).
 */
export type DiskMode = 'seed' | 'incremental' | 'resync'

/** Agent → receiver (resync): the mirror's digests of blocks `first` … `first + count - 1`, please (SPEC §5.9). */
export interface BlockMapRequestMessage {
  readonly kind: typeof MessageKind.BlockMapRequest
  readonly disk: number
  /** index of the first block; the requests of a handle are contiguous from block 0 */
  readonly first: number
  /** blocks requested (1 … 65536) */
  readonly count: number
}

/** Receiver → agent (resync): the mirror's block digests, `count` × digest length bytes in block order (SPEC §5.9). */
export interface BlockMapMessage {
  readonly kind: typeof MessageKind.BlockMap
  readonly disk: number
  /** the request's `first` */
  readonly first: number
  /** the concatenated digests (negotiated algorithm) of the blocks as the mirror holds them at its committed point */
  readonly digests: Uint8Array
}

/** Receiver → agent: accepted or refused, the disk mirror's state and the resume point (SPEC §5.1, §5.7). */
export interface DiskStateMessage {
  readonly kind: typeof MessageKind.DiskState
  readonly disk: number
  /** whether the receiver accepts this open; if false see `reason` */
  readonly accepted: boolean
  /** stable code when refused (E_MIRROR_MODIFIED, E_CHAIN_MISMATCH, …), else "" */
  readonly reason: string
  /** last committed cycle of this disk's mirror, 0 if none */
  readonly committedCycle: number
  /** the source identity recorded at the last commit, if any */
  readonly committedSource: SourceIdentity | null
  /** CID of the mirror descriptor ("" if no mirror) */
  readonly mirrorCid: string
  /** true when the mirror descriptor CID or flat size changed since commit */
  readonly modified: boolean
  /** first seq the agent must send (0 = from the start) */
  readonly resumeSeq: number
  /** payload bytes already durably applied for this cycle */
  readonly resumeBytes: number
  /**
   * version 9 and later, on a refusal only (absent otherwise): the receiver's
   * explanation of `reason` — what it found, what to do — at most
   * {@link MAX_REFUSAL_DETAIL_BYTES} UTF-8 bytes; untrusted text for the agent
   */
  readonly detail?: string
}

/**
 * Receiver → agent, version 5 and later (SPEC §4.2, §4.3): the VmOpen or the
 * Rollback of `vm` is still being worked on — for a VmOpen the end of a
 * commit or prune a crash interrupted (the merges of the restore points it
 * drops, step "merge-points"), for a Rollback the undo of the in-flight
 * cycle (its overwritten data written back, step "undo"). Sent when the work
 * starts, no more often than every 5 s while it moves, and when it ends,
 * always before the VmState or RolledBack. The agent answers nothing; a
 * report that moved forward restarts its wait (within a bound, SPEC §8.4),
 * and it shows the progress.
 */
export interface VmProgressMessage {
  readonly kind: typeof MessageKind.VmProgress
  readonly vm: string
  /** what is being done: "merge-points" (VmOpen) or "undo" (Rollback) */
  readonly step: string
  /** bytes done so far, ≤ totalBytes */
  readonly doneBytes: number
  /** bytes the step has to do */
  readonly totalBytes: number
}

/**
 * Receiver → agent, version 3 and later (SPEC §5.1): the DiskOpen of `disk` is
 * still being worked on — today the copy of the committed mirror into a base
 * point when the disk changes capacity, which takes minutes on a store
 * without reflinks. Sent when the work starts, every 5 s while it runs (the
 * reference receiver; at least every 10 s) and when it ends, always before the DiskState. The agent answers
 * nothing; it restarts its wait for the DiskState and shows the progress.
 */
export interface DiskProgressMessage {
  readonly kind: typeof MessageKind.DiskProgress
  readonly disk: number
  /** what is being done: "base-copy" */
  readonly step: string
  /** bytes done so far, ≤ totalBytes */
  readonly doneBytes: number
  /** bytes the step has to do */
  readonly totalBytes: number
}

/** Agent → receiver: one extent, data or zero (SPEC §5.3). */
export interface ExtentMessage {
  readonly kind: typeof MessageKind.Extent
  readonly disk: number
  /** 0, 1, 2, … in the cycle's deterministic order */
  readonly seq: number
  /** byte offset in the virtual disk (multiple of 512) */
  readonly offset: number
  /** bytes covered (multiple of 512, ≤ maxExtentBytes for data) */
  readonly length: number
  /** true: the range reads as zeros and `data` is empty */
  readonly zero: boolean
  /** compression applied to `data` ("none" when not worth it) */
  readonly compression: CompressionAlgorithm
  /** payload (compressed when `compression` ≠ "none"); empty for zero extents */
  readonly data: Uint8Array
  /** negotiated digest of the uncompressed payload; empty for zero extents */
  readonly digest: Uint8Array
}

/** Receiver → agent: cumulative acknowledgement (SPEC §5.3). */
export interface ExtentAckMessage {
  readonly kind: typeof MessageKind.ExtentAck
  readonly disk: number
  /** every extent with seq ≤ this one is durably applied */
  readonly seq: number
}

/** Agent → receiver: the disk's last extent was sent; counts and cycle digest (SPEC §5.4). */
export interface DiskEndMessage {
  readonly kind: typeof MessageKind.DiskEnd
  readonly disk: number
  readonly extents: number
  readonly dataBytes: number
  readonly zeroBytes: number
  /** cycle digest, SPEC §5 */
  readonly digest: Uint8Array
}

/** Receiver → agent: counts and cycle digest matched; the disk's cycle is sealed (SPEC §5.4). */
export interface DiskEndedMessage {
  readonly kind: typeof MessageKind.DiskEnded
  readonly disk: number
}

/**
 * A restore-point retention policy on the wire (SPEC §5.5). Each field is a
 * rule; 0 leaves that rule out. A point is kept when it is among the newest
 * `keep` and younger than `maxAgeSeconds`, or when a grandfather-father-son
 * level selects it; then the oldest go until the points take at most `maxBytes`.
 */
export interface RetentionSpec {
  /** keep the newest N points (0: no count rule) */
  readonly keep: number
  /** keep points younger than this many seconds (0: no age rule) */
  readonly maxAgeSeconds: number
  /** the VM's points take at most this many bytes (0: no cap) */
  readonly maxBytes: number
  /** GFS: newest point of each of the last N hours */
  readonly hourly: number
  /** GFS: … days (UTC) */
  readonly daily: number
  /** GFS: … weeks (Monday to Sunday, UTC) */
  readonly weekly: number
  /** GFS: … months (UTC) */
  readonly monthly: number
}

/** Agent → receiver: commit every sealed disk of the VM atomically (SPEC §5.5). */
export interface CommitMessage {
  readonly kind: typeof MessageKind.Commit
  readonly vm: string
  readonly cycle: number
  /**
   * the job's restore-point retention for this VM, which the receiver applies
   * within the limits its operator allows; null: the receiver's own policy
   */
  readonly retention: RetentionSpec | null
}

/** One disk of a Committed message: its new mirror CID and flat size. */
export interface CommittedDisk {
  readonly disk: number
  readonly mirrorCid: string
  readonly size: number
}

/** Receiver → agent: the VM's new committed cycle is durable (SPEC §5.5). */
export interface CommittedMessage {
  readonly kind: typeof MessageKind.Committed
  readonly vm: string
  readonly cycle: number
  /** the new point's generation id (SPEC §5.8): 32 lowercase hex digits, random, new at every commit */
  readonly generation: string
  readonly disks: readonly CommittedDisk[]
  /** the retention the receiver applied at this commit; null: it keeps no restore points of this VM */
  readonly retention: RetentionSpec | null
}

/**
 * Receiver → agent, version 4 and later (SPEC §5.5): the Commit of `cycle` is
 * still being worked on — today the merges of the restore points the
 * retention drops at this commit, which read and write the dropped points'
 * increments and take minutes when they are large. Sent when the work
 * starts, no more often than every 5 s while data is copied, and when it
 * ends, always before the Committed. The agent answers nothing; a report
 * that moved forward restarts its wait for the Committed (within a bound,
 * SPEC §8.4), and it shows the progress.
 */
export interface CommitProgressMessage {
  readonly kind: typeof MessageKind.CommitProgress
  readonly vm: string
  readonly cycle: number
  /** what is being done: "merge-points" */
  readonly step: string
  /** bytes done so far, ≤ totalBytes */
  readonly doneBytes: number
  /** bytes the step has to do */
  readonly totalBytes: number
}

/**
 * Receiver → agent, version 6 and later (SPEC §5.5): the Commit of `cycle`
 * dropped every restore point the VM had, so that the mirror can be
 * restored to this cycle and later only. Sent at most once per Commit,
 * before its Committed (the commit has happened: it is no refusal). The
 * agent answers nothing; it reports it (a warning of the run, e-mail,
 * webhooks) besides the receiver's own status and metrics.
 */
export interface PointsDroppedMessage {
  readonly kind: typeof MessageKind.PointsDropped
  readonly vm: string
  readonly cycle: number
  /** points dropped, ≥ 1 */
  readonly count: number
  /** the cycle of the oldest point dropped */
  readonly oldest: number
  /** the cycle of the newest point dropped: oldest ≤ newest < cycle */
  readonly newest: number
  /**
   * true when the points could not be kept (a capacity change without room
   * for a base point, a re-seed or resync of a mirror changed behind the
   * receiver's back); false when the VM keeps no restore points any more
   * (its retention turned off: the operator's choice)
   */
  readonly broken: boolean
  /** why, in words (≤ 1024 UTF-8 bytes) */
  readonly reason: string
}

/** Agent → receiver: size and prefix digest of the frozen source (SPEC §5.6). */
export interface TrivialCheckMessage {
  readonly kind: typeof MessageKind.TrivialCheck
  readonly disk: number
  /** bytes of the prefix digested (N MiB, clamped to the capacity) */
  readonly prefixBytes: number
  readonly algorithm: DigestAlgorithm
  /** source capacity in bytes */
  readonly size: number
  readonly digest: Uint8Array
}

/** Receiver → agent: the mirror's size and prefix digest, and the verdict (SPEC §5.6). */
export interface TrivialResultMessage {
  readonly kind: typeof MessageKind.TrivialResult
  readonly disk: number
  readonly ok: boolean
  readonly size: number
  readonly digest: Uint8Array
}

/** Agent → receiver: full digest of the frozen source disk (SPEC §5.6). */
export interface CertifyMessage {
  readonly kind: typeof MessageKind.Certify
  readonly disk: number
  readonly algorithm: DigestAlgorithm
  readonly digest: Uint8Array
}

/** Receiver → agent: the mirror's full digest and the verdict (SPEC §5.6). */
export interface CertifyResultMessage {
  readonly kind: typeof MessageKind.CertifyResult
  readonly disk: number
  readonly ok: boolean
  readonly algorithm: DigestAlgorithm
  readonly digest: Uint8Array
  readonly bytes: number
}

/** Agent → receiver: the digests of listed blocks of the frozen source, to compare with the mirror after the commit (SPEC §5.6). */
export interface BlockCheckMessage {
  readonly kind: typeof MessageKind.BlockCheck
  readonly disk: number
  /** block size, bytes (a power of two, 4 KiB … 64 MiB) */
  readonly blockSize: number
  /** block indexes, u64le each, strictly ascending, 1 … 65536 of them */
  readonly blocks: Uint8Array
  /** the negotiated digest of each listed block of the frozen view, in the same order */
  readonly digests: Uint8Array
}

/** Receiver → agent: which of the checked blocks differ in the mirror (SPEC §5.6). */
export interface BlockCheckResultMessage {
  readonly kind: typeof MessageKind.BlockCheckResult
  readonly disk: number
  /** true when every listed block matched */
  readonly ok: boolean
  /** the indexes (u64le each, ascending) of the listed blocks whose mirror digests differ */
  readonly mismatched: Uint8Array
}

/** Agent → receiver: discard the VM's interrupted, uncommitted cycle (SPEC §4.3). */
export interface RollbackMessage {
  readonly kind: typeof MessageKind.Rollback
  readonly vm: string
}

/** Receiver → agent: the mirror is back at its last committed point (SPEC §4.3). */
export interface RolledBackMessage {
  readonly kind: typeof MessageKind.RolledBack
  readonly vm: string
  readonly committedCycle: number
}

/** Either side: a typed error; a fatal one is followed by a close with its close code (SPEC §7). */
export interface ErrorMessage {
  readonly kind: typeof MessageKind.Error
  /** stable code from SPEC §7 */
  readonly code: string
  readonly message: string
  /** fatal errors are followed by a WebSocket close with the code's close code */
  readonly fatal: boolean
}

/** Any protocol message; switch on `kind`. */
export type Message =
  | HelloMessage
  | WelcomeMessage
  | VmOpenMessage
  | VmStateMessage
  | DiskOpenMessage
  | DiskStateMessage
  | VmProgressMessage
  | DiskProgressMessage
  | ExtentMessage
  | ExtentAckMessage
  | DiskEndMessage
  | DiskEndedMessage
  | BlockMapRequestMessage
  | BlockMapMessage
  | CommitMessage
  | CommittedMessage
  | CommitProgressMessage
  | PointsDroppedMessage
  | TrivialCheckMessage
  | TrivialResultMessage
  | CertifyMessage
  | CertifyResultMessage
  | BlockCheckMessage
  | BlockCheckResultMessage
  | RollbackMessage
  | RolledBackMessage
  | ErrorMessage
