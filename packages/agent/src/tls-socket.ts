/**
 * The TLS socket of a wss:// connection (issue #17).
 *
 * Node's TLS socket joins the chunks of a `writev` into one freshly allocated
 * buffer before encrypting them (TLSWrap::DoWrite copies every chunk when more
 * than one is non-empty). ws writes each frame as its header and its payload,
 * corked, and everything queued behind a busy write is flushed as one writev:
 * so every extent payload was copied into new memory, whose pages are faulted
 * in one by one — costly on a virtual machine, and up to the whole queue at a
 * time. Without `_writev` the socket's Writable hands TLS one chunk at a time,
 * each encrypted straight from the caller's buffer; a frame's header becomes a
 * small TLS record of its own.
 */
import { isIP } from 'node:net'
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls'

/**
 * `tls.connect` for ws's `createConnection`: the options ws passes are an HTTP
 * request's (their `path` is the URL's, not an IPC path), handled as ws's own
 * tlsConnect does; the socket writes its queued chunks one by one.
 */
export function connectTlsUnjoined(options: ConnectionOptions & { path?: string; host?: string }): TLSSocket {
  const opts: ConnectionOptions = { ...options, path: undefined } as ConnectionOptions
  if (!opts.servername && opts.servername !== '') opts.servername = isIP(opts.host ?? '') ? '' : opts.host
  const socket = connect(opts)
  writeChunksSeparately(socket)
  return socket
}

/** Make a socket's Writable write queued chunks one by one (no `_writev`, so Node does not join them). */
export function writeChunksSeparately(socket: TLSSocket): void {
  ;(socket as unknown as { _writev: unknown })._writev = null
}
