import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import type { Test } from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { CycleDigest, cycleIdentity, initDigests, MessageKind } from '@grainline/protocol'
import { Agent, TOKEN, makeEnv, pattern, runCycle, seedPlan, source, startReceiver, type Env } from './helpers.ts'
import { ALG, BLOCKS, BS, NAME, SIZE, VM, differing, flat, mapOf, open, readMap, resyncOpen, untilAck } from './resync-helpers.ts'

/*
 * The receiver's side of a resync (SPEC §5.9) against a scripted agent: the
 * block map is the mirror's at its committed point — also after a reconnect,
 * when the blocks below the map frontier were already rewritten — only the
 * blocks the agent sends change, the commit clears nothing but what it must;
 * hostile map requests (out of order, beyond the disk, too many unanswered,
 * larger than a frame, on an incremental, extents ahead of the map) end the
 * session with their typed code and lose nothing.
 */

/** Seed `img1`, then tamper with blocks 3 and 17 of the mirror behind the receiver's back. */
async function seeded(t: Test): Promise<{ env: Env; rx: Awaited<ReturnType<typeof startReceiver>>; mirror: Buffer }> {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const rx = await startReceiver(env)
  t.teardown(() => rx.receiver.close())
  const a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, VM, 1, [seedPlan(0, NAME, pattern(SIZE, 1), '01'.repeat(8))], { alg: ALG })
  a.close()
  await a.whenClosed()
  const mirror = readFileSync(flat(env))
  mirror.fill(0x5a, 3 * BS, 3 * BS + 4096)
  mirror.fill(0, 17 * BS, 18 * BS)
  writeFileSync(flat(env), mirror)
  return { env, rx, mirror }
}

t.test('a resync: the map is the mirror at its committed point, also after a reconnect; only the differing blocks change', async (t) => {
  const { env, rx, mirror } = await seeded(t)
  const target = pattern(SIZE, 1)
  target.fill(0, 9 * BS, 10 * BS)
  target.fill(0x33, 25 * BS, 25 * BS + 512)
  let a = await open(env, rx.url, 2)
  a.send(resyncOpen(2))
  const ds = await a.expect(MessageKind.DiskState)
  t.match(ds, { accepted: true, modified: false, resumeSeq: 0 }, 'a resync of a mirror changed under an unchanged CID is accepted')
  const map1 = await readMap(a, [
    [0, 12],
    [12, 12],
    [24, 8],
  ])
  t.same(map1, mapOf(mirror), "the map is the digests of the mirror's blocks (the tampered ones included)")
  const extents = differing(target, map1)
  t.same(
    extents.map((e) => e.offset / BS),
    [3, 9, 17, 25],
    'blocks 3 and 17 (tampered) and 9 and 25 (changed at the source) differ',
  )
  // two of four, durable, then the link drops
  for (const [seq, e] of extents.slice(0, 2).entries()) a.send({ kind: MessageKind.Extent, disk: 0, seq, ...e })
  await untilAck(a, 1)
  a.terminate()
  await a.whenClosed()
  a = await open(env, rx.url, 2)
  a.send(resyncOpen(2))
  t.match(await a.expect(MessageKind.DiskState), { accepted: true, resumeSeq: 2 }, 'resumes after the two durable extents')
  const map2 = await readMap(a, [
    [0, 20],
    [20, 12],
  ])
  t.same(map2, map1, 'the same map as the first connection, though blocks 3 and 9 were rewritten since')
  const cd = new CycleDigest(ALG)
  for (const e of extents) cd.add(e)
  for (const [i, e] of extents.entries()) if (i >= 2) a.send({ kind: MessageKind.Extent, disk: 0, seq: i, ...e })
  const dataBytes = extents.filter((e) => !e.zero).length * BS
  a.send({ kind: MessageKind.DiskEnd, disk: 0, extents: 4, dataBytes, zeroBytes: 4 * BS - dataBytes, digest: cd.digest() })
  for (;;) if ((await a.next())?.kind === MessageKind.DiskEnded) break
  a.send({ kind: MessageKind.Commit, vm: VM, cycle: 2, retention: null })
  await a.expect(MessageKind.Committed)
  a.close()
  await a.whenClosed()
  t.ok(readFileSync(flat(env)).equals(target), 'the mirror equals the source')
  const state = JSON.parse(readFileSync(join(env.store, VM, '.grainline', 'state.json'), 'utf8')) as { disks: Record<string, { cycle: number; cycleDigest: { digest: string } }>; inflight: unknown }
  t.equal(state.disks[NAME]?.cycle, 2, 'committed as cycle 2')
  t.equal(state.inflight, null)
  t.throws(() => readFileSync(join(env.store, VM, '.grainline', 'vm-r.blockmap')), { code: 'ENOENT' }, 'the block map went with the commit')
})

const hostile: Array<[string, (a: Agent) => void, string]> = [
  [
    'a request not from block 0',
    (a) => {
      a.send({ kind: MessageKind.BlockMapRequest, disk: 0, first: 4, count: 4 })
    },
    'E_SEQUENCE',
  ],
  [
    'a request beyond the last block',
    (a) => {
      a.send({ kind: MessageKind.BlockMapRequest, disk: 0, first: 0, count: BLOCKS + 1 })
    },
    'E_RANGE',
  ],
  [
    'a request overlapping the previous one',
    (a) => {
      a.send({ kind: MessageKind.BlockMapRequest, disk: 0, first: 0, count: 4 })
      a.send({ kind: MessageKind.BlockMapRequest, disk: 0, first: 2, count: 4 })
    },
    'E_SEQUENCE',
  ],
  [
    'an extent ahead of the map',
    (a) => {
      a.send({ kind: MessageKind.BlockMapRequest, disk: 0, first: 0, count: 2 })
      a.send({ kind: MessageKind.Extent, disk: 0, seq: 0, offset: 2 * BS, length: 512, zero: true, compression: 'none', data: new Uint8Array(0), digest: new Uint8Array(0) })
    },
    'E_RANGE',
  ],
  [
    'DiskEnd before the whole map',
    (a) => {
      a.send({ kind: MessageKind.DiskEnd, disk: 0, extents: 0, dataBytes: 0, zeroBytes: 0, digest: new Uint8Array(32) })
    },
    'E_UNEXPECTED',
  ],
]

t.test('hostile block map requests get their typed error, and the resync is intact afterwards', async (t) => {
  const { env, rx } = await seeded(t)
  for (const [name, act, code] of hostile) {
    const a = await open(env, rx.url, 2)
    a.send(resyncOpen(2))
    await a.expect(MessageKind.DiskState)
    act(a)
    t.equal((await a.expectError()).code, code, name)
  }
  // a map that would not fit the agent's frame size: 16 KiB frames hold 504 sha256 digests (SPEC §5.9: count × 32 + 256 ≤ maxMessageBytes)
  const small = await open(env, rx.url, 2, { rollback: true, maxMessageBytes: 16384 })
  small.send(resyncOpen(2, 0, 4096))
  await small.expect(MessageKind.DiskState)
  small.send({ kind: MessageKind.BlockMapRequest, disk: 0, first: 0, count: 504 })
  t.equal((await small.expect(MessageKind.BlockMap)).digests.length, 504 * 32, '504 digests fit in 16 KiB')
  small.send({ kind: MessageKind.BlockMapRequest, disk: 0, first: 504, count: 8 })
  await small.expect(MessageKind.BlockMap)
  small.terminate()
  await small.whenClosed()
  const tooBig = await open(env, rx.url, 2, { rollback: true, maxMessageBytes: 16384 })
  tooBig.send(resyncOpen(2, 0, 4096))
  await tooBig.expect(MessageKind.DiskState)
  tooBig.send({ kind: MessageKind.BlockMapRequest, disk: 0, first: 0, count: 505 })
  t.equal((await tooBig.expectError()).code, 'E_RANGE', '505 digests do not fit in 16 KiB')
  // a resync open needs a block size that fits an extent, and the cycle identity covers it
  const big = await open(env, rx.url, 2, { rollback: true })
  big.send({ ...resyncOpen(2), blockSize: 1 << 20, cycleId: resyncOpen(2).cycleId })
  t.equal((await big.expectError()).code, 'E_SCHEMA', 'a cycleId that does not cover the block size')
  // an incremental has no map
  const inc = await open(env, rx.url, 2, { rollback: true })
  const src = source(['vm-r-000001.vmdk'], 'vm-r-000002.vmdk')
  const st = { vm: VM, name: NAME, cycle: 2, mode: 'seed' as const, baseCycle: 0, baseGeneration: '', source: src }
  const { vm: _v, ...stFields } = st
  inc.send({ kind: MessageKind.DiskOpen, disk: 0, ...stFields, capacity: SIZE, cycleId: cycleIdentity(st), ddb: {}, totalBytes: SIZE, totalExtents: 0, blockSize: 0 })
  await inc.expect(MessageKind.DiskState)
  inc.send({ kind: MessageKind.BlockMapRequest, disk: 0, first: 0, count: 1 })
  t.equal((await inc.expectError()).code, 'E_UNEXPECTED', 'a map request for a seed')
  // nothing was lost: a clean resync still finds exactly the tampered blocks
  const a = await open(env, rx.url, 2, { rollback: true })
  a.send(resyncOpen(2))
  await a.expect(MessageKind.DiskState)
  const map = await readMap(a, [[0, BLOCKS]])
  t.same(
    differing(pattern(SIZE, 1), map).map((e) => e.offset / BS),
    [3, 17],
    'the map still shows exactly the tampered blocks',
  )
  a.close()
  await a.whenClosed()
})
