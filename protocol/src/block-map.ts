/**
 * Numbers of the resync block maps (SPEC §5.9) that both sides need: block
 * sizes, the bounds of one map message and of the requests in flight.
 */

/** Smallest resync block, bytes (SPEC §5.9). */
export const MIN_BLOCK_SIZE = 4096
/** Largest resync block, bytes (SPEC §5.9; also ≤ the negotiated maxExtentBytes). */
export const MAX_BLOCK_SIZE = 64 * 1024 * 1024
/** The agent's default resync block: 1 MiB. */
export const DEFAULT_BLOCK_SIZE = 1024 * 1024
/** Most blocks one BlockMapRequest may ask for (SPEC §5.9). */
export const MAX_MAP_BLOCKS = 65536
/** Most BlockMapRequests of one disk handle unanswered at a time (SPEC §5.9). */
export const MAX_MAP_REQUESTS = 4

/** Blocks of a disk of `capacity` bytes in blocks of `blockSize` (the last one may be shorter). */
export function blockCount(capacity: number, blockSize: number): number {
  return Math.ceil(capacity / blockSize)
}

/**
 * Most blocks per BlockMap frame for digests of `digestBytes` bytes so that
 * the frame stays within `maxMessageBytes` (SPEC §5.9: `count × digest
 * length + 256 ≤ maxMessageBytes`), at most {@link MAX_MAP_BLOCKS}.
 */
export function mapBlocksPerMessage(maxMessageBytes: number, digestBytes: number): number {
  return Math.max(1, Math.min(MAX_MAP_BLOCKS, Math.floor((maxMessageBytes - 256) / digestBytes)))
}
