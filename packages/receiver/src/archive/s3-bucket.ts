/**
 * The few S3 operations an archive needs, over `@aws-sdk/client-s3`: put an
 * object (with an Object Lock retention), learn whether it exists and until
 * when it is locked, extend that lock, get it (falling back to the newest
 * real version when a delete marker hides it — a compromised client can add
 * delete markers to a versioned bucket but not remove locked versions), and
 * list keys. Works against AWS and against Ceph's radosgw (path-style URLs,
 * Content-MD5 instead of the SDK's newer checksums, which radosgw 16 refuses).
 */
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import {
  DeleteObjectCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  ListObjectVersionsCommand,
  type ListObjectVersionsCommandOutput,
  type ListObjectsV2CommandOutput,
  PutObjectCommand,
  PutObjectRetentionCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3'
import { ReceiverError } from '../errors.ts'

/** Where an archive lives: `s3://BUCKET/PREFIX/`, an endpoint (radosgw, MinIO …) and credentials. */
export interface ArchiveTarget {
  readonly bucket: string
  /** key prefix, "" or ending in "/" */
  readonly prefix: string
  /** S3 endpoint URL; undefined: AWS */
  readonly endpoint?: string
  /** @default 'us-east-1' */
  readonly region?: string
  /** undefined: the SDK's default chain (AWS_ACCESS_KEY_ID …) */
  readonly credentials?: { readonly accessKeyId: string; readonly secretAccessKey: string }
}

/** Object Lock of the archive's objects. */
export interface ArchiveLock {
  /** GOVERNANCE (a privileged user may shorten it) or COMPLIANCE (nobody can) */
  readonly mode: 'GOVERNANCE' | 'COMPLIANCE'
  readonly until: Date
}

/** Parse `s3://bucket/prefix` (the prefix gets a trailing `/`). @throws ReceiverError E_CONFIG */
export function parseArchiveUrl(url: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(url)
  if (m === null) throw new ReceiverError('E_CONFIG', `archive URL ${JSON.stringify(url)}: want s3://BUCKET[/PREFIX] (bucket: 3–63 lowercase letters, digits, dots, dashes)`)
  const raw = (m[2] ?? '').replace(/\/+$/, '')
  if (raw.split('/').some((p) => p === '.' || p === '..') || raw.startsWith('/')) throw new ReceiverError('E_CONFIG', `archive URL ${url}: a prefix with empty, . or .. parts`)
  return { bucket: m[1] as string, prefix: raw === '' ? '' : `${raw}/` }
}

/** Read `{"accessKeyId": …, "secretAccessKey": …}` from a file. @throws ReceiverError E_CONFIG */
export async function readCredentialsFile(file: string): Promise<{ accessKeyId: string; secretAccessKey: string }> {
  let j: unknown
  try {
    j = JSON.parse(await readFile(file, 'utf8'))
  } catch (err) {
    throw new ReceiverError('E_CONFIG', `S3 credentials ${file}: ${(err as Error).message}`)
  }
  const o = j as Record<string, unknown>
  if (typeof o?.['accessKeyId'] !== 'string' || typeof o['secretAccessKey'] !== 'string')
    throw new ReceiverError('E_CONFIG', `S3 credentials ${file}: want {"accessKeyId": "…", "secretAccessKey": "…"}`)
  return { accessKeyId: o['accessKeyId'], secretAccessKey: o['secretAccessKey'] }
}

const status = (err: unknown): number | undefined => (err instanceof S3ServiceException ? err.$metadata.httpStatusCode : undefined)

/** Whether `err` (an E_ARCHIVE of this module) is S3 refusing the request (403: a version under Object Lock, or the policy). */
export function refusedByS3(err: unknown): boolean {
  return err instanceof ReceiverError && status(err.cause) === 403
}

/** An S3 failure as a typed error naming the object and what to check. */
function s3Error(err: unknown, what: string): ReceiverError {
  const code = err instanceof S3ServiceException ? err.name : (err as { code?: string }).code
  const hint = status(err) === 403 ? ' (check the credentials and the bucket policy)' : ''
  return new ReceiverError('E_ARCHIVE', `S3 ${what}: ${code ?? ''} ${(err as Error).message}${hint}`.replace(/\s+/g, ' '), { cause: err })
}

/**
 * An object's name (or a name read from an object) for a message an operator
 * reads: anyone who can write the bucket chose it, so its control characters,
 * line separators and bidi overrides are shown escaped (`\u202e`): the name
 * stays exact, and cannot rewrite the terminal or fake a log line.
 */
export function printableName(name: string): string {
  return name.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, (c) => `\\u${(c.codePointAt(0) as number).toString(16).padStart(4, '0')}`)
}

/** A listing the server cut short (truncated, with no way on): refused, never taken for the whole. */
function partialListing(bucket: string, prefix: string, why: string): ReceiverError {
  return new ReceiverError(
    'E_ARCHIVE',
    `S3 listing s3://${bucket}/${prefix}: the server said the listing was truncated but gave ${why} — the rest cannot be listed, and a partial listing is never used (archive-prune would delete chunks an unlisted manifest references). Nothing more was done; check the S3 endpoint (a proxy or a server that does not implement ListObjectsV2 / ListObjectVersions pagination)`,
  )
}

/** One object of a listing. */
export interface ListedObject {
  readonly key: string
  readonly size: number
  /** when it was last written; the time of the listing when the server did not say (never older than it may be) */
  readonly lastModified: Date
}

/** One version, or delete marker, of a key in a version listing. */
export interface ListedVersion {
  readonly versionId: string | undefined
  readonly lastModified: Date
  readonly size: number
  /** a delete marker: the versions before it are hidden from GET and from ListObjectsV2, not gone */
  readonly deleteMarker: boolean
}

/** A key of a version listing: its versions and delete markers, the current one first, then newest first. */
export interface ListedKey {
  readonly key: string
  readonly versions: readonly ListedVersion[]
}

/** One bucket of an archive. */
export class S3Bucket {
  readonly bucket: string
  readonly #s3: S3Client

  constructor(target: ArchiveTarget) {
    this.bucket = target.bucket
    // the pinned SDK supports this Node; its notice is about later SDK releases and would only confuse an operator's output
    process.env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true'
    this.#s3 = new S3Client({
      region: target.region ?? 'us-east-1',
      ...(target.endpoint === undefined ? {} : { endpoint: target.endpoint, forcePathStyle: true }),
      ...(target.credentials === undefined ? {} : { credentials: target.credentials }),
      // radosgw before 19 refuses the SDK's flexible checksums (x-amz-checksum-*, aws-chunked): Content-MD5 is sent instead
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 5,
    })
  }

  /** The bucket's Object Lock: whether it is enabled. */
  async lockEnabled(): Promise<boolean> {
    try {
      const r = await this.#s3.send(new GetObjectLockConfigurationCommand({ Bucket: this.bucket }))
      return r.ObjectLockConfiguration?.ObjectLockEnabled === 'Enabled'
    } catch (err) {
      if (status(err) === 404) return false
      throw s3Error(err, `object lock configuration of bucket ${this.bucket}`)
    }
  }

  /** Whether `key` exists, and until when it is locked. */
  async head(key: string): Promise<{ retainUntil: Date | undefined } | undefined> {
    try {
      const r = await this.#s3.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }))
      return { retainUntil: r.ObjectLockRetainUntilDate }
    } catch (err) {
      if (status(err) === 404) return undefined
      throw s3Error(err, `HEAD ${key}`)
    }
  }

  /** Put `body` at `key`, locked until `lock.until` when given. */
  async put(key: string, body: Uint8Array, lock?: ArchiveLock): Promise<void> {
    try {
      await this.#s3.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: key,
          Body: body,
          ContentLength: body.length,
          ContentMD5: createHash('md5').update(body).digest('base64'),
          ...(lock === undefined ? {} : { ObjectLockMode: lock.mode, ObjectLockRetainUntilDate: lock.until }),
        }),
      )
    } catch (err) {
      throw s3Error(err, `PUT ${key}`)
    }
  }

  /** Extend the lock of an existing object to `lock.until` (a lock is never shortened). */
  async extend(key: string, lock: ArchiveLock): Promise<void> {
    try {
      await this.#s3.send(new PutObjectRetentionCommand({ Bucket: this.bucket, Key: key, Retention: { Mode: lock.mode, RetainUntilDate: lock.until } }))
    } catch (err) {
      throw s3Error(err, `extending the retention of ${key}`)
    }
  }

  /**
   * The bytes of `key` (at most `maxBytes`). When a delete marker hides it,
   * the newest version that is not a marker is read instead.
   */
  async get(key: string, maxBytes: number): Promise<Buffer> {
    try {
      return await this.#get(key, undefined, maxBytes)
    } catch (err) {
      if (status(err) !== 404) throw s3Error(err, `GET ${key}`)
    }
    let versions: ListObjectVersionsCommandOutput
    try {
      versions = await this.#s3.send(new ListObjectVersionsCommand({ Bucket: this.bucket, Prefix: key, MaxKeys: 100 }))
    } catch (err) {
      throw s3Error(err, `listing the versions of ${key}`)
    }
    const v = (versions.Versions ?? []).filter((x) => x.Key === key && x.VersionId !== undefined).sort((a, b) => (b.LastModified?.getTime() ?? 0) - (a.LastModified?.getTime() ?? 0))[0]
    if (v === undefined) throw new ReceiverError('E_ARCHIVE', `S3 object ${key} is missing from bucket ${this.bucket} (no version of it either): the archive is incomplete`)
    try {
      return await this.#get(key, v.VersionId, maxBytes)
    } catch (err) {
      throw s3Error(err, `GET ${key} version ${v.VersionId}`)
    }
  }

  async #get(key: string, versionId: string | undefined, maxBytes: number): Promise<Buffer> {
    const r = await this.#s3.send(new GetObjectCommand({ Bucket: this.bucket, Key: key, ...(versionId === undefined ? {} : { VersionId: versionId }) }))
    if ((r.ContentLength ?? 0) > maxBytes) throw new ReceiverError('E_ARCHIVE', `S3 object ${key} is ${r.ContentLength} bytes, over the ${maxBytes} expected`)
    if (r.Body === undefined) throw new ReceiverError('E_ARCHIVE', `S3 object ${key}: no body`)
    return await boundedBody(r.Body, key, maxBytes)
  }

  /** Every key under `prefix`. */
  async list(prefix: string): Promise<string[]> {
    const out: string[] = []
    await this.listPages(prefix, async (page) => {
      for (const o of page) out.push(o.key)
    })
    return out
  }

  /** Every object under `prefix`, a page (≤ 1000) at a time: only one page is held in memory. */
  async listPages(prefix: string, onPage: (page: readonly ListedObject[]) => Promise<void>): Promise<void> {
    let token: string | undefined
    for (;;) {
      let r: ListObjectsV2CommandOutput
      try {
        r = await this.#s3.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ...(token === undefined ? {} : { ContinuationToken: token }) }))
      } catch (err) {
        throw s3Error(err, `listing ${prefix}`)
      }
      const page: ListedObject[] = []
      // an entry without its LastModified (a server that leaves it out) is taken as written now: an unreferenced chunk
      // young, a run lock fresh — never as written in 1970, which made archive-prune delete a chunk an archive had just
      // uploaded (no grace) and ignore every run lock as stale
      const listedAt = new Date()
      for (const o of r.Contents ?? []) if (o.Key !== undefined) page.push({ key: o.Key, size: o.Size ?? 0, lastModified: o.LastModified ?? listedAt })
      await onPage(page)
      if (r.IsTruncated !== true) return
      // a truncated page without a new token would end the listing early: a partial view, on which archive-prune
      // would delete chunks that an unlisted manifest references (and a token repeated would loop for ever)
      const next = r.NextContinuationToken
      if (next === undefined || next === '' || next === token)
        throw partialListing(this.bucket, prefix, next === token && next !== undefined ? `the continuation token ${next} again` : 'no continuation token')
      token = next
    }
  }

  /**
   * Every key under `prefix` with all its versions and delete markers (a key
   * hidden by a delete marker too), a page of keys at a time; a key whose
   * versions the server splits over two pages is handed over whole, once.
   * @throws ReceiverError E_ARCHIVE (a listing truncated with no way on)
   */
  async listVersionPages(prefix: string, onPage: (page: readonly ListedKey[]) => Promise<void>): Promise<void> {
    let keyMarker: string | undefined
    let versionMarker: string | undefined
    // the last key of a truncated page: its versions may go on in the next one
    let carry: { key: string; versions: (ListedVersion & { latest: boolean })[] } | undefined
    for (;;) {
      let r: ListObjectVersionsCommandOutput
      try {
        r = await this.#s3.send(
          new ListObjectVersionsCommand({
            Bucket: this.bucket,
            Prefix: prefix,
            ...(keyMarker === undefined ? {} : { KeyMarker: keyMarker }),
            ...(versionMarker === undefined ? {} : { VersionIdMarker: versionMarker }),
          }),
        )
      } catch (err) {
        throw s3Error(err, `listing the versions under ${prefix}`)
      }
      const byKey = new Map<string, (ListedVersion & { latest: boolean })[]>()
      if (carry !== undefined) byKey.set(carry.key, carry.versions)
      const add = (key: string | undefined, v: ListedVersion & { latest: boolean }): void => {
        if (key === undefined) return
        const list = byKey.get(key)
        if (list === undefined) byKey.set(key, [v])
        else list.push(v)
      }
      // S3 gives each key's versions newest first; the SDK splits versions and markers into two lists. A version
      // without its LastModified is taken as written now, as in listPages: never as 1970 (past any grace)
      const listedAt = new Date()
      for (const v of r.Versions ?? []) add(v.Key, { versionId: v.VersionId, lastModified: v.LastModified ?? listedAt, size: v.Size ?? 0, deleteMarker: false, latest: v.IsLatest === true })
      for (const v of r.DeleteMarkers ?? []) add(v.Key, { versionId: v.VersionId, lastModified: v.LastModified ?? listedAt, size: 0, deleteMarker: true, latest: v.IsLatest === true })
      const keys = [...byKey.keys()].sort()
      const truncated = r.IsTruncated === true
      carry = undefined
      if (truncated) {
        const last = keys.pop()
        if (last !== undefined) carry = { key: last, versions: byKey.get(last) ?? [] }
      }
      const page = keys.map((key) => ({
        key,
        // the current one first, then newest first (a stable sort keeps S3's order among equal times, as get() reads)
        versions: [...(byKey.get(key) ?? [])].sort((a, b) => Number(b.latest) - Number(a.latest) || b.lastModified.getTime() - a.lastModified.getTime()),
      }))
      if (page.length > 0) await onPage(page)
      if (!truncated) return
      const next = r.NextKeyMarker
      if (next === undefined || next === '') throw partialListing(this.bucket, prefix, 'no key marker (versions)')
      if (next === keyMarker && r.NextVersionIdMarker === versionMarker) throw partialListing(this.bucket, prefix, 'the same markers again (versions)')
      keyMarker = next
      versionMarker = r.NextVersionIdMarker
    }
  }

  /**
   * Delete `key` for good: every version of it and every delete marker (in a
   * versioned bucket — Object Lock implies one — a plain DELETE only adds a
   * marker, which frees nothing and which a restore reads through). Returns
   * the bytes of the versions deleted. A version still under Object Lock
   * retention (or a legal hold) is refused by S3 (AccessDenied: {@link refusedByS3}).
   * @throws ReceiverError E_ARCHIVE
   */
  async deleteAllVersions(key: string): Promise<number> {
    const versions: { id: string | undefined; size: number }[] = []
    let keyMarker: string | undefined
    let versionMarker: string | undefined
    do {
      let r: ListObjectVersionsCommandOutput
      try {
        r = await this.#s3.send(
          new ListObjectVersionsCommand({
            Bucket: this.bucket,
            Prefix: key,
            ...(keyMarker === undefined ? {} : { KeyMarker: keyMarker }),
            ...(versionMarker === undefined ? {} : { VersionIdMarker: versionMarker }),
          }),
        )
      } catch (err) {
        throw s3Error(err, `listing the versions of ${key}`)
      }
      for (const v of r.Versions ?? []) if (v.Key === key) versions.push({ id: v.VersionId, size: v.Size ?? 0 })
      for (const v of r.DeleteMarkers ?? []) if (v.Key === key) versions.push({ id: v.VersionId, size: 0 })
      if (r.IsTruncated === true && (r.NextKeyMarker === undefined || r.NextKeyMarker === '')) throw partialListing(this.bucket, key, 'no key marker (versions)')
      const more = r.IsTruncated === true && (r.NextKeyMarker as string) <= key
      if (more && r.NextKeyMarker === keyMarker && r.NextVersionIdMarker === versionMarker) throw partialListing(this.bucket, key, 'the same markers again (versions)')
      keyMarker = more ? r.NextKeyMarker : undefined
      versionMarker = more ? r.NextVersionIdMarker : undefined
    } while (keyMarker !== undefined)
    let bytes = 0
    for (const v of versions) {
      try {
        await this.#s3.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key, ...(v.id === undefined ? {} : { VersionId: v.id }) }))
      } catch (err) {
        throw s3Error(err, `DELETE ${key}${v.id === undefined ? '' : ` version ${v.id}`}`)
      }
      bytes += v.size
    }
    return bytes
  }

  close(): void {
    this.#s3.destroy()
  }
}

/**
 * The bytes of a GET's body, at most `maxBytes`: read as it arrives and
 * abandoned (its connection destroyed) at the first byte beyond, so a server
 * that sends no Content-Length (chunked) or more than it announced cannot
 * make the receiver buffer more than the object may hold. A body that is not
 * a stream (not seen in Node.js) is read whole, then checked.
 * @throws ReceiverError E_ARCHIVE (over `maxBytes`)
 */
async function boundedBody(body: { transformToByteArray(): Promise<Uint8Array> }, key: string, maxBytes: number): Promise<Buffer> {
  const over = (n: number): ReceiverError => new ReceiverError('E_ARCHIVE', `S3 object ${key} is over the ${maxBytes} bytes expected (${n} bytes read, the rest not read)`)
  if (!(Symbol.asyncIterator in body)) {
    const bytes = await body.transformToByteArray()
    if (bytes.length > maxBytes) throw over(bytes.length)
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length)
  }
  const parts: Buffer[] = []
  let n = 0
  // leaving the loop (the throw) returns the iterator, which destroys the stream and its socket
  for await (const c of body as unknown as AsyncIterable<Uint8Array | string>) {
    const b = typeof c === 'string' ? Buffer.from(c) : Buffer.from(c.buffer, c.byteOffset, c.length)
    n += b.length
    if (n > maxBytes) throw over(n)
    parts.push(b)
  }
  return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, n)
}
