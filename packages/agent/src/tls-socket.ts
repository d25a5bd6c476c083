/**
 * The TLS socket of a wss:// connection (issue #17).
 *
 * Node's TLS socket joins the chunks of a `writev` into one freshly allocated
 * buffer before encrypting them (TLSWrap::DoWrite copies every chunk when more
 * than one is non-empty). ws writes each frame as its header and its payload,
 * corked, and everything queued behind a busy write is flushed as one writev:
 * so every extent payload was copied into new memory, whose pages are faulted
 * in one by one — costly on a virtual machine, and up to the whole queue at a
 * time. Here the socket's Writable hands TLS one write at a time: a large
 * chunk encrypted straight from the caller's buffer, a run of short ones
 * (frame headers, message heads, digests) joined into one small write — one
 * TLS record and one system call instead of one each (issue #17: an Extent
 * went out as six writes, four of them a few bytes long).
 */
import { isIP } from 'node:net'
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls'

/**
 * `tls.connect` for ws's `createConnection`: the options ws passes are an HTTP
 * request's (their `path` is the URL's, not an IPC path), handled as ws's own
 * tlsConnect does; the socket writes its queued chunks as {@link writeChunksSeparately} says.
 */
export function connectTlsUnjoined(options: ConnectionOptions & { path?: string; host?: string }): TLSSocket {
  const opts: ConnectionOptions = { ...options, path: undefined } as ConnectionOptions
  if (!opts.servername && opts.servername !== '') opts.servername = isIP(opts.host ?? '') ? '' : opts.host
  const socket = connect(opts)
  writeChunksSeparately(socket)
  return socket
}

/**
 * Chunks shorter than this that follow each other in the socket's queue are
 * joined into one write (one TLS record, one system call); longer ones are
 * encrypted from their own buffers. An Extent's frame is head, payload,
 * digest: three WebSocket frames of two chunks each, all short but the
 * payload.
 * @default 4 KiB (encodeMessageParts copies binary fields shorter than that anyway)
 */
export const SMALL_CHUNK_BYTES = 4 * 1024

/** The part of a socket's Writable this file replaces (Node's `_writev` joins every chunk into one new buffer). */
interface WritableInternals {
  _write(chunk: Buffer, encoding: string, cb: (err?: Error | null) => void): void
  _writev: ((chunks: ReadonlyArray<{ chunk: Buffer | string; encoding: BufferEncoding | 'buffer' }>, cb: (err?: Error | null) => void) => void) | null
}

/**
 * The writes a queue of chunks becomes: runs of chunks shorter than
 * {@link SMALL_CHUNK_BYTES} joined, every longer chunk on its own (by
 * reference, never copied). Pure.
 */
export function groupChunks(chunks: readonly Buffer[]): Buffer[] {
  const out: Buffer[] = []
  let run: Buffer[] = []
  let runBytes = 0
  const end = (): void => {
    if (run.length === 1) out.push(run[0] as Buffer)
    else if (run.length > 1) out.push(Buffer.concat(run, runBytes))
    run = []
    runBytes = 0
  }
  for (const c of chunks) {
    if (c.length >= SMALL_CHUNK_BYTES) {
      end()
      out.push(c)
    } else if (c.length > 0) {
      run.push(c)
      runBytes += c.length
    }
  }
  end()
  return out
}

/**
 * Make a socket's Writable write its queued chunks without joining large ones
 * (Node's TLS socket copies every chunk of a `writev` into one new buffer):
 * runs of short chunks (WebSocket frame headers, message heads, digests) go
 * as one write each ({@link groupChunks}), every large chunk from its own
 * buffer, one write after the other.
 */
export function writeChunksSeparately(socket: TLSSocket): void {
  const w = socket as unknown as WritableInternals
  w._writev = function (this: WritableInternals, chunks, cb) {
    // the HTTP upgrade request may be queued as a string
    const writes = groupChunks(chunks.map((c) => (typeof c.chunk === 'string' ? Buffer.from(c.chunk, c.encoding === 'buffer' ? 'utf8' : c.encoding) : c.chunk)))
    let i = 0
    const next = (err?: Error | null): void => {
      if (err != null) {
        cb(err)
        return
      }
      const b = writes[i++]
      if (b === undefined) cb()
      else this._write(b, 'buffer', next)
    }
    next()
  }
}
