/** Permanent connection failures end the cycle at once with what to do; transient ones keep the back-off. */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { createServer as createHttpServer } from 'node:http'
import { createServer as createTcpServer } from 'node:net'
import { createServer as createTlsServer } from 'node:tls'
import { join } from 'node:path'
import { memoryLogger } from '@grainline/test-utils'
import { classifyConnectFailure, speaksTls, tlsProblem, tokenFingerprint } from '../src/connect-errors.ts'
import { Connection, isRetryable } from '../src/connection.ts'
import { replicate } from '../src/replicate.ts'
import { createSampleVm } from '../src/sample-vm.ts'
import { haveReceiver, MiB, scratch, startReceiver, TOKEN, VIEWER_TOKEN } from './helpers.ts'

if (!haveReceiver) throw new Error('packages/receiver/dist/src/main.js is missing: build the receiver first (npx tsc -b)')

async function listening(server: { listen: (port: number, host: string) => unknown; address: () => unknown; close: () => unknown } & NodeJS.EventEmitter): Promise<number> {
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return (server.address() as { port: number }).port
}

/** A new self-signed certificate (not the receiver's: the receiver uses test-utils' tlsFixture) for `subject`, `san`. */
function selfSigned(dir: string, subject: string, san: string): { key: string; cert: string } {
  const key = join(dir, `${subject.replace(/\W/g, '_')}.key.pem`)
  const cert = join(dir, `${subject.replace(/\W/g, '_')}.cert.pem`)
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${subject}`, '-addext', `subjectAltName=${san}`, '-days', '2', '-keyout', key, '-out', cert],
    { stdio: 'ignore' },
  )
  return { key, cert }
}

t.test('against a real TLS receiver: each permanent failure fails the VM at once, saying what to do', async (t) => {
  const dir = scratch(t)
  const otherCa = readFileSync(selfSigned(dir, 'other-ca', 'IP:127.0.0.1').cert)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'conn', disks: [{ sizeBytes: 1 * MiB }] })
  const log = memoryLogger({ level: 'info' })
  // a long give-up: were any of these retried, the run would take minutes and log reconnects
  const base = { vm: vm.vmxPath, token: TOKEN, stateDir: join(dir, 'state'), giveUpMs: 600_000, progress: 'none' as const }
  const cases = [
    { what: 'ws:// to a TLS receiver', init: { to: `ws://127.0.0.1:${rx.port}` }, code: 'E_CONNECT', message: `the receiver at 127.0.0.1:${rx.port} speaks TLS: use wss://127.0.0.1:${rx.port}` },
    { what: 'an untrusted certificate', init: { to: rx.url }, code: 'E_CONNECT', message: /certificate at 127\.0\.0\.1:\d+ is not trusted \(self-signed certificate\): pass --ca FILE/ },
    {
      what: "a CA that is not the receiver's",
      init: { to: rx.url, ca: otherCa, caSource: '--ca /etc/other.crt' },
      code: 'E_CONNECT',
      message: /not trusted \(.*\) by --ca \/etc\/other\.crt: give the receiver's certificate or the CA that signed it/,
    },
    {
      what: 'a refused token',
      init: { to: rx.url, ca: rx.ca, token: 'not-the-token-0123456789', tokenSource: '--token-file /etc/grainline/proxy-a.token' },
      code: 'E_REFUSED',
      message: `the receiver at 127.0.0.1:${rx.port} refused the token (HTTP 401): check --token-file /etc/grainline/proxy-a.token (token ${tokenFingerprint('not-the-token-0123456789')} refused`,
    },
    {
      what: "a viewer's token (one of the receiver's tokens file, read-only)",
      init: { to: rx.url, ca: rx.ca, token: VIEWER_TOKEN, tokenSource: '--token-file /etc/grainline/noc.token' },
      code: 'E_REFUSED',
      message: `the receiver at 127.0.0.1:${rx.port} refused the token of --token-file /etc/grainline/noc.token (HTTP 403): it is a viewer token (token ${tokenFingerprint(VIEWER_TOKEN)}, "role": "viewer" in the receiver's tokens file), which opens the read-only dashboard and never replicates: give the agent an agent token`,
    },
  ]
  for (const c of cases) {
    const r = await replicate({ logger: log.logger }, { ...base, ...c.init })
    const vmr = r.vms[0]
    t.equal(vmr?.error?.code, c.code, `${c.what}: ${vmr?.error?.message}`)
    t.match(vmr?.error?.message, c.message, c.what)
    t.equal(vmr?.reconnects, 0, `${c.what}: not retried`)
    // a wrong token learns nothing of the receiver's roles
    if (c.what === 'a refused token') t.notMatch(vmr?.error?.message, /viewer|403/, 'a wrong token gets the generic answer')
  }
  t.equal(log.filter('connection lost, reconnecting').length, 0)
})

t.test('a certificate for another name: "does not name"', async (t) => {
  const dir = scratch(t)
  const { key, cert } = selfSigned(dir, 'other.example', 'DNS:other.example')
  const srv = createTlsServer({ key: readFileSync(key), cert: readFileSync(cert) }, (s) => s.end())
  const port = await listening(srv)
  t.teardown(() => srv.close())
  const err = await Connection.open({ url: `wss://127.0.0.1:${port}`, token: 'x', ca: readFileSync(cert) }).then(
    () => undefined,
    (e: unknown) => e,
  )
  t.match(err, { code: 'E_CONNECT', message: /the receiver's certificate does not name 127\.0\.0\.1 .*: connect by a name the certificate carries, or reissue it with subjectAltName=127\.0\.0\.1/ })
})

t.test('wss:// to a receiver without TLS: "does not speak TLS"', async (t) => {
  const plain = createHttpServer((_req, res) => res.end('hello'))
  const port = await listening(plain)
  t.teardown(() => plain.close())
  const err = await Connection.open({ url: `wss://127.0.0.1:${port}`, token: 'x' }).then(
    () => undefined,
    (e: unknown) => e,
  )
  t.match(err, { code: 'E_CONNECT', message: `127.0.0.1:${port} does not speak TLS: start the receiver with --tls-cert and --tls-key` })
})

t.test('HTTP answers to the upgrade: 503 and 429 are retried, 404 is not, 401/403 name the token', async (t) => {
  let status = 503
  const srv = createHttpServer((_req, res) => {
    res.statusCode = status
    res.end()
  })
  const port = await listening(srv)
  t.teardown(() => srv.close())
  const open = (): Promise<unknown> =>
    Connection.open({ url: `ws://127.0.0.1:${port}`, token: 'x' }).then(
      () => undefined,
      (e: unknown) => e,
    )
  const busy = await open()
  t.match(busy, { name: 'ConnectionLost', message: /answered HTTP 503/ })
  t.ok(isRetryable(busy), '503: retried')
  status = 429
  t.ok(isRetryable(await open()), '429: retried')
  status = 404
  const nf = await open()
  t.match(nf, { code: 'E_CONNECT', message: /answered HTTP 404 instead of a WebSocket upgrade/ })
  t.notOk(isRetryable(nf))
  status = 401
  t.match(await open(), { code: 'E_REFUSED', remoteCode: 'E_AUTH', message: /HTTP 401\): check --token-file \(token sha256:[0-9a-f]{12} refused/ })
  // a 403 that does not say "viewer": the token is known but may not replicate
  status = 403
  t.match(await open(), { code: 'E_REFUSED', remoteCode: 'E_AUTH', message: /refused the token of --token-file \(HTTP 403; token sha256:[0-9a-f]{12}\): .*give the agent an agent token/ })
})

t.test('transient: a refused port, a reset without TLS behind it, a cut TLS handshake — all retried', async (t) => {
  // a port nobody listens on
  const tmp = createTcpServer()
  const free = await listening(tmp)
  await new Promise((r) => tmp.close(r))
  const refused = await Connection.open({ url: `ws://127.0.0.1:${free}`, token: 'x' }).then(
    () => undefined,
    (e: unknown) => e,
  )
  t.match(refused, { name: 'ConnectionLost' })
  t.ok(isRetryable(refused), `ECONNREFUSED is retried: ${(refused as Error).message}`)
  // a server that resets every connection and speaks no TLS: ws:// reset, not a TLS receiver
  const rst = createTcpServer((s) => s.resetAndDestroy())
  const rport = await listening(rst)
  t.teardown(() => rst.close())
  const reset = await Connection.open({ url: `ws://127.0.0.1:${rport}`, token: 'x' }).then(
    () => undefined,
    (e: unknown) => e,
  )
  t.ok(isRetryable(reset), `a reset is retried: ${(reset as Error).message}`)
  t.equal(await speaksTls('127.0.0.1', rport, 2000), false)
  t.equal(tlsProblem(Object.assign(new Error('x'), { code: 'ECONNRESET' }), { url: new URL('wss://h:1') }), undefined)
})

t.test('classifyConnectFailure: an abort is an abort; other TLS words and expired certificates', async (t) => {
  const ac = new AbortController()
  ac.abort()
  t.match(await classifyConnectFailure(new Error('x'), { url: new URL('wss://h:1'), token: 't', status: 0, insecure: false, signal: ac.signal }), { code: 'E_ABORTED' })
  t.match(tlsProblem({ code: 'CERT_HAS_EXPIRED', message: 'certificate has expired' }, { url: new URL('wss://dr:7443') }), { code: 'E_CONNECT', message: /dr:7443 is expired: renew it/ })
  t.match(tlsProblem({ code: 'ERR_SSL_SOMETHING', message: 'odd' }, { url: new URL('wss://dr:7443') }), { code: 'E_CONNECT', message: 'TLS with the receiver at dr:7443 failed: odd' })
  t.equal(tlsProblem(new Error('plain'), { url: new URL('wss://dr:7443') }), undefined)
  // Node 24's words carry advice for Node's own command line: the agent's advice replaces it
  const node24 = { code: 'DEPTH_ZERO_SELF_SIGNED_CERT', message: 'self-signed certificate; if the root CA is installed locally, try running Node.js with --use-system-ca' }
  t.match(tlsProblem(node24, { url: new URL('wss://dr:7443') }), { code: 'E_CONNECT', message: /^the receiver's certificate at dr:7443 is not trusted \(self-signed certificate\): pass --ca FILE/ })
  t.notMatch(tlsProblem(node24, { url: new URL('wss://dr:7443') })?.message, /use-system-ca|Node\.js/)
  t.match(tlsProblem({ code: 'SELF_SIGNED_CERT_IN_CHAIN', message: '' }, { url: new URL('wss://dr:7443') }), { message: /not trusted \(SELF_SIGNED_CERT_IN_CHAIN\)/ })
  const insecure = await classifyConnectFailure({ code: 'DEPTH_ZERO_SELF_SIGNED_CERT', message: 'self-signed certificate' }, { url: new URL('wss://h:1'), token: 't', status: 0, insecure: true })
  t.match(insecure, { name: 'ConnectionLost' }, 'with insecure TLS a certificate complaint cannot be the cause: treated as transient')
})
