/**
 * The few S3 operations an archive needs, over `@aws-sdk/client-s3`: put an
 * object (with an Object Lock retention), learn whether it exists and until
 * when it is locked, extend that lock, get it (falling back to the newest
 * real version when a delete marker hides it — a compromised client can add
 * delete markers to a versioned bucket but not remove locked versions), and
 * list keys. Works against AWS and against Ceph's radosgw (path-style URLs,
 * Content-MD5 instead of the SDK's newer checksums, which radosgw 16 refuses).
 * An endpoint cannot hang or exhaust a command: requests time out
 * ({@link S3_TIMEOUTS}), a response but an object's is at most
 * {@link MAX_S3_RESPONSE_BYTES}, and listings are bounded
 * ({@link MAX_LISTING_ENTRIES}, {@link LISTING_SPARE_PAGES},
 * {@link MAX_KEY_VERSIONS}, no marker twice).
 */
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { pipeline, Readable, Transform } from 'node:stream'
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
import { escapeUnprintable } from '@grainline/protocol'
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
  /** how long S3 may keep a request waiting (tests shorten them). @default {@link S3_TIMEOUTS} */
  readonly timeouts?: S3Timeouts
}

/** How long an S3 request may wait, per attempt ({@link S3_ATTEMPTS} attempts). */
export interface S3Timeouts {
  /** to connect (TCP), ms */
  readonly connectMs: number
  /** without a byte received or sent on the connection (no answer, or a body that stalls), ms */
  readonly idleMs: number
}

/**
 * The SDK sets no timeout on an S3 client (its NodeHttpHandler's
 * connectionTimeout, requestTimeout and socketTimeout are unset: an endpoint
 * that accepts a connection and never answers keeps a command waiting for
 * ever, and a run lock's refresh with it). 30 s to connect; 2 min without a
 * byte either way: S3 and radosgw answer a request within seconds, and a
 * transfer moves bytes all along however slow the link (a total deadline
 * would instead cut a large PUT on a thin link). With {@link S3_ATTEMPTS}
 * attempts and the SDK's backoff (≤ 20 s each) a call left unanswered ends within
 * {@link MAX_S3_CALL_MS}; see there why that bound matters.
 */
export const S3_TIMEOUTS: S3Timeouts = { connectMs: 30_000, idleMs: 120_000 }
/** Attempts of one S3 call (the SDK retries a timeout, a 5xx, a throttling). */
export const S3_ATTEMPTS = 5
/**
 * The longest one S3 call may wait without a byte moving, every attempt
 * included: 5 × (30 s + 2 min) + 4 backoffs ≤ 20 s ≈ 14 min. A prune checks
 * its run lock (LOCK_HELD_MS, 1 h since its last write) before each
 * deletion, and another run ignores the lock once 2 h old (LOCK_STALE_MS):
 * a deletion that starts just within the hour ends well before the lock can
 * be taken for stale (archive-lock.ts).
 */
export const MAX_S3_CALL_MS = S3_ATTEMPTS * (S3_TIMEOUTS.connectMs + S3_TIMEOUTS.idleMs) + (S3_ATTEMPTS - 1) * 20_000

/**
 * The most entries (objects, or versions and delete markers) one listing
 * takes, 2^25 ≈ 33.5 M: an archive's largest listing is its chunks, one per
 * distinct 4 MiB of data, so this is 128 TiB of distinct chunks — beyond what
 * a prune can hold (its referenced set takes ~26 MB a TiB: 3.3 GB here, more
 * than Node's default heap). A server that pages on for ever with new
 * markers is stopped here at the latest.
 */
export const MAX_LISTING_ENTRIES = 2 ** 25
/**
 * Pages a listing may take beyond one per 100 of its entries: S3 and
 * radosgw fill a page (1000 keys) but for the last, and short or empty pages
 * (S3 skipping delete markers in ListObjectsV2) are rare; a server that pages
 * one entry or none at a time is stopped after ~1000 round trips, not
 * after 2^25.
 */
export const LISTING_SPARE_PAGES = 1000
/**
 * The largest response body S3 may send but an object's (GET, bounded by
 * what the object may hold): a listing page of 1000 entries, each a key of
 * at most 1024 bytes and its XML (~600 bytes with radosgw's owner), is
 * ~1.6 MB; an error, a few hundred bytes. The SDK reads a body whole, then
 * parses it into objects many times its size: a page of 128 MiB took the
 * receiver past Node's 4 GB heap (archive-prune-hostile.test.ts).
 */
export const MAX_S3_RESPONSE_BYTES = 8 * 1024 * 1024
/**
 * The most versions and delete markers of one key a listing takes: a run
 * lock gains a version at each rewrite (every 10 min): 10 000 is a run of 69
 * days; a chunk or a manifest has a few.
 */
export const MAX_KEY_VERSIONS = 10_000

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

/** `a` before `b` in S3's order of keys (UTF-8 bytes). */
const before = (a: string, b: string): boolean => Buffer.compare(Buffer.from(a), Buffer.from(b)) < 0

/**
 * An object's name (or a name read from an object) for a message an operator
 * reads: anyone who can write the bucket chose it, so its control characters,
 * line separators and bidi overrides are shown escaped (`\u202e`): the name
 * stays exact, and cannot rewrite the terminal or fake a log line.
 */
export function printableName(name: string): string {
  return escapeUnprintable(name)
}

/** A marker as it is shown in a message: a server wrote it. */
const shownMarker = (m: string): string => printableName(JSON.stringify(m.length > 200 ? `${m.slice(0, 200)}…` : m))

/**
 * The bounds of one listing (every page of one call): at most
 * {@link MAX_LISTING_ENTRIES} entries and {@link LISTING_SPARE_PAGES} pages
 * beyond one per 100 entries, a marker never given twice. What breaks one is
 * refused with `refuse(why)`.
 */
class ListingBounds {
  #pages = 0
  #entries = 0
  // digests, not the markers: a server chooses their length
  readonly #seen = new Set<string>()
  readonly #refuse: (why: string) => ReceiverError

  constructor(refuse: (why: string) => ReceiverError) {
    this.#refuse = refuse
  }

  /** A page of `entries` entries came. */
  page(entries: number): void {
    this.#pages++
    this.#entries += entries
    if (this.#entries > MAX_LISTING_ENTRIES)
      throw this.#refuse(`it went on past ${MAX_LISTING_ENTRIES} entries (${this.#pages} pages): no archive's listing is that long (MAX_LISTING_ENTRIES), so the server is taken to page on for ever`)
    if (this.#pages > LISTING_SPARE_PAGES + this.#entries / 100)
      throw this.#refuse(
        `it took ${this.#pages} pages for ${this.#entries} entries: S3 fills a page with up to 1000, and a server that pages a few entries or none at a time (with a new marker each time) would keep the listing going for ever`,
      )
  }

  /** The listing goes on from `marker`: refused when it was given before. */
  next(marker: string, shown: string): void {
    const d = createHash('sha256').update(marker).digest('base64')
    if (this.#seen.has(d)) throw this.#refuse(`the server gave ${shown} again, a marker it had given before in this listing: it would list the same pages for ever`)
    this.#seen.add(d)
  }
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
  /** the endpoint as errors name it: its URL, or AWS S3 and the region */
  readonly endpoint: string
  readonly #s3: S3Client
  readonly #timeouts: S3Timeouts
  /** the `Date` header (the S3 server's clock) of a command's response, by the command's output */
  readonly #serverDates = new WeakMap<object, Date>()

  constructor(target: ArchiveTarget) {
    this.bucket = target.bucket
    this.endpoint = target.endpoint ?? `AWS S3 (${target.region ?? 'us-east-1'})`
    this.#timeouts = target.timeouts ?? S3_TIMEOUTS
    // the pinned SDK supports this Node; its notice is about later SDK releases and would only confuse an operator's output
    process.env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true'
    this.#s3 = new S3Client({
      region: target.region ?? 'us-east-1',
      ...(target.endpoint === undefined ? {} : { endpoint: target.endpoint, forcePathStyle: true }),
      ...(target.credentials === undefined ? {} : { credentials: target.credentials }),
      // radosgw before 19 refuses the SDK's flexible checksums (x-amz-checksum-*, aws-chunked): Content-MD5 is sent instead
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: S3_ATTEMPTS,
      // the SDK sets none: an endpoint that never answers would hang the command (S3_TIMEOUTS)
      requestHandler: { connectionTimeout: this.#timeouts.connectMs, socketTimeout: this.#timeouts.idleMs },
    })
    // inside the deserializer (low priority): the raw response, before the SDK reads its body whole
    this.#s3.middlewareStack.add(
      (next, context) => async (args) => {
        const out = await next(args)
        const res = out.response as { statusCode?: number; body?: unknown }
        const object = context.commandName === 'GetObjectCommand' && (res.statusCode ?? 0) < 300
        if (!object && res.body instanceof Readable) res.body = boundedResponse(res.body, context.commandName ?? 'S3', this.endpoint)
        return out
      },
      { step: 'deserialize', priority: 'low', name: 'grainlineBoundedResponse' },
    )
    // outermost: the response of the attempt that succeeded, beside its parsed output
    this.#s3.middlewareStack.add(
      (next) => async (args) => {
        const out = await next(args)
        const date = (out.response as { headers?: Record<string, string | undefined> } | undefined)?.headers?.['date']
        const at = date === undefined ? Number.NaN : Date.parse(date)
        if (typeof out.output === 'object' && out.output !== null && !Number.isNaN(at)) this.#serverDates.set(out.output, new Date(at))
        return out
      },
      { step: 'initialize', priority: 'high', name: 'grainlineServerDate' },
    )
  }

  /** An S3 failure as a typed error naming the object, the endpoint and what to check. */
  #error(err: unknown, what: string): ReceiverError {
    // one of ours (a response over its bound): its words as they are
    if (err instanceof ReceiverError) return new ReceiverError('E_ARCHIVE', `S3 ${what}: ${err.message}`, { cause: err })
    const code = err instanceof S3ServiceException ? err.name : ((err as { code?: string }).code ?? (err as Error).name)
    const hint =
      status(err) === 403
        ? ' (check the credentials and the bucket policy)'
        : (err as Error).name === 'TimeoutError'
          ? ` (the S3 endpoint ${this.endpoint} did not answer: no byte for ${this.#timeouts.idleMs / 1000} s, or no connection within ${this.#timeouts.connectMs / 1000} s, ${S3_ATTEMPTS} attempts. Check that it is up and reachable from this host, and that nothing between drops the requests)`
          : ''
    return new ReceiverError('E_ARCHIVE', `S3 ${what}: ${code ?? ''} ${(err as Error).message}${hint}`.replace(/\s+/g, ' '), { cause: err })
  }

  /** A listing refused: truncated with no way on, or beyond its bounds. Never taken for the whole. */
  #listingRefused(prefix: string, why: string): ReceiverError {
    return new ReceiverError(
      'E_ARCHIVE',
      `S3 listing s3://${this.bucket}/${prefix} (endpoint ${this.endpoint}): ${why} — the rest cannot be listed, and a partial listing is never used (archive-prune would delete chunks an unlisted manifest references). Nothing more was done; check the S3 endpoint (a proxy or a server that does not implement ListObjectsV2 / ListObjectVersions pagination as S3 does)`,
    )
  }

  /** A key with more than {@link MAX_KEY_VERSIONS} versions and delete markers: refused. */
  #tooManyVersions(key: string, n: number): ReceiverError {
    return new ReceiverError(
      'E_ARCHIVE',
      `S3 key s3://${this.bucket}/${key} (endpoint ${this.endpoint}): the version listing went past ${n} versions and delete markers of it, more than the ${MAX_KEY_VERSIONS} an archive's key ever has (MAX_KEY_VERSIONS: a run lock rewritten every 10 min for 69 days). Nothing more was done; list them (aws s3api list-object-versions --bucket ${this.bucket} --prefix ${key}): a server that lists the same versions for ever, or a key something else writes to`,
    )
  }

  /**
   * The pages of a version listing under `prefix`, bounded ({@link ListingBounds});
   * with `key`, only as far as that key's versions go.
   * @throws ReceiverError E_ARCHIVE
   */
  async *#versionPages(prefix: string, what: string, key?: string): AsyncGenerator<ListObjectVersionsCommandOutput> {
    const bounds = new ListingBounds((why) => this.#listingRefused(prefix, why))
    let keyMarker: string | undefined
    let versionMarker: string | undefined
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
        throw this.#error(err, what)
      }
      const keys = [...(r.Versions ?? []), ...(r.DeleteMarkers ?? [])].map((v) => v.Key ?? '')
      bounds.page(keys.length)
      // S3 lists after the key marker (the marker's own key again only for its later versions)
      const back = keyMarker === undefined ? undefined : keys.find((k) => before(k, keyMarker as string))
      if (back !== undefined) throw this.#listingRefused(prefix, `it listed the key ${shownMarker(back)} when asked for the keys from ${shownMarker(keyMarker as string)} on (versions)`)
      yield r
      if (r.IsTruncated !== true) return
      const next = r.NextKeyMarker
      if (next === undefined || next === '') throw this.#listingRefused(prefix, 'the server said the listing was truncated but gave no key marker (versions)')
      // past `key`: the rest are other keys under the prefix
      if (key !== undefined && before(key, next)) return
      const behind = keys.find((k) => before(next, k))
      if (behind !== undefined) throw this.#listingRefused(prefix, `it gave the key marker ${shownMarker(next)}, before the key ${shownMarker(behind)} of the same page (versions)`)
      const v = r.NextVersionIdMarker
      bounds.next(`${next}\u0000${v ?? ''}`, `the key marker ${shownMarker(next)} and version marker ${shownMarker(v ?? '')} (versions)`)
      keyMarker = next
      versionMarker = v
    }
  }

  /** The bucket's Object Lock: whether it is enabled. */
  async lockEnabled(): Promise<boolean> {
    try {
      const r = await this.#s3.send(new GetObjectLockConfigurationCommand({ Bucket: this.bucket }))
      return r.ObjectLockConfiguration?.ObjectLockEnabled === 'Enabled'
    } catch (err) {
      if (status(err) === 404) return false
      throw this.#error(err, `object lock configuration of bucket ${this.bucket}`)
    }
  }

  /** Whether `key` exists, and until when it is locked. */
  async head(key: string): Promise<{ retainUntil: Date | undefined } | undefined> {
    try {
      const r = await this.#s3.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }))
      return { retainUntil: r.ObjectLockRetainUntilDate }
    } catch (err) {
      if (status(err) === 404) return undefined
      throw this.#error(err, `HEAD ${key}`)
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
      throw this.#error(err, `PUT ${key}`)
    }
  }

  /** Extend the lock of an existing object to `lock.until` (a lock is never shortened). */
  async extend(key: string, lock: ArchiveLock): Promise<void> {
    try {
      await this.#s3.send(new PutObjectRetentionCommand({ Bucket: this.bucket, Key: key, Retention: { Mode: lock.mode, RetainUntilDate: lock.until } }))
    } catch (err) {
      throw this.#error(err, `extending the retention of ${key}`)
    }
  }

  /**
   * The bytes of `key` (at most `maxBytes`). When a delete marker hides it,
   * the newest version that is not a marker is read instead (every version
   * of the key listed, page after page: a key hidden under many markers, or a
   * server that pages a few at a time, is not taken for missing).
   * @throws ReceiverError E_ARCHIVE
   */
  async get(key: string, maxBytes: number): Promise<Buffer> {
    try {
      return await this.#get(key, undefined, maxBytes)
    } catch (err) {
      if (status(err) !== 404) throw this.#error(err, `GET ${key}`)
    }
    // S3 lists a key's versions newest first: the first of the latest time (a stable choice among equal times)
    let newest: { id: string; time: number } | undefined
    let n = 0
    for await (const r of this.#versionPages(key, `listing the versions of ${key}`, key)) {
      for (const v of r.Versions ?? []) {
        if (v.Key !== key) continue
        n++
        const time = v.LastModified?.getTime() ?? 0
        if (v.VersionId !== undefined && (newest === undefined || time > newest.time)) newest = { id: v.VersionId, time }
      }
      n += (r.DeleteMarkers ?? []).filter((m) => m.Key === key).length
      if (n > MAX_KEY_VERSIONS) throw this.#tooManyVersions(key, n)
    }
    if (newest === undefined) throw new ReceiverError('E_ARCHIVE', `S3 object ${key} is missing from bucket ${this.bucket} (no version of it either): the archive is incomplete`)
    try {
      return await this.#get(key, newest.id, maxBytes)
    } catch (err) {
      throw this.#error(err, `GET ${key} version ${newest.id}`)
    }
  }

  async #get(key: string, versionId: string | undefined, maxBytes: number): Promise<Buffer> {
    const r = await this.#s3.send(new GetObjectCommand({ Bucket: this.bucket, Key: key, ...(versionId === undefined ? {} : { VersionId: versionId }) }))
    if ((r.ContentLength ?? 0) > maxBytes) throw new ReceiverError('E_ARCHIVE', `S3 object ${key} is ${r.ContentLength} bytes, over the ${maxBytes} expected`)
    if (r.Body === undefined) throw new ReceiverError('E_ARCHIVE', `S3 object ${key}: no body`)
    try {
      return await boundedBody(r.Body, key, maxBytes)
    } catch (err) {
      // a body that stalls: the idle timeout destroys it
      throw err instanceof ReceiverError ? err : this.#error(err, `GET ${key}${versionId === undefined ? '' : ` version ${versionId}`} (reading its body)`)
    }
  }

  /** Every key under `prefix`. */
  async list(prefix: string): Promise<string[]> {
    const out: string[] = []
    await this.listPages(prefix, async (page) => {
      for (const o of page) out.push(o.key)
    })
    return out
  }

  /**
   * Every object under `prefix`, a page (≤ 1000) at a time: only one page is
   * held in memory; with each page the S3 server's time when it answered
   * (its `Date` header, to the second; undefined when it sent none). Bounded: at most {@link MAX_LISTING_ENTRIES} objects and
   * {@link LISTING_SPARE_PAGES} pages beyond one per 100 of them; a
   * continuation token given twice, or keys out of S3's order, refused.
   * @throws ReceiverError E_ARCHIVE (a listing truncated with no way on, or beyond those bounds)
   */
  async listPages(prefix: string, onPage: (page: readonly ListedObject[], serverDate: Date | undefined) => Promise<void>): Promise<void> {
    const bounds = new ListingBounds((why) => this.#listingRefused(prefix, why))
    let token: string | undefined
    // the last key listed: S3 lists each key once, in order
    let last: string | undefined
    for (;;) {
      let r: ListObjectsV2CommandOutput
      try {
        r = await this.#s3.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ...(token === undefined ? {} : { ContinuationToken: token }) }))
      } catch (err) {
        throw this.#error(err, `listing ${prefix}`)
      }
      const page: ListedObject[] = []
      // an entry without its LastModified (a server that leaves it out) is taken as written now: an unreferenced chunk
      // young, a run lock fresh — never as written in 1970, which made archive-prune delete a chunk an archive had just
      // uploaded (no grace) and ignore every run lock as stale
      const listedAt = new Date()
      for (const o of r.Contents ?? []) if (o.Key !== undefined) page.push({ key: o.Key, size: o.Size ?? 0, lastModified: o.LastModified ?? listedAt })
      bounds.page(page.length)
      for (const o of page) {
        if (last !== undefined && !before(last, o.key)) throw this.#listingRefused(prefix, `it listed the key ${shownMarker(o.key)} after ${shownMarker(last)}: S3 lists each key once, in order`)
        last = o.key
      }
      await onPage(page, this.#serverDates.get(r))
      if (r.IsTruncated !== true) return
      // a truncated page without a new token would end the listing early: a partial view, on which archive-prune
      // would delete chunks that an unlisted manifest references (and a token repeated would loop for ever)
      const next = r.NextContinuationToken
      if (next === undefined || next === '') throw this.#listingRefused(prefix, 'the server said the listing was truncated but gave no continuation token')
      bounds.next(next, `the continuation token ${shownMarker(next)}`)
      token = next
    }
  }

  /**
   * Every key under `prefix` with all its versions and delete markers (a key
   * hidden by a delete marker too), a page of keys at a time; a key whose
   * versions the server splits over two pages is handed over whole, once.
   * Bounded as {@link listPages} is, and a key at {@link MAX_KEY_VERSIONS}.
   * @throws ReceiverError E_ARCHIVE (a listing truncated with no way on, or beyond those bounds)
   */
  async listVersionPages(prefix: string, onPage: (page: readonly ListedKey[]) => Promise<void>): Promise<void> {
    // the last key of a truncated page: its versions may go on in the next one
    let carry: { key: string; versions: (ListedVersion & { latest: boolean })[] } | undefined
    for await (const r of this.#versionPages(prefix, `listing the versions under ${prefix}`)) {
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
      for (const [key, versions] of byKey) if (versions.length > MAX_KEY_VERSIONS) throw this.#tooManyVersions(key, versions.length)
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
    }
  }

  /**
   * Delete `key` for good: every version of it and every delete marker (in a
   * versioned bucket — Object Lock implies one — a plain DELETE only adds a
   * marker, which frees nothing and which a restore reads through). Returns
   * the bytes of the versions deleted. A version still under Object Lock
   * retention (or a legal hold) is refused by S3 (AccessDenied: {@link refusedByS3}).
   * The versions are listed first, bounded as {@link listVersionPages} is.
   * @throws ReceiverError E_ARCHIVE
   */
  async deleteAllVersions(key: string): Promise<number> {
    const versions: { id: string | undefined; size: number }[] = []
    for await (const r of this.#versionPages(key, `listing the versions of ${key}`, key)) {
      for (const v of r.Versions ?? []) if (v.Key === key) versions.push({ id: v.VersionId, size: v.Size ?? 0 })
      for (const v of r.DeleteMarkers ?? []) if (v.Key === key) versions.push({ id: v.VersionId, size: 0 })
      if (versions.length > MAX_KEY_VERSIONS) throw this.#tooManyVersions(key, versions.length)
    }
    let bytes = 0
    for (const v of versions) {
      try {
        await this.#s3.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key, ...(v.id === undefined ? {} : { VersionId: v.id }) }))
      } catch (err) {
        throw this.#error(err, `DELETE ${key}${v.id === undefined ? '' : ` version ${v.id}`}`)
      }
      bytes += v.size
    }
    return bytes
  }

  close(): void {
    this.#s3.destroy()
  }
}

/** `body` passed on up to {@link MAX_S3_RESPONSE_BYTES}, then destroyed with an E_ARCHIVE. */
function boundedResponse(body: Readable, command: string, endpoint: string): Readable {
  let n = 0
  const limited = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      n += chunk.length
      if (n <= MAX_S3_RESPONSE_BYTES) return done(null, chunk)
      done(
        new ReceiverError(
          'E_ARCHIVE',
          `the answer of the S3 endpoint ${endpoint} to ${command} went past ${MAX_S3_RESPONSE_BYTES} bytes (MAX_S3_RESPONSE_BYTES: a listing page of 1000 keys is under 2 MB): the rest was not read. Check the S3 endpoint (a proxy or a server that is not S3)`,
        ),
      )
    },
  })
  // an error either way destroys both: the connection is dropped, not read on
  pipeline(body, limited, () => {})
  return limited
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
