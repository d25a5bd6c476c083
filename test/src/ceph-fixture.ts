/**
 * The Ceph store's end-to-end helpers (test/test/ceph-*.test.ts): a site whose
 * receiver writes into pool {@link CEPH_POOL} of a test cluster, its status
 * through the CLI, and the oracles that compare points and committed
 * snapshots with the frozen source (`rbd export` through `points export`,
 * and QEMU's rbd driver, independent of it); and the cluster's S3 gateway
 * (radosgw) as the CLI's archive commands reach it.
 */
import type { Test } from 'tap'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3'
import { firstDifference, qemuRaw, type CephCluster } from '@grainline/test-utils'
import { runCli, startSite, type Site } from './fixture.ts'

/** The pool every Ceph end-to-end test writes its mirrors into (one cluster per test). */
export const CEPH_POOL = 'glrbd'
const POOL = CEPH_POOL

export interface CephStatusJson {
  vms: { vm: string; committedCycle: number; points: number[]; disks: { name: string; committedCycle: number; snapshot: string; inflight: { cycle: number; resumeSeq: number } | null }[] }[]
}

/** `grainline status --output json` of the pool; a monitoring plugin's exit codes 0–2 are answers, 3 and up failures. */
export async function cephStatus(ceph: CephCluster): Promise<CephStatusJson> {
  const r = await runCli(['status', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--output', 'json'])
  // a monitoring plugin's exit codes: 0 OK, 1 WARNING (a cycle in flight, a hold), 2 CRITICAL (diverged); 3 and up are failures
  if (r.code === null || r.code > 2) throw new Error(`grainline status failed (${r.code}): ${r.stderr}`)
  return JSON.parse(r.stdout) as CephStatusJson
}

/** `grainline points export` of point `cycle` into `dir`, then compare each disk with the frozen view. */
export async function pointMatches(t: Test, ceph: CephCluster, vm: string, cycle: number, dir: string, expected: string[], what: string): Promise<void> {
  const r = await runCli(['points', 'export', '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf, '--vm', vm, '--point', String(cycle), '--to', dir, '--output', 'json'])
  t.equal(r.code, 0, `${what}: points export: ${r.stderr}`)
  const out = JSON.parse(r.stdout) as { disks: { name: string; file: string; snapshot: string }[] }
  t.equal(out.disks.length, expected.length, `${what}: every disk exported`)
  for (const [i, d] of out.disks.entries()) t.equal(await firstDifference(d.file, expected[i] as string), -1, `${what}: ${d.snapshot} (rbd export) equals the frozen source of disk ${i}`)
}

/** The committed snapshot of every disk as QEMU's rbd driver reads it (an oracle independent of `rbd export`), when QEMU has it. */
export async function qemuReadsSnapshots(t: Test, ceph: CephCluster, vm: string, dir: string, expected: string[], what: string): Promise<void> {
  const st = await cephStatus(ceph)
  const v = st.vms.find((x) => x.vm === vm)
  for (const [i, d] of (v?.disks ?? []).entries()) {
    const out = join(dir, `qemu-${i}.raw`)
    await qemuRaw(`rbd:${d.snapshot}:conf=${ceph.conf}`, out, { format: 'raw' })
    t.equal(await firstDifference(out, expected[i] as string), -1, `${what}: QEMU reading ${d.snapshot} equals the frozen source of disk ${i}`)
  }
}

/** Write `data` at `offset` into the committed snapshot `spec` (POOL/IMG@SNAP) behind the store's back: the head (equal to it between cycles) is written with librbd and the snapshot taken again under its name. */
export async function rotSnapshot(ceph: CephCluster, spec: string, offset: number, data: Buffer): Promise<void> {
  const [pi] = spec.split('@') as [string, string]
  await ceph.writeImage(POOL, pi.slice(POOL.length + 1), offset, data)
  await ceph.run('rbd', ['snap', 'rm', '--no-progress', spec])
  await ceph.run('rbd', ['snap', 'create', '--no-progress', spec])
}

/** Whether this QEMU was built with its rbd driver (Debian's needs `qemu-block-extra`). */
export async function qemuHasRbd(): Promise<boolean> {
  const { execFile } = await import('node:child_process')
  return await new Promise((resolve) => execFile('qemu-img', ['--help'], (_e, stdout) => resolve(/\brbd\b/.test(String(stdout)))))
}

/** A receiver site on pool {@link CEPH_POOL} of `ceph` (retention keep 5 unless `extra` says otherwise). */
export async function cephSite(dir: string, ceph: CephCluster, extra: object = {}): Promise<Site> {
  const config = join(dir, 'receiver.json')
  await mkdir(dir, { recursive: true })
  await writeFile(config, JSON.stringify({ retention: { keep: 5 }, ...extra }))
  return await startSite(dir, ['*'], [], ['--config', config, '--store', `ceph:${POOL}`, '--ceph-conf', ceph.conf])
}

/** The S3 gateway of a test cluster as the CLI's archive commands reach it ({@link rgwArchive}). */
export interface RgwArchive {
  /** a raw SDK client of the cluster's S3 user (to plant, inspect or delete objects behind grainline's back) */
  readonly s3: S3Client
  readonly endpoint: string
  /** the S3 user's credentials file (mode 0600), as `--s3-credentials` takes it */
  readonly creds: string
  /** `--s3-endpoint ENDPOINT --s3-credentials CREDS` */
  readonly args: readonly string[]
}

/**
 * The radosgw of `ceph` (started with `rgw: true`): its user's credentials written to `dir/s3.json`, a raw
 * client with the settings radosgw needs (path-style addressing, checksums only when required) destroyed at
 * `t`'s end, and `buckets` created, each with Object Lock (`'locked'`) or without (`'unlocked'`).
 */
export async function rgwArchive(t: Test, ceph: CephCluster, dir: string, buckets: Readonly<Record<string, 'locked' | 'unlocked'>>): Promise<RgwArchive> {
  const cfg = ceph.s3
  if (cfg === undefined) throw new Error('the Ceph cluster was started without rgw: true')
  const credentials = { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey }
  const creds = join(dir, 's3.json')
  await writeFile(creds, JSON.stringify(credentials), { mode: 0o600 })
  const s3 = new S3Client({
    region: 'us-east-1',
    endpoint: cfg.endpoint,
    forcePathStyle: true,
    credentials,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  })
  t.teardown(() => s3.destroy())
  for (const [Bucket, lock] of Object.entries(buckets)) await s3.send(new CreateBucketCommand({ Bucket, ...(lock === 'locked' ? { ObjectLockEnabledForBucket: true } : {}) }))
  return { s3, endpoint: cfg.endpoint, creds, args: ['--s3-endpoint', cfg.endpoint, '--s3-credentials', creds] }
}
