/** The receiver's side of SPEC §5.6: digest the mirror and compare with the agent's view of the frozen source. */
import { timingSafeEqual } from 'node:crypto'
import { createDigest, type DigestAlgorithm } from '@grainline/protocol'
import { ReceiverError } from './errors.ts'
import { checkTrivialPrefix } from './receiver-rules.ts'
import { digestFile } from './digest-file.ts'
import { regularFileSize } from './store-fs.ts'
import type { VmMirror } from './vm-mirror.ts'

/** Outcome of a trivial check or a certify of one mirror. */
export interface VerifyOutcome {
  readonly ok: boolean
  /** size of the mirror's flat file */
  readonly size: number
  /** the mirror's digest */
  readonly digest: Uint8Array
  /** bytes of the mirror digested */
  readonly bytes: number
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b)
}

async function sizeOf(path: string): Promise<number> {
  let size: number | undefined
  try {
    size = await regularFileSize(path)
  } catch (err) {
    throw new ReceiverError('E_IO', `cannot stat the mirror: ${(err as Error).message}`)
  }
  if (size === undefined) throw new ReceiverError('E_IO', `the mirror ${path} is missing`)
  return size
}

/**
 * TrivialCheck: digest the first `prefixBytes` of the mirror; ok when the
 * mirror's size is the source's and the digests are equal.
 */
export async function trivialCheck(
  path: string,
  req: { prefixBytes: number; algorithm: DigestAlgorithm; size: number; digest: Uint8Array },
  opts: { signal?: AbortSignal } = {},
): Promise<VerifyOutcome> {
  const size = await sizeOf(path)
  const h = createDigest(req.algorithm)
  const bytes = await digestFile(path, Math.min(req.prefixBytes, size), (b) => h.update(b), opts)
  const digest = h.digest()
  return { ok: size === req.size && req.prefixBytes <= size && sameBytes(digest, req.digest), size, digest, bytes }
}

/** Certify: digest the whole flat image; ok when the digests are equal. */
export async function certifyMirror(path: string, req: { algorithm: DigestAlgorithm; digest: Uint8Array }, opts: { signal?: AbortSignal } = {}): Promise<VerifyOutcome> {
  const size = await sizeOf(path)
  const h = createDigest(req.algorithm)
  const bytes = await digestFile(path, size, (b) => h.update(b), opts)
  const digest = h.digest()
  return { ok: sameBytes(digest, req.digest), size, digest, bytes }
}

/**
 * Verify a disk committed in this session (SPEC §5.6) and record the verdict
 * in its state (a failed one marks it diverged). `trivialMaxBytes` is the
 * receiver's limit on a trivial check's prefix. `defer`, asked once the
 * digest is taken: record a clean verdict in memory only, written by the VM's
 * next save (`VmMirror.recordVerify`); a failed one is always written first.
 * @throws ReceiverError E_RANGE (prefix above the limit), E_IO
 */
export async function verifyDisk(
  vm: VmMirror,
  name: string,
  req: VerifyRequest,
  opts: { trivialMaxBytes: number; signal?: AbortSignal; defer?: () => boolean },
): Promise<VerifyOutcome & { readonly deferred: boolean }> {
  const rec = vm.state.disks[name]
  if (rec === undefined) throw new ReceiverError('E_INTERNAL', `disk ${name} has no committed record`)
  const path = vm.paths.flat(rec.stem)
  const signal = opts.signal === undefined ? {} : { signal: opts.signal }
  let r: VerifyOutcome
  if (req.kind === 'trivial') {
    checkTrivialPrefix(req.prefixBytes, opts.trivialMaxBytes)
    r = await trivialCheck(path, req, signal)
  } else {
    r = await certifyMirror(path, req, signal)
  }
  const deferred = r.ok && opts.defer?.() === true
  await vm.recordVerify(name, req.kind, { ok: r.ok, at: new Date().toISOString(), algorithm: req.algorithm, digest: Buffer.from(r.digest).toString('hex'), bytes: r.bytes }, undefined, {
    defer: deferred,
  })
  return { ...r, deferred }
}

/** What the agent asked: a trivial check or a certify. */
export type VerifyRequest =
  | { readonly kind: 'trivial'; readonly prefixBytes: number; readonly algorithm: DigestAlgorithm; readonly size: number; readonly digest: Uint8Array }
  | { readonly kind: 'certify'; readonly algorithm: DigestAlgorithm; readonly digest: Uint8Array }
