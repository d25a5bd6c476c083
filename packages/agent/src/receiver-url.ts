/**
 * The receiver URL rule of SPEC §1.2: TLS (`wss://`) is required on anything
 * but loopback — the bearer token travels in the upgrade request, so a plain
 * `ws://` URL to another host would send it in clear. Checked before any
 * connection (from options, the command line and job files alike) and again
 * when a connection opens.
 */
import { isIP } from 'node:net'
import { AgentError } from './errors.ts'

/** True for `localhost`, `127.0.0.0/8`, `::1` and IPv4-mapped loopback (`::ffff:127.x.y.z`). */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.replace(/^\[(.*)\]$/, '$1').toLowerCase()
  if (h === 'localhost' || h.endsWith('.localhost')) return true
  if (isIP(h) === 4) return h.startsWith('127.')
  if (isIP(h) === 6) return h === '::1' || /^::ffff:127\.\d+\.\d+\.\d+$/.test(h) || /^::ffff:7f[0-9a-f]{2}:[0-9a-f]{1,4}$/.test(h)
  return false
}

/**
 * Parse and check a receiver URL: `wss://` anywhere, `ws://` only to a
 * loopback host unless `insecurePlaintext` is set; the port written out
 * (`wss://dr.example` would try 443 while a receiver listens where its
 * `listen` says, and the operator would wait out `giveUp` on a port that
 * never answers; an explicit `:443` is taken as meant).
 * @throws AgentError `E_CONFIG` (not a ws:// or wss:// URL) or `E_INSECURE` (plain text to a non-loopback host)
 */
export function checkReceiverUrl(url: string, opts: { insecurePlaintext?: boolean } = {}): URL {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    throw new AgentError('E_CONFIG', `receiver URL ${JSON.stringify(url)} is not a URL (expected wss://HOST:PORT)`)
  }
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new AgentError('E_CONFIG', `receiver URL must be ws:// or wss://, got ${u.protocol}`)
  if (u.username !== '' || u.password !== '') throw new AgentError('E_CONFIG', 'receiver URL must not carry credentials (the token comes from the token file)')
  // the URL parser drops a default port (wss://h:443 → port ''): ask the text whether one was written
  if (!/^[a-z]+:\/\/[^/?#]*:\d+(?:[/?#]|$)/i.test(url.trim()))
    throw new AgentError(
      'E_CONFIG',
      `receiver URL ${JSON.stringify(url)} names no port: ${u.protocol}// would use ${u.protocol === 'wss:' ? 443 : 80}, and a receiver listens on the port of its "listen" (7443 in the docs) — give it, e.g. ${u.protocol}//${u.host}:7443 (or :${u.protocol === 'wss:' ? 443 : 80} if the receiver really is there)`,
    )
  if (u.protocol === 'ws:' && !isLoopbackHost(u.hostname) && opts.insecurePlaintext !== true) {
    throw new AgentError(
      'E_INSECURE',
      `refusing to send the token in clear text to ${u.host} over ws:// (SPEC §1.2): use wss:// (with --ca for a private certificate), or --insecure-plaintext / job "insecurePlaintext": true on a network you trust`,
    )
  }
  return u
}

/**
 * One spelling of a receiver URL, so that two spellings of one receiver are
 * one (`wss://H:7443` and `wss://h:7443/`): scheme and host in lower case
 * (IPv4 as dotted decimal), the port always written (443/80 when the URL was
 * given `:443`), no lone `/` path. What the agent records and compares (the
 * receiver a Commit went to, two VMs of one mirror name). A string that is
 * not a URL is returned as it is (checkReceiverUrl refuses it).
 */
export function canonicalReceiverUrl(url: string): string {
  if (!URL.canParse(url)) return url
  const u = new URL(url)
  const port = u.port !== '' ? u.port : u.protocol === 'wss:' ? '443' : u.protocol === 'ws:' ? '80' : ''
  return `${u.protocol}//${u.hostname}${port === '' ? '' : `:${port}`}${u.pathname === '/' ? '' : u.pathname}${u.search}`
}
