/**
 * archive-prune against a hostile or misbehaving S3 endpoint (docs/ARCHIVE.md
 * "Pruning"): what radosgw never does, so a small S3 server of the test's own
 * (path-style PUT, GET, HEAD, DELETE of a version, ListObjectsV2 and
 * ListObjectVersions, in memory) that does it on purpose.
 *
 * - A listing the server says is truncated but gives no continuation token:
 *   taken for the whole, the prune saw only some manifests and deleted the
 *   chunks the unlisted ones reference. It is refused (E_ARCHIVE), nothing
 *   deleted.
 * - A manifest deleted that is listed again right after (written anew
 *   meanwhile: a points archive whose run lock went stale): its chunks were
 *   taken as unreferenced and deleted under it. A manifest still listed after
 *   its deletion references its chunks.
 * - A receiver host whose clock is hours off S3's: a lock's age, a chunk's
 *   against the grace period, were judged by the local clock (a fresh lock
 *   taken for stale, a dead run's never stale). They are judged by S3's
 *   clock (the LastModified of the run's own lock), and an archive or a
 *   prune more than 5 min off refuses (a restore warns).
 * - A manifest hidden behind a delete marker: the prune did not see it and
 *   collected its chunks, which `restore --from` (reading through the
 *   marker) then missed. It is a point like any other. A chunk hidden
 *   behind a marker was never collected; it is, once unreferenced.
 * - A listing that never ends (new markers every page, markers in turn, a
 *   key's versions without end): it looped for ever. Bounded, refused.
 * - A listing page of 128 MiB: the SDK read it whole and parsing it took
 *   the receiver past Node's heap. A response is read up to 8 MiB.
 * - A server that accepts a request and never answers, or stops a body
 *   half-way: the command waited for ever (the SDK sets no timeout). It
 *   times out.
 * - A key under 150 delete markers, or one version a listing page: get()
 *   listed 100 versions once and took it for missing. It pages.
 * - A manifest whose disks collide (`a`'s flat is `a-flat`'s descriptor)
 *   or whose DDB adds a line to a descriptor: the restore wrote one file
 *   over another. Refused at parse time.
 */
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { createHash, randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { readFileSync, readlinkSync } from 'node:fs'
import { readdir, readFile } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { pino, type Logger } from 'pino'
import { ARCHIVE_CHUNK_BYTES, ARCHIVE_FORMAT, type ArchiveManifest, chunkKey, encodeManifest, manifestKey } from '../src/archive/archive-manifest.ts'
import { scratchDir } from '@grainline/test-utils'
import { mock } from 'node:test'
import {
  archivePoints,
  checkArchivedPoint,
  listArchivedPoints,
  LISTING_SPARE_PAGES,
  LOCK_HELD_MS,
  LOCK_REFRESH_MS,
  LOCK_STALE_MS,
  MAX_KEY_VERSIONS,
  MAX_S3_CALL_MS,
  pruneArchive,
  restoreFromArchive,
  S3Bucket,
  type S3Timeouts,
  takeRunLock,
} from '../src/index.ts'
import { bootId, processStartTime } from '../src/vm-lock.ts'
import { archiveOnePoint } from '../src/archive/archive-point.ts'
import { Agent, MiB, TOKEN, makeEnv, pattern, runCycle, seedPlan, startReceiver } from './helpers.ts'

const log = pino({ level: 'silent' })

interface Version {
  readonly id: string
  readonly body: Buffer
  readonly lastModified: Date
  /** a delete marker (a plain DELETE on a versioned bucket) */
  readonly marker?: boolean
}

/** What the server does wrong. */
interface Hostility {
  /** listings (of objects or of versions) under this prefix say "truncated" after each page but give no continuation token (key marker) */
  noTokenUnder?: string
  /** called after the last version of a key is deleted */
  afterDelete?: (key: string) => void
  /** called after a key is written */
  afterPut?: (key: string) => void
  /** called after a HEAD of a key that is there was answered */
  afterHead?: (key: string) => void
  /** a GET of this key answers chunked (no Content-Length) with up to 128 MiB of zeros; `sent` counts what the socket took */
  endless?: { key: string; sent: number; done?: Promise<void> }
  /** every PUT and DELETE refused 403 AccessDenied (credentials that may only read) */
  readOnly?: boolean
  /** ListObjectVersions refused 403 AccessDenied (credentials without s3:ListBucketVersions) */
  noVersionListing?: boolean
  /** listing entries (ListObjectsV2 and ListObjectVersions) without their LastModified */
  noLastModified?: boolean
  /** a PUT of a key is answered (and stored) only once the promise this returns resolves */
  holdPut?: (key: string) => Promise<void> | undefined
  /** ListObjectsV2 leaves out the keys under this prefix (a listing that lags behind writes) */
  unlistedUnder?: string
  /**
   * listings under this prefix never end: every page truncated, with a marker never given before —
   * `new-keys`: one new key a page; `empty`: no entry; `same-key`: 1000 new versions a page of the key the prefix
   * names (versions); `cycle`: no entry, two markers in turn
   */
  endlessListing?: { prefix: string; mode: 'new-keys' | 'empty' | 'same-key' | 'cycle'; pages: number }
  /** requests for a key, or listings of a prefix, that start with this are read and never answered */
  silentUnder?: string
  /** a GET of this key sends its headers and half its body, then nothing */
  stallBody?: string
  /** version listings give at most this many entries a page, whatever max-keys asks */
  versionPageSize?: number
  /** a listing (ListObjectsV2) under this prefix answers up to 128 MiB of XML; `sent` counts what the socket took */
  hugeListing?: { prefix: string; sent: number; done?: Promise<void> }
}

/**
 * A path-style S3 of one versioned bucket in memory, one key a listing page
 * (one version a page when the client gives no max-keys), with a clock of
 * its own ({@link clockSkewMs}: LastModified of what it stores, its Date
 * header); a plain DELETE adds a delete marker, as S3 does.
 */
class TinyS3 {
  readonly objects = new Map<string, Version[]>()
  readonly hostility: Hostility = {}
  /** how far the server's clock is ahead of the real one (negative: behind) */
  clockSkewMs = 0
  #server: Server | undefined

  /** the server's time now */
  now(): Date {
    return new Date(Date.now() + this.clockSkewMs)
  }

  put(key: string, body: Buffer, lastModified = this.now()): void {
    this.objects.set(key, [...(this.objects.get(key) ?? []), { id: randomUUID(), body, lastModified }])
  }

  /** a plain DELETE of `key`: a delete marker on top of its versions */
  hide(key: string): void {
    this.objects.set(key, [...(this.objects.get(key) ?? []), { id: randomUUID(), body: Buffer.alloc(0), lastModified: this.now(), marker: true }])
  }

  keys(): string[] {
    return [...this.objects.keys()].sort()
  }

  async start(): Promise<string> {
    this.#server = createServer((req, res) => {
      this.#handle(req, res).catch((err: unknown) => {
        res.statusCode = 500
        res.end(String(err))
      })
    })
    await new Promise<void>((resolve) => this.#server?.listen(0, '127.0.0.1', resolve))
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`
  }

  async stop(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server?.close(() => resolve()))
    // the requests never answered (silentUnder) hold their connections open
    this.#server?.closeAllConnections()
    await closed
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const url = new URL(req.url ?? '/', 'http://x')
    const [, bucket, ...rest] = url.pathname.split('/')
    const key = decodeURIComponent(rest.join('/'))
    const q = url.searchParams
    res.setHeader('date', this.now().toUTCString())
    const xml = (body: string): void => {
      res.setHeader('content-type', 'application/xml')
      res.end(`<?xml version="1.0" encoding="UTF-8"?>\n${body}`)
    }
    const silent = this.hostility.silentUnder
    if (silent !== undefined && (key === '' ? (q.get('prefix') ?? '') : key).startsWith(silent)) return // read, never answered
    const huge = this.hostility.hugeListing
    if (req.method === 'GET' && key === '' && huge !== undefined && (q.get('prefix') ?? '').startsWith(huge.prefix)) {
      huge.done = new Promise<void>((resolve) => {
        res.setHeader('content-type', 'application/xml')
        res.write(`<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>${bucket}</Name>`)
        const piece = Buffer.alloc(MiB, ' ')
        let closed = false
        res.on('close', () => {
          closed = true
          resolve()
        })
        const pump = (): void => {
          while (!closed && huge.sent < 128 * MiB) {
            huge.sent += piece.length
            if (!res.write(piece)) return void res.once('drain', pump)
          }
          if (!closed) res.end('<IsTruncated>false</IsTruncated></ListBucketResult>')
        }
        pump()
      })
      return
    }
    const endless = this.hostility.endlessListing
    if (req.method === 'GET' && key === '' && endless !== undefined && (q.get('prefix') ?? '').startsWith(endless.prefix)) {
      const n = ++endless.pages
      const prefix = q.get('prefix') ?? ''
      const marker = endless.mode === 'cycle' ? `m${n % 2}` : `m${n}`
      const newKey = `${prefix}zz/${String(n).padStart(12, '0')}`
      const at = new Date().toISOString()
      if (q.get('list-type') === '2') {
        const contents = endless.mode === 'new-keys' ? `<Contents><Key>${newKey}</Key><LastModified>${at}</LastModified><ETag>"e"</ETag><Size>1</Size></Contents>` : ''
        xml(
          `<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>${bucket}</Name><Prefix>${prefix}</Prefix><KeyCount>${contents === '' ? 0 : 1}</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>${marker}</NextContinuationToken>${contents}</ListBucketResult>`,
        )
        return
      }
      const version = (k: string): string =>
        `<Version><Key>${k}</Key><VersionId>${randomUUID()}</VersionId><IsLatest>false</IsLatest><LastModified>${at}</LastModified><ETag>"e"</ETag><Size>1</Size></Version>`
      const items = endless.mode === 'new-keys' ? version(newKey) : endless.mode === 'same-key' ? Array.from({ length: 1000 }, () => version(prefix)).join('') : ''
      xml(
        `<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>${bucket}</Name><Prefix>${prefix}</Prefix><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><NextKeyMarker>${endless.mode === 'new-keys' ? newKey : prefix}</NextKeyMarker><NextVersionIdMarker>${marker}</NextVersionIdMarker>${items}</ListVersionsResult>`,
      )
      return
    }
    if (req.method === 'GET' && key === '' && q.get('list-type') === '2') {
      const prefix = q.get('prefix') ?? ''
      const after = q.get('continuation-token') ?? ''
      const unlisted = this.hostility.unlistedUnder
      const all = this.keys().filter((k) => k.startsWith(prefix) && k > after && this.#latest(k) !== undefined && (unlisted === undefined || !k.startsWith(unlisted)))
      const page = all.slice(0, 1)
      const truncated = all.length > 1
      const noToken = this.hostility.noTokenUnder !== undefined && prefix.startsWith(this.hostility.noTokenUnder)
      const contents = page.map((k) => {
        const v = this.#latest(k) as Version
        const when = this.hostility.noLastModified === true ? '' : `<LastModified>${v.lastModified.toISOString()}</LastModified>`
        return `<Contents><Key>${k}</Key>${when}<ETag>"e"</ETag><Size>${v.body.length}</Size><StorageClass>STANDARD</StorageClass></Contents>`
      })
      xml(
        `<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>${bucket}</Name><Prefix>${prefix}</Prefix><KeyCount>${page.length}</KeyCount><MaxKeys>1</MaxKeys><IsTruncated>${truncated}</IsTruncated>${truncated && !noToken ? `<NextContinuationToken>${page[0]}</NextContinuationToken>` : ''}${contents.join('')}</ListBucketResult>`,
      )
      return
    }
    if (req.method === 'GET' && key === '' && q.has('versions') && this.hostility.noVersionListing === true) {
      res.statusCode = 403
      xml(`<Error><Code>AccessDenied</Code><Message>Access Denied</Message><Resource>/${bucket}</Resource></Error>`)
      return
    }
    if (req.method === 'GET' && key === '' && q.has('versions')) {
      const prefix = q.get('prefix') ?? ''
      // by key, each key's newest first (S3's order), paged after (key-marker, version-id-marker)
      const entries = this.keys()
        .filter((k) => k.startsWith(prefix))
        .flatMap((k) => [...(this.objects.get(k) ?? [])].reverse().map((v, i) => ({ k, v, latest: i === 0 })))
      const km = q.get('key-marker')
      const vm = q.get('version-id-marker')
      let start = 0
      if (km !== null) {
        const at = vm === null || vm === '' ? -1 : entries.findIndex((e) => e.k === km && e.v.id === vm)
        start = at >= 0 ? at + 1 : entries.filter((e) => e.k <= km).length
      }
      const max = Math.min(q.has('max-keys') ? Number(q.get('max-keys')) : 1, this.hostility.versionPageSize ?? Number.POSITIVE_INFINITY)
      const page = entries.slice(start, start + max)
      const truncated = start + max < entries.length
      const last = this.hostility.noTokenUnder !== undefined && prefix.startsWith(this.hostility.noTokenUnder) ? undefined : page.at(-1)
      const when = (v: Version): string => (this.hostility.noLastModified === true ? '' : `<LastModified>${v.lastModified.toISOString()}</LastModified>`)
      const items = page.map(({ k, v, latest }) =>
        v.marker === true
          ? `<DeleteMarker><Key>${k}</Key><VersionId>${v.id}</VersionId><IsLatest>${latest}</IsLatest>${when(v)}</DeleteMarker>`
          : `<Version><Key>${k}</Key><VersionId>${v.id}</VersionId><IsLatest>${latest}</IsLatest>${when(v)}<ETag>"e"</ETag><Size>${v.body.length}</Size></Version>`,
      )
      xml(
        `<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>${bucket}</Name><Prefix>${prefix}</Prefix><MaxKeys>${max}</MaxKeys><IsTruncated>${truncated}</IsTruncated>${truncated && last !== undefined ? `<NextKeyMarker>${last.k}</NextKeyMarker><NextVersionIdMarker>${last.v.id}</NextVersionIdMarker>` : ''}${items.join('')}</ListVersionsResult>`,
      )
      return
    }
    if ((req.method === 'PUT' || req.method === 'DELETE') && this.hostility.readOnly === true) {
      res.statusCode = 403
      xml(`<Error><Code>AccessDenied</Code><Message>Access Denied</Message><Key>${key}</Key></Error>`)
      return
    }
    if (req.method === 'PUT') {
      await this.hostility.holdPut?.(key)
      this.put(key, Buffer.concat(chunks))
      res.setHeader('etag', `"${createHash('md5').update(Buffer.concat(chunks)).digest('hex')}"`)
      res.end()
      this.hostility.afterPut?.(key)
      return
    }
    if (req.method === 'DELETE') {
      const id = q.get('versionId')
      if (id === null) {
        this.hide(key)
        res.statusCode = 204
        res.end()
        return
      }
      const left = (this.objects.get(key) ?? []).filter((v) => v.id !== id)
      if (left.length === 0) this.objects.delete(key)
      else this.objects.set(key, left)
      res.statusCode = 204
      res.end()
      if (left.length === 0) this.hostility.afterDelete?.(key)
      return
    }
    if (req.method === 'GET' && key === this.hostility.stallBody) {
      const v = this.#latest(key) as Version
      res.setHeader('content-length', String(v.body.length))
      res.setHeader('last-modified', v.lastModified.toUTCString())
      res.setHeader('etag', '"e"')
      res.write(v.body.subarray(0, v.body.length >> 1)) // and nothing more
      return
    }
    const endlessBody = this.hostility.endless
    if (req.method === 'GET' && endlessBody !== undefined && key === endlessBody.key) {
      const endless = endlessBody
      endless.done = new Promise<void>((resolve) => {
        res.setHeader('last-modified', new Date().toUTCString())
        res.setHeader('etag', '"e"')
        const piece = Buffer.alloc(MiB)
        let closed = false
        res.on('close', () => {
          closed = true
          resolve()
        })
        const pump = (): void => {
          while (!closed && endless.sent < 128 * MiB) {
            endless.sent += piece.length
            if (!res.write(piece)) return void res.once('drain', pump)
          }
          if (!closed) res.end()
        }
        pump()
      })
      return
    }
    const id = q.get('versionId')
    const v = id === null ? this.#latest(key) : this.objects.get(key)?.find((x) => x.id === id && x.marker !== true)
    if (v === undefined) {
      res.statusCode = 404
      if (req.method === 'HEAD') res.end()
      else xml(`<Error><Code>NoSuchKey</Code><Message>no such key</Message><Key>${key}</Key></Error>`)
      return
    }
    res.setHeader('content-length', String(v.body.length))
    res.setHeader('last-modified', v.lastModified.toUTCString())
    res.setHeader('etag', '"e"')
    res.setHeader('x-amz-version-id', v.id)
    res.end(req.method === 'HEAD' ? undefined : v.body)
    if (req.method === 'HEAD') this.hostility.afterHead?.(key)
  }

  /** the current version of `key`; undefined when a delete marker hides it */
  #latest(key: string): Version | undefined {
    const v = this.objects.get(key)?.at(-1)
    return v?.marker === true ? undefined : v
  }
}

const digest = (s: string): string => createHash('sha256').update(s).digest('hex')

/** A logger at `warn` and the lines it wrote. */
function captureWarnings(): { lines: string[]; logger: Logger } {
  const lines: string[] = []
  return { lines, logger: pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) }) }
}

/** A run lock `key` (its kind from the key) whose body holds `fields`, written `ageMs` ago by the S3 server's clock (the time in its body too). */
function plantLock(s3: TinyS3, key: string, fields: Record<string, unknown>, ageMs: number): Date {
  const at = new Date(s3.now().getTime() - ageMs)
  s3.objects.delete(key)
  s3.put(key, Buffer.from(JSON.stringify({ kind: /\/locks\/([a-z]+)-/.exec(key)?.[1], time: at.toISOString(), ...fields })), at)
  return at
}

/** A manifest of `vm`'s point `cycle` whose one disk (a chunk of capacity) is chunk `c`. */
function manifest(vm: string, cycle: number, c: string, archivedAt: Date): Buffer {
  return encodeManifest({
    format: ARCHIVE_FORMAT,
    vm,
    cycle,
    committedAt: archivedAt.toISOString(),
    generation: 'ab'.repeat(8),
    archivedAt: archivedAt.toISOString(),
    retainUntil: null,
    chunkBytes: ARCHIVE_CHUNK_BYTES,
    disks: [{ name: 'd.vmdk', stem: 'd', capacity: ARCHIVE_CHUNK_BYTES, sha256: c, chunks: [c], ddb: {} }],
    files: [],
  })
}

const old = new Date(Date.now() - 30 * 24 * 3600_000)
const HOUR = 3600_000
const MIN = 60_000

/** Points 1 and 2 of VM `web`, each with a chunk of its own, written a month ago. */
async function setUp(t: Test, timeouts?: S3Timeouts): Promise<{ s3: TinyS3; bucket: S3Bucket; a: string; b: string }> {
  const s3 = new TinyS3()
  const endpoint = await s3.start()
  t.teardown(() => s3.stop())
  const bucket = new S3Bucket({ bucket: 'arch', prefix: '', endpoint, credentials: { accessKeyId: 'k', secretAccessKey: 's' }, ...(timeouts === undefined ? {} : { timeouts }) })
  t.teardown(() => bucket.close())
  const a = digest('a')
  const b = digest('b')
  s3.put(chunkKey('p/', a), Buffer.from('a'), old)
  s3.put(chunkKey('p/', b), Buffer.from('b'), old)
  s3.put(manifestKey('p/', 'web', 1), manifest('web', 1, a, old), old)
  s3.put(manifestKey('p/', 'web', 2), manifest('web', 2, b, old), old)
  return { s3, bucket, a, b }
}

/** A store whose VM `vm` committed one seed cycle of `data` (receiver closed), and an empty {@link TinyS3} with its bucket `arch`. */
async function seededStore(t: Test, vm: string, data: Buffer, vmx?: string): Promise<{ store: string; s3: TinyS3; bucket: S3Bucket }> {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', data, 'ae01ae01ae01ae01')], vmx === undefined ? {} : { files: [{ name: `${vm}.vmx`, data: Buffer.from(vmx) }] })
  a.close()
  await receiver.close()
  const s3 = new TinyS3()
  const endpoint = await s3.start()
  t.teardown(() => s3.stop())
  const bucket = new S3Bucket({ bucket: 'arch', prefix: '', endpoint, credentials: { accessKeyId: 'k', secretAccessKey: 's' } })
  t.teardown(() => bucket.close())
  return { store: env.store, s3, bucket }
}

t.test('a manifest listing truncated without a continuation token is refused (E_ARCHIVE), nothing deleted', async (t) => {
  const { s3, bucket } = await setUp(t)
  const before = s3.keys()
  s3.hostility.noTokenUnder = 'p/vms/'
  await t.rejects(pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 5, graceMs: 0 }), { code: 'E_ARCHIVE', message: /truncated but gave no key marker \(versions\).*never used/ })
  t.same(s3.keys(), before, 'no chunk deleted (the chunk of the unlisted point 2 is still there), no lock left')
  await t.rejects(bucket.list('p/vms/'), { code: 'E_ARCHIVE' }, 'list() refuses it too')
  s3.hostility.noTokenUnder = undefined
  t.same(await bucket.list('p/'), before, 'a well-paged listing (one key a page) is whole')
})

t.test('a manifest deleted but listed again right after (written anew meanwhile) still references its chunks', async (t) => {
  const { s3, bucket, a, b } = await setUp(t)
  const m1 = manifestKey('p/', 'web', 1)
  const body = s3.objects.get(m1)?.[0]?.body as Buffer
  // a points archive of point 1 (its run lock stale) writes the manifest again just as the prune deletes it
  s3.hostility.afterDelete = (key) => {
    if (key === m1) s3.put(m1, body)
  }
  const r = await pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0 })
  t.same(
    r.manifests.deleted.map((m) => m.cycle),
    [1],
    'point 1 selected and deleted',
  )
  t.equal(r.chunks.deleted, 0, 'no chunk deleted: point 1’s manifest is there again and references its chunk')
  t.ok(s3.objects.has(chunkKey('p/', a)), 'point 1’s chunk is kept')
  t.ok(s3.objects.has(chunkKey('p/', b)), 'point 2’s chunk is kept')
  t.ok(s3.objects.has(m1), 'point 1’s manifest (written anew) is there')

  // without the concurrent writer, the chunk only point 1 used goes
  s3.hostility.afterDelete = undefined
  const r2 = await pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0 })
  t.same([r2.manifests.deleted.length, r2.chunks.deleted], [1, 1])
  t.notOk(s3.objects.has(chunkKey('p/', a)), 'point 1’s chunk deleted once no manifest references it')
  t.same(s3.keys(), [chunkKey('p/', b), manifestKey('p/', 'web', 2)], 'point 2 and its chunk left, no lock')
})

t.test('a prune whose run lock was not rewritten for LOCK_HELD_MS (its refreshes failed) stops before deleting more (E_ARCHIVE)', async (t) => {
  const { s3, bucket, a, b } = await setUp(t)
  const m1 = manifestKey('p/', 'web', 1)
  // the run goes on; every refresh of its lock fails (S3 refuses writes under locks/, say): once the first manifest
  // is deleted, LOCK_HELD_MS have passed without a write — soon a points archive would take the lock for stale
  let skew = 0
  s3.hostility.afterDelete = (key) => {
    if (key.startsWith('p/vms/')) skew = LOCK_HELD_MS
  }
  await t.rejects(pruneArchive({ logger: log, bucket, prefix: 'p/', vm: 'web', keepLast: 0, graceMs: 0, monotonic: () => performance.now() + skew }), {
    code: 'E_ARCHIVE',
    message: /run lock s3:\/\/arch\/p\/locks\/prune-.* was last written 60 min ago .*nothing more deleted/,
  })
  t.same(s3.keys(), [chunkKey('p/', a), chunkKey('p/', b), m1].sort(), 'the newest manifest (point 2) deleted first, then nothing more (no manifest, no chunk); the lock released')
})

t.test('an archive whose run lock was not rewritten for LOCK_HELD_MS (its refreshes failed) writes no manifest (E_ARCHIVE)', async (t) => {
  const vm = 'web-stale'
  const { store, s3, bucket } = await seededStore(t, vm, pattern(4 * MiB, 5))
  // the chunks go up while every refresh of the run lock fails: by the manifest, LOCK_HELD_MS have passed without a write
  let skew = 0
  s3.hostility.afterPut = (key) => {
    if (key.startsWith('p/chunks/')) skew = LOCK_HELD_MS
  }
  await t.rejects(archivePoints(store, vm, undefined, { logger: log, bucket, prefix: 'p/', monotonic: () => performance.now() + skew }), {
    code: 'E_ARCHIVE',
    message: /run lock s3:\/\/arch\/p\/locks\/archive-.* was last written 60 min ago .*archive stopped before writing the manifest/,
  })
  const keys = s3.keys()
  t.ok(keys.length > 0 && keys.every((k) => k.startsWith('p/chunks/')), `chunks uploaded, no manifest written, the lock released: ${keys.length} keys`)
  // with its lock held, the next run archives the point
  s3.hostility.afterPut = undefined
  skew = 0
  const done = await archivePoints(store, vm, undefined, { logger: log, bucket, prefix: 'p/' })
  t.same(
    done.map((p) => [p.cycle, p.archived]),
    [[1, true]],
  )
  t.ok(s3.objects.has(manifestKey('p/', vm, 1)), 'the manifest written')
})

t.test('a GET whose body has no Content-Length is read only up to the bound, then abandoned (E_ARCHIVE)', async (t) => {
  const { s3, bucket } = await setUp(t)
  const key = manifestKey('p/', 'web', 9)
  const endless: NonNullable<Hostility['endless']> = { key, sent: 0 }
  s3.hostility.endless = endless
  await t.rejects(bucket.get(key, MiB), { code: 'E_ARCHIVE', message: /over the 1048576 bytes expected/ })
  await endless.done
  // the receiver stopped reading after its bound: the server could hand the socket a few MiB of buffers more, not 128
  t.ok(endless.sent < 32 * MiB, `the server sent ${endless.sent / MiB} MiB before the receiver closed the connection (bound 1 MiB)`)
})

t.test("age alone never deletes a VM's newest archived point; --keep-last 0 only for one named VM", async (t) => {
  const { s3, bucket, a, b } = await setUp(t)
  const m1 = manifestKey('p/', 'web', 1)
  const m2 = manifestKey('p/', 'web', 2)
  // archiving of web stopped a month ago (broken, or stopped by an attacker who waits for the retention to pass)
  const r = await pruneArchive({ logger: log, bucket, prefix: 'p/', olderThanMs: 7 * 24 * 3600_000, graceMs: 0 })
  t.same(
    r.manifests.deleted.map((m) => m.cycle),
    [1],
    'older-than 7d: point 1 deleted, point 2 (the newest of web, a month old) kept',
  )
  t.same(s3.keys(), [chunkKey('p/', b), m2].sort(), 'the newest point and its chunk are still there')
  t.notOk(s3.keys().includes(chunkKey('p/', a)), 'the chunk only point 1 used is gone')
  t.notOk(s3.keys().includes(m1))
  await t.rejects(pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 0, graceMs: 0 }), { code: 'E_CONFIG', message: /--keep-last 0 .*only with --vm/ }, 'keep-last 0 for every VM: refused')
  t.same(s3.keys(), [chunkKey('p/', b), m2].sort(), 'nothing deleted by the refused run')
  const all = await pruneArchive({ logger: log, bucket, prefix: 'p/', vm: 'web', keepLast: 0, graceMs: 0 })
  t.same(
    all.manifests.deleted.map((m) => m.cycle),
    [2],
    '--vm web --keep-last 0: the whole archive of that VM',
  )
})

t.test('a lock body written by anyone with the bucket: its fields reach the E_BUSY message without control characters, bounded', async (t) => {
  const { s3, bucket } = await setUp(t)
  const host = `evil\u001b]0;owned\u0007\nfake log line\u202e${'x'.repeat(500)}`
  s3.put('p/locks/archive-other', Buffer.from(JSON.stringify({ kind: 'archive', host, pid: 7, time: new Date().toISOString() })))
  const before = s3.keys()
  const err = await pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0 }).then(
    () => undefined,
    (e: unknown) => e as Error & { code?: string },
  )
  t.equal(err?.code, 'E_BUSY', 'the prune refuses while an archive lock is there')
  t.match(err?.message, /host evil ]0;owned fake log line x+… pid 7 since /, 'the host named, its control characters as spaces, cut')
  t.notMatch(err?.message, /[\u0000-\u001f\u007f-\u009f\u202e]/, 'no control character or bidi override in the message')
  t.same(s3.keys(), before, 'nothing deleted, no lock of its own left')
})

t.test('read-only credentials: a restore goes on without its run lock (warned), byte-exact; an archive and a prune refuse', async (t) => {
  const vm = 'web-ro'
  const data = pattern(4 * MiB, 7)
  const { store, s3, bucket } = await seededStore(t, vm, data)
  await archivePoints(store, vm, undefined, { logger: log, bucket, prefix: 'p/' })
  const before = s3.keys()
  s3.hostility.readOnly = true
  const lines: string[] = []
  const warned = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) })
  const to = join(scratchDir(t), 'restored')
  const r = await restoreFromArchive(bucket, 'p/', vm, 1, to, { logger: warned })
  t.equal(r.disks.length, 1, 'restored')
  t.ok((await readFile(join(to, 'd-flat.vmdk'))).equals(data), 'byte-exact')
  t.match(lines.join(''), /WITHOUT the archive's run lock: the S3 credentials may not write under p\/locks\/ \(read-only\)/, 'the restore says it ran without its lock, and why')
  const warning = lines.map((l) => JSON.parse(l) as { msg?: string; why?: unknown; err?: unknown }).find((l) => l.msg?.includes('WITHOUT') === true)
  t.type(warning?.why, 'string', "S3's refusal in words")
  t.equal(warning?.err, undefined, 'no stack or cause chain for an expected refusal')
  t.same(s3.keys(), before, 'nothing written to the bucket')
  await t.rejects(
    archivePoints(store, vm, undefined, { logger: log, bucket, prefix: 'p/' }),
    { code: 'E_ARCHIVE', message: /S3 refused to write the run lock .*\(403\)/ },
    'an archive does not run without its lock',
  )
  await t.rejects(pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0 }), { code: 'E_ARCHIVE', message: /S3 refused to write the run lock/ }, 'nor a prune')
})

t.test('read-only credentials: a restore refuses up front (E_BUSY) beside a fresh prune lock, judged by S3’s clock; a stale one, an archive or a restore lock does not stop it', async (t) => {
  const vm = 'web-ro-busy'
  const data = pattern(4 * MiB, 5)
  const { store, s3, bucket } = await seededStore(t, vm, data)
  await archivePoints(store, vm, undefined, { logger: log, bucket, prefix: 'p/' })
  s3.hostility.readOnly = true
  const prune = (ageMs: number): void => {
    s3.objects.delete('p/locks/prune-other')
    const at = new Date(s3.now().getTime() - ageMs)
    s3.put('p/locks/prune-other', Buffer.from(JSON.stringify({ kind: 'prune', host: 'dr-host-3', pid: 42, time: at.toISOString() })), at)
  }
  const base = scratchDir(t)
  // a prune that started 1 h 58 min ago by S3's clock (a refresh since would only make it younger)
  prune(LOCK_STALE_MS - 2 * MIN)
  const busy = join(base, 'busy')
  await t.rejects(restoreFromArchive(bucket, 'p/', vm, 1, busy, { logger: log }), {
    code: 'E_BUSY',
    message:
      /cannot restore from the archive in s3:\/\/arch\/p\/: a points archive-prune holds the lock p\/locks\/prune-other \(host dr-host-3 pid 42 since .*read-only credentials.*Run again once it has finished \(on host dr-host-3: ps -p 42\); if no such run is alive, delete that object \(s3:\/\/arch\/p\/locks\/prune-other, with credentials that may write under p\/locks\/\), or wait until it is 2 h old.*grainline restore --from s3:\/\/arch\/p\/ … --despite-lock p\/locks\/prune-other — you assert the prune is dead/,
  })
  t.same(await readdir(busy).catch(() => []), [], 'nothing written: refused before the restore began')
  // S3's clock 3 h behind the host's: by the local clock (less the 5 min allowed) the fresh prune lock would look 2 h 55 min
  // old (stale); by the listing's Date it is not
  s3.clockSkewMs = -3 * HOUR
  prune(0)
  await t.rejects(
    restoreFromArchive(bucket, 'p/', vm, 1, join(base, 'skewed'), { logger: log }),
    { code: 'E_BUSY', message: /points archive-prune holds the lock p\/locks\/prune-other/ },
    'judged by S3’s clock',
  )
  s3.clockSkewMs = 0
  // a prune lock 2 h 2 min old by S3's clock is stale: ignored; archive and restore locks never stop a restore
  prune(LOCK_STALE_MS + 2 * MIN)
  s3.put('p/locks/archive-other', Buffer.from('{}'))
  s3.put('p/locks/restore-other', Buffer.from('{}'))
  const lines: string[] = []
  const warned = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) })
  const r = await restoreFromArchive(bucket, 'p/', vm, 1, join(base, 'ok'), { logger: warned })
  t.ok((await readFile(r.disks[0]?.flat as string)).equals(data), 'restored byte-exact beside a stale prune lock and fresh archive and restore locks')
  t.match(lines.join(''), /WITHOUT the archive's run lock/, 'still warned: no lock of its own')
})

t.test(
  'despiteLock: beside the named fresh prune lock only (warned, by the S3 clock’s rule); a stale or absent one is warned of as overriding nothing; a malformed key is E_CONFIG before any request',
  async (t) => {
    const vm = 'web-despite'
    const data = pattern(4 * MiB, 9)
    const { store, s3, bucket } = await seededStore(t, vm, data)
    await archivePoints(store, vm, undefined, { logger: log, bucket, prefix: 'p/' })
    const dead = 'p/locks/prune-dead'
    plantLock(s3, dead, { host: 'dr-host-5', pid: 55 }, 10 * MIN)
    const base = scratchDir(t)
    for (const readOnly of [true, false]) {
      s3.hostility.readOnly = readOnly
      const lines: string[] = []
      const warned = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) })
      const r = await restoreFromArchive(bucket, 'p/', vm, 1, join(base, `ok-${readOnly}`), { logger: warned, despiteLock: dead })
      t.ok((await readFile(r.disks[0]?.flat as string)).equals(data), `read-only ${readOnly}: restored byte-exact beside the named lock`)
      t.match(lines.join(''), /going on beside the lock p\/locks\/prune-dead of a points archive-prune \(host dr-host-5 pid 55 since .*, fresh\), as --despite-lock asked/, 'warned, naming the lock')
    }
    t.same(
      s3.keys().filter((k) => k.startsWith('p/locks/')),
      [dead],
      'the named lock is left; no restore lock left',
    )
    // stale by S3's clock: ignored anyway; the option overrode nothing, and says so
    s3.objects.delete(dead)
    const old = new Date(s3.now().getTime() - LOCK_STALE_MS - 2 * MIN)
    s3.put(dead, Buffer.from('{}'), old)
    const lines: string[] = []
    const warned = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) })
    await restoreFromArchive(bucket, 'p/', vm, 1, join(base, 'stale'), { logger: warned, despiteLock: dead })
    t.match(lines.join(''), /--despite-lock p\/locks\/prune-dead: no fresh lock of that key is under p\/locks\/ now .*nothing overridden/)
    const requests = s3.keys()
    await t.rejects(restoreFromArchive(bucket, 'p/', vm, 1, join(base, 'bad'), { logger: log, despiteLock: 'q/locks/prune-dead' }), {
      code: 'E_CONFIG',
      message: /--despite-lock q\/locks\/prune-dead: want the key of a points archive-prune lock of this archive, p\/locks\/prune-…/,
    })
    await t.rejects(restoreFromArchive(bucket, 'p/', vm, 1, join(base, 'bad'), { logger: log, despiteLock: 'p/locks/archive-1' }), { code: 'E_CONFIG' })
    t.same(s3.keys(), requests, 'nothing written')
    await t.rejects(readdir(join(base, 'bad')), { code: 'ENOENT' }, 'no folder made')
  },
)

t.test('points archived lists a manifest hidden behind a delete marker (restorable), marked; a key with markers alone is no point; the listing is bounded', { timeout: 120_000 }, async (t) => {
  const { s3, bucket } = await setUp(t)
  s3.hide(manifestKey('p/', 'web', 2))
  s3.hide(manifestKey('p/', 'web', 3)) // markers alone: nothing to restore
  s3.put('p/vms/web/points/sub/000000000004.json', Buffer.from('{}')) // not a manifest key of web
  t.same(
    await listArchivedPoints(bucket, 'p/', 'web'),
    [
      { cycle: 1, hidden: false },
      { cycle: 2, hidden: true },
    ],
    'point 2, hidden, listed and marked',
  )
  t.same(await listArchivedPoints(bucket, 'p/', 'nobody'), [])
  // credentials without s3:ListBucketVersions: the current points, and the caller told what it cannot see
  s3.hostility.noVersionListing = true
  const refused: unknown[] = []
  t.same(await listArchivedPoints(bucket, 'p/', 'web', (err) => refused.push(err)), [{ cycle: 1, hidden: false }], 'a plain listing: the current point')
  t.equal(refused.length, 1, 'the caller is told the versions were refused')
  t.match(refused[0], { code: 'E_ARCHIVE' })
  s3.hostility.noVersionListing = false
  s3.hostility.endlessListing = { prefix: 'p/vms/web/points/', mode: 'new-keys', pages: 0 }
  await t.rejects(listArchivedPoints(bucket, 'p/', 'web'), { code: 'E_ARCHIVE', message: /S3 listing s3:\/\/arch\/p\/vms\/web\/points\/ .*never used/ }, 'a listing without end: refused')
})

t.test('a listing without LastModified: an unreferenced chunk is taken as just written (kept), a lock as fresh (refused), never as written in 1970', async (t) => {
  const { s3, bucket, a, b } = await setUp(t)
  s3.hostility.noLastModified = true
  // a chunk an archive in progress has just uploaded, its manifest not yet written
  const c = digest('c')
  s3.put(chunkKey('p/', c), Buffer.from('c'))
  const r = await pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 5 })
  t.same([r.chunks.deleted, r.chunks.young], [0, 1], 'the unreferenced chunk of unknown age is young: not deleted')
  t.same(s3.keys(), [chunkKey('p/', a), chunkKey('p/', b), chunkKey('p/', c), manifestKey('p/', 'web', 1), manifestKey('p/', 'web', 2)].sort(), 'nothing deleted')
  // an archive's lock, of unknown age: a prune refuses beside it (it was ignored as 56 years old)
  s3.put('p/locks/archive-other', Buffer.from(JSON.stringify({ kind: 'archive', host: 'h', pid: 7, time: new Date().toISOString() })))
  await t.rejects(pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0 }), { code: 'E_BUSY', message: /points archive holds the lock p\/locks\/archive-other/ })
  t.ok(s3.objects.has(manifestKey('p/', 'web', 1)), 'point 1 not deleted')
})

t.test('a manifest that does not parse, found after manifests were deleted: refused, saying what was deleted (not "nothing")', async (t) => {
  const { s3, bucket, a, b } = await setUp(t)
  const m1 = manifestKey('p/', 'web', 1)
  // something writes under vms/ while the prune deletes point 1's manifest
  s3.hostility.afterDelete = (key) => {
    if (key === m1) s3.put('p/vms/web/points/000000000003.json', Buffer.from('{"torn'))
  }
  const err = await pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0 }).then(
    () => undefined,
    (e: unknown) => e as Error & { code?: string },
  )
  t.equal(err?.code, 'E_ARCHIVE')
  t.notMatch(err?.message, /nothing was deleted/, 'it does not claim nothing was deleted')
  t.match(err?.message, /no chunk was deleted; 1 manifest was deleted before/, 'what was deleted')
  t.notOk(s3.objects.has(m1), 'point 1’s manifest was deleted indeed')
  t.ok(s3.objects.has(chunkKey('p/', a)) && s3.objects.has(chunkKey('p/', b)), 'no chunk deleted')
})

t.test('object names written by anyone with the bucket reach a message with their control characters and bidi overrides escaped', async (t) => {
  const { s3, bucket } = await setUp(t)
  // a lock whose name reverses what follows it on the operator's terminal
  s3.put('p/locks/archive-\u202eevil\u0085x', Buffer.from(JSON.stringify({ kind: 'archive', host: 'h', pid: 7, time: new Date().toISOString() })))
  const busy = await pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0 }).then(
    () => undefined,
    (e: unknown) => e as Error & { code?: string },
  )
  t.equal(busy?.code, 'E_BUSY')
  t.match(busy?.message, /holds the lock p\/locks\/archive-\\u202eevil\\u0085x \(/, 'the name shown escaped, exact')
  t.notMatch(busy?.message, /[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/, 'no control character or bidi override')
  s3.objects.delete('p/locks/archive-\u202eevil\u0085x')
  // a manifest under a key, and naming a VM, with a bidi override
  s3.put('p/vms/w\u202eb/points/000000000001.json', manifest('web\u202e\u009b2J', 1, digest('a'), old), old)
  const bad = await pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0 }).then(
    () => undefined,
    (e: unknown) => e as Error & { code?: string },
  )
  t.equal(bad?.code, 'E_ARCHIVE')
  t.match(bad?.message, /manifest s3:\/\/arch\/p\/vms\/w\\u202eb\/points\/000000000001\.json describes VM web\\u202e\\u009b2J cycle 1/, 'key and VM escaped')
  t.notMatch(bad?.message, /[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/, 'no control character or bidi override')
})

t.test('a refresh of a run lock that hangs is not overtaken by the next: the release waits for it, and no lock is left behind', async (t) => {
  const { s3, bucket } = await setUp(t)
  mock.timers.enable({ apis: ['setInterval'] })
  t.teardown(() => mock.timers.reset())
  const lock = await takeRunLock(bucket, 'p/', 'prune', log)
  // the first refresh hangs (a connection that does not answer); the server lets it through only later
  let free: () => void = () => {}
  const held = new Promise<void>((resolve) => {
    free = resolve
  })
  let puts = 0
  let stored: Promise<void> | undefined
  s3.hostility.holdPut = (key) => {
    if (!key.startsWith('p/locks/')) return undefined
    puts++
    if (puts !== 1) return undefined
    stored = held
    return held
  }
  mock.timers.tick(LOCK_REFRESH_MS)
  await new Promise((r) => setTimeout(r, 200))
  mock.timers.tick(LOCK_REFRESH_MS)
  await new Promise((r) => setTimeout(r, 200))
  t.equal(puts, 1, 'no second refresh while the first is in flight')
  const released = lock.release()
  await new Promise((r) => setTimeout(r, 300))
  free()
  await released
  await stored
  await new Promise((r) => setTimeout(r, 200))
  t.same(
    s3.keys().filter((k) => k.startsWith('p/locks/')),
    [],
    'no lock left: the hung refresh landed before the lock was deleted, never after',
  )
})

/** An archive lock another host wrote `ageMs` ago by the S3 server's clock. */
function otherArchiveLock(s3: TinyS3, ageMs: number): void {
  s3.objects.delete('p/locks/archive-other')
  s3.put(
    'p/locks/archive-other',
    Buffer.from(JSON.stringify({ kind: 'archive', host: 'dr-host-2', pid: 7, time: new Date(s3.now().getTime() - ageMs).toISOString() })),
    new Date(s3.now().getTime() - ageMs),
  )
}

t.test('a host whose clock is 2 h off S3’s: archive-prune refuses (E_ARCHIVE, the skew named), never takes a fresh lock for stale', async (t) => {
  const { s3, bucket } = await setUp(t)
  otherArchiveLock(s3, 0)
  const before = s3.keys()
  // 2 h ahead: by its own clock the archive lock just written is 2 h old, "stale" — the prune ran beside the archive
  await t.rejects(pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0, now: () => Date.now() + 2 * HOUR }), {
    code: 'E_ARCHIVE',
    message:
      /cannot prune the archive in s3:\/\/arch\/p\/: the local clock of .* is 2 h 0 min ahead of the S3 server's \(its LastModified on the run lock p\/locks\/prune-.*more than the 5 min allowed.*Fix the clock \(NTP/,
  })
  t.same(s3.keys(), before, 'nothing deleted, no prune lock left')
  // 2 h behind: a dead archive's lock written 3 h ago looks 1 h old for ever — refused the same way, not E_BUSY
  otherArchiveLock(s3, 3 * HOUR)
  await t.rejects(pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0, now: () => Date.now() - 2 * HOUR }), {
    code: 'E_ARCHIVE',
    message: /the local clock of .* is 2 h 0 min behind the S3 server's/,
  })
  t.same(s3.keys(), before, 'nothing deleted, no prune lock left')
  // the S3 server's clock off instead of the host's: the same
  s3.clockSkewMs = -2 * HOUR
  otherArchiveLock(s3, 0)
  await t.rejects(pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0 }), { code: 'E_ARCHIVE', message: /is 2 h 0 min ahead of the S3 server's/ })
  t.same(s3.keys(), before, 'nothing deleted, no prune lock left')
})

t.test('within the bound, a lock’s age is S3’s: 4 min ahead, a lock 1 h 58 min old is fresh; 4 min behind, one 2 h 2 min old is stale', async (t) => {
  const { s3, bucket } = await setUp(t)
  otherArchiveLock(s3, LOCK_STALE_MS - 2 * MIN)
  await t.rejects(
    pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0, now: () => Date.now() + 4 * MIN }),
    { code: 'E_BUSY', message: /a points archive holds the lock p\/locks\/archive-other \(host dr-host-2 pid 7/ },
    'the archive lock is fresh by S3’s clock: the prune refuses',
  )
  otherArchiveLock(s3, LOCK_STALE_MS + 2 * MIN)
  const r = await pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0, now: () => Date.now() - 4 * MIN })
  t.same(
    r.manifests.deleted.map((m) => m.cycle),
    [1],
    'the archive lock is stale by S3’s clock: ignored, the prune runs',
  )
})

t.test('the grace period is S3’s clock: a chunk 23 h 58 min old is young for a host 4 min ahead; one 24 h 2 min old is not, 4 min behind', async (t) => {
  const { s3, bucket } = await setUp(t)
  const young = chunkKey('p/', digest('young'))
  const due = chunkKey('p/', digest('due'))
  s3.put(young, Buffer.from('young'), new Date(s3.now().getTime() - 24 * HOUR + 2 * MIN))
  s3.put(due, Buffer.from('due'), new Date(s3.now().getTime() - 24 * HOUR - 2 * MIN))
  const ahead = await pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 5, now: () => Date.now() + 4 * MIN, dryRun: true })
  t.same([ahead.chunks.young, ahead.chunks.deleted], [1, 1], '4 min ahead: the 23 h 58 min old chunk is within the grace, the other is not')
  const behind = await pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 5, now: () => Date.now() - 4 * MIN })
  t.same([behind.chunks.young, behind.chunks.deleted], [1, 1], '4 min behind: the same')
  t.ok(s3.objects.has(young), 'the young chunk is kept')
  t.notOk(s3.objects.has(due), 'the one past the grace is deleted')
})

t.test('a listing of locks/ that does not show the lock just written: refused (E_ARCHIVE), nothing deleted', async (t) => {
  const { s3, bucket } = await setUp(t)
  const before = s3.keys()
  s3.hostility.unlistedUnder = 'p/locks/'
  await t.rejects(pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0 }), {
    code: 'E_ARCHIVE',
    message: /the listing of p\/locks\/ right after writing the run lock p\/locks\/prune-.* does not show it.*exclusion/,
  })
  t.same(s3.keys(), before, 'nothing deleted, no lock left')
})

t.test('a manifest hidden behind a delete marker is still a point: counted by the policy, its chunks kept until it is selected', async (t) => {
  const { s3, bucket, a, b } = await setUp(t)
  const m1 = manifestKey('p/', 'web', 1)
  const m2 = manifestKey('p/', 'web', 2)
  // someone with the receiver's keys hides web's newest point (a plain DELETE), then waits for the age rule
  s3.hide(m2)
  // and a key with markers alone (nothing to restore) is no point
  s3.hide(manifestKey('p/', 'gone', 1))
  const r = await pruneArchive({ logger: log, bucket, prefix: 'p/', olderThanMs: 7 * 24 * HOUR, graceMs: 0 })
  t.same(r.manifests.hidden, [m2], 'the hidden manifest is seen')
  t.equal(r.manifests.examined, 2)
  t.same(
    r.manifests.deleted.map((m) => m.cycle),
    [1],
    'point 2, hidden, is web’s newest: kept; point 1 deleted',
  )
  t.same(r.chunks.deleted, 1, 'only point 1’s chunk collected')
  t.ok(s3.objects.has(chunkKey('p/', b)), 'the hidden point’s chunk is kept')
  t.notOk(s3.objects.has(chunkKey('p/', a)))
  t.notOk(s3.objects.has(m1))
  t.equal(s3.objects.get(m2)?.length, 2, 'the hidden manifest is left as it is (its version and the marker)')
  // selected, a hidden manifest goes like any other: every version and the marker
  const all = await pruneArchive({ logger: log, bucket, prefix: 'p/', vm: 'web', keepLast: 0, graceMs: 0 })
  t.same(
    all.manifests.deleted.map((m) => m.cycle),
    [2],
  )
  t.notOk(s3.objects.has(m2), 'no version or marker of it left')
  t.same(s3.keys(), [manifestKey('p/', 'gone', 1)], 'its chunk collected; the lone marker left alone')
})

t.test('clock skew beyond the bound: an archive refuses, a restore warns and goes on; a hidden manifest still restores after a prune', async (t) => {
  const vm = 'web-clock'
  const data = pattern(8 * MiB, 9)
  const { store, s3, bucket } = await seededStore(t, vm, data)
  await t.rejects(archivePoints(store, vm, undefined, { logger: log, bucket, prefix: 'p/', now: () => Date.now() + 2 * HOUR }), {
    code: 'E_ARCHIVE',
    message: /cannot archive points in s3:\/\/arch\/p\/: the local clock of .* is 2 h 0 min ahead of the S3 server's.*archivedAt/,
  })
  t.same(s3.keys(), [], 'nothing uploaded, no lock left')
  await archivePoints(store, vm, undefined, { logger: log, bucket, prefix: 'p/' })
  const lines: string[] = []
  const warned = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) })
  const r = await restoreFromArchive(bucket, 'p/', vm, 1, join(scratchDir(t), 'skewed'), { logger: warned, now: () => Date.now() - 2 * HOUR })
  t.ok((await readFile(r.disks[0]?.flat as string)).equals(data), 'restored byte-exact')
  t.match(lines.join(''), /is 2 h 0 min behind the S3 server's.*the restore goes on/, 'the restore warns of the skew')
  // the point's manifest hidden by a plain DELETE: the prune keeps its chunks, the restore (through the marker) works
  s3.hide(manifestKey('p/', vm, 1))
  const p = await pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0 })
  const again = await restoreFromArchive(bucket, 'p/', vm, 1, join(scratchDir(t), 'through-marker'), { logger: log })
  t.ok((await readFile(again.disks[0]?.flat as string)).equals(data), 'restored through the marker, byte-exact')
  t.same([p.manifests.hidden.length, p.chunks.deleted], [1, 0], 'hidden, counted, no chunk deleted')
})

t.test('a chunk hidden behind a delete marker: collected (every version, the marker) once unreferenced and past the grace; a referenced one stays', async (t) => {
  const { s3, bucket, a, b } = await setUp(t)
  const orphan = chunkKey('p/', digest('orphan'))
  s3.put(orphan, Buffer.from('orphan'), old)
  s3.put(orphan, Buffer.from('orphan'), old)
  s3.hide(orphan)
  s3.hide(chunkKey('p/', b)) // point 2's: restore reads through the marker
  s3.hide(chunkKey('p/', digest('nothing'))) // a marker alone: nothing stored
  const dry = await pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 5, graceMs: 0, dryRun: true })
  t.same([dry.chunks.listed, dry.chunks.referenced, dry.chunks.deleted, dry.bytesFreed], [3, 2, 1, 12], 'dry run: the hidden orphan counted with both its versions')
  const r = await pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 5, graceMs: 0 })
  t.same([r.chunks.deleted, r.bytesFreed], [1, 12], 'the hidden orphan deleted')
  t.notOk(s3.objects.has(orphan), 'no version or marker of it left')
  t.equal(s3.objects.get(chunkKey('p/', b))?.length, 2, 'the referenced hidden chunk is left as it is')
  t.ok(s3.objects.has(chunkKey('p/', a)))
  t.ok(s3.objects.has(chunkKey('p/', digest('nothing'))), 'the lone marker left alone')
})

t.test(
  'a listing that never ends (a new marker every page, new keys or none, markers in turn, versions without end): refused (E_ARCHIVE) within its bounds, naming the endpoint and the prefix',
  { timeout: 120_000 },
  async (t) => {
    const { s3, bucket, a } = await setUp(t)
    const before = s3.keys()
    const refused = (what: RegExp): { code: string; message: RegExp } => ({
      code: 'E_ARCHIVE',
      message: new RegExp(`S3 listing s3://arch/p/vms/ \\(endpoint http://127\\.0\\.0\\.1:\\d+\\): ${what.source}.*never used`),
    })
    // one new key a page, a new token each time (ListObjectsV2): S3 fills a page with up to 1000
    const endless: NonNullable<Hostility['endlessListing']> = { prefix: 'p/vms/', mode: 'new-keys', pages: 0 }
    s3.hostility.endlessListing = endless
    await t.rejects(bucket.list('p/vms/'), refused(/it took 1011 pages for 1011 entries/), 'list(): one key a page, stopped')
    t.ok(endless.pages <= LISTING_SPARE_PAGES + 20, `${endless.pages} pages asked for`)
    // empty pages, a new marker each (versions), through the prune: nothing deleted, its lock released
    endless.mode = 'empty'
    endless.pages = 0
    await t.rejects(pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0 }), refused(/it took 1001 pages for 0 entries/), 'empty version pages, stopped')
    t.same(s3.keys(), before, 'nothing deleted, no lock left')
    // two markers in turn: the third page repeats the first marker
    endless.mode = 'cycle'
    endless.pages = 0
    await t.rejects(bucket.list('p/vms/'), refused(/the server gave the continuation token "m1" again, a marker it had given before/), 'list(): a token given again')
    t.equal(endless.pages, 3, 'refused at the first marker given twice')
    endless.pages = 0
    await t.rejects(
      bucket.listVersionPages('p/vms/', async () => {}),
      refused(/the server gave the key marker "p\/vms\/" and version marker "m1" \(versions\) again/),
      'versions: markers given again',
    )
    t.equal(endless.pages, 3)
    // the versions of one key without end, 1000 a page: stopped at MAX_KEY_VERSIONS, whichever call lists them
    endless.mode = 'same-key'
    endless.prefix = chunkKey('p/', a)
    const calls: [string, () => Promise<unknown>][] = [
      ['deleteAllVersions', () => bucket.deleteAllVersions(chunkKey('p/', a))],
      [
        'get (through a delete marker)',
        async () => {
          s3.hide(chunkKey('p/', a))
          return await bucket.get(chunkKey('p/', a), 1)
        },
      ],
      ['listVersionPages', () => bucket.listVersionPages(chunkKey('p/', a), async () => {})],
    ]
    for (const [what, call] of calls) {
      endless.pages = 0
      await t.rejects(
        call(),
        { code: 'E_ARCHIVE', message: new RegExp(`S3 key s3://arch/${chunkKey('p/', a)} \\(endpoint http://127\\.0\\.0\\.1:\\d+\\): the version listing went past \\d+ versions.*MAX_KEY_VERSIONS`) },
        what,
      )
      t.equal(endless.pages, MAX_KEY_VERSIONS / 1000 + 1, `${what}: stopped after ${endless.pages} pages`)
    }
    s3.hostility.endlessListing = undefined
    t.ok(s3.objects.has(chunkKey('p/', a)), 'nothing deleted')
  },
)

t.test('an S3 endpoint that accepts a request and never answers, or stops sending a body: the command fails (E_ARCHIVE) after its timeouts, its lock released', { timeout: 120_000 }, async (t) => {
  // the timeouts shortened for the test (S3_TIMEOUTS: 30 s to connect, 2 min without a byte)
  const { s3, bucket, b } = await setUp(t, { connectMs: 2000, idleMs: 300 })
  t.ok(MAX_S3_CALL_MS + LOCK_HELD_MS < LOCK_STALE_MS, `one S3 call (≤ ${Math.round(MAX_S3_CALL_MS / 60_000)} min) begun within LOCK_HELD_MS of the lock's last write ends before the lock is stale`)
  const before = s3.keys()
  s3.hostility.silentUnder = 'p/vms/'
  const t0 = performance.now()
  await t.rejects(pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0 }), {
    code: 'E_ARCHIVE',
    message:
      /S3 listing the versions under p\/vms\/: TimeoutError .*the S3 endpoint http:\/\/127\.0\.0\.1:\d+ did not answer: no byte for 0\.3 s, or no connection within 2 s, 5 attempts\. Check that it is up/,
  })
  t.ok(performance.now() - t0 < 30_000, `the prune failed after ${Math.round(performance.now() - t0)} ms`)
  t.same(s3.keys(), before, 'nothing deleted, the prune lock released')
  // the run lock's PUT never answered: a restore does not wait for ever either (each of the 5 attempts timed out)
  s3.hostility.silentUnder = 'p/locks/'
  const err = await restoreFromArchive(bucket, 'p/', 'web', 2, join(scratchDir(t), 'silent'), { logger: log }).then(
    () => undefined,
    (e: unknown) => e as Error & { code?: string; cause?: { $metadata?: { attempts?: number } } },
  )
  t.equal(err?.code, 'E_ARCHIVE')
  t.match(err?.message, /S3 PUT p\/locks\/restore-.*: TimeoutError .*did not answer/)
  t.equal(err?.cause?.$metadata?.attempts, 5, 'the SDK tried 5 times')
  s3.hostility.silentUnder = undefined
  // a GET whose body stops half-way: the restore of that point would wait for ever
  s3.hostility.stallBody = manifestKey('p/', 'web', 2)
  await t.rejects(bucket.get(manifestKey('p/', 'web', 2), MiB), { code: 'E_ARCHIVE', message: /GET p\/vms\/web\/points\/000000000002\.json \(reading its body\): TimeoutError .*did not answer/ })
  s3.hostility.stallBody = chunkKey('p/', b)
  await t.rejects(bucket.get(chunkKey('p/', b), MiB), { code: 'E_ARCHIVE', message: /did not answer/ }, 'a chunk alike')
})

t.test('a listing page of 128 MiB: read up to MAX_S3_RESPONSE_BYTES (8 MiB), then abandoned (E_ARCHIVE), the connection dropped', async (t) => {
  const { s3, bucket } = await setUp(t)
  const huge: NonNullable<Hostility['hugeListing']> = { prefix: 'p/vms/', sent: 0 }
  s3.hostility.hugeListing = huge
  await t.rejects(bucket.list('p/vms/'), { code: 'E_ARCHIVE', message: /the answer of the S3 endpoint http:\/\/127\.0\.0\.1:\d+ to ListObjectsV2Command went past 8388608 bytes/ })
  await huge.done
  // the old code read all of it, and parsing it took the test past Node's 4 GB heap
  t.ok(huge.sent < 40 * MiB, `the server sent ${huge.sent / MiB} MiB before the receiver closed the connection (bound 8 MiB)`)
})

t.test('a key under 150 delete markers, or a server that lists one version a page: read through (restore, prune), not taken for missing', { timeout: 120_000 }, async (t) => {
  const vm = 'web-markers'
  const data = pattern(4 * MiB, 11)
  const { store, s3, bucket } = await seededStore(t, vm, data)
  await archivePoints(store, vm, undefined, { logger: log, bucket, prefix: 'p/' })
  const m = manifestKey('p/', vm, 1)
  // someone with the receiver's keys DELETEs the manifest 150 times: 150 markers above its one version
  for (let i = 0; i < 150; i++) s3.hide(m)
  const chunk = s3.keys().find((k) => k.startsWith('p/chunks/')) as string
  for (let i = 0; i < 2; i++) s3.put(chunk, s3.objects.get(chunk)?.[0]?.body as Buffer)
  s3.hide(chunk)
  const r = await restoreFromArchive(bucket, 'p/', vm, 1, join(scratchDir(t), 'markers'), { logger: log })
  t.ok((await readFile(r.disks[0]?.flat as string)).equals(data), 'restored through 150 markers, byte-exact')
  const p = await pruneArchive({ logger: log, bucket, prefix: 'p/', keepLast: 1, graceMs: 0 })
  t.same([p.manifests.examined, p.manifests.hidden, p.chunks.deleted], [1, [m], 0], 'the prune reads it too: a point, its chunk kept')
  // a server that gives one version a page, whatever max-keys asks
  s3.hostility.versionPageSize = 1
  const again = await restoreFromArchive(bucket, 'p/', vm, 1, join(scratchDir(t), 'short-pages'), { logger: log })
  t.ok((await readFile(again.disks[0]?.flat as string)).equals(data), 'restored with one version a page, byte-exact')
})

t.test('a manifest whose disks collide (a and a-flat) or whose DDB adds a descriptor line: the restore refuses (E_ARCHIVE) before writing anything', async (t) => {
  const { s3, bucket } = await setUp(t)
  // two disks of 512 bytes, each one chunk: a's flat would be a-flat's descriptor
  const da = Buffer.alloc(512, 1)
  const db = Buffer.alloc(512, 2)
  const ha = createHash('sha256').update(da).digest('hex')
  const hb = createHash('sha256').update(db).digest('hex')
  s3.put(chunkKey('p/', ha), da)
  s3.put(chunkKey('p/', hb), db)
  const disk = (stem: string, h: string, ddb: Record<string, string> = {}): ArchiveManifest['disks'][number] => ({ name: `${stem}.vmdk`, stem, capacity: 512, sha256: h, chunks: [h], ddb })
  const put = (cycle: number, disks: ArchiveManifest['disks']): void =>
    s3.put(
      manifestKey('p/', 'evil', cycle),
      encodeManifest({
        format: ARCHIVE_FORMAT,
        vm: 'evil',
        cycle,
        committedAt: old.toISOString(),
        generation: 'ab'.repeat(8),
        archivedAt: old.toISOString(),
        retainUntil: null,
        chunkBytes: ARCHIVE_CHUNK_BYTES,
        disks,
        files: [],
      }),
    )
  put(1, [disk('a', ha), disk('a-flat', hb)])
  put(2, [disk('a', ha, { 'ddb.uuid': 'x"\nRW 8 VMFS "/vmfs/volumes/ds/other/other-flat.vmdk' })])
  const dir = join(scratchDir(t), 'evil')
  await t.rejects(restoreFromArchive(bucket, 'p/', 'evil', 1, dir, { logger: log }), {
    code: 'E_ARCHIVE',
    message:
      /archive manifest s3:\/\/arch\/p\/vms\/evil\/points\/000000000001\.json: the flat of disks\[0\]\.stem "a" and the descriptor of disks\[1\]\.stem "a-flat" are both the file "a-flat\.vmdk": a restore would write one over the other/,
  })
  t.same(await readdir(dir).catch(() => []), [], 'nothing written')
  await t.rejects(restoreFromArchive(bucket, 'p/', 'evil', 2, dir, { logger: log }), { code: 'E_ARCHIVE', message: /000000000002\.json: disks\[0\]\.ddb: the value of ddb\.uuid/ })
  t.same(await readdir(dir).catch(() => []), [], 'nothing written')
})

/** The pid of a process of this host that has exited (spawned, then waited for). */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  await exited
  return child.pid as number
}

t.test('a lock of a run that died on this host (its pid gone, reused, or of an earlier boot) is warned of, deleted and ignored; a live, foreign or pid-less one still refuses', async (t) => {
  const vm = 'web-dead'
  const data = pattern(4 * MiB, 13)
  const { store, s3, bucket } = await seededStore(t, vm, data)
  await archivePoints(store, vm, undefined, { logger: log, bucket, prefix: 'p/' })
  const here = hostname()
  const plant = (key: string, body: Record<string, unknown>): Date => plantLock(s3, key, body, 10 * MIN)
  const locks = (): string[] => s3.keys().filter((k) => k.startsWith('p/locks/'))
  const archive = async (logger: Logger = log) => await archivePoints(store, vm, undefined, { logger, bucket, prefix: 'p/' })
  const capture = captureWarnings

  // the body this grainline writes: this host, its machine id and pid namespace, its pid, boot id and start time
  const known = (read: () => string): string | undefined => {
    try {
      return read()
    } catch {
      return undefined // not on this system: left out of the body
    }
  }
  const own = await takeRunLock(bucket, 'p/', 'archive', log)
  const body = JSON.parse((await bucket.get(own.key, 4096)).toString('utf8')) as Record<string, unknown>
  await own.release()
  t.same(
    { host: body['host'], machine: body['machine'], pidns: body['pidns'], pid: body['pid'], boot: body['boot'], start: body['start'] },
    {
      host: here,
      machine: known(() => readFileSync('/etc/machine-id', 'utf8').trim()),
      pidns: known(() => readlinkSync('/proc/self/ns/pid')),
      pid: process.pid,
      boot: bootId(),
      start: processStartTime(process.pid),
    },
    'a lock body names this host, its machine id and pid namespace, the pid, the boot id and the process start time',
  )

  // a prune alive on this host (a real process, its real start time): refused, saying where to look and the way out
  const sleeper = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60_000)'], { stdio: 'ignore' })
  const sleeperExit = new Promise<void>((resolve) => sleeper.once('exit', () => resolve()))
  t.teardown(() => {
    sleeper.kill('SIGKILL')
  })
  const pid = sleeper.pid as number
  const at = plant('p/locks/prune-live', { host: here, machine: body['machine'], pid, boot: bootId(), start: processStartTime(pid) })
  await t.rejects(archive(), {
    code: 'E_BUSY',
    message: new RegExp(
      `a points archive-prune holds the lock p/locks/prune-live \\(host ${here} pid ${pid} since .*\\)\\. Run again once it has finished \\(its pid runs on this host: ps -p ${pid}; a lock of a process gone from this host is ignored by itself\\); if no such run is alive, delete that object \\(s3://arch/p/locks/prune-live\\), or wait until it is 2 h old \\(it is then ignored\\); or, once certain that prune is dead .*archive beside that lock alone: grainline points archive … --archive s3://arch/p/ --despite-lock p/locks/prune-live — you assert the prune is dead: if that prune is alive it may delete chunks this archive finds already in the bucket`,
    ),
  })
  t.same(locks(), ['p/locks/prune-live'], 'refused: no archive lock left')
  // killed: its lock is of a dead run
  sleeper.kill('SIGKILL')
  await sleeperExit
  let w = capture()
  await archive(w.logger)
  t.match(
    w.lines.join(''),
    new RegExp(
      `the lock p/locks/prune-live of a points archive-prune \\(host ${here} pid ${pid} since ${at.toISOString().replace(/\./g, '\\.')}, last written [^)]+\\) is of a run that died: no process ${pid} runs on this host\\. Ignored, and deleted; the points archive goes on`,
    ),
    'warned, naming the key, host, pid and when it was written',
  )
  t.same(locks(), [], 'the dead lock deleted, no archive lock left')

  const gone = await deadPid()

  // this very process's pid, alive, but the lock recorded another start (the pid reused) or another boot
  plant('p/locks/prune-reused', { host: here, machine: body['machine'], pid: process.pid, boot: bootId(), start: '1' })
  w = capture()
  await archive(w.logger)
  t.match(
    w.lines.join(''),
    new RegExp(`p/locks/prune-reused .* is of a run that died: process ${process.pid} of this host is another one than the lock's \\(it started at another time: the pid was reused\\)`),
  )
  plant('p/locks/prune-reboot', { host: here, machine: body['machine'], pid: process.pid, boot: 'an-earlier-boot', start: processStartTime(process.pid) })
  w = capture()
  await archive(w.logger)
  t.match(w.lines.join(''), /p\/locks\/prune-reboot .* is of a run that died: this host has restarted since/)
  t.same(locks(), [], 'both deleted')

  // judged by their age alone, as before: another host's, without a pid, a pid that is no process id, a live pid without start
  for (const [name, b] of [
    ['other-host', { host: `${here}-other`, pid: gone }],
    ['no-pid', { host: here }],
    ['no-host', { pid: gone }],
    ['pid-text', { host: here, pid: String(gone) }],
    ['pid-zero', { host: here, pid: 0 }],
    ['pid-group', { host: here, pid: -1 }],
    ['pid-huge', { host: here, pid: 2 ** 40 }],
    ['alive-no-start', { host: here, machine: body['machine'], pid: process.pid }],
    // a hostname alone proves no machine: an older grainline's body (host and pid only), one of a machine
    // without /etc/machine-id, of this hostname, its pid gone here: maybe another machine's live run
    ['legacy-gone', { host: here, pid: gone }],
    ['no-machine-gone', { host: here, pidns: body['pidns'], pid: gone, boot: body['boot'], start: '12345' }],
    ['other-machine', { host: here, machine: 'another-machine-of-this-name', pid: gone }],
    ['other-pidns', { host: here, machine: body['machine'], pidns: 'pid:[1]', pid: gone }],
    // another boot without a machine id (a machine of this hostname without /etc/machine-id, its pid namespace the
    // initial one as ours): another machine as likely as an earlier boot of this one, its run's pid gone here or alive
    ['other-boot-gone', { host: here, pidns: body['pidns'], pid: gone, boot: 'another-machines-boot', start: '12345' }],
    ['other-boot-alive', { host: here, pidns: body['pidns'], pid: process.pid, boot: 'another-machines-boot', start: '12345' }],
  ] as const) {
    plant(`p/locks/prune-${name}`, b)
    await t.rejects(archive(), { code: 'E_BUSY', message: new RegExp(`holds the lock p/locks/prune-${name} `) }, `${name}: refused`)
    s3.objects.delete(`p/locks/prune-${name}`)
  }
  t.same(locks(), [], 'nothing left')
  // the refusal of a lock of this hostname that records no machine id says it is judged by its age, and where to look
  plant('p/locks/prune-legacy', { host: here, pid: gone })
  await t.rejects(archive(), {
    code: 'E_BUSY',
    message: new RegExp(
      `holds the lock p/locks/prune-legacy .*on host ${here.replace(/[.-]/g, (c) => `\\${c}`)}, this host's name, though the lock records no machine id \\(an older grainline's lock, or another machine of the same name: it is judged by its age alone\\): ps -p ${gone} there`,
    ),
  })
  s3.objects.delete('p/locks/prune-legacy')

  // a prune beside a dead archive lock of this host: goes on, deletes it
  plant('p/locks/archive-dead', { host: here, machine: body['machine'], pid: gone })
  w = capture()
  await pruneArchive({ logger: w.logger, bucket, prefix: 'p/', keepLast: 1, graceMs: 0 })
  t.match(w.lines.join(''), /the lock p\/locks\/archive-dead of a points archive .* is of a run that died: .*Ignored, and deleted; the points archive-prune goes on/)
  t.same(locks(), [], 'deleted')

  // a restore with read-only credentials: ignores the dead prune lock, cannot delete it
  plant('p/locks/prune-dead', { host: here, machine: body['machine'], pid: gone })
  s3.hostility.readOnly = true
  w = capture()
  const r = await restoreFromArchive(bucket, 'p/', vm, 1, join(scratchDir(t), 'ro'), { logger: w.logger })
  t.ok((await readFile(r.disks[0]?.flat as string)).equals(data), 'restored byte-exact')
  t.match(w.lines.join(''), /p\/locks\/prune-dead .* is of a run that died: .*Ignored, and left as it is \(these credentials may not delete it\); the restore --from s3:\/\/… goes on/)
  t.same(locks(), ['p/locks/prune-dead'], 'left')
  s3.hostility.readOnly = false

  // a dead run's lock of this host of a kind the run does not exclude (an archive's, a restore's beside an archive):
  // deleted too — it would refuse a prune on another host, which cannot judge it, until stale; a live one and one of
  // another host are left
  s3.objects.delete('p/locks/prune-dead')
  plant('p/locks/archive-dead', { host: here, machine: body['machine'], pid: gone })
  plant('p/locks/restore-dead', { host: here, machine: body['machine'], pid: gone })
  plant('p/locks/archive-live', { host: here, machine: body['machine'], pidns: body['pidns'], pid: process.pid, boot: body['boot'], start: body['start'] })
  plant('p/locks/archive-foreign', { host: 'dr-host-4', pid: gone })
  w = capture()
  await archive(w.logger)
  t.match(w.lines.join(''), /the lock p\/locks\/archive-dead of a points archive .* is of a run that died: no process \d+ runs on this host\. Ignored, and deleted; the points archive goes on/)
  t.match(w.lines.join(''), /the lock p\/locks\/restore-dead of a restore --from s3:\/\/… .* is of a run that died: .*Ignored, and deleted/)
  t.same(locks(), ['p/locks/archive-foreign', 'p/locks/archive-live'], 'the dead ones deleted; a live one and one of another host left')
})

t.test(
  'archivePoints despiteLock: beside the named fresh prune lock only, warned of what a live prune would do; another still refuses; a malformed key, or a prune given one, is E_CONFIG before any request',
  async (t) => {
    const vm = 'web-archive-despite'
    const { store, s3, bucket } = await seededStore(t, vm, pattern(4 * MiB, 17))
    const dead = 'p/locks/prune-dead'
    plantLock(s3, dead, { host: 'dr-host-9', pid: 99 }, 10 * MIN)
    await t.rejects(archivePoints(store, vm, undefined, { logger: log, bucket, prefix: 'p/' }), {
      code: 'E_BUSY',
      message:
        /Run again once it has finished \(on host dr-host-9: ps -p 99\).*grainline points archive … --archive s3:\/\/arch\/p\/ --despite-lock p\/locks\/prune-dead — you assert the prune is dead/,
    })
    // a second fresh prune lock: still refused beside it
    plantLock(s3, 'p/locks/prune-second', { host: 'dr-host-8', pid: 8 }, 10 * MIN)
    await t.rejects(archivePoints(store, vm, undefined, { logger: log, bucket, prefix: 'p/', despiteLock: dead }), {
      code: 'E_BUSY',
      message: /holds the lock p\/locks\/prune-second \(host dr-host-8 pid 8 /,
    })
    s3.objects.delete('p/locks/prune-second')
    const lines: string[] = []
    const warned = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) })
    const done = await archivePoints(store, vm, undefined, { logger: warned, bucket, prefix: 'p/', despiteLock: dead })
    t.same(
      done.map((p) => p.archived),
      [true],
      'archived beside the named lock',
    )
    t.match(
      lines.join(''),
      /going on beside the lock p\/locks\/prune-dead of a points archive-prune \(host dr-host-9 pid 99 since .*, fresh\), as --despite-lock asked: if that prune is alive it may delete chunks this archive finds already in the bucket: each chunk is uploaded again rather than trusted, and every chunk a manifest names is checked before and after it is written/,
      'warned, naming the lock and the risk',
    )
    t.same(
      s3.keys().filter((k) => k.startsWith('p/locks/')),
      [dead],
      'the named lock is left (an archive never deletes a live-looking lock); no archive lock left',
    )
    const before = s3.keys()
    for (const key of ['q/locks/prune-dead', 'p/locks/archive-1', 'p/locks/prune-']) {
      await t.rejects(archivePoints(store, vm, undefined, { logger: log, bucket, prefix: 'p/', despiteLock: key }), {
        code: 'E_CONFIG',
        message: /want the key of a points archive-prune lock of this archive, p\/locks\/prune-…/,
      })
    }
    await t.rejects(takeRunLock(bucket, 'p/', 'prune', log, { despiteLock: dead }), { code: 'E_CONFIG', message: /--despite-lock is an option of .* not of points archive-prune/ })
    t.same(s3.keys(), before, 'nothing written')
  },
)

t.test(
  'archivePoints despiteLock beside a prune alive after all: no manifest naming a chunk the prune deleted — a chunk gone before or after the manifest is uploaded again; one gone after every upload is refused (E_ARCHIVE), no manifest left',
  async (t) => {
    // a 2-chunk disk; x: its first chunk, the one the live prune deletes
    const [vm, data, dead] = ['web-live-prune', pattern(2 * ARCHIVE_CHUNK_BYTES, 23), 'p/locks/prune-dead']
    const xKey = chunkKey('p/', createHash('sha256').update(data.subarray(0, ARCHIVE_CHUNK_BYTES)).digest('hex'))
    const mKey = manifestKey('p/', vm, 1)
    const { store, s3, bucket } = await seededStore(t, vm, data)
    const reset = (): void => {
      s3.objects.clear()
      Object.assign(s3.hostility, { afterHead: undefined, afterPut: undefined })
      plantLock(s3, dead, { host: 'dr-host-9', pid: 99 }, 10 * MIN)
    }
    // every chunk the manifest in the bucket names is there, and the point restores byte-exact
    const restorable = async (what: string): Promise<void> => {
      const body = s3.objects.get(mKey)?.at(-1)?.body
      if (body === undefined) throw new Error(`${what}: no manifest`)
      const m = JSON.parse(body.toString('utf8')) as ArchiveManifest
      const named = m.disks.flatMap((d) => d.chunks).filter((c): c is string => c !== null)
      t.same(
        named.filter((c) => s3.objects.get(chunkKey('p/', c)) === undefined),
        [],
        `${what}: every chunk the manifest names is in the bucket`,
      )
      const r = await restoreFromArchive(bucket, 'p/', vm, 1, join(scratchDir(t), what.replace(/\W+/g, '-')), { logger: log, despiteLock: dead })
      t.ok((await readFile(r.disks[0]?.flat as string)).equals(data), `${what}: restored byte-exact`)
    }
    const capture = captureWarnings

    // 1. the prune's deletion lands right after the archive found the chunk present (an old unreferenced chunk)
    reset()
    s3.put(xKey, data.subarray(0, ARCHIVE_CHUNK_BYTES), old)
    s3.hostility.afterHead = (key) => {
      if (key !== xKey) return
      s3.hostility.afterHead = undefined
      s3.objects.delete(xKey)
    }
    let w = capture()
    const [done] = await archivePoints(store, vm, undefined, { logger: w.logger, bucket, prefix: 'p/', despiteLock: dead })
    t.equal(done?.archived, true, 'archived')
    t.equal(done?.reuploaded, 1, 'the chunk the prune deleted was uploaded again')
    t.match(
      w.lines.join(''),
      /point 1 of VM web-live-prune: 1 chunk\(s\) uploaded or found present are gone .*: a points archive-prune is deleting from the archive, so the lock p\/locks\/prune-dead given to --despite-lock is of a live run\. Uploading them again/,
      'warned: the named lock is of a live run',
    )
    await restorable('deleted after its check')

    // 2. deleted once the manifest is written (a prune that read the manifests before it): uploaded again
    reset()
    s3.hostility.afterPut = (key) => {
      if (key !== mKey) return
      s3.hostility.afterPut = undefined
      s3.objects.delete(xKey)
    }
    w = capture()
    t.equal((await archivePoints(store, vm, undefined, { logger: w.logger, bucket, prefix: 'p/', despiteLock: dead }))[0]?.reuploaded, 1, 'uploaded again after the manifest')
    t.match(w.lines.join(''), /gone after its manifest was written \(s3:\/\/arch\/p\/chunks\/.*disk d\.vmdk at offset 0\)/)
    await restorable('deleted after the manifest')

    // 3. deleted after every upload, before the manifest: refused, no manifest written
    reset()
    s3.hostility.afterPut = (key) => {
      if (key === xKey) s3.objects.delete(xKey)
    }
    await t.rejects(archivePoints(store, vm, undefined, { logger: log, bucket, prefix: 'p/', despiteLock: dead }), {
      code: 'E_ARCHIVE',
      message: new RegExp(
        `point 1 of VM web-live-prune: chunk s3://arch/${xKey} \\(disk d\\.vmdk at offset 0\\) was gone again after each of 3 uploads: a points archive-prune is deleting from the archive, so the lock p/locks/prune-dead given to --despite-lock is of a live run\\. The manifest s3://arch/${mKey} was not written\\. Wait until that prune has ended`,
      ),
    })
    t.equal(s3.objects.get(mKey), undefined, 'no manifest')

    // 4. deleted after every upload once the manifest is written: the manifest is deleted again
    reset()
    let written = false
    s3.hostility.afterPut = (key) => {
      written ||= key === mKey
      if (written && (key === mKey || key === xKey)) s3.objects.delete(xKey)
    }
    await t.rejects(archivePoints(store, vm, undefined, { logger: log, bucket, prefix: 'p/', despiteLock: dead }), {
      code: 'E_ARCHIVE',
      message:
        /was gone again after each of 3 uploads: .* The manifest s3:\/\/arch\/p\/vms\/web-live-prune\/points\/000000000001\.json, written, was deleted again \(the next run archives the point again\)/,
    })
    t.equal(s3.objects.get(mKey), undefined, 'no manifest left naming the chunk')
    s3.hostility.afterPut = undefined
    t.same(
      s3.keys().filter((k) => k.startsWith('p/locks/')),
      [dead],
      'the run lock released',
    )
  },
)

t.test(
  'checkArchivedPoint: a chunk the manifest names with no version in the bucket is an E_ARCHIVE_CHUNK_MISSING finding naming it; one hidden behind a delete marker is not (a restore reads through it)',
  async (t) => {
    const { s3, bucket, a, b } = await setUp(t)
    t.same(await checkArchivedPoint(bucket, 'p/', 'web', 1), { cycle: 1, manifest: manifestKey('p/', 'web', 1), chunks: 1, missing: [] }, 'whole')
    s3.hide(chunkKey('p/', a))
    t.same((await checkArchivedPoint(bucket, 'p/', 'web', 1)).missing, [], 'hidden behind a marker: restorable, not missing')
    s3.objects.delete(chunkKey('p/', b))
    t.same(
      await checkArchivedPoint(bucket, 'p/', 'web', 2),
      { cycle: 2, manifest: manifestKey('p/', 'web', 2), chunks: 1, missing: [{ code: 'E_ARCHIVE_CHUNK_MISSING', key: chunkKey('p/', b), sha256: b, holds: 'disk d.vmdk at offset 0' }] },
      'gone: the finding names the key and what it holds',
    )
    await t.rejects(checkArchivedPoint(bucket, 'p/', 'web', 3), { code: 'E_ARCHIVE' }, 'no manifest: E_ARCHIVE')
  },
)

t.test('a point older than a resync of a damaged mirror: the archive records it, the restore from the archive says so', async (t) => {
  const s3 = new TinyS3()
  const endpoint = await s3.start()
  t.teardown(() => s3.stop())
  const bucket = new S3Bucket({ bucket: 'arch', prefix: '', endpoint, credentials: { accessKeyId: 'k', secretAccessKey: 's' } })
  t.teardown(() => bucket.close())
  const data = pattern(2 * MiB, 3)
  const resync = { cycle: 4, reason: 'certify (sha256) of cycle 3 failed' }
  const source = (divergedResync?: typeof resync) => ({
    name: 'd.vmdk',
    stem: 'd',
    capacity: data.length,
    ddb: {},
    ...(divergedResync === undefined ? {} : { divergedResync }),
    open: async () => ({ capacity: data.length, read: async (off: number, n: number) => data.subarray(off, off + n), close: async () => {} }),
  })
  const id = { committedAt: new Date().toISOString(), generation: 'g' }
  await archiveOnePoint('web', 1, id, [source(resync)], [], { logger: log, bucket, prefix: 'p/' })
  await archiveOnePoint('web', 5, id, [source()], [], { logger: log, bucket, prefix: 'p/' })
  const r1 = await restoreFromArchive(bucket, 'p/', 'web', 1, join(scratchDir(t), 'r1'), { logger: log })
  t.same(r1.disks[0]?.divergedResync, resync, 'the restored disk names the resync its point predated')
  t.equal(r1.disks[0]?.verified, 'none', 'and what the point matched when archived')
  const r5 = await restoreFromArchive(bucket, 'p/', 'web', 5, join(scratchDir(t), 'r5'), { logger: log })
  t.equal(r5.disks[0]?.divergedResync, undefined, 'a point after it: nothing')
})

t.test("a restore from the archive marks the display name as points restore does: the recorded mark replaced, a name's own ending kept", async (t) => {
  const displayName = async (dir: string, vm: string): Promise<string | undefined> => /^displayName = "(.*)"$/m.exec(await readFile(join(dir, `${vm}.vmx`), 'utf8'))?.[1]
  // a VM restored from point 2 by grainline, registered and replicated since: its .vmx as the restore wrote it
  const again = 'web-again'
  const restored = 'displayName = "web (grainline mirror) (point 2)"\ngrainline.displayMark = " (grainline mirror) (point 2)"\nscsi0:0.fileName = "d-000001.vmdk"\n'
  const a = await seededStore(t, again, pattern(MiB, 3), restored)
  await archivePoints(a.store, again, undefined, { logger: log, bucket: a.bucket, prefix: 'p/' })
  const toA = join(scratchDir(t), 'again')
  await restoreFromArchive(a.bucket, 'p/', again, 1, toA, { logger: log })
  t.equal(await displayName(toA, again), 'web (grainline mirror) (archived point 1)', 'one mark, not "web (grainline mirror) (point 2) (grainline mirror) (archived point 1)"')
  // a VM whose own name ends with what looks like a mark: kept
  const own = 'web-own'
  const b = await seededStore(t, own, pattern(MiB, 4), 'displayName = "Build (opened)"\nscsi0:0.fileName = "d-000001.vmdk"\n')
  await archivePoints(b.store, own, undefined, { logger: log, bucket: b.bucket, prefix: 'p/' })
  const toB = join(scratchDir(t), 'own')
  await restoreFromArchive(b.bucket, 'p/', own, 1, toB, { logger: log })
  t.equal(await displayName(toB, own), 'Build (opened) (grainline mirror) (archived point 1)', "the VM's own name whole, the mirror's and the point's marks after it")
})
