/**
 * The one-node test cluster: up with radosgw, RBD usable (an image written by
 * `rbd import-diff` of a diff v1 stream — the format the Ceph store of issue
 * #18 will write — and read back by `rbd export`, the next import refused
 * when its from-snapshot is not the image's; writeImage writing the head
 * through librbd), S3 answering, every daemon gone
 * after stop(). (Its failure paths — a daemon that dies or never comes up —
 * are not exercised here: provoking them reliably would need a broken Ceph.)
 */
import t from 'tap'
import { chmodSync, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { delimiter, join } from 'node:path'
import { CephCommandTimeout, cephCommandOnlyReads, haveCeph, isCommandDescriptionsHiccup, haveCephMgr, startCephCluster } from '../src/ceph-cluster.ts'
import { scratchDir } from '../src/files.ts'

const MiB = 1024 * 1024

/** An `rbd diff v1` stream (docs/dev/rbd-diff): header, snapshots, size, data and zero records, end. */
function diffV1(opts: { from?: string; to: string; size: number; records: Array<{ offset: number; data?: Buffer; zero?: number }> }): Buffer {
  const parts: Buffer[] = [Buffer.from('rbd diff v1\n')]
  const snap = (tag: string, name: string): Buffer => {
    const b = Buffer.alloc(5)
    b.write(tag, 0)
    b.writeUInt32LE(Buffer.byteLength(name), 1)
    return Buffer.concat([b, Buffer.from(name)])
  }
  if (opts.from !== undefined) parts.push(snap('f', opts.from))
  parts.push(snap('t', opts.to))
  const size = Buffer.alloc(9)
  size.write('s', 0)
  size.writeBigUInt64LE(BigInt(opts.size), 1)
  parts.push(size)
  for (const r of opts.records) {
    const h = Buffer.alloc(17)
    h.write(r.data === undefined ? 'z' : 'w', 0)
    h.writeBigUInt64LE(BigInt(r.offset), 1)
    h.writeBigUInt64LE(BigInt(r.data?.length ?? r.zero ?? 0), 9)
    parts.push(h)
    if (r.data !== undefined) parts.push(r.data)
  }
  parts.push(Buffer.from('e'))
  return Buffer.concat(parts)
}

t.test('a one-node cluster with radosgw and a manager: RBD import-diff and export, S3 up, ceph df figures, stopped clean', async (t) => {
  t.ok(await haveCeph(), 'Ceph is installed (.ci/run installs it)')
  t.ok(await haveCephMgr(), 'ceph-mgr is installed (.ci/run installs it)')
  const c = await startCephCluster({ rgw: true, mgr: true })
  t.teardown(() => c.stop())
  t.ok(existsSync(c.conf))
  // with a manager, ceph df has the pool and the cluster's size (the Ceph store's free-space rule reads them)
  const df = JSON.parse((await c.run('ceph', ['df', '--format', 'json'])).stdout) as { stats: { total_bytes: number }; pools: Array<{ name: string }> }
  t.ok(df.stats.total_bytes > 0, 'ceph df reports the cluster size')
  t.ok(
    df.pools.some((p) => p.name === 'rbd'),
    'and the pool',
  )
  await c.run('rbd', ['create', '--size', '8M', 'rbd/img'])
  const a = Buffer.alloc(64 * 1024, 0x61)
  await c.run(
    'rbd',
    ['import-diff', '-', 'rbd/img'],
    diffV1({
      to: 'g1',
      size: 8 * MiB,
      records: [
        { offset: MiB, data: a },
        { offset: 4 * MiB, data: a },
      ],
    }),
  )
  await c.run('rbd', ['import-diff', '-', 'rbd/img'], diffV1({ from: 'g1', to: 'g2', size: 8 * MiB, records: [{ offset: 4 * MiB, zero: 64 * 1024 }] }))
  await t.rejects(
    c.run('rbd', ['import-diff', '-', 'rbd/img'], diffV1({ from: 'nope', to: 'g3', size: 8 * MiB, records: [] })),
    /start snapshot 'nope' does not exist/,
    'a diff from another snapshot is refused',
  )
  const dir = scratchDir(t)
  await c.run('rbd', ['export', 'rbd/img@g1', join(dir, 'g1.raw')])
  await c.run('rbd', ['export', 'rbd/img@g2', join(dir, 'g2.raw')])
  const g1 = await readFile(join(dir, 'g1.raw'))
  const g2 = await readFile(join(dir, 'g2.raw'))
  const want1 = Buffer.alloc(8 * MiB)
  a.copy(want1, MiB)
  a.copy(want1, 4 * MiB)
  const want2 = Buffer.from(want1)
  want2.fill(0, 4 * MiB, 4 * MiB + a.length)
  t.ok(g1.equals(want1), 'snapshot g1 holds the first diff')
  t.ok(g2.equals(want2), 'snapshot g2 holds the zeroed range')
  t.match((await c.run('rbd', ['snap', 'ls', 'rbd/img'])).stdout, /g1[\s\S]*g2/)
  // writeImage: a stray librbd client writing the head (bytes on stdin: larger than an argument may be)
  const big = Buffer.alloc(256 * 1024, 0x7e)
  await c.writeImage('rbd', 'img', 2 * MiB + 512, big)
  await c.run('rbd', ['export', 'rbd/img', join(dir, 'head.raw')])
  const head = await readFile(join(dir, 'head.raw'))
  const wantHead = Buffer.from(want2)
  big.copy(wantHead, 2 * MiB + 512)
  t.ok(head.equals(wantHead), 'writeImage wrote the head at the offset')
  t.ok((await readFile(join(dir, 'g2.raw'))).equals(want2), 'the snapshot is untouched')
  await t.rejects(c.writeImage('rbd', 'no-such-image', 0, Buffer.alloc(1)), /no-such-image exited/, 'a write into a missing image fails, naming it')
  // clients have no admin socket: with one path for every client.admin they pinged each other's
  t.same(
    readdirSync(join(c.dir, 'run')).filter((f) => f.endsWith('.asok') && f.startsWith('client.admin')),
    [],
    'no client bound an admin socket',
  )
  // a client that hangs: a query is killed at its deadline and asked once more, a write only killed
  const bin = scratchDir(t)
  const calls = join(bin, 'calls')
  writeFileSync(calls, '')
  const realRbd =
    process.env['PATH']
      ?.split(delimiter)
      .map((d) => join(d, 'rbd'))
      .find((f) => existsSync(f)) ?? '/usr/bin/rbd'
  writeFileSync(join(bin, 'rbd'), `#!/bin/sh\necho "$*" >> '${calls}'\nif [ "$(wc -l < '${calls}')" -eq 1 ] || [ "$3" = create ]; then exec sleep 3600; fi\nexec '${realRbd}' "$@"\n`)
  chmodSync(join(bin, 'rbd'), 0o755)
  const path = process.env['PATH']
  process.env['PATH'] = `${bin}${delimiter}${path ?? ''}`
  try {
    const ls = await c.run('rbd', ['ls', 'rbd'], undefined, { timeoutMs: 1500 })
    t.match(ls.stdout, /^img$/m, 'a query that hung answered when asked once more')
    t.equal(readFileSync(calls, 'utf8').trim().split('\n').length, 2, 'asked twice')
    await t.rejects(c.run('rbd', ['create', '--size', '1M', 'rbd/other'], undefined, { timeoutMs: 1500 }), CephCommandTimeout, 'a write that hangs is killed and fails')
    t.equal(readFileSync(calls, 'utf8').trim().split('\n').length, 3, 'and is never sent twice')
    // a monitor that answers the CLI's command-descriptions request with EPERM: nothing was sent, so even a write is asked again
    const cephCalls = join(bin, 'ceph-calls')
    writeFileSync(cephCalls, '')
    const realCeph =
      path
        ?.split(delimiter)
        .map((d) => join(d, 'ceph'))
        .find((f) => existsSync(f)) ?? '/usr/bin/ceph'
    writeFileSync(
      join(bin, 'ceph'),
      `#!/bin/sh\necho "$*" >> '${cephCalls}'\nif [ "$(wc -l < '${cephCalls}')" -le 2 ]; then echo 'Error EPERM: problem getting command descriptions from mon.' >&2; exit 1; fi\nexec '${realCeph}' "$@"\n`,
    )
    chmodSync(join(bin, 'ceph'), 0o755)
    await c.run('ceph', ['osd', 'pool', 'application', 'enable', 'rbd', 'rbd'])
    t.equal(readFileSync(cephCalls, 'utf8').trim().split('\n').length, 3, 'a write refused before it was sent is asked again until the monitor answers')
  } finally {
    process.env['PATH'] = path
  }
  const s3 = c.s3 as NonNullable<typeof c.s3>
  t.equal((await fetch(s3.endpoint)).status, 200, 'radosgw answers S3')
  await c.stop()
  t.notOk(existsSync(c.dir), 'the folder is removed')
  t.equal(
    await fetch(s3.endpoint).then(
      () => 'up',
      () => 'down',
    ),
    'down',
    'radosgw is stopped',
  )
})

t.test('which test-side Ceph commands only read (asked again after a deadline)', async (t) => {
  t.ok(cephCommandOnlyReads('rbd', ['du', '--format', 'json', 'p/i']))
  t.ok(cephCommandOnlyReads('rbd', ['snap', 'ls', '--format', 'json', 'p/i']))
  t.ok(cephCommandOnlyReads('rbd', ['export', 'p/i@s', '/tmp/x']))
  t.ok(cephCommandOnlyReads('rados', ['-p', 'p', 'ls']))
  t.ok(cephCommandOnlyReads('rados', ['-p', 'ls', 'lock', 'info', 'o', 'n']), 'a pool named ls is not the verb')
  t.ok(cephCommandOnlyReads('ceph', ['osd', 'pool', 'ls', 'detail', '--format', 'json']))
  t.ok(cephCommandOnlyReads('ceph', ['df', '--format', 'json']))
  t.notOk(cephCommandOnlyReads('rbd', ['snap', 'rm', 'p/i@s']))
  t.notOk(cephCommandOnlyReads('rbd', ['import-diff', '-', 'p/i']))
  t.notOk(cephCommandOnlyReads('rados', ['-p', 'ls', 'put', 'o', '/tmp/x']), 'a pool named ls does not make a put a query')
  t.notOk(cephCommandOnlyReads('ceph', ['osd', 'pool', 'set-quota', 'p', 'max_bytes', '1']))
  t.notOk(cephCommandOnlyReads('radosgw-admin', ['user', 'info', '--uid', 'x']), 'radosgw-admin is never asked twice')
  t.ok(isCommandDescriptionsHiccup(new Error('ceph osd pool application enable p rbd exited 1: Error EPERM: problem getting command descriptions from mon.')))
  t.notOk(isCommandDescriptionsHiccup(new Error('ceph osd pool create p exited 1: Error EPERM: access denied')))
})
