// `grainline restore --from s3://… --despite-lock KEY` (docs/ARCHIVE.md
// "Guarantees"), real CLI processes against Ceph's S3 gateway (a one-node
// cluster on loopback, as archive.test.ts). A points archive-prune that died
// left its lock: for 2 h every restore is refused (E_BUSY), and an operator
// with read-only credentials (a radosgw subuser with read access only) cannot
// delete it. The refusal names the option; with it naming that lock the
// restore goes on beside it, warns naming its host, pid and start, and the
// files equal the source; naming another key while the fresh lock stays, or
// beside a second fresh prune lock, it is still refused; a key not of a prune
// lock under the archive's locks/ is a usage error (exit 2). The same with
// credentials that may write (the restore's own lock taken, then released).
// `points archive` likewise: refused naming `--despite-lock KEY`, archived
// beside that lock alone with it; and a prune lock naming this host and a
// pid that no longer runs is deleted with a warning, the archive unasked.
import t from 'tap'
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { readdir, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { DeleteObjectCommand, ListObjectVersionsCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3'
import { createSampleVm } from '@grainline/agent'
import { failIfLingering, firstDifference, qemuRaw, scratchDir, startCephCluster } from '@grainline/test-utils'
import { startSite, replicateCli, rgwArchive, runCli } from '@grainline/e2e'

failIfLingering(t)

const MiB = 1024 * 1024

t.test('restore --from --despite-lock: beside the named dead prune lock only, warned; refused otherwise', async (t) => {
  const dir = scratchDir(t, 'grainline-despite-')
  const ceph = await startCephCluster({ rgw: true })
  t.teardown(() => ceph.stop())
  const { s3, endpoint: gateway, creds: rwCreds } = await rgwArchive(t, ceph, dir, { 'dr-archive': 'unlocked' })
  // credentials that may only read: a radosgw subuser of the bucket's owner with read access (PUT answered 403)
  const ro = { accessKeyId: 'GRAINLINERO000000001', secretAccessKey: 'read-only-secret-of-the-test' }
  await ceph.run('radosgw-admin', [
    'subuser',
    'create',
    '--uid=grainline-test',
    '--subuser=grainline-test:ro',
    '--access=read',
    '--key-type=s3',
    `--access-key=${ro.accessKeyId}`,
    `--secret-key=${ro.secretAccessKey}`,
  ])
  const roCreds = join(dir, 's3-ro.json')
  await writeFile(roCreds, JSON.stringify(ro), { mode: 0o600 })
  const endpoint = ['--s3-endpoint', gateway]

  // one point of a VM with one disk, archived under site-a/
  const config = join(dir, 'receiver.json')
  await writeFile(config, JSON.stringify({ store: join(dir, 'dr', 'store'), retention: { keep: 2 } }))
  const site = await startSite(join(dir, 'dr'), ['*'], [], ['--config', config])
  t.teardown(() => site.receiver.stop())
  const name = 'app-despite'
  const vm = await createSampleVm(join(dir, 'src'), { name, disks: [{ sizeBytes: 12 * MiB }], seed: 5 })
  const expected = join(dir, 'expected.raw')
  await qemuRaw(vm.disks[0] as string, expected)
  const rep = await replicateCli(site, vm.vmxPath)
  t.equal(rep.code, 0, rep.stderr.slice(-1500))
  const archived = await runCli(['points', 'archive', '--store', site.store, '--vm', name, '--archive', 's3://dr-archive/site-a', ...endpoint, '--s3-credentials', rwCreds])
  t.equal(archived.code, 0, archived.stderr)
  await site.receiver.stop()

  // the prune that died on dr-host-7: its lock written a minute ago by S3's clock (fresh for 2 h)
  const dead = 'site-a/locks/prune-5f0c2a9e-0000-4000-8000-00000000dead'
  const plant = async (key: string, host: string, pid: number): Promise<void> => {
    await s3.send(new PutObjectCommand({ Bucket: 'dr-archive', Key: key, Body: JSON.stringify({ kind: 'prune', host, pid, time: '2026-12-07T03:00:00.000Z' }) }))
  }
  await plant(dead, 'dr-host-7', 4242)
  const locks = async (): Promise<string[]> => ((await s3.send(new ListObjectsV2Command({ Bucket: 'dr-archive', Prefix: 'site-a/locks/' }))).Contents ?? []).map((o) => o.Key as string).sort()
  const restore = async (creds: string, to: string, extra: string[] = []) =>
    await runCli(['restore', '--from', 's3://dr-archive/site-a', '--vm', name, '--point', '1', '--to', join(dir, to), '--output', 'json', ...endpoint, '--s3-credentials', creds, ...extra])
  const deadRe = dead.replace(/[/.-]/g, (c) => `\\${c}`)

  for (const [what, creds] of [
    ['read-only credentials', roCreds],
    ['credentials that may write', rwCreds],
  ] as const) {
    t.test(`${what}: refused, naming the option; with it, restored beside that lock alone`, async (t) => {
      const tag = creds === roCreds ? 'ro' : 'rw'
      const refused = await restore(creds, `${tag}-refused`)
      t.equal(refused.code, 1, `refused: ${refused.stderr}`)
      t.match(
        refused.stderr,
        new RegExp(
          `^grainline: cannot restore from the archive in s3://dr-archive/site-a/: a points archive-prune holds the lock ${deadRe} \\(host dr-host-7 pid 4242 since 2026-12-07T03:00:00\\.000Z.*\\[E_BUSY\\]`,
          's',
        ),
      )
      t.match(
        refused.stderr,
        new RegExp(
          `Run again once it has finished \\(on host dr-host-7: ps -p 4242\\); if no such run is alive, delete that object \\(s3://dr-archive/${deadRe}.*restore beside that lock alone: grainline restore --from s3://dr-archive/site-a/ … --despite-lock ${deadRe} — you assert the prune is dead: if that prune is alive it may delete chunks this restore reads, which then fails`,
        ),
        'the refusal names the option and what it risks',
      )
      t.same(await readdir(join(dir, `${tag}-refused`)).catch(() => []), [], 'nothing restored')

      // another key while the fresh lock stays: still refused, naming the fresh one
      const other = await restore(creds, `${tag}-other`, ['--despite-lock', 'site-a/locks/prune-00000000-0000-4000-8000-000000000000'])
      t.equal(other.code, 1, `another key: refused: ${other.stderr}`)
      t.match(other.stderr, new RegExp(`holds the lock ${deadRe} \\(host dr-host-7 .*\\[E_BUSY\\]`, 's'))
      t.same(await readdir(join(dir, `${tag}-other`)).catch(() => []), [], 'nothing restored')

      // the named lock and a second fresh prune lock: refused beside the second
      const second = `site-a/locks/prune-${tag}-second`
      await plant(second, 'dr-host-8', 77)
      const both = await restore(creds, `${tag}-both`, ['--despite-lock', dead])
      t.equal(both.code, 1, `a second prune lock: refused: ${both.stderr}`)
      t.match(both.stderr, new RegExp(`holds the lock ${second.replace(/[/.-]/g, (c) => `\\${c}`)} \\(host dr-host-8 pid 77 .*\\[E_BUSY\\]`, 's'))
      t.notMatch(both.stderr, /going on beside/, 'no override announced')
      await s3.send(new DeleteObjectCommand({ Bucket: 'dr-archive', Key: second }))

      // the option naming the dead prune's lock: restored beside it, warned, byte-exact
      const ok = await restore(creds, `${tag}-restored`, ['--despite-lock', dead])
      t.equal(ok.code, 0, `restored: ${ok.stderr}`)
      t.match(
        ok.stderr,
        new RegExp(`going on beside the lock ${deadRe} of a points archive-prune \\(host dr-host-7 pid 4242 since 2026-12-07T03:00:00\\.000Z, last written [^,]+, fresh\\), as --despite-lock asked`),
        'the warning names the lock, its host, pid and start',
      )
      const out = JSON.parse(ok.stdout.trim().split('\n').at(-1) as string) as { disks: { flat: string; descriptor: string }[] }
      t.equal(out.disks.length, 1)
      t.equal(await firstDifference(out.disks[0]?.flat as string, expected), -1, 'the restored disk = the source')
      const raw = join(dir, `${tag}-restored.raw`)
      await qemuRaw(out.disks[0]?.descriptor as string, raw)
      t.equal(await firstDifference(raw, expected), -1, 'QEMU opens the restored descriptor')
      t.same(await locks(), [dead], 'the dead prune lock is left (the restore never deletes it); no restore lock left')
    })
  }

  t.test('points archive: refused beside the dead prune’s lock, naming the command; --despite-lock archives beside it alone; a lock of a process gone from this host is deleted', async (t) => {
    const archive = async (extra: string[] = []) =>
      await runCli(['points', 'archive', '--store', site.store, '--vm', name, '--archive', 's3://dr-archive/site-a', ...endpoint, '--s3-credentials', rwCreds, ...extra])
    const refused = await archive()
    t.equal(refused.code, 1, `refused: ${refused.stderr}`)
    t.match(
      refused.stderr,
      new RegExp(
        `^grainline: cannot archive points in s3://dr-archive/site-a/: a points archive-prune holds the lock ${deadRe} \\(host dr-host-7 pid 4242 since 2026-12-07T03:00:00\\.000Z, last written [^)]+\\)\\. Run again once it has finished \\(on host dr-host-7: ps -p 4242\\); if no such run is alive, delete that object \\(s3://dr-archive/${deadRe}\\), or wait until it is 2 h old \\(it is then ignored\\); or, once certain that prune is dead .*archive beside that lock alone: grainline points archive … --archive s3://dr-archive/site-a/ --despite-lock ${deadRe} — you assert the prune is dead: .*\\[E_BUSY\\]`,
        's',
      ),
      'the refusal names the way out, the command with the key',
    )
    const other = await archive(['--despite-lock', 'site-a/locks/prune-00000000-0000-4000-8000-000000000000'])
    t.equal(other.code, 1, `another key: refused: ${other.stderr}`)
    t.match(other.stderr, new RegExp(`holds the lock ${deadRe} \\(host dr-host-7 .*\\[E_BUSY\\]`, 's'))
    const ok = await archive(['--despite-lock', dead])
    t.equal(ok.code, 0, `archived beside it: ${ok.stderr}`)
    t.match(
      ok.stderr,
      new RegExp(
        `going on beside the lock ${deadRe} of a points archive-prune \\(host dr-host-7 pid 4242 since 2026-12-07T03:00:00\\.000Z, last written [^,]+, fresh\\), as --despite-lock asked: if that prune is alive it may delete chunks this archive finds already in the bucket`,
      ),
      'warned, naming the lock and what a live prune would do',
    )
    t.match(ok.stdout, new RegExp(`${name}: archived to s3://dr-archive/site-a`))
    t.same(await locks(), [dead], 'the named lock left; no archive lock left')
    for (const [args, re] of [
      [['points', 'list', '--store', site.store, '--vm', name, '--despite-lock', dead], /--despite-lock goes with points archive \(and restore --from\), not points list/],
      [
        ['points', 'archive', '--store', site.store, '--vm', name, '--archive', 's3://dr-archive/site-a', ...endpoint, '--s3-credentials', rwCreds, '--despite-lock', 'site-a/locks/archive-1'],
        /want the key of a points archive-prune lock of this archive, site-a\/locks\/prune-…/,
      ],
    ] as const) {
      const r = await runCli([...args])
      t.equal(r.code, 2, `usage error: ${r.stderr}`)
      t.match(r.stderr, re)
    }

    // the prune that died was of this host (same hostname), its pid gone: warned, deleted, the archive goes on unasked
    await s3.send(new DeleteObjectCommand({ Bucket: 'dr-archive', Key: dead }))
    const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' })
    await new Promise<void>((resolve) => child.once('exit', () => resolve()))
    const gone = child.pid as number
    const here = 'site-a/locks/prune-5f0c2a9e-0000-4000-8000-0000000000aa'
    await s3.send(
      new PutObjectCommand({
        Bucket: 'dr-archive',
        Key: here,
        Body: JSON.stringify({ kind: 'prune', host: hostname(), machine: readFileSync('/etc/machine-id', 'utf8').trim(), pid: gone, time: '2026-12-07T04:00:00.000Z' }),
      }),
    )
    const auto = await archive()
    t.equal(auto.code, 0, `archived: ${auto.stderr}`)
    t.match(
      auto.stderr,
      new RegExp(
        `the lock ${here.replace(/[/.-]/g, (c) => `\\${c}`)} of a points archive-prune \\(host ${hostname().replace(/[.-]/g, (c) => `\\${c}`)} pid ${gone} since 2026-12-07T04:00:00\\.000Z, last written [^)]+\\) is of a run that died: no process ${gone} runs on this host\\. Ignored, and deleted; the points archive goes on`,
      ),
      'warned, naming the key, host, pid and times',
    )
    t.same(await locks(), [], 'the dead lock deleted, no archive lock left')

    // points archived --check: every chunk the manifests name is there; one deleted behind the archive's back is named
    const check = async () => await runCli(['points', 'archived', '--vm', name, '--archive', 's3://dr-archive/site-a', ...endpoint, '--s3-credentials', rwCreds, '--check'])
    const whole = await check()
    t.equal(whole.code, 0, `checked: ${whole.stderr}`)
    t.match(whole.stdout, /point 1: checked, its \d+ chunk\(s\) and file\(s\) are all in the bucket/)
    const versions = await s3.send(new ListObjectVersionsCommand({ Bucket: 'dr-archive', Prefix: 'site-a/chunks/' }))
    const victim = versions.Versions?.[0]?.Key as string
    for (const v of versions.Versions ?? []) if (v.Key === victim) await s3.send(new DeleteObjectCommand({ Bucket: 'dr-archive', Key: victim, VersionId: v.VersionId }))
    const broken = await check()
    t.equal(broken.code, 1, 'a point naming a missing chunk: exit 1')
    t.match(
      broken.stdout,
      new RegExp(
        `point 1: E_ARCHIVE_CHUNK_MISSING: its manifest s3://dr-archive/site-a/vms/${name}/points/000000000001\\.json names 1 of its \\d+ chunk\\(s\\) and file\\(s\\) that are not in the bucket, so its restore --from fails: s3://dr-archive/${victim.replace(/[/.-]/g, (c) => `\\${c}`)} \\((disk \\S+ at offset \\d+|configuration file \\S+)\\)\\. Delete that manifest`,
      ),
      'the finding names the manifest, the chunk and what it holds',
    )
    const usage = await runCli(['points', 'list', '--store', site.store, '--vm', name, '--check'])
    t.equal(usage.code, 2, `--check on another action: usage error: ${usage.stderr}`)
    t.match(usage.stderr, /--check goes with points archived, not points list/)
  })

  t.test('a key not of a prune lock under the archive’s locks/: usage error (exit 2) before anything runs', async (t) => {
    for (const key of ['other/locks/prune-1', 'site-a/prune-1', 'site-a/locks/archive-1', 'site-a/locks/prune-']) {
      const r = await restore(roCreds, 'usage', ['--despite-lock', key])
      t.equal(r.code, 2, `--despite-lock '${key}': ${r.stderr}`)
      t.match(r.stderr, /--despite-lock .*want the key of a points archive-prune lock of this archive, site-a\/locks\/prune-…, exactly as the refusal \(E_BUSY\) printed it/)
    }
    const noFrom = await runCli(['restore', '--store', join(dir, 'x'), '--vm', name, '--point', '1', '--to', join(dir, 'usage'), '--despite-lock', dead])
    t.equal(noFrom.code, 2, noFrom.stderr)
    t.match(noFrom.stderr, /--despite-lock goes with --from/)
    t.same(await readdir(join(dir, 'usage')).catch(() => []), [], 'nothing restored')
  })
})
