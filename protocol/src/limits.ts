/**
 * Numbers of SPEC §1.3 and §5.3 that both sides need: one definition each.
 */

/** Bytes a frame may take beyond its largest extent payload (headers, digest, names): SPEC §1.3. */
export const MESSAGE_OVERHEAD_BYTES = 64 * 1024

/** Default largest extent payload (uncompressed), bytes: SPEC §1.3. */
export const DEFAULT_MAX_EXTENT_BYTES = 16 * 1024 * 1024

/**
 * The `maxMessageBytes` a side announces so that a full extent of
 * `maxExtentBytes` fits in one frame (SPEC §1.3: "Senders SHOULD announce
 * maxMessageBytes ≥ maxExtentBytes + 64 KiB").
 */
export function maxMessageBytesFor(maxExtentBytes: number): number {
  return maxExtentBytes + MESSAGE_OVERHEAD_BYTES
}

/**
 * What a zero extent costs in the send window (SPEC §5.3 "Window": data-extent
 * `length`, plus 512 per zero extent).
 */
export const ZERO_EXTENT_WINDOW_COST = 512

/** Window cost of one extent (SPEC §5.3). */
export function windowCost(extent: { readonly zero: boolean; readonly length: number }): number {
  return extent.zero ? ZERO_EXTENT_WINDOW_COST : extent.length
}
