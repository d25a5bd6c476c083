import { ProtocolError } from './errors.ts'
import type { CompressionAlgorithm, DigestAlgorithm, HelloMessage, Limits, WelcomeMessage } from './messages.ts'

/** What one side (normally the receiver) supports, each list most preferred first. */
export interface LocalCapabilities {
  /** protocol versions supported */
  readonly versions: readonly number[]
  /** digest algorithms accepted */
  readonly digests: readonly DigestAlgorithm[]
  /** compression algorithms accepted; include "none" */
  readonly compressions: readonly CompressionAlgorithm[]
  /** this side's limits */
  readonly limits: Limits
}

/** The negotiated parameters of a connection (a Welcome without kind, software, session). */
export type Negotiated = Omit<WelcomeMessage, 'kind' | 'software' | 'session'>

/**
 * Choose the connection parameters from the agent's Hello and the receiver's
 * capabilities (SPEC §3). Pure; the rule is:
 *
 * - version: the highest version both lists contain;
 * - digest: the first entry of the AGENT's list (`hello.digests`, its order of
 *   preference) that the receiver supports — the agent pays for hashing every
 *   byte, so its preference wins; the same rule picks `compression`;
 * - limits: the minimum of both sides, field by field.
 *
 * Names the receiver does not know are skipped, never an error. No overlap
 * throws `ProtocolError` `E_VERSION`, `E_NO_COMMON_DIGEST` or
 * `E_NO_COMMON_COMPRESSION` (checked in that order).
 */
export function negotiate(hello: Pick<HelloMessage, 'versions' | 'digests' | 'compressions' | 'limits'>, local: LocalCapabilities): Negotiated {
  let version = -1
  for (const v of hello.versions) {
    if (local.versions.includes(v) && v > version) version = v
  }
  if (version < 0) {
    throw new ProtocolError('E_VERSION', `no common protocol version: agent offers [${hello.versions.join(', ')}], receiver supports [${local.versions.join(', ')}]`)
  }
  const digest = hello.digests.find((d) => local.digests.includes(d))
  if (digest === undefined) {
    throw new ProtocolError('E_NO_COMMON_DIGEST', `no common digest algorithm: agent offers [${hello.digests.join(', ')}], receiver supports [${local.digests.join(', ')}]`)
  }
  const compression = hello.compressions.find((c) => local.compressions.includes(c))
  if (compression === undefined) {
    throw new ProtocolError('E_NO_COMMON_COMPRESSION', `no common compression: agent offers [${hello.compressions.join(', ')}], receiver supports [${local.compressions.join(', ')}]`)
  }
  const limits: Limits = {
    maxMessageBytes: Math.min(hello.limits.maxMessageBytes, local.limits.maxMessageBytes),
    maxExtentBytes: Math.min(hello.limits.maxExtentBytes, local.limits.maxExtentBytes),
    windowBytes: Math.min(hello.limits.windowBytes, local.limits.windowBytes),
  }
  return { version, digest, compression, limits }
}
