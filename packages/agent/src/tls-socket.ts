/**
 * The TLS socket of a wss:// connection (issue #17).
 *
 * Node's TLS socket joins the chunks of a `writev` into one freshly allocated
 * buffer before encrypting them (TLSWrap::DoWrite copies every chunk when more
 * than one is non-empty). ws writes each frame as its header and its payload,
 * corked, and everything queued behind a busy write is flushed as one writev:
 * so every extent payload was copied into new memory, whose pages are faulted
 * in one by one — costly on a virtual machine, and up to the whole queue at a
 * time. Here the socket's Writable hands TLS one write at a time, each at
 * most {@link JOINED_WRITE_BYTES}: the queued chunks copied back to back into
 * one buffer the socket keeps (no fresh memory), a chunk at least that long
 * encrypted straight from the caller's buffer. An incremental's Extent (three
 * WebSocket frames: head, a 64 KiB payload, digest; six chunks) went out as
 * two or three writes of its own — a system call each, and on loopback the
 * receiving side's TCP work and wake-up with it; now several Extents go in
 * one write.
 */
import { isIP } from 'node:net'
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls'

/**
 * `tls.connect` for ws's `createConnection`: the options ws passes are an HTTP
 * request's (their `path` is the URL's, not an IPC path), handled as ws's own
 * tlsConnect does; the socket writes its queued chunks as {@link writeChunksJoined} says.
 */
export function connectTlsJoined(options: ConnectionOptions & { path?: string; host?: string }): TLSSocket {
  const opts: ConnectionOptions = { ...options, path: undefined } as ConnectionOptions
  if (!opts.servername && opts.servername !== '') opts.servername = isIP(opts.host ?? '') ? '' : opts.host
  const socket = connect(opts)
  writeChunksJoined(socket)
  return socket
}

/**
 * Queued chunks are copied into one kept buffer of this size per socket and
 * written together; a chunk at least this long is written from its own
 * buffer (a seed's 1 MiB payloads). The buffer is filled again only once TLS
 * is done with its previous write (that write's callback).
 * @default 256 KiB
 */
export const JOINED_WRITE_BYTES = 256 * 1024

/** The part of a socket's Writable this file replaces (Node's `_writev` joins every chunk into one new buffer). */
interface WritableInternals {
  _write(chunk: Buffer, encoding: string, cb: (err?: Error | null) => void): void
  _writev: ((chunks: ReadonlyArray<{ chunk: Buffer | string; encoding: BufferEncoding | 'buffer' }>, cb: (err?: Error | null) => void) => void) | null
}

/**
 * The writes a queue of chunks becomes, as [first, end) index ranges: runs
 * of chunks shorter than {@link JOINED_WRITE_BYTES} joined up to that many
 * bytes, every longer chunk on its own; empty chunks dropped. Pure.
 */
export function groupChunks(lengths: readonly number[], limit = JOINED_WRITE_BYTES): Array<[number, number]> {
  const out: Array<[number, number]> = []
  let first = -1
  let bytes = 0
  for (let i = 0; i < lengths.length; i++) {
    const n = lengths[i] as number
    // an empty chunk writes nothing: dropped (or copied as nothing inside a run)
    if (n === 0) continue
    if (n >= limit) {
      if (first >= 0) out.push([first, i])
      out.push([i, i + 1])
      first = -1
      bytes = 0
    } else if (first >= 0 && bytes + n <= limit) {
      bytes += n
    } else {
      if (first >= 0) out.push([first, i])
      first = i
      bytes = n
    }
  }
  if (first >= 0) out.push([first, lengths.length])
  return out
}

/**
 * Make a socket's Writable write its queued chunks joined into one kept
 * buffer ({@link groupChunks}), one write after the other: Node's TLS socket
 * would copy every chunk of a `writev` into one new buffer, and writing each
 * chunk on its own costs a system call per chunk.
 */
export function writeChunksJoined(socket: TLSSocket): void {
  const w = socket as unknown as WritableInternals
  let kept: Buffer | undefined
  w._writev = function (this: WritableInternals, chunks, cb) {
    // the HTTP upgrade request may be queued as a string
    const bufs = chunks.map((c) => (typeof c.chunk === 'string' ? Buffer.from(c.chunk, c.encoding === 'buffer' ? 'utf8' : c.encoding) : c.chunk))
    const groups = groupChunks(bufs.map((b) => b.length))
    let g = 0
    const next = (err?: Error | null): void => {
      if (err != null) {
        cb(err)
        return
      }
      const range = groups[g++]
      if (range === undefined) {
        cb()
        return
      }
      const [first, end] = range
      if (end - first === 1) {
        // one chunk: from its own buffer
        this._write(bufs[first] as Buffer, 'buffer', next)
        return
      }
      // the previous write's callback has run: TLS is done with the kept buffer
      kept ??= Buffer.allocUnsafeSlow(JOINED_WRITE_BYTES)
      let n = 0
      for (let i = first; i < end; i++) n += (bufs[i] as Buffer).copy(kept, n)
      this._write(kept.subarray(0, n), 'buffer', next)
    }
    next()
  }
}
