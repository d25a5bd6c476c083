import { once } from 'node:events'
import { connect } from 'node:tls'
import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { RECEIVER_TLS_OPTIONS } from '../src/tls-options.ts'
import { makeEnv, startReceiver } from './helpers.ts'

/** the TLS version and suite a client with `ciphers` (Node's default list when undefined) ends up with */
async function negotiated(url: string, ca: Buffer, ciphers?: string): Promise<string> {
  const { port } = new URL(url)
  const s = connect({ host: '127.0.0.1', port: Number(port), ca, servername: 'localhost', ...(ciphers === undefined ? {} : { ciphers }) })
  try {
    await once(s, 'secureConnect')
    return `${s.getProtocol()} ${s.getCipher().name}`
  } finally {
    s.destroy()
  }
}

t.test('the receiver prefers AES-128-GCM and still accepts the other TLS 1.3 suites', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(async () => {
    await receiver.close()
  })
  // Node's default client offers AES-256-GCM first: the server's order wins
  t.equal(await negotiated(url, env.tls.ca), 'TLSv1.3 TLS_AES_128_GCM_SHA256')
  t.equal(await negotiated(url, env.tls.ca, 'TLS_AES_256_GCM_SHA384'), 'TLSv1.3 TLS_AES_256_GCM_SHA384', 'a client offering only AES-256-GCM')
  t.equal(await negotiated(url, env.tls.ca, 'TLS_CHACHA20_POLY1305_SHA256'), 'TLSv1.3 TLS_CHACHA20_POLY1305_SHA256', 'a client offering only ChaCha20 (no AES-NI)')
  t.ok(RECEIVER_TLS_OPTIONS.honorCipherOrder)
  t.match(RECEIVER_TLS_OPTIONS.ciphers, /^TLS_AES_128_GCM_SHA256:/)
  t.match(RECEIVER_TLS_OPTIONS.ciphers, /ECDHE-/, 'TLS 1.2 suites stay in the list')
})
