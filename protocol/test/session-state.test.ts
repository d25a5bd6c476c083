import t from 'tap'
import { MessageKind as K, type Message } from '../src/messages.ts'
import { ConversationState, type Sender } from '../src/session-state.ts'

const lim = { maxMessageBytes: 1 << 20, maxExtentBytes: 65536, windowBytes: 1 << 20 }
const src = { layers: [{ file: 'a.vmdk', cid: '00000001', parentCid: 'ffffffff' }], successor: 'a-000001.vmdk' }
const d8 = new Uint8Array(8)
const M = {
  hello: { kind: K.Hello, versions: [2], software: '', digests: ['xxh64'], compressions: ['none'], limits: lim },
  welcome: { kind: K.Welcome, version: 2, software: '', digest: 'xxh64', compression: 'none', limits: lim, session: 's' },
  vmOpen: { kind: K.VmOpen, vm: 'vm', cycle: 2, compat: { hwVersion: 19, datastoreType: 'nfs', guestOS: '' }, files: [], disks: ['a.vmdk', 'b.vmdk'] },
  vmState: { kind: K.VmState, vm: 'vm', exists: true, committedCycle: 1, inflightCycle: 0, compatible: true, generation: '0123456789abcdef0123456789abcdef' },
  diskOpen: (disk: number, name = `d${disk}.vmdk`) => ({
    kind: K.DiskOpen,
    disk,
    name,
    capacity: 1 << 20,
    cycle: 2,
    mode: 'incremental',
    baseCycle: 1,
    baseGeneration: '0123456789abcdef0123456789abcdef',
    source: src,
    cycleId: '00112233445566778899aabbccddeeff',
    ddb: {},
    totalBytes: 1024,
    totalExtents: 2,
    blockSize: 0,
  }),
  // a resync of a 1 MiB + 4 KiB disk in 64 KiB blocks: 17 blocks, the last one 4 KiB
  resyncOpen: (disk: number) => ({
    kind: K.DiskOpen,
    disk,
    name: `r${disk}.vmdk`,
    capacity: (1 << 20) + 4096,
    cycle: 2,
    mode: 'resync',
    baseCycle: 0,
    baseGeneration: '',
    source: src,
    cycleId: '00112233445566778899aabbccddeeff',
    ddb: {},
    totalBytes: (1 << 20) + 4096,
    totalExtents: 0,
    blockSize: 65536,
  }),
  mapRequest: (disk: number, first: number, count: number) => ({ kind: K.BlockMapRequest, disk, first, count }),
  map: (disk: number, first: number, count: number, len = 8) => ({ kind: K.BlockMap, disk, first, digests: new Uint8Array(count * len) }),
  dataExtent: (disk: number, seq: number, offset: number, length: number) => ({
    kind: K.Extent,
    disk,
    seq,
    offset,
    length,
    zero: true,
    compression: 'none',
    data: new Uint8Array(0),
    digest: new Uint8Array(0),
  }),
  diskState: (disk: number, accepted = true, resumeSeq = 0) => ({
    kind: K.DiskState,
    disk,
    accepted,
    reason: accepted ? '' : 'E_CHAIN_MISMATCH',
    committedCycle: 1,
    committedSource: null,
    mirrorCid: '',
    modified: false,
    resumeSeq,
    resumeBytes: 0,
  }),
  extent: (disk: number, seq: number) => ({ kind: K.Extent, disk, seq, offset: seq * 512, length: 512, zero: true, compression: 'none', data: new Uint8Array(0), digest: new Uint8Array(0) }),
  ack: (disk: number, seq: number) => ({ kind: K.ExtentAck, disk, seq }),
  diskEnd: (disk: number, extents: number) => ({ kind: K.DiskEnd, disk, extents, dataBytes: 0, zeroBytes: extents * 512, digest: d8 }),
  diskEnded: (disk: number) => ({ kind: K.DiskEnded, disk }),
  commit: { kind: K.Commit, vm: 'vm', cycle: 2 },
  committed: { kind: K.Committed, vm: 'vm', cycle: 2, generation: 'fedcba9876543210fedcba9876543210', disks: [] },
  trivial: (disk: number) => ({ kind: K.TrivialCheck, disk, prefixBytes: 0, algorithm: 'xxh64', size: 1 << 20, digest: d8 }),
  trivialResult: (disk: number) => ({ kind: K.TrivialResult, disk, ok: true, size: 1 << 20, digest: d8 }),
  certify: (disk: number) => ({ kind: K.Certify, disk, algorithm: 'xxh64', digest: d8 }),
  blockCheck: (disk: number) => ({ kind: K.BlockCheck, disk, blockSize: 65536, blocks: new Uint8Array(8), digests: d8 }),
  blockCheckResult: (disk: number) => ({ kind: K.BlockCheckResult, disk, ok: true, mismatched: new Uint8Array(0) }),
  certifyResult: (disk: number) => ({ kind: K.CertifyResult, disk, ok: true, algorithm: 'xxh64', digest: d8, bytes: 1 << 20 }),
  rollback: { kind: K.Rollback, vm: 'vm' },
  rolledBack: { kind: K.RolledBack, vm: 'vm', committedCycle: 1 },
  error: (fatal: boolean) => ({ kind: K.Error, code: 'E_IO', message: '', fatal }),
} as const
type Step = [Sender, unknown]
const A = (m: unknown): Step => ['agent', m]
const R = (m: unknown): Step => ['receiver', m]
const run = (steps: Step[]): ConversationState => {
  const s = new ConversationState()
  for (const [from, m] of steps) s.observe(m as Message, from)
  return s
}
const opening: Step[] = [A(M.hello), R(M.welcome), A(M.vmOpen), R(M.vmState)]

t.test('a whole cycle: two disks (one refused, one resumed), commit, verification', async (t) => {
  const s = run([
    ...opening,
    A(M.diskOpen(0)),
    R(M.diskState(0, true, 3)),
    A(M.diskOpen(1)),
    R(M.diskState(1, false)),
    A(M.extent(0, 3)),
    A(M.extent(0, 4)),
    R(M.ack(0, 3)),
    A(M.error(false)),
    R(M.ack(0, 4)),
    A(M.diskEnd(0, 5)),
    R(M.diskEnded(0)),
    A(M.commit),
    R(M.committed),
    A(M.trivial(0)),
    A(M.certify(0)),
    R(M.trivialResult(0)),
    R(M.certifyResult(0)),
    A(M.blockCheck(0)),
    A(M.blockCheck(0)),
    R(M.blockCheckResult(0)),
    R(M.blockCheckResult(0)),
  ])
  t.equal(s.phase, 'committed')
  t.equal(s.diskPhase(0), 'committed')
  t.equal(s.diskPhase(1), 'refused')
  t.equal(s.diskPhase(2), undefined)
})

t.test('a refused disk is opened again with a new handle in the same connection (SPEC §8.2)', async (t) => {
  const s = run([
    ...opening,
    A(M.diskOpen(0, 'a.vmdk')),
    R(M.diskState(0, false)),
    A(M.diskOpen(1, 'a.vmdk')),
    R(M.diskState(1, false)),
    A(M.diskOpen(2, 'a.vmdk')),
    R(M.diskState(2)),
    A(M.diskEnd(2, 0)),
    R(M.diskEnded(2)),
    A(M.commit),
    R(M.committed),
  ])
  t.equal(s.diskPhase(0), 'refused', 'a refused handle stays spent')
  t.equal(s.diskPhase(1), 'refused')
  t.equal(s.diskPhase(2), 'committed')
})

t.test('rollback before any disk', async (t) => {
  t.equal(run([...opening, A(M.rollback), R(M.rolledBack), A(M.diskOpen(0))]).phase, 'vm-open')
})

t.test('a resync: block maps requested in order, extents behind the map frontier, DiskEnd after the whole map', async (t) => {
  const s = run([
    ...opening,
    A(M.resyncOpen(0)),
    R(M.diskState(0)),
    A(M.mapRequest(0, 0, 4)),
    A(M.mapRequest(0, 4, 4)),
    A(M.mapRequest(0, 8, 8)),
    A(M.mapRequest(0, 16, 1)),
    R(M.map(0, 0, 4)),
    A(M.dataExtent(0, 0, 65536, 65536)),
    R(M.map(0, 4, 4, 32)),
    R(M.map(0, 8, 8)),
    A(M.dataExtent(0, 1, 15 * 65536, 65536)),
    R(M.map(0, 16, 1)),
    A(M.dataExtent(0, 2, 1 << 20, 4096)),
    R(M.ack(0, 2)),
    A(M.diskEnd(0, 3)),
    R(M.diskEnded(0)),
  ])
  t.equal(s.diskPhase(0), 'sealed')
  // a resumed resync asks for the map again from block 0
  const r = run([...opening, A(M.resyncOpen(0)), R(M.diskState(0, true, 5)), A(M.mapRequest(0, 0, 17)), R(M.map(0, 0, 17)), A(M.dataExtent(0, 5, 0, 512))])
  t.equal(r.diskPhase(0), 'accepted')
})

const resyncing: Step[] = [...(['hello', 'welcome', 'vmOpen', 'vmState'] as const).map((k, i) => (i % 2 === 0 ? A(M[k]) : R(M[k]))), A(M.resyncOpen(0)), R(M.diskState(0))]

const illegal: Array<[string, Step[], string]> = [
  ['BlockMapRequest for an incremental', [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.mapRequest(0, 0, 1))], 'E_UNEXPECTED'],
  ['BlockMapRequest before DiskState', [...opening, A(M.resyncOpen(0)), A(M.mapRequest(0, 0, 1))], 'E_UNEXPECTED'],
  ['BlockMapRequest not from block 0', [...resyncing, A(M.mapRequest(0, 1, 1))], 'E_SEQUENCE'],
  ['BlockMapRequest with a gap', [...resyncing, A(M.mapRequest(0, 0, 2)), A(M.mapRequest(0, 3, 1))], 'E_SEQUENCE'],
  ['BlockMapRequest overlapping', [...resyncing, A(M.mapRequest(0, 0, 2)), A(M.mapRequest(0, 1, 1))], 'E_SEQUENCE'],
  ['BlockMapRequest beyond the last block', [...resyncing, A(M.mapRequest(0, 0, 18))], 'E_RANGE'],
  [
    'a fifth BlockMapRequest unanswered',
    [...resyncing, A(M.mapRequest(0, 0, 1)), A(M.mapRequest(0, 1, 1)), A(M.mapRequest(0, 2, 1)), A(M.mapRequest(0, 3, 1)), A(M.mapRequest(0, 4, 1))],
    'E_UNEXPECTED',
  ],
  ['BlockMapRequest from the receiver', [...resyncing, R(M.mapRequest(0, 0, 1))], 'E_UNEXPECTED'],
  ['BlockMap from the agent', [...resyncing, A(M.mapRequest(0, 0, 1)), A(M.map(0, 0, 1))], 'E_UNEXPECTED'],
  ['BlockMap without a request', [...resyncing, R(M.map(0, 0, 1))], 'E_UNEXPECTED'],
  ['BlockMap out of order', [...resyncing, A(M.mapRequest(0, 0, 1)), A(M.mapRequest(0, 1, 1)), R(M.map(0, 1, 1))], 'E_SEQUENCE'],
  ['BlockMap with too few digest bytes', [...resyncing, A(M.mapRequest(0, 0, 4)), R(M.map(0, 0, 3))], 'E_SCHEMA'],
  ['BlockMap with digests of no known length', [...resyncing, A(M.mapRequest(0, 0, 2)), R({ ...M.map(0, 0, 1), digests: new Uint8Array(14) })], 'E_SCHEMA'],
  ['resync Extent before any map', [...resyncing, A(M.dataExtent(0, 0, 0, 512))], 'E_RANGE'],
  ['resync Extent ahead of the map frontier', [...resyncing, A(M.mapRequest(0, 0, 2)), R(M.map(0, 0, 2)), A(M.dataExtent(0, 0, 65536, 65536 + 512))], 'E_RANGE'],
  ['resync DiskEnd before the whole map', [...resyncing, A(M.mapRequest(0, 0, 16)), R(M.map(0, 0, 16)), A(M.diskEnd(0, 0))], 'E_UNEXPECTED'],
  ['anything before Hello', [A(M.vmOpen)], 'E_UNEXPECTED'],
  ['Hello twice', [A(M.hello), R(M.welcome), A(M.hello)], 'E_UNEXPECTED'],
  ['Hello from the receiver', [R(M.hello)], 'E_UNEXPECTED'],
  ['Welcome from the agent', [A(M.hello), A(M.welcome)], 'E_UNEXPECTED'],
  ['DiskOpen before VmState', [A(M.hello), R(M.welcome), A(M.vmOpen), A(M.diskOpen(0))], 'E_UNEXPECTED'],
  ['second VmOpen', [...opening, A(M.vmOpen)], 'E_UNEXPECTED'],
  ['Rollback after DiskOpen', [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.rollback)], 'E_UNEXPECTED'],
  ['DiskOpen with a used handle', [...opening, A(M.diskOpen(0)), A(M.diskOpen(0))], 'E_UNEXPECTED'],
  ['DiskOpen of a disk name still open', [...opening, A(M.diskOpen(0, 'a.vmdk')), R(M.diskState(0)), A(M.diskOpen(1, 'a.vmdk'))], 'E_UNEXPECTED'],
  ['DiskOpen of a disk name awaiting its DiskState', [...opening, A(M.diskOpen(0, 'a.vmdk')), A(M.diskOpen(1, 'a.vmdk'))], 'E_UNEXPECTED'],
  ['DiskOpen again of a sealed disk name', [...opening, A(M.diskOpen(0, 'a.vmdk')), R(M.diskState(0)), A(M.diskEnd(0, 0)), R(M.diskEnded(0)), A(M.diskOpen(1, 'a.vmdk'))], 'E_UNEXPECTED'],
  [
    'Extent for a refused handle after the name was reopened',
    [...opening, A(M.diskOpen(0, 'a.vmdk')), R(M.diskState(0, false)), A(M.diskOpen(1, 'a.vmdk')), R(M.diskState(1)), A(M.extent(0, 0))],
    'E_UNEXPECTED',
  ],
  ['DiskOpen of another cycle', [...opening, A({ ...M.diskOpen(0), cycle: 3 })], 'E_UNEXPECTED'],
  ['Extent before DiskState', [...opening, A(M.diskOpen(0)), A(M.extent(0, 0))], 'E_UNEXPECTED'],
  ['Extent for a refused disk', [...opening, A(M.diskOpen(0)), R(M.diskState(0, false)), A(M.extent(0, 0))], 'E_UNEXPECTED'],
  ['Extent skipping the resume point', [...opening, A(M.diskOpen(0)), R(M.diskState(0, true, 2)), A(M.extent(0, 0))], 'E_SEQUENCE'],
  ['Extent out of order', [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.extent(0, 0)), A(M.extent(0, 2))], 'E_SEQUENCE'],
  ['ack of an unsent extent', [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.extent(0, 0)), R(M.ack(0, 1))], 'E_UNEXPECTED'],
  ['ack going back', [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.extent(0, 0)), A(M.extent(0, 1)), R(M.ack(0, 1)), R(M.ack(0, 0))], 'E_UNEXPECTED'],
  ['Extent after DiskEnd', [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.diskEnd(0, 0)), A(M.extent(0, 0))], 'E_UNEXPECTED'],
  ['DiskEnd with the wrong count', [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.extent(0, 0)), A(M.diskEnd(0, 2))], 'E_UNEXPECTED'],
  ['Commit before DiskEnded', [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.diskEnd(0, 0)), A(M.commit)], 'E_UNEXPECTED'],
  ['Commit with nothing sealed', [...opening, A(M.commit)], 'E_UNEXPECTED'],
  ['Commit of another cycle', [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.diskEnd(0, 0)), R(M.diskEnded(0)), A({ ...M.commit, cycle: 3 })], 'E_UNEXPECTED'],
  ['DiskOpen after Commit', [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.diskEnd(0, 0)), R(M.diskEnded(0)), A(M.commit), R(M.committed), A(M.diskOpen(1))], 'E_UNEXPECTED'],
  ['TrivialCheck before Committed', [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.diskEnd(0, 0)), R(M.diskEnded(0)), A(M.commit), A(M.trivial(0))], 'E_UNEXPECTED'],
  ['unrequested TrivialResult', [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.diskEnd(0, 0)), R(M.diskEnded(0)), A(M.commit), R(M.committed), R(M.trivialResult(0))], 'E_UNEXPECTED'],
  [
    'unrequested CertifyResult',
    [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.diskEnd(0, 0)), R(M.diskEnded(0)), A(M.commit), R(M.committed), A(M.trivial(0)), R(M.certifyResult(0))],
    'E_UNEXPECTED',
  ],
  ['BlockCheck before Committed', [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.diskEnd(0, 0)), R(M.diskEnded(0)), A(M.commit), A(M.blockCheck(0))], 'E_UNEXPECTED'],
  ['unrequested BlockCheckResult', [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.diskEnd(0, 0)), R(M.diskEnded(0)), A(M.commit), R(M.committed), R(M.blockCheckResult(0))], 'E_UNEXPECTED'],
  [
    'a fifth unanswered BlockCheck',
    [...opening, A(M.diskOpen(0)), R(M.diskState(0)), A(M.diskEnd(0, 0)), R(M.diskEnded(0)), A(M.commit), R(M.committed), ...[0, 1, 2, 3, 4].map(() => A(M.blockCheck(0)))],
    'E_UNEXPECTED',
  ],
  ['anything after a fatal Error', [A(M.hello), R(M.error(true)), R(M.welcome)], 'E_UNEXPECTED'],
  ['unknown kind', [['agent', { kind: 3 }]], 'E_UNKNOWN_KIND'],
]

t.test('illegal messages', async (t) => {
  for (const [name, steps, code] of illegal) {
    const s = run(steps.slice(0, -1))
    const phase = s.phase
    const [from, m] = steps[steps.length - 1] as Step
    t.throws(() => s.observe(m as Message, from), { name: 'ProtocolError', code }, name)
    t.equal(s.phase, phase, `${name}: state unchanged`)
  }
})

t.test('DiskProgress: version 3 only, between a DiskOpen and its DiskState, any number (SPEC §5.1, §8.2)', async (t) => {
  const v3: Step[] = [A({ ...M.hello, versions: [3, 2] }), R({ ...M.welcome, version: 3 }), A(M.vmOpen), R(M.vmState)]
  const progress = (disk: number, doneBytes: number) => ({ kind: K.DiskProgress, disk, step: 'base-copy', doneBytes, totalBytes: 1 << 20 })
  const s = run([...v3, A(M.diskOpen(0)), R(progress(0, 0)), R(progress(0, 4096)), R(progress(0, 1 << 20)), R(M.diskState(0)), A(M.extent(0, 0))])
  t.equal(s.version, 3)
  t.equal(s.diskPhase(0), 'accepted')
  // the same on a version 2 connection: a v2 agent does not know the kind
  t.throws(() => run([...opening, A(M.diskOpen(0)), R(progress(0, 0))]), { code: 'E_UNEXPECTED', message: /version 2/ })
  // after the DiskState, for a handle never opened, or from the agent
  t.throws(() => run([...v3, A(M.diskOpen(0)), R(M.diskState(0)), R(progress(0, 0))]), { code: 'E_UNEXPECTED', message: /state accepted/ })
  t.throws(() => run([...v3, A(M.diskOpen(0)), R(progress(1, 0))]), { code: 'E_UNEXPECTED', message: /disk 1 is not open/ })
  t.throws(() => run([...v3, A(M.diskOpen(0)), A(progress(0, 0))]), { code: 'E_UNEXPECTED', message: /sent by the receiver/ })
  // before Welcome there is no version
  t.equal(new ConversationState().version, 0)
})

t.test('CommitProgress: version 4 only, between a Commit and its Committed, with their VM and cycle, any number (SPEC §5.5, §8.1)', async (t) => {
  const at = (version: number): Step[] => [A({ ...M.hello, versions: [4, 3, 2] }), R({ ...M.welcome, version }), A(M.vmOpen), R(M.vmState)]
  const sealed: Step[] = [A(M.diskOpen(0)), R(M.diskState(0)), A(M.diskEnd(0, 0)), R(M.diskEnded(0))]
  const progress = (doneBytes: number, o: { vm?: string; cycle?: number } = {}) => ({
    kind: K.CommitProgress,
    vm: o.vm ?? 'vm',
    cycle: o.cycle ?? 2,
    step: 'merge-points',
    doneBytes,
    totalBytes: 1 << 20,
  })
  const s = run([...at(4), ...sealed, A(M.commit), R(progress(0)), R(progress(4096)), R(progress(1 << 20)), R(M.committed), A(M.trivial(0))])
  t.equal(s.version, 4)
  t.equal(s.phase, 'committed')
  // version 3 and 2 do not know the kind
  t.throws(() => run([...at(3), ...sealed, A(M.commit), R(progress(0))]), { code: 'E_UNEXPECTED', message: /version 3/ })
  t.throws(() => run([...opening, ...sealed, A(M.commit), R(progress(0))]), { code: 'E_UNEXPECTED', message: /version 2/ })
  // before the Commit, after the Committed, for another VM or cycle, or from the agent
  t.throws(() => run([...at(4), ...sealed, R(progress(0))]), { code: 'E_UNEXPECTED', message: /phase vm-open/ })
  t.throws(() => run([...at(4), ...sealed, A(M.commit), R(M.committed), R(progress(0))]), { code: 'E_UNEXPECTED', message: /phase committed/ })
  t.throws(() => run([...at(4), ...sealed, A(M.commit), R(progress(0, { vm: 'other' }))]), { code: 'E_UNEXPECTED', message: /another VM or cycle/ })
  t.throws(() => run([...at(4), ...sealed, A(M.commit), R(progress(0, { cycle: 3 }))]), { code: 'E_UNEXPECTED', message: /another VM or cycle/ })
  t.throws(() => run([...at(4), ...sealed, A(M.commit), A(progress(0))]), { code: 'E_UNEXPECTED', message: /sent by the receiver/ })
})

t.test('VmProgress: version 5 only, between a VmOpen and its VmState or a Rollback and its RolledBack, for that VM, any number (SPEC §4.2, §4.3, §8.1)', async (t) => {
  const welcomed = (version: number): Step[] => [A({ ...M.hello, versions: [5, 4, 3, 2] }), R({ ...M.welcome, version }), A(M.vmOpen)]
  const progress = (doneBytes: number, o: { vm?: string; step?: string } = {}) => ({
    kind: K.VmProgress,
    vm: o.vm ?? 'vm',
    step: o.step ?? 'merge-points',
    doneBytes,
    totalBytes: 1 << 20,
  })
  // an interrupted commit finished at the VmOpen, then an undo at the Rollback
  const s = run([
    ...welcomed(5),
    R(progress(0)),
    R(progress(4096)),
    R(progress(1 << 20)),
    R(M.vmState),
    A(M.rollback),
    R(progress(0, { step: 'undo' })),
    R(progress(1 << 20, { step: 'undo' })),
    R(M.rolledBack),
    A(M.diskOpen(0)),
  ])
  t.equal(s.version, 5)
  t.equal(s.phase, 'vm-open')
  // version 4 and 2 do not know the kind
  t.throws(() => run([...welcomed(4), R(progress(0))]), { code: 'E_UNEXPECTED', message: /version 4/ })
  t.throws(() => run([...opening.slice(0, 3), R(progress(0))]), { code: 'E_UNEXPECTED', message: /version 2/ })
  // before the VmOpen, after the VmState (outside a Rollback), after the RolledBack, for another VM, or from the agent
  t.throws(() => run([A({ ...M.hello, versions: [5] }), R({ ...M.welcome, version: 5 }), R(progress(0))]), { code: 'E_UNEXPECTED', message: /phase ready/ })
  t.throws(() => run([...welcomed(5), R(M.vmState), R(progress(0))]), { code: 'E_UNEXPECTED', message: /phase vm-open/ })
  t.throws(() => run([...welcomed(5), R(M.vmState), A(M.rollback), R(M.rolledBack), R(progress(0))]), { code: 'E_UNEXPECTED', message: /phase vm-open/ })
  t.throws(() => run([...welcomed(5), R(progress(0, { vm: 'other' }))]), { code: 'E_UNEXPECTED', message: /another VM/ })
  t.throws(() => run([...welcomed(5), A(progress(0))]), { code: 'E_UNEXPECTED', message: /sent by the receiver/ })
})

t.test('PointsDropped: version 6 only, between a Commit and its Committed, with their VM and cycle, at most once (SPEC §5.5, §8.1)', async (t) => {
  const at = (version: number): Step[] => [A({ ...M.hello, versions: [6, 5, 4, 3, 2] }), R({ ...M.welcome, version }), A(M.vmOpen), R(M.vmState)]
  const sealed: Step[] = [A(M.diskOpen(0)), R(M.diskState(0)), A(M.diskEnd(0, 0)), R(M.diskEnded(0))]
  const dropped = (o: { vm?: string; cycle?: number } = {}) => ({ kind: K.PointsDropped, vm: o.vm ?? 'vm', cycle: o.cycle ?? 2, count: 1, oldest: 1, newest: 1, broken: true, reason: 'r' })
  const progress = { kind: K.CommitProgress, vm: 'vm', cycle: 2, step: 'merge-points', doneBytes: 0, totalBytes: 1 }
  // with CommitProgress before and after it
  const s = run([...at(6), ...sealed, A(M.commit), R(progress), R(dropped()), R(progress), R(M.committed), A(M.trivial(0))])
  t.equal(s.version, 6)
  t.equal(s.phase, 'committed')
  // version 5 and 2 do not know the kind
  t.throws(() => run([...at(5), ...sealed, A(M.commit), R(dropped())]), { code: 'E_UNEXPECTED', message: /version 5/ })
  t.throws(() => run([...opening, ...sealed, A(M.commit), R(dropped())]), { code: 'E_UNEXPECTED', message: /version 2/ })
  // twice for one Commit, before the Commit, after the Committed, for another VM or cycle, or from the agent
  t.throws(() => run([...at(6), ...sealed, A(M.commit), R(dropped()), R(dropped())]), { code: 'E_UNEXPECTED', message: /second PointsDropped/ })
  t.throws(() => run([...at(6), ...sealed, R(dropped())]), { code: 'E_UNEXPECTED', message: /phase vm-open/ })
  t.throws(() => run([...at(6), ...sealed, A(M.commit), R(M.committed), R(dropped())]), { code: 'E_UNEXPECTED', message: /phase committed/ })
  t.throws(() => run([...at(6), ...sealed, A(M.commit), R(dropped({ vm: 'other' }))]), { code: 'E_UNEXPECTED', message: /another VM or cycle/ })
  t.throws(() => run([...at(6), ...sealed, A(M.commit), R(dropped({ cycle: 3 }))]), { code: 'E_UNEXPECTED', message: /another VM or cycle/ })
  t.throws(() => run([...at(6), ...sealed, A(M.commit), A(dropped())]), { code: 'E_UNEXPECTED', message: /sent by the receiver/ })
})

t.test("PointsDropped before a VmState: version 7 only, the VmOpen's VM and cycle, at most once, and only when the VmState says that cycle is committed (SPEC §4.2, §5.5, §8.1)", async (t) => {
  const hello = (version: number): Step[] => [A({ ...M.hello, versions: [7, 6, 5, 4, 3, 2] }), R({ ...M.welcome, version }), A(M.vmOpen)]
  const dropped = (o: { vm?: string; cycle?: number } = {}) => ({ kind: K.PointsDropped, vm: o.vm ?? 'vm', cycle: o.cycle ?? 2, count: 1, oldest: 1, newest: 1, broken: true, reason: 'r' })
  const committed = { ...M.vmState, committedCycle: 2 }
  const progress = { kind: K.VmProgress, vm: 'vm', step: 'merge-points', doneBytes: 0, totalBytes: 1 }
  // the commit of the VmOpen's cycle went through before the connection dropped: told before its VmState, with VmProgress around it
  const s = run([...hello(7), R(progress), R(dropped()), R(progress), R(committed)])
  t.equal(s.version, 7)
  t.equal(s.phase, 'vm-open')
  // version 6 and 2 do not know it there (version 6 still does after a Commit)
  t.throws(() => run([...hello(6), R(dropped())]), { code: 'E_UNEXPECTED', message: /before a VmState is not part of protocol version 6/ })
  t.throws(() => run([A(M.hello), R(M.welcome), A(M.vmOpen), R(dropped())]), { code: 'E_UNEXPECTED', message: /version 2/ })
  // a VmState that does not say the VmOpen's cycle is committed (in flight, or the one before) contradicts the notice
  t.throws(() => run([...hello(7), R(dropped()), R(M.vmState)]), { code: 'E_UNEXPECTED', message: /committed cycle is 1/ })
  t.throws(() => run([...hello(7), R(dropped()), R({ ...M.vmState, committedCycle: 3 })]), { code: 'E_UNEXPECTED', message: /committed cycle is 3/ })
  // twice, of another VM or cycle, from the agent, or after the VmState (outside a Commit)
  t.throws(() => run([...hello(7), R(dropped()), R(dropped())]), { code: 'E_UNEXPECTED', message: /second PointsDropped for one VmOpen/ })
  t.throws(() => run([...hello(7), R(dropped({ vm: 'other' }))]), { code: 'E_UNEXPECTED', message: /another VM or cycle than the VmOpen/ })
  t.throws(() => run([...hello(7), R(dropped({ cycle: 1 }))]), { code: 'E_UNEXPECTED', message: /another VM or cycle than the VmOpen/ })
  t.throws(() => run([...hello(7), A(dropped())]), { code: 'E_UNEXPECTED', message: /sent by the receiver/ })
  t.throws(() => run([...hello(7), R(committed), R(dropped())]), { code: 'E_UNEXPECTED', message: /phase vm-open/ })
  // a VmState without a notice is as before, whatever its committed cycle
  t.equal(run([...hello(7), R(committed)]).phase, 'vm-open')
})

t.test('committedCycleId: in every VmState of version 8 and later, in none before (SPEC §4.2, §9)', async (t) => {
  const hello = (version: number): Step[] => [A({ ...M.hello, versions: [9, 8, 7, 6, 5, 4, 3, 2] }), R({ ...M.welcome, version }), A(M.vmOpen)]
  const id = 'ab'.repeat(32)
  // version 8: the identity of the committed cycle, or "" (a commit made before version 8)
  t.equal(run([...hello(8), R({ ...M.vmState, committedCycleId: id })]).phase, 'vm-open')
  t.equal(run([...hello(8), R({ ...M.vmState, committedCycleId: '' })]).phase, 'vm-open')
  t.throws(() => run([...hello(8), R(M.vmState)]), { code: 'E_UNEXPECTED', message: /version 8 needs committedCycleId/ })
  // version 7 and older: as before, and the field (which their decoders refuse as unknown) is not sent
  t.equal(run([...hello(7), R(M.vmState)]).phase, 'vm-open')
  t.throws(() => run([...hello(7), R({ ...M.vmState, committedCycleId: id })]), { code: 'E_UNEXPECTED', message: /not part of the VmState of protocol version 7/ })
  t.throws(() => run([A(M.hello), R(M.welcome), A(M.vmOpen), R({ ...M.vmState, committedCycleId: '' })]), { code: 'E_UNEXPECTED', message: /version 2/ })
  // a notice before it (v7) still needs the VmOpen's cycle committed
  const dropped = { kind: K.PointsDropped, vm: 'vm', cycle: 2, count: 1, oldest: 1, newest: 1, broken: true, reason: 'r' }
  t.equal(run([...hello(8), R(dropped), R({ ...M.vmState, committedCycle: 2, committedCycleId: id })]).phase, 'vm-open')
})

t.test('DiskState.detail: on a refused DiskState of version 9 and later, on none before (SPEC §5.1, §9)', async (t) => {
  const hello = (version: number): Step[] => [
    A({ ...M.hello, versions: [9, 8, 7, 6, 5, 4, 3, 2] }),
    R({ ...M.welcome, version }),
    A(M.vmOpen),
    R(version >= 8 ? { ...M.vmState, committedCycleId: '' } : M.vmState),
  ]
  const refused = { ...M.diskState(0, false), detail: 'capacity shrank from 2048 to 1024' }
  // version 9: a refusal with its words, or without
  const s = run([...hello(9), A(M.diskOpen(0)), R(refused)])
  t.equal(s.diskPhase(0), 'refused')
  t.equal(run([...hello(9), A(M.diskOpen(0)), R(M.diskState(0, false))]).diskPhase(0), 'refused')
  // version 8 and older: the field (which their decoders refuse as unknown) is not sent
  t.equal(run([...hello(8), A(M.diskOpen(0)), R(M.diskState(0, false))]).diskPhase(0), 'refused')
  t.throws(() => run([...hello(8), A(M.diskOpen(0)), R(refused)]), { code: 'E_UNEXPECTED', message: /detail is not part of the DiskState of protocol version 8/ })
  t.throws(() => run([A(M.hello), R(M.welcome), A(M.vmOpen), R(M.vmState), A(M.diskOpen(0)), R(refused)]), { code: 'E_UNEXPECTED', message: /version 2/ })
})
