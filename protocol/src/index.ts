export { PROTOCOL_VERSION, SUBPROTOCOL, MessageKind, DigestAlgorithms, CompressionAlgorithms } from './messages.ts'
export type {
  Message, HelloMessage, WelcomeMessage, VmOpenMessage, VmStateMessage, DiskOpenMessage, DiskStateMessage,
  ExtentMessage, ExtentAckMessage, DiskEndMessage, DiskEndedMessage, CommitMessage, CommittedMessage, CommittedDisk,
  TrivialCheckMessage, TrivialResultMessage, CertifyMessage, CertifyResultMessage, RollbackMessage, RolledBackMessage,
  ErrorMessage, Limits, VmFile, CompatRecord, ChainLayer, SourceIdentity, DigestAlgorithm, CompressionAlgorithm
} from './messages.ts'
export { ProtocolError, ProtocolErrorCodes } from './errors.ts'
export type { ProtocolErrorCode } from './errors.ts'
export { encodeMessage, decodeMessage } from './codec.ts'
export type { DecodeLimits } from './codec.ts'
