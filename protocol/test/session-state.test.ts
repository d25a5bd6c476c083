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

const illegal: Array<[string, Step[], string]> = [
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
