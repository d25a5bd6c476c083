/** The S3 options of `points archive|archived` and `restore --from`: usage errors before anything runs (the archive itself: test/test/archive.test.ts against radosgw). */
import t from 'tap'
import { writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { runNode, scratchDir } from '@grainline/test-utils'
import { bucketFrom, lockFrom } from '../src/commands/archive-options.ts'

const bin = resolve(dirname(fileURLToPath(import.meta.url)), '../src/bin.js')

t.test('lockFrom: --retain and --lock-mode', async (t) => {
  t.equal(lockFrom({}), undefined, 'no --retain: no lock')
  t.same(lockFrom({ retain: '1d' }, 1000), { mode: 'GOVERNANCE', until: new Date(1000 + 86_400_000) })
  t.same(lockFrom({ retain: '2h', 'lock-mode': 'compliance' }, 0), { mode: 'COMPLIANCE', until: new Date(7_200_000) })
  t.throws(() => lockFrom({ retain: 'soon' }), { code: 'E_USAGE' })
  t.throws(() => lockFrom({ retain: '10s' }), { code: 'E_USAGE', message: /at least 1m/ })
})

t.test('bucketFrom: URL, endpoint and credentials file', async (t) => {
  const dir = scratchDir(t)
  const creds = join(dir, 's3.json')
  await writeFile(creds, JSON.stringify({ accessKeyId: 'AK', secretAccessKey: 'SK' }))
  const b = await bucketFrom('s3://dr-archive/site-a', { 's3-endpoint': 'http://127.0.0.1:9', 's3-credentials': creds })
  t.equal(b.bucket.bucket, 'dr-archive')
  t.equal(b.prefix, 'site-a/')
  b.bucket.close()
  await t.rejects(bucketFrom('s3://Bad_Bucket', {}), { code: 'E_USAGE' })
  await t.rejects(bucketFrom('s3://dr-archive', { 's3-endpoint': 'ftp://x' }), { code: 'E_USAGE', message: /--s3-endpoint/ })
  await writeFile(creds, '{"accessKeyId": 1}')
  await t.rejects(bucketFrom('s3://dr-archive', { 's3-credentials': creds }), { code: 'E_CONFIG', message: /s3\.json/ })
  await t.rejects(bucketFrom('s3://dr-archive', { 's3-credentials': join(dir, 'missing.json') }), { code: 'E_CONFIG' })
})

t.test('usage errors exit 2 before anything runs', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['points', 'archive', '--store', '/nonexistent', '--vm', 'v'], /needs --archive/],
    [['points', 'archived', '--vm', 'v'], /needs --archive/],
    [['points', 'list', '--vm', 'v'], /--store is required/],
    [['restore', '--vm', 'v', '--point', '1', '--to', '/tmp/x'], /exactly one of --store/],
    [['restore', '--store', '/s', '--from', 's3://b-b/p', '--vm', 'v', '--point', '1', '--to', '/tmp/x'], /exactly one of --store/],
    [['points', 'archive', '--store', '/s', '--vm', 'v', '--archive', 's3://dr-archive', '--retain', 'x'], /retain/],
    [['restore', '--store', '/s', '--vm', 'v', '--point', '1', '--to', '/tmp/x', '--despite-lock', 'p/locks/prune-1'], /--despite-lock goes with --from/],
    [
      ['restore', '--from', 's3://dr-archive/p', '--vm', 'v', '--point', '1', '--to', '/tmp/x', '--despite-lock', 'q/locks/prune-1'],
      /--despite-lock q\/locks\/prune-1: want the key of a points archive-prune lock of this archive, p\/locks\/prune-…/,
    ],
    [
      ['points', 'archive-prune', '--archive', 's3://dr-archive/p', '--keep-last', '1', '--despite-lock', 'p/locks/prune-1'],
      /--despite-lock goes with points archive \(and restore --from\), not points archive-prune/,
    ],
    [
      ['points', 'archive', '--store', '/s', '--vm', 'v', '--archive', 's3://dr-archive/p', '--despite-lock', 'p/locks/restore-1'],
      /--despite-lock p\/locks\/restore-1: want the key of a points archive-prune lock of this archive, p\/locks\/prune-…/,
    ],
    [['points', 'archive', '--store', '/s', '--vm', 'v', '--archive', 's3://dr-archive/p', '--check'], /--check goes with points archived, not points archive/],
  ]
  for (const [args, re] of cases) {
    const r = await runNode(bin, args)
    t.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`)
    t.match(r.stderr, re)
  }
})
