/**
 * The S3 options of `points archive`, `points archived` and `restore --from`:
 * the archive URL, endpoint, credentials and Object Lock retention.
 */
import { parseDuration } from '@grainline/protocol/units'
import { S3Bucket, despiteLockProblem, parseArchiveUrl, readCredentialsFile, type ArchiveLock } from '@grainline/receiver'
import { UsageError } from '../exit-codes.ts'

/** The bucket and prefix of an `s3://BUCKET/PREFIX` URL with the S3 options. */
export async function bucketFrom(url: string, args: Record<string, unknown>): Promise<{ bucket: S3Bucket; prefix: string }> {
  let parsed: { bucket: string; prefix: string }
  try {
    parsed = parseArchiveUrl(url)
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  const credentials = args['s3-credentials'] === undefined ? undefined : await readCredentialsFile(String(args['s3-credentials']))
  const endpoint = args['s3-endpoint'] === undefined ? undefined : String(args['s3-endpoint'])
  if (endpoint !== undefined && !/^https?:\/\/[^/]+\/?$/.test(endpoint)) throw new UsageError(`--s3-endpoint ${endpoint}: want http(s)://HOST[:PORT]`)
  const bucket = new S3Bucket({
    bucket: parsed.bucket,
    prefix: parsed.prefix,
    ...(endpoint === undefined ? {} : { endpoint }),
    ...(args['s3-region'] === undefined ? {} : { region: String(args['s3-region']) }),
    ...(credentials === undefined ? {} : { credentials }),
  })
  return { bucket, prefix: parsed.prefix }
}

/** `--despite-lock KEY` of `restore --from` and `points archive` (the one prune lock of the archive at `prefix` to go on beside), or undefined. */
export function despiteLockFrom(args: Record<string, unknown>, prefix: string): { despiteLock?: string } {
  if (args['despite-lock'] === undefined) return {}
  const despiteLock = String(args['despite-lock'])
  const problem = despiteLockProblem(prefix, despiteLock)
  if (problem !== undefined) throw new UsageError(problem)
  return { despiteLock }
}

/** The Object Lock of `--retain DURATION` / `--lock-mode`, or undefined. */
export function lockFrom(args: Record<string, unknown>, now = Date.now()): ArchiveLock | undefined {
  if (args['retain'] === undefined) return undefined
  let ms: number
  try {
    ms = parseDuration(String(args['retain']), '--retain')
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  if (ms < 60_000) throw new UsageError('--retain must be at least 1m')
  return { mode: args['lock-mode'] === 'compliance' ? 'COMPLIANCE' : 'GOVERNANCE', until: new Date(now + ms) }
}
