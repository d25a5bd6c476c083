/**
 * `points archive-prune`'s options: usage errors exit 2 before any S3
 * request (the prune itself: packages/receiver/test/archive-prune.test.ts
 * against radosgw). The endpoint is a closed port: a case that reached S3
 * would fail with exit 1, not 2.
 */
import t from 'tap'
import { runMain } from './helpers.ts'

const s3 = ['--archive', 's3://dr-archive/site-a', '--s3-endpoint', 'http://127.0.0.1:9']

t.test('archive-prune: usage errors exit 2 naming the option', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['points', 'archive-prune', ...s3], /needs --keep-last N and\/or --older-than DURATION/],
    [['points', 'archive-prune', ...s3, '--vm', 'web01', '--dry-run'], /needs --keep-last N and\/or --older-than/],
    [['points', 'archive-prune', '--keep-last', '1'], /needs --archive/],
    [['points', 'archive-prune', ...s3, '--keep-last', '-1'], /--keep-last must be a whole number ≥ 0/],
    [['points', 'archive-prune', ...s3, '--keep-last', '1.5'], /--keep-last must be a whole number/],
    [['points', 'archive-prune', ...s3, '--keep-last', '0'], /--keep-last 0 deletes every archived point; it is accepted only with --vm VM/],
    [['points', 'archive-prune', ...s3, '--keep-last', '0', '--older-than', '90d'], /only with --vm VM/],
    [['points', 'archive-prune', ...s3, '--older-than', 'soon'], /--older-than/],
    [['points', 'archive-prune', ...s3, '--keep-last', '2', '--grace', 'tomorrow'], /--grace/],
    [['points', 'archive-prune', '--archive', 's3://Bad_Bucket', '--keep-last', '1'], /archive URL/],
    [['points', 'archive', '--store', '/nonexistent', ...s3], /--vm is required/],
    [['points', 'list', '--store', '/nonexistent'], /--vm is required/],
  ]
  for (const [argv, msg] of cases) {
    const r = await runMain(argv)
    t.equal(r.code, 2, argv.join(' '))
    t.match(r.err, msg, argv.join(' '))
  }
})

t.test('archive-prune: --vm and --store are optional; a valid command reaches S3 (exit 1 from the closed port, not 2)', async (t) => {
  const r = await runMain(['points', 'archive-prune', ...s3, '--keep-last', '1', '--grace', '0s'])
  t.equal(r.code, 1, r.err)
  t.match(r.err, /E_ARCHIVE/)
})
