/**
 * A self-signed P-256 certificate for 127.0.0.1, ::1 and localhost, made once
 * per test process with `openssl` and shared by every test of the process.
 */
import { execFileSync } from 'node:child_process'
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** Paths and bytes of the test certificate. */
export interface TlsFixture {
  /** PEM certificate (`--tls-cert`); it is its own CA */
  readonly cert: string
  /** PEM private key (`--tls-key`, mode 0600) */
  readonly key: string
  /** the certificate's bytes, for a client's `ca` option */
  readonly ca: Buffer
}

let cached: TlsFixture | undefined

/**
 * The process's test certificate: generated on first use into a temp folder
 * removed when the process exits. Valid 2 days; subject `CN=localhost`.
 */
export function tlsFixture(): TlsFixture {
  if (cached !== undefined) return cached
  const dir = mkdtempSync(join(tmpdir(), 'grainline-tls-'))
  process.once('exit', () => {
    rmSync(dir, { recursive: true, force: true })
  })
  const cert = join(dir, 'cert.pem')
  const key = join(dir, 'key.pem')
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-subj',
      '/CN=localhost',
      '-addext',
      'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost',
      '-days',
      '2',
      '-keyout',
      key,
      '-out',
      cert,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  )
  chmodSync(key, 0o600)
  cached = { cert, key, ca: readFileSync(cert) }
  return cached
}
