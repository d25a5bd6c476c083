import t from 'tap'
import { decideOpen, mirrorModified, type DiskOpenRequest, type MirrorFacts, type OpenInputs } from '../src/open-decision.ts'
import type { DiskRecord, InflightDisk } from '../src/state-file.ts'

/* Every row of the "open disk" decision (SPEC §5.1, §5.7), as a table. */

const KiB = 1024
const GEN = '0123456789abcdef0123456789abcdef'
const src1 = { layers: [{ file: 'd.vmdk', cid: '00000001', parentCid: 'ffffffff' }], successor: 'd-000001.vmdk' }
const src2 = { layers: [{ file: 'd-000001.vmdk', cid: '00000002', parentCid: '00000001' }], successor: 'd-000002.vmdk' }

const record: DiskRecord = {
  name: 'd.vmdk',
  stem: 'd',
  capacity: 64 * KiB,
  size: 64 * KiB,
  cycle: 1,
  committedAt: '2026-01-01T00:00:00.000Z',
  source: src1,
  cycleId: 'aa'.repeat(32),
  generation: GEN,
  mirrorCid: '0000cafe',
  ddb: {},
  cycleDigest: { algorithm: 'sha256', digest: '' },
}
const inc: DiskOpenRequest = {
  name: 'd.vmdk',
  capacity: 64 * KiB,
  cycle: 2,
  mode: 'incremental',
  baseCycle: 1,
  baseGeneration: GEN,
  source: src2,
  cycleId: 'bb'.repeat(32),
  ddb: {},
  algorithm: 'sha256',
}
const seed: DiskOpenRequest = { ...inc, mode: 'seed', baseCycle: 0, baseGeneration: '', source: src1, cycleId: 'cc'.repeat(32) }
const resync: DiskOpenRequest = { ...inc, mode: 'resync', baseCycle: 0, baseGeneration: '', source: src1, cycleId: 'ee'.repeat(32), blockSize: 4096 }
const intact: MirrorFacts = { cid: '0000cafe', flatSize: 64 * KiB, flatAllocated: 64 * KiB, undoing: false }
const inflightOf = (req: DiskOpenRequest, baseSize = 64 * KiB): InflightDisk => ({
  name: req.name,
  stem: 'd',
  cycleId: req.cycleId,
  mode: req.mode,
  capacity: req.capacity,
  baseSize: req.mode === 'seed' ? 0 : baseSize,
  ...(req.mode === 'resync' ? { blockSize: 4096, resyncFrom: { cid: '0badc0de', flatSize: 64 * KiB } } : {}),
  target: req.mode === 'seed' ? 'seed' : 'flat',
  source: req.source,
  ddb: req.ddb,
  algorithm: req.algorithm,
})

const room = { freeBytes: 1024 ** 4, quotaBytes: undefined, usedBytes: 0, reservedBytes: 0 }
const base: OpenInputs = { vm: 'vm', committedCycle: 1, inflightCycle: 0, record, inflight: undefined, facts: intact, request: inc, compatible: true, space: room }
const diverged = { ...record, diverged: { reason: 'certify (sha256) of cycle 1 failed', at: '2026-01-02T00:00:00.000Z' } }

interface Row {
  readonly name: string
  readonly in: Partial<OpenInputs>
  readonly want: 'fresh' | 'resume' | 'E_CYCLE_MISMATCH' | 'E_MIRROR_MODIFIED' | 'E_CHAIN_MISMATCH' | 'E_INCOMPATIBLE' | 'E_GENERATION' | 'E_DIVERGED' | 'E_NO_SPACE' | 'E_QUOTA'
}

const rows: Row[] = [
  // another cycle in flight
  { name: 'another cycle of the VM in flight', in: { inflightCycle: 3 }, want: 'E_CYCLE_MISMATCH' },
  // this disk in flight: resume or refuse
  { name: 'in flight, interrupted rollback', in: { inflightCycle: 2, inflight: inflightOf(inc), facts: { ...intact, undoing: true } }, want: 'E_CYCLE_MISMATCH' },
  { name: 'in flight, another cycle identity', in: { inflightCycle: 2, inflight: { ...inflightOf(inc), cycleId: 'dd'.repeat(32) } }, want: 'E_CYCLE_MISMATCH' },
  { name: 'in flight, another mode', in: { inflightCycle: 2, inflight: { ...inflightOf(inc), mode: 'seed' } }, want: 'E_CYCLE_MISMATCH' },
  { name: 'in flight, another capacity', in: { inflightCycle: 2, inflight: { ...inflightOf(inc), capacity: 128 * KiB } }, want: 'E_CYCLE_MISMATCH' },
  { name: 'in flight, another digest algorithm', in: { inflightCycle: 2, inflight: { ...inflightOf(inc), algorithm: 'xxh64' } }, want: 'E_CYCLE_MISMATCH' },
  { name: 'in flight in place, mirror CID changed', in: { inflightCycle: 2, inflight: inflightOf(inc), facts: { ...intact, cid: '0badc0de' } }, want: 'E_MIRROR_MODIFIED' },
  { name: 'in flight in place, flat shrank', in: { inflightCycle: 2, inflight: inflightOf(inc), facts: { ...intact, flatSize: 32 * KiB } }, want: 'E_MIRROR_MODIFIED' },
  { name: 'in flight in place, flat grown by the apply', in: { inflightCycle: 2, inflight: inflightOf(inc), facts: { ...intact, flatSize: 128 * KiB } }, want: 'resume' },
  { name: 'in flight in place, same identity', in: { inflightCycle: 2, inflight: inflightOf(inc) }, want: 'resume' },
  { name: 'in flight in place, VM no longer compatible', in: { inflightCycle: 2, inflight: inflightOf(inc), compatible: false }, want: 'E_INCOMPATIBLE' },
  { name: 'in flight seed, VM not compatible', in: { request: seed, inflightCycle: 2, inflight: inflightOf(seed), compatible: false }, want: 'resume' },
  { name: 'in flight seed over a modified mirror', in: { request: seed, inflightCycle: 2, inflight: inflightOf(seed), facts: { ...intact, cid: '0badc0de' } }, want: 'resume' },
  // nothing of this disk in flight
  { name: 'cycle not after the committed one', in: { committedCycle: 2 }, want: 'E_CYCLE_MISMATCH' },
  { name: 'seed of a cycle not after the committed one', in: { request: seed, committedCycle: 2 }, want: 'E_CYCLE_MISMATCH' },
  { name: 'incremental without a committed mirror', in: { record: undefined }, want: 'E_CHAIN_MISMATCH' },
  { name: 'incremental, VM not compatible (SPEC §4.2)', in: { compatible: false }, want: 'E_INCOMPATIBLE' },
  { name: 'incremental onto a diverged mirror', in: { record: diverged }, want: 'E_DIVERGED' },
  { name: 'incremental, mirror CID changed', in: { facts: { ...intact, cid: '0badc0de' } }, want: 'E_MIRROR_MODIFIED' },
  { name: 'incremental, descriptor missing', in: { facts: { ...intact, cid: '' } }, want: 'E_MIRROR_MODIFIED' },
  { name: 'incremental, flat size changed', in: { facts: { ...intact, flatSize: 64 * KiB + 512 } }, want: 'E_MIRROR_MODIFIED' },
  { name: 'incremental, flat missing', in: { facts: { ...intact, flatSize: -1 } }, want: 'E_MIRROR_MODIFIED' },
  { name: 'incremental on another base cycle', in: { committedCycle: 2, request: { ...inc, cycle: 3, baseCycle: 2 } }, want: 'E_CHAIN_MISMATCH' },
  {
    name: 'incremental whose first delta is not the recorded successor',
    in: { request: { ...inc, source: { ...src2, layers: [{ file: 'd-000009.vmdk', cid: '00000002', parentCid: '00000001' }] } } },
    want: 'E_CHAIN_MISMATCH',
  },
  { name: 'incremental that shrinks the disk', in: { request: { ...inc, capacity: 32 * KiB } }, want: 'E_CHAIN_MISMATCH' },
  { name: 'incremental planned against another generation (a store restored from a backup, a second receiver)', in: { request: { ...inc, baseGeneration: 'f'.repeat(32) } }, want: 'E_GENERATION' },
  { name: 'incremental onto a point committed before generations', in: { record: { ...record, generation: undefined } as unknown as DiskRecord }, want: 'E_GENERATION' },
  { name: 'incremental onto a point committed before generations, agent sends ""', in: { record: { ...record, generation: '' }, request: { ...inc, baseGeneration: '' } }, want: 'E_GENERATION' },
  // SPEC §5.1: the rules run in order
  { name: 'incompatible before a chain mismatch', in: { compatible: false, committedCycle: 2, request: { ...inc, cycle: 3, baseCycle: 2 } }, want: 'E_INCOMPATIBLE' },
  { name: 'chain mismatch before a generation mismatch', in: { committedCycle: 2, request: { ...inc, cycle: 3, baseCycle: 2, baseGeneration: 'f'.repeat(32) } }, want: 'E_CHAIN_MISMATCH' },
  { name: 'generation mismatch before a modified mirror', in: { request: { ...inc, baseGeneration: 'f'.repeat(32) }, facts: { ...intact, cid: '0badc0de' } }, want: 'E_GENERATION' },
  { name: 'modified before diverged', in: { record: diverged, facts: { ...intact, cid: '0badc0de' } }, want: 'E_MIRROR_MODIFIED' },
  { name: 'incremental that follows the chain', in: {}, want: 'fresh' },
  { name: 'incremental that grows the disk', in: { request: { ...inc, capacity: 128 * KiB } }, want: 'fresh' },
  { name: 'incremental while another disk of the same cycle is in flight', in: { inflightCycle: 2 }, want: 'fresh' },
  { name: 'first seed', in: { request: { ...seed, cycle: 1 }, record: undefined, committedCycle: 0 }, want: 'fresh' },
  { name: 'seed over a modified mirror', in: { request: seed, facts: { ...intact, cid: '0badc0de' } }, want: 'fresh' },
  { name: 'seed of an incompatible VM (after operator action)', in: { request: seed, compatible: false }, want: 'fresh' },
  { name: 'seed over a diverged mirror', in: { request: seed, record: diverged }, want: 'fresh' },
  // room (fatal outcomes)
  { name: 'a disk that grows by more than the free space', in: { request: { ...inc, capacity: 64 * KiB + 4096 }, space: { ...room, freeBytes: 4095 } }, want: 'E_NO_SPACE' },
  { name: 'a disk that grows by the free space', in: { request: { ...inc, capacity: 64 * KiB + 4096 }, space: { ...room, freeBytes: 4096 } }, want: 'fresh' },
  { name: 'an incremental that does not grow needs no free space', in: { space: { ...room, freeBytes: 0 } }, want: 'fresh' },
  // the configuration files the commit installs need the free space too
  { name: 'an incremental whose staged configuration files exceed the free space', in: { space: { ...room, freeBytes: 8191, configBytes: 8192 } }, want: 'E_NO_SPACE' },
  {
    name: 'a disk whose growth and staged configuration files exceed the free space',
    in: { request: { ...inc, capacity: 64 * KiB + 4096 }, space: { ...room, freeBytes: 4096 + 100, configBytes: 101 } },
    want: 'E_NO_SPACE',
  },
  {
    name: 'a disk whose growth and staged configuration files fit the free space',
    in: { request: { ...inc, capacity: 64 * KiB + 4096 }, space: { ...room, freeBytes: 4096 + 101, configBytes: 101 } },
    want: 'fresh',
  },
  { name: 'a new disk larger than the free space', in: { request: { ...seed, cycle: 1 }, record: undefined, committedCycle: 0, space: { ...room, freeBytes: 32 * KiB } }, want: 'E_NO_SPACE' },
  { name: "a seed above the token's quota", in: { request: seed, space: { ...room, quotaBytes: 100 * KiB, usedBytes: 64 * KiB } }, want: 'E_QUOTA' },
  { name: "a seed within the token's quota", in: { request: seed, space: { ...room, quotaBytes: 128 * KiB, usedBytes: 64 * KiB } }, want: 'fresh' },
  {
    name: "a seed within the token's quota alone, above it with the copy of the configuration files its commit installs",
    in: { request: seed, space: { ...room, quotaBytes: 128 * KiB, usedBytes: 64 * KiB, configBytes: 1 } },
    want: 'E_QUOTA',
  },
  {
    name: "a seed and the configuration files its commit installs within the token's quota",
    in: { request: seed, space: { ...room, quotaBytes: 128 * KiB + 1, usedBytes: 64 * KiB, configBytes: 1 } },
    want: 'fresh',
  },
  { name: "growth above the token's quota", in: { request: { ...inc, capacity: 128 * KiB }, space: { ...room, quotaBytes: 100 * KiB, usedBytes: 64 * KiB } }, want: 'E_QUOTA' },
  {
    name: "a seed within the token's quota alone, above it with what its other open applies may still add",
    in: { request: seed, space: { ...room, quotaBytes: 128 * KiB, usedBytes: 32 * KiB, reservedBytes: 64 * KiB } },
    want: 'E_QUOTA',
  },
  {
    name: 'an incremental on a thin mirror: the holes it may fill count',
    in: { facts: { ...intact, flatAllocated: 0 }, space: { ...room, quotaBytes: 100 * KiB, usedBytes: 64 * KiB } },
    want: 'E_QUOTA',
  },
  { name: 'an incremental on a fully allocated mirror adds nothing', in: { space: { ...room, quotaBytes: 64 * KiB, usedBytes: 64 * KiB, reservedBytes: 0 } }, want: 'fresh' },
  // SPEC §5.9: a resync compares with whatever the mirror holds
  { name: 'resync of a booted mirror (CID changed)', in: { request: resync, facts: { ...intact, cid: '0badc0de' } }, want: 'fresh' },
  { name: 'resync onto another generation (a store restored from a backup)', in: { request: resync, record: { ...record, generation: 'f'.repeat(32) } }, want: 'fresh' },
  { name: 'resync of a diverged mirror', in: { request: resync, record: diverged }, want: 'fresh' },
  { name: 'resync of a point committed before generations', in: { request: resync, record: { ...record, generation: undefined } as unknown as DiskRecord }, want: 'fresh' },
  { name: 'resync that grows the disk', in: { request: { ...resync, capacity: 128 * KiB } }, want: 'fresh' },
  { name: 'resync without a committed mirror', in: { request: resync, record: undefined }, want: 'E_CHAIN_MISMATCH' },
  { name: 'resync, flat missing', in: { request: resync, facts: { ...intact, flatSize: -1 } }, want: 'E_CHAIN_MISMATCH' },
  { name: 'resync that shrinks the disk', in: { request: { ...resync, capacity: 32 * KiB } }, want: 'E_CHAIN_MISMATCH' },
  { name: 'resync of an incompatible VM', in: { request: resync, compatible: false }, want: 'E_INCOMPATIBLE' },
  { name: 'resync of a cycle not after the committed one', in: { request: resync, committedCycle: 2 }, want: 'E_CYCLE_MISMATCH' },
  // only the cycle after the committed one is applied: 2^53 − 1 would leave the VM no next cycle
  { name: 'a first seed of a cycle other than 1', in: { request: { ...seed, cycle: 2 }, record: undefined, committedCycle: 0 }, want: 'E_CYCLE_MISMATCH' },
  { name: 'a first seed of cycle 2^53 − 1', in: { request: { ...seed, cycle: Number.MAX_SAFE_INTEGER }, record: undefined, committedCycle: 0 }, want: 'E_CYCLE_MISMATCH' },
  { name: 'a seed that skips a cycle', in: { request: { ...seed, cycle: 3 } }, want: 'E_CYCLE_MISMATCH' },
  { name: 'an incremental that skips a cycle', in: { request: { ...inc, cycle: 3 } }, want: 'E_CYCLE_MISMATCH' },
  { name: 'a resync that skips a cycle', in: { request: { ...resync, cycle: 3 } }, want: 'E_CYCLE_MISMATCH' },
  { name: 'a disk joining a cycle in flight that is not the next (left by an older receiver)', in: { inflightCycle: 5, request: { ...seed, cycle: 5 } }, want: 'E_CYCLE_MISMATCH' },
  {
    name: 'the resume of a cycle in flight that is not the next (left by an older receiver): rolled back instead',
    in: { inflightCycle: 5, inflight: inflightOf({ ...seed, cycle: 5 }), request: { ...seed, cycle: 5 } },
    want: 'E_CYCLE_MISMATCH',
  },
  { name: 'in flight resync, mirror as at its start', in: { request: resync, inflightCycle: 2, inflight: inflightOf(resync), facts: { ...intact, cid: '0badc0de' } }, want: 'resume' },
  {
    name: 'in flight resync, mirror changed again since its start',
    in: { request: resync, inflightCycle: 2, inflight: inflightOf(resync), facts: { ...intact, cid: '12345678' } },
    want: 'E_MIRROR_MODIFIED',
  },
  {
    name: 'in flight resync, flat shrank since its start',
    in: { request: resync, inflightCycle: 2, inflight: inflightOf(resync), facts: { cid: '0badc0de', flatSize: 32 * KiB, flatAllocated: 32 * KiB, undoing: false } },
    want: 'E_MIRROR_MODIFIED',
  },
  {
    name: 'in flight resync recorded without its start',
    in: { request: resync, inflightCycle: 2, inflight: { ...inflightOf(resync), resyncFrom: undefined } as unknown as InflightDisk, facts: { ...intact, cid: '0badc0de' } },
    want: 'E_MIRROR_MODIFIED',
  },
  { name: 'a resume is not charged again', in: { inflightCycle: 2, inflight: inflightOf(inc), space: { freeBytes: 0, quotaBytes: 1, usedBytes: 64 * KiB, reservedBytes: 64 * KiB } }, want: 'resume' },
]

t.test('decideOpen: every row', async (t) => {
  for (const row of rows) {
    const d = decideOpen({ ...base, ...row.in })
    t.equal(d.kind === 'refuse' || d.kind === 'fail' ? d.code : d.kind, row.want, row.name)
    if (d.kind === 'refuse' || d.kind === 'fail') t.ok(d.message.length > 0, `${row.name}: says why`)
  }
})

t.test('decideOpen: what a fresh apply records', async (t) => {
  const d = decideOpen({ ...base, facts: { ...intact, flatSize: 64 * KiB } })
  t.match(d, { kind: 'fresh', info: { target: 'flat', baseSize: 64 * KiB, mode: 'incremental', stem: 'd', cycleId: inc.cycleId } })
  const s = decideOpen({ ...base, request: { ...seed, name: 'Web 01.VMDK', cycle: 1 }, record: undefined, committedCycle: 0 })
  t.match(s, { kind: 'fresh', info: { target: 'seed', baseSize: 0, mode: 'seed', stem: 'Web 01' } })
  const r = decideOpen({ ...base, inflightCycle: 2, inflight: inflightOf(inc) })
  t.same(r, { kind: 'resume', info: inflightOf(inc) }, 'a resume carries the recorded in-flight disk')
  const y = decideOpen({ ...base, request: resync, facts: { ...intact, cid: '0badc0de', flatSize: 60 * KiB } })
  t.match(
    y,
    { kind: 'fresh', info: { target: 'flat', baseSize: 60 * KiB, mode: 'resync', blockSize: 4096, resyncFrom: { cid: '0badc0de', flatSize: 60 * KiB } } },
    'a resync applies in place and records where it started',
  )
})

t.test('mirrorModified', async (t) => {
  t.equal(mirrorModified(undefined, undefined, intact), false, 'no mirror: nothing to modify')
  t.equal(mirrorModified(record, undefined, intact), false)
  t.equal(mirrorModified(record, undefined, { ...intact, cid: '12345678' }), true)
  t.equal(mirrorModified(record, undefined, { ...intact, flatSize: 128 * KiB }), true, 'grown without an apply in flight')
  t.equal(mirrorModified(record, inflightOf(inc), { ...intact, flatSize: 128 * KiB }), false, 'grown by the in-place apply in flight')
  t.equal(mirrorModified(record, inflightOf(seed), { ...intact, flatSize: 128 * KiB }), true, 'a seed in flight does not grow the flat')
})
