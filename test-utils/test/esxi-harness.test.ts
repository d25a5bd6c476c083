// startEsxiHarness: the agent's fake ESXi host loaded from its built tests, reachable over SSH with the key it gives.
import t from 'tap'
import { createConnection } from 'node:net'
import { startEsxiHarness } from '../src/index.ts'

t.test('startEsxiHarness: an sshd on loopback with its datastore and VM inventory, stopped by stop()', async (t) => {
  const h = await startEsxiHarness()
  t.teardown(() => h.stop())
  t.ok(h.port > 0, `listening on port ${h.port}`)
  t.match(h.hostKeyFingerprint, /^SHA256:/, 'the host key fingerprint as OpenSSH prints it')
  t.match(h.userKey, /PRIVATE KEY/, 'the key that logs in')
  const banner = await new Promise<string>((resolve, reject) => {
    const s = createConnection({ host: '127.0.0.1', port: h.port })
    s.once('data', (d) => {
      s.destroy()
      resolve(d.toString('utf8'))
    })
    s.once('error', reject)
  })
  t.match(banner, /^SSH-2\.0-/, 'an SSH server answers')
  const st = await h.readState()
  t.ok(Array.isArray(st.vms), 'its VM inventory reads')
})
