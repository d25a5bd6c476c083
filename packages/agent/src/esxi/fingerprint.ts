/**
 * SSH host key fingerprints as OpenSSH prints them (`SHA256:<base64>`): kept
 * apart from the SSH layer so that validating a job's esxi settings does not
 * load ssh2 (a local-driver `replicate` never needs it).
 */
import { createHash } from 'node:crypto'
import { EsxiError } from './errors.ts'

const FINGERPRINT = /^SHA256:([A-Za-z0-9+/]{43})=?$/

/** The OpenSSH-style fingerprint (`SHA256:...`) of a raw public key blob. */
export function sshFingerprint(keyBlob: Uint8Array): string {
  return 'SHA256:' + createHash('sha256').update(keyBlob).digest('base64').replace(/=+$/, '')
}

/**
 * Validate and normalise a configured fingerprint (trailing `=` dropped).
 * @throws EsxiError E_CONFIG when it is not `SHA256:` + 43 base64 characters
 */
export function normalizeFingerprint(fp: string): string {
  const m = FINGERPRINT.exec(fp.trim())
  if (m === null) throw new EsxiError('E_CONFIG', `host key fingerprint must look like "SHA256:<43 base64 chars>" (as ssh-keygen -l prints it), got ${JSON.stringify(fp)}`)
  return `SHA256:${m[1] as string}`
}
