/**
 * The flags of the store options shared by several commands (`--ceph-conf`,
 * `--ceph-id`, `--keyring`; the S3 options of archives): yargs only, so a
 * command's flags load nothing of the receiver (their values are read by
 * ceph-options.ts and archive-options.ts when the command runs).
 */
import type { Argv } from 'yargs'

/** Add `--ceph-conf`, `--ceph-id`, `--keyring`. */
export function withCephOptions<T>(y: Argv<T>): Argv<T> {
  return y
    .option('ceph-conf', { type: 'string', describe: 'ceph.conf of a ceph:POOL store (default: the Ceph client default)' })
    .option('ceph-id', { type: 'string', describe: 'Ceph client id of a ceph:POOL store (default: admin)' })
    .option('keyring', { type: 'string', describe: 'keyring of the Ceph client id' }) as unknown as Argv<T>
}

/** Add the S3 options to a command. */
export function withS3Options<T>(y: Argv<T>): Argv<T> {
  return y
    .option('s3-endpoint', { type: 'string', describe: 'S3 endpoint URL (radosgw, MinIO …; default: AWS)' })
    .option('s3-region', { type: 'string', describe: 'S3 region (default us-east-1)' })
    .option('s3-credentials', { type: 'string', describe: 'JSON file {"accessKeyId", "secretAccessKey"} (default: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the usual AWS chain)' }) as Argv<T>
}
