import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, writeFile, chmod } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

/** Paths of a generated self-signed certificate. */
export interface GeneratedTls {
  readonly cert: string
  readonly key: string
}

/**
 * Generate a self-signed P-256 certificate for 127.0.0.1/localhost with
 * `openssl` (the demo and the tests; a deployment brings its own).
 */
export async function generateSelfSignedTls(dir: string, names: { ips?: string[]; dns?: string[] } = {}): Promise<GeneratedTls> {
  await mkdir(dir, { recursive: true })
  const cert = join(dir, 'receiver.crt')
  const key = join(dir, 'receiver.key')
  const ips = names.ips ?? ['127.0.0.1', '::1']
  const dns = names.dns ?? ['localhost']
  const san = [...ips.map((ip) => `IP:${ip}`), ...dns.map((d) => `DNS:${d}`)].join(',')
  await run(
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
      '/CN=grainline-receiver',
      '-addext',
      `subjectAltName=${san}`,
      '-days',
      '30',
      '-keyout',
      key,
      '-out',
      cert,
    ],
    { timeout: 30_000 },
  )
  await chmod(key, 0o600)
  return { cert, key }
}

/** A token entry of the receiver's tokens file. */
export interface TokenEntry {
  readonly name: string
  readonly token: string
  readonly vms: readonly string[]
}

/** A random bearer token (256 bits, base64url). */
export function generateToken(): string {
  return randomBytes(32).toString('base64url')
}

/** Write a receiver tokens file (mode 0600) and return its path. */
export async function writeTokensFile(path: string, tokens: readonly TokenEntry[]): Promise<string> {
  await writeFile(path, JSON.stringify({ tokens }, null, 2) + '\n', { mode: 0o600 })
  return path
}

/** Write an agent token file (mode 0600) holding just the token. */
export async function writeTokenFile(path: string, token: string): Promise<string> {
  await writeFile(path, token + '\n', { mode: 0o600 })
  return path
}
