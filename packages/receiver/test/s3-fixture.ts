/**
 * The S3 side of a test against the radosgw of a {@link startCephCluster}
 * (`rgw: true`): a raw SDK client (to plant or inspect objects behind the
 * receiver's back) and a bucket created with Object Lock, both closed at the
 * test's end. One place for the client settings radosgw needs (path-style
 * addressing, checksums only when required).
 */
import type { Test } from 'tap'
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3'
import type { CephCluster } from '@grainline/test-utils'
import { S3Bucket } from '../src/index.ts'

/** A raw S3 client of `ceph`'s radosgw, destroyed at `t`'s end. */
export function rgwClient(t: Test, ceph: CephCluster): { s3: S3Client; endpoint: string; credentials: { accessKeyId: string; secretAccessKey: string } } {
  const s3cfg = ceph.s3
  if (s3cfg === undefined) throw new Error('the Ceph cluster was started without rgw: true')
  const credentials = { accessKeyId: s3cfg.accessKeyId, secretAccessKey: s3cfg.secretAccessKey }
  const s3 = new S3Client({
    region: 'us-east-1',
    endpoint: s3cfg.endpoint,
    forcePathStyle: true,
    credentials,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  })
  t.teardown(() => s3.destroy())
  return { s3, endpoint: s3cfg.endpoint, credentials }
}

/** Create bucket `name` (with Object Lock) on `ceph`'s radosgw: the raw client and the receiver's {@link S3Bucket} of it, both closed at `t`'s end. */
export async function rgwBucket(t: Test, ceph: CephCluster, name: string): Promise<{ s3: S3Client; bucket: S3Bucket }> {
  const { s3, endpoint, credentials } = rgwClient(t, ceph)
  await s3.send(new CreateBucketCommand({ Bucket: name, ObjectLockEnabledForBucket: true }))
  const bucket = new S3Bucket({ bucket: name, prefix: '', endpoint, credentials })
  t.teardown(() => bucket.close())
  return { s3, bucket }
}
