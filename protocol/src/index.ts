export {
  PROTOCOL_VERSION,
  PROTOCOL_VERSIONS,
  DISK_PROGRESS_VERSION,
  COMMIT_PROGRESS_VERSION,
  VM_PROGRESS_VERSION,
  POINTS_DROPPED_VERSION,
  POINTS_DROPPED_AT_OPEN_VERSION,
  COMMITTED_CYCLE_ID_VERSION,
  REFUSAL_DETAIL_VERSION,
  MAX_REFUSAL_DETAIL_BYTES,
  SUBPROTOCOL,
  MessageKind,
  DigestAlgorithms,
  CompressionAlgorithms,
} from './messages.ts'
export type {
  Message,
  HelloMessage,
  WelcomeMessage,
  VmOpenMessage,
  VmStateMessage,
  DiskOpenMessage,
  DiskStateMessage,
  VmProgressMessage,
  DiskProgressMessage,
  CommitProgressMessage,
  PointsDroppedMessage,
  ExtentMessage,
  ExtentAckMessage,
  DiskEndMessage,
  DiskEndedMessage,
  DiskMode,
  BlockMapRequestMessage,
  BlockMapMessage,
  CommitMessage,
  CommittedMessage,
  CommittedDisk,
  RetentionSpec,
  TrivialCheckMessage,
  TrivialResultMessage,
  CertifyMessage,
  CertifyResultMessage,
  BlockCheckMessage,
  BlockCheckResultMessage,
  RollbackMessage,
  RolledBackMessage,
  ErrorMessage,
  Limits,
  VmFile,
  CompatRecord,
  ChainLayer,
  SourceIdentity,
  DigestAlgorithm,
  CompressionAlgorithm,
} from './messages.ts'
export { ProtocolError, ProtocolErrorCodes } from './errors.ts'
export type { ProtocolErrorCode } from './errors.ts'
export { encodeMessage, encodeMessageParts, decodeMessage, kindName, DEFAULT_LIMITS } from './codec.ts'
export type { DecodeLimits } from './codec.ts'
export { HARD_LIMITS } from './schema.ts'
export { ddbProblem, DDB_KEY, DESCRIPTOR_UNSAFE, MAX_DDB_ENTRIES, MAX_DDB_VALUE_BYTES } from './ddb.ts'
export { SECTOR } from './checks.ts'
export { negotiate } from './negotiation.ts'
export type { LocalCapabilities, Negotiated } from './negotiation.ts'
export { initDigests, createDigest, digestOf, blockDigest, zeroDigest, isZeroBytes, isDigestAlgorithm, DigestLengths } from './digest.ts'
export type { StreamingDigest } from './digest.ts'
export { compress, decompress, isCompressionAlgorithm } from './compression.ts'
export { CycleDigest } from './cycle-digest.ts'
export type { CycleDigestExtent } from './cycle-digest.ts'
export { cycleIdentity, committedCycleIdentity } from './cycle-identity.ts'
export type { CycleIdentityFields, CommittedDiskIdentity } from './cycle-identity.ts'
export { validateName, isWellFormed, MAX_NAME_BYTES } from './names.ts'
export { ConversationState, SENDER } from './session-state.ts'
export type { Sender, Phase, DiskPhase } from './session-state.ts'
export { toErrorMessage, truncateUtf8, truncateUtf8Marked, refusalDetail, MAX_ERROR_TEXT_BYTES } from './error-message.ts'
export { blankUnprintable, escapeUnprintable, hasUnprintable } from './unprintable.ts'
export { shQuote, shJoin } from './shell-quote.ts'
export { MAX_MAP_BLOCKS, MAX_MAP_REQUESTS, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE, DEFAULT_BLOCK_SIZE, blockCount, mapBlocksPerMessage } from './block-map.ts'
export { MESSAGE_OVERHEAD_BYTES, DEFAULT_MAX_EXTENT_BYTES, ZERO_EXTENT_WINDOW_COST, maxMessageBytesFor, windowCost } from './limits.ts'
export { parseByteSize, parseRate, parseDuration, formatBytes, formatDuration, UnitError } from './units.ts'
