/**
 * Why a connection to the receiver failed, and whether trying again can help.
 *
 * Permanent failures end the cycle at once with what to do: a `ws://` URL to a
 * receiver that speaks TLS (`use wss://`), a certificate the agent does not
 * trust (`pass --ca FILE`), a name the certificate does not carry, a `wss://`
 * URL to a receiver without TLS, a refused token (`check --token-file`), an
 * HTTP answer that is not a WebSocket upgrade. Transient ones — refused or
 * reset connections, a receiver answering 503/429, a link cut during the TLS
 * handshake — are a {@link ConnectionLost} and keep the back-off.
 */
import { createHash } from 'node:crypto'
import { connect as tlsConnect } from 'node:tls'
import { ConnectionLost } from './connection-lost.ts'
import { AgentError } from './errors.ts'

/** Where the token and the CA came from, so that a message can name the setting to fix. */
export interface ConnectSources {
  /** e.g. `--token-file /etc/grainline/proxy-a.token` or `job.tokenFile /etc/grainline/proxy-a.token` */
  readonly tokenSource?: string
  /** e.g. `--ca /etc/grainline/receiver.crt` */
  readonly caSource?: string
}

/** What {@link classifyConnectFailure} needs to know about the attempt. */
export interface FailedConnect extends ConnectSources {
  readonly url: URL
  readonly token: string
  /** the HTTP status when the receiver answered the upgrade with something else; 0 otherwise */
  readonly status: number
  /** the first words of the refusal (the body of the answer: `Forbidden: a viewer token`); matched, never shown (the peer chose them) */
  readonly reason?: string
  /** the agent was told to trust any certificate */
  readonly insecure: boolean
  readonly signal?: AbortSignal
  /** how long the TLS probe of a `ws://` URL may take, ms. @default 3000 */
  readonly probeTimeoutMs?: number
}

type ErrLike = { code?: unknown; message?: unknown; cause?: unknown }

/** The error and its causes, outermost first (bounded). */
function causes(err: unknown): ErrLike[] {
  const out: ErrLike[] = []
  for (let e = err as ErrLike | undefined, n = 0; e !== undefined && e !== null && n < 5; e = e.cause as ErrLike | undefined, n++) out.push(e)
  return out
}

const codeOf = (e: ErrLike): string => (typeof e.code === 'string' ? e.code : '')
const messageOf = (e: ErrLike): string => (typeof e.message === 'string' ? e.message : '')

/** A short, non-reversible name of a token for messages (never the token). */
export function tokenFingerprint(token: string): string {
  return 'sha256:' + createHash('sha256').update(token).digest('hex').slice(0, 12)
}

const UNTRUSTED = /^(DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT(_LOCALLY)?|CERT_UNTRUSTED|CERT_SIGNATURE_FAILURE)$/
const TRANSIENT = /^(ECONNRESET|EPIPE|ECONNREFUSED|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|ECONNABORTED)$/

/**
 * The TLS verification problem of a failed `wss://` connect, with advice; undefined when it is not one.
 */
export function tlsProblem(err: unknown, ctx: { url: URL } & ConnectSources): AgentError | undefined {
  const chain = causes(err)
  const host = ctx.url.host
  if (chain.some((e) => TRANSIENT.test(codeOf(e)))) return undefined
  // the innermost error carries the precise code and words
  for (const e of chain.reverse()) {
    const code = codeOf(e)
    const msg = messageOf(e)
    if (UNTRUSTED.test(code) || /self.signed|unable to (get|verify)/i.test(msg)) {
      // Node 24 appends advice for its own command line ("…; if the root CA is installed locally, try running Node.js with --use-system-ca"): ours replaces it
      const why = (msg || code).split(';')[0]?.trim() || code
      return new AgentError(
        'E_CONNECT',
        ctx.caSource !== undefined
          ? `the receiver's certificate at ${host} is not trusted (${why}) by ${ctx.caSource}: give the receiver's certificate or the CA that signed it`
          : `the receiver's certificate at ${host} is not trusted (${why}): pass --ca FILE (the receiver's certificate or its CA; "caFile" in a job file)`,
        { cause: err },
      )
    }
    if (code === 'ERR_TLS_CERT_ALTNAME_INVALID' || /altnames|does not match certificate/i.test(msg)) {
      return new AgentError(
        'E_CONNECT',
        `the receiver's certificate does not name ${ctx.url.hostname} (${msg}): connect by a name the certificate carries, or reissue it with subjectAltName=${ctx.url.hostname}`,
        { cause: err },
      )
    }
    if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') {
      return new AgentError('E_CONNECT', `the receiver's certificate at ${host} is ${code === 'CERT_HAS_EXPIRED' ? 'expired' : 'not valid yet'}: renew it on the receiver (or check the clocks)`, {
        cause: err,
      })
    }
    if (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || /wrong version number|packet length too long|unknown protocol/i.test(msg)) {
      return new AgentError('E_CONNECT', `${host} does not speak TLS: start the receiver with --tls-cert and --tls-key (plain ws:// is for loopback only)`, { cause: err })
    }
    if (/^ERR_SSL_|^ERR_TLS_|CERT/.test(code) || /certificate/i.test(msg)) {
      return new AgentError('E_CONNECT', `TLS with the receiver at ${host} failed: ${msg || code}`, { cause: err })
    }
  }
  return undefined
}

/** Does something on host:port complete a TLS handshake? (Any certificate: we only ask whether it speaks TLS.) */
export async function speaksTls(host: string, port: number, timeoutMs = 3000, signal?: AbortSignal): Promise<boolean> {
  return await new Promise<boolean>((resolve) => {
    const s = tlsConnect({ host, port, rejectUnauthorized: false, ...(/^[\d.:[\]]+$/.test(host) ? {} : { servername: host }) })
    const done = (v: boolean): void => {
      clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
      s.destroy()
      resolve(v)
    }
    const onAbort = (): void => {
      done(false)
    }
    const timer = setTimeout(() => {
      done(false)
    }, timeoutMs)
    signal?.addEventListener('abort', onAbort, { once: true })
    s.once('secureConnect', () => {
      done(true)
    })
    s.once('error', () => {
      done(false)
    })
  })
}

/**
 * Turn a failed connect into the error the cycle acts on: an `AgentError`
 * (permanent: not retried) or a `ConnectionLost` (retried with back-off).
 */
export async function classifyConnectFailure(err: unknown, ctx: FailedConnect): Promise<Error> {
  if (ctx.signal?.aborted === true) return new AgentError('E_ABORTED', 'aborted', { cause: err })
  const host = ctx.url.host
  const status = ctx.status
  const where = ctx.tokenSource ?? '--token-file'
  if (status === 403) {
    // the receiver answers 403 only to a token it knows: one of its tokens file whose role does not replicate
    // (server.ts verifyClient). A wrong token gets 401 and the words below, so this tells a wrong-token peer nothing.
    const viewer = /viewer/i.test(ctx.reason ?? '')
    return new AgentError(
      'E_REFUSED',
      viewer
        ? `the receiver at ${host} refused the token of ${where} (HTTP 403): it is a viewer token (token ${tokenFingerprint(ctx.token)}, "role": "viewer" in the receiver's tokens file), which opens the read-only dashboard and never replicates: give the agent an agent token (an entry of the receiver's tokens file without "role": "viewer")`
        : `the receiver at ${host} refused the token of ${where} (HTTP 403; token ${tokenFingerprint(ctx.token)}): a grainline receiver answers so to a token of its tokens file that may not replicate (a viewer's): give the agent an agent token of the receiver's tokens file`,
      { remoteCode: 'E_AUTH', cause: err },
    )
  }
  if (status === 401) {
    return new AgentError(
      'E_REFUSED',
      `the receiver at ${host} refused the token (HTTP ${status}): check ${where} (token ${tokenFingerprint(ctx.token)} refused; it must be one of the receiver's tokens file)`,
      { remoteCode: 'E_AUTH', cause: err },
    )
  }
  if (status === 429 || status >= 500) return new ConnectionLost(`the receiver at ${host} answered HTTP ${status}`, status === 429 ? 4429 : 1011, { cause: err })
  if (status !== 0) {
    return new AgentError('E_CONNECT', `${ctx.url.origin} answered HTTP ${status} instead of a WebSocket upgrade: is it a grainline receiver (same major version)?`, { cause: err })
  }
  if (ctx.url.protocol === 'wss:' && !ctx.insecure) {
    const tls = tlsProblem(err, ctx)
    if (tls !== undefined) return tls
  } else if (ctx.url.protocol === 'wss:') {
    const tls = tlsProblem(err, ctx)
    if (tls !== undefined && /TLS:/.test(tls.message)) return tls
  }
  if (ctx.url.protocol === 'ws:') {
    // a TLS server closes a plain HTTP upgrade without a word ("socket hang up", ECONNRESET):
    // retrying would say the same for giveUp seconds; ask the port whether it speaks TLS
    const reset = causes(err).some((e) => /^(ECONNRESET|EPIPE)$/.test(codeOf(e)) || /socket hang up|Parse Error/i.test(messageOf(e)))
    if (reset && (await speaksTls(ctx.url.hostname.replace(/^\[(.*)\]$/, '$1'), Number(ctx.url.port === '' ? 80 : ctx.url.port), ctx.probeTimeoutMs ?? 3000, ctx.signal))) {
      return new AgentError('E_CONNECT', `the receiver at ${host} speaks TLS: use wss://${host} (with --ca FILE for a private certificate)`, { cause: err })
    }
  }
  if (err instanceof ConnectionLost || err instanceof AgentError) return err
  return new ConnectionLost(`cannot reach the receiver at ${host}: ${messageOf(err as ErrLike) || String(err)}`, 1006, { cause: err })
}
