import { timingSafeEqual } from 'node:crypto'
import { createDigest, decompress, type DigestAlgorithm, type ExtentMessage } from '@grainline/protocol'
import { ReceiverError } from './errors.ts'

/**
 * The raw bytes of a decoded Extent (undefined for a zero extent):
 * decompressed into exactly `length` bytes and checked against the extent's
 * digest with the negotiated algorithm — before any byte reaches the store.
 * @throws ProtocolError E_DECOMPRESS, ReceiverError E_BAD_DIGEST
 */
export function extentPayload(msg: ExtentMessage, algorithm: DigestAlgorithm): Uint8Array | undefined {
  if (msg.zero) return undefined
  const data = decompress(msg.compression, msg.data, msg.length)
  const got = createDigest(algorithm).update(data).digest()
  if (got.length !== msg.digest.length || !timingSafeEqual(got, msg.digest)) throw new ReceiverError('E_BAD_DIGEST', `digest mismatch on extent seq ${msg.seq}`)
  return data
}
