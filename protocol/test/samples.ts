/**
 * Hand-written valid messages of every kind: the golden vectors' inputs and
 * the seeds of the codec tests. Deterministic (no randomness).
 */
import { MessageKind, type Message } from '../src/messages.ts'

const bytes = (n: number, f: (i: number) => number = (i) => i & 0xff): Uint8Array => Uint8Array.from({ length: n }, (_, i) => f(i))
const MiB = 1024 * 1024
/** u64le block indexes */
const u64s = (xs: readonly number[]): Uint8Array => {
  const b = new Uint8Array(xs.length * 8)
  const v = new DataView(b.buffer)
  for (const [i, x] of xs.entries()) v.setBigUint64(i * 8, BigInt(x), true)
  return b
}

export interface Sample {
  readonly name: string
  readonly message: Message
}

const source = {
  layers: [
    { file: 'web01.vmdk', cid: '3f2e1d0c', parentCid: 'ffffffff' },
    { file: 'web01-000001.vmdk', cid: '0a0b0c0d', parentCid: '3f2e1d0c' },
  ],
  successor: 'web01-000002.vmdk',
}

export const samples: readonly Sample[] = [
  {
    name: 'hello',
    message: {
      kind: MessageKind.Hello,
      versions: [2],
      software: 'grainline-agent/0.1.0',
      digests: ['xxh64', 'sha256', 'sha1', 'md5'],
      compressions: ['lz4', 'deflate', 'none'],
      limits: { maxMessageBytes: 16 * MiB + 65536, maxExtentBytes: 16 * MiB, windowBytes: 64 * MiB },
    },
  },
  {
    name: 'hello with a version and an algorithm this build does not know',
    message: {
      kind: MessageKind.Hello,
      versions: [3, 2],
      software: '',
      digests: ['blake3' as never, 'md5'],
      compressions: ['zstd' as never, 'none'],
      limits: { maxMessageBytes: 4096, maxExtentBytes: 512, windowBytes: 1 },
    },
  },
  {
    name: 'welcome',
    message: {
      kind: MessageKind.Welcome,
      version: 2,
      software: 'grainline-receiver/0.1.0',
      digest: 'xxh64',
      compression: 'lz4',
      limits: { maxMessageBytes: 16 * MiB + 65536, maxExtentBytes: 16 * MiB, windowBytes: 64 * MiB },
      session: 's-0001',
    },
  },
  {
    name: 'vm-open',
    message: {
      kind: MessageKind.VmOpen,
      vm: 'web01',
      cycle: 3,
      compat: { hwVersion: 19, datastoreType: 'vmfs6', guestOS: 'debian12-64' },
      files: [
        { name: 'web01.vmx', data: new TextEncoder().encode('.encoding = "UTF-8"\nvirtualHW.version = "19"\n') },
        { name: 'web01.nvram', data: bytes(40, (i) => (i * 37) & 0xff) },
      ],
      disks: ['web01.vmdk', 'web01_1.vmdk'],
    },
  },
  {
    name: 'vm-open with no files and no disks',
    message: { kind: MessageKind.VmOpen, vm: 'vm é 日本', cycle: 1, compat: { hwVersion: 0, datastoreType: '', guestOS: '' }, files: [], disks: [] },
  },
  {
    name: 'vm-state',
    message: { kind: MessageKind.VmState, vm: 'web01', exists: true, committedCycle: 2, inflightCycle: 3, compatible: true, generation: '9f1c3b5e7a2d4f6081a3c5e7092b4d6f' },
  },
  {
    name: 'vm-state of a VM with no mirror',
    message: { kind: MessageKind.VmState, vm: 'db01', exists: false, committedCycle: 0, inflightCycle: 0, compatible: true, generation: '' },
  },
  {
    name: 'vm-state of version 8, with the identity of the committed cycle',
    message: {
      kind: MessageKind.VmState,
      vm: 'web01',
      exists: true,
      committedCycle: 2,
      inflightCycle: 0,
      compatible: true,
      generation: '9f1c3b5e7a2d4f6081a3c5e7092b4d6f',
      committedCycleId: 'c4a1e2f3b5d6a7980a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071',
    },
  },
  {
    name: 'vm-state of version 8 of a commit made before version 8',
    message: { kind: MessageKind.VmState, vm: 'web01', exists: true, committedCycle: 2, inflightCycle: 0, compatible: true, generation: '9f1c3b5e7a2d4f6081a3c5e7092b4d6f', committedCycleId: '' },
  },
  {
    name: 'vm-progress of an interrupted commit finished',
    message: { kind: MessageKind.VmProgress, vm: 'web01', step: 'merge-points', doneBytes: 3 * 1024 * MiB, totalBytes: 7 * 1024 * MiB },
  },
  {
    name: 'vm-progress of an undo',
    message: { kind: MessageKind.VmProgress, vm: 'web01', step: 'undo', doneBytes: 0, totalBytes: 640 * MiB },
  },
  {
    name: 'disk-open incremental',
    message: {
      kind: MessageKind.DiskOpen,
      disk: 0,
      name: 'web01.vmdk',
      capacity: 16 * 1024 * MiB,
      cycle: 3,
      mode: 'incremental',
      baseCycle: 2,
      baseGeneration: '9f1c3b5e7a2d4f6081a3c5e7092b4d6f',
      source,
      cycleId: '5a3f0e6c1d2b4a59887766554433221100ffeeddccbbaa998877665544332211',
      ddb: { 'ddb.adapterType': 'lsilogic', 'ddb.virtualHWVersion': '19', 'ddb.uuid': '60 00 C2 9a 2b 3c 4d 5e-6f 70 81 92 a3 b4 c5 d6' },
      totalBytes: 5 * MiB + 512,
      totalExtents: 7,
      blockSize: 0,
    },
  },
  {
    name: 'disk-open resync',
    message: {
      kind: MessageKind.DiskOpen,
      disk: 1,
      name: 'web01_1.vmdk',
      capacity: 16 * 1024 * MiB,
      cycle: 4,
      mode: 'resync',
      baseCycle: 0,
      baseGeneration: '',
      source,
      cycleId: '7c1e0f2a3b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7',
      ddb: { 'ddb.adapterType': 'pvscsi' },
      totalBytes: 16 * 1024 * MiB,
      totalExtents: 0,
      blockSize: MiB,
    },
  },
  {
    name: 'disk-open seed of a 4 PiB disk',
    message: {
      kind: MessageKind.DiskOpen,
      disk: 255,
      name: 'big.vmdk',
      capacity: 4 * 1024 ** 5,
      cycle: 1,
      mode: 'seed',
      baseCycle: 0,
      baseGeneration: '',
      source: { layers: [{ file: 'big.vmdk', cid: '00000001', parentCid: 'ffffffff' }], successor: 'big-000001.vmdk' },
      cycleId: '0123456789abcdef',
      ddb: {},
      totalBytes: 4 * 1024 ** 5,
      totalExtents: 268435456,
      blockSize: 0,
    },
  },
  {
    name: 'disk-state accepted, resuming',
    message: {
      kind: MessageKind.DiskState,
      disk: 0,
      accepted: true,
      reason: '',
      committedCycle: 2,
      committedSource: { layers: [source.layers[0]!], successor: 'web01-000001.vmdk' },
      mirrorCid: 'c0ffee00',
      modified: false,
      resumeSeq: 4,
      resumeBytes: 4 * MiB,
    },
  },
  {
    name: "disk-state of version 9 refused, with the receiver's detail",
    message: {
      kind: MessageKind.DiskState,
      disk: 0,
      accepted: false,
      reason: 'E_MIRROR_MODIFIED',
      committedCycle: 7,
      committedSource: null,
      mirrorCid: '1a2b3c4d',
      modified: true,
      resumeSeq: 0,
      resumeBytes: 0,
      detail: 'mirror of web01.vmdk changed since the last commit (CID 5e6f7a8b, recorded 1a2b3c4d) — “café”',
    },
  },
  {
    name: 'disk-state refused, no mirror yet',
    message: {
      kind: MessageKind.DiskState,
      disk: 1,
      accepted: false,
      reason: 'E_CHAIN_MISMATCH',
      committedCycle: 0,
      committedSource: null,
      mirrorCid: '',
      modified: false,
      resumeSeq: 0,
      resumeBytes: 0,
    },
  },
  {
    name: 'disk-progress of a base copy',
    message: { kind: MessageKind.DiskProgress, disk: 3, step: 'base-copy', doneBytes: 3 * 1024 ** 3, totalBytes: 200 * 1024 ** 3 },
  },
  {
    name: 'extent data, uncompressed, xxh64',
    message: { kind: MessageKind.Extent, disk: 0, seq: 0, offset: 1048576, length: 512, zero: false, compression: 'none', data: bytes(512), digest: bytes(8, (i) => 0xa0 + i) },
  },
  {
    name: 'extent data, lz4, sha256, far offset',
    message: { kind: MessageKind.Extent, disk: 2, seq: 70000, offset: 2 ** 52, length: 65536, zero: false, compression: 'lz4', data: bytes(300, (i) => (i * 7) & 0xff), digest: bytes(32) },
  },
  {
    name: 'extent zero',
    message: { kind: MessageKind.Extent, disk: 0, seq: 1, offset: 2 * MiB, length: 1024 * MiB, zero: true, compression: 'none', data: new Uint8Array(0), digest: new Uint8Array(0) },
  },
  { name: 'extent-ack', message: { kind: MessageKind.ExtentAck, disk: 0, seq: 6 } },
  {
    name: 'disk-end',
    message: { kind: MessageKind.DiskEnd, disk: 0, extents: 7, dataBytes: 4 * MiB + 512, zeroBytes: MiB, digest: bytes(8, (i) => 0xf0 | i) },
  },
  { name: 'disk-ended', message: { kind: MessageKind.DiskEnded, disk: 0 } },
  {
    name: 'block-check',
    message: { kind: MessageKind.BlockCheck, disk: 1, blockSize: MiB, blocks: u64s([3, 4, 700, 2 ** 40]), digests: bytes(4 * 8, (i) => (i * 29 + 3) & 0xff) },
  },
  { name: 'block-check-result', message: { kind: MessageKind.BlockCheckResult, disk: 1, ok: false, mismatched: u64s([700]) } },
  { name: 'block-check-result ok', message: { kind: MessageKind.BlockCheckResult, disk: 1, ok: true, mismatched: new Uint8Array(0) } },
  { name: 'block-map-request', message: { kind: MessageKind.BlockMapRequest, disk: 1, first: 4096, count: 4096 } },
  { name: 'block-map', message: { kind: MessageKind.BlockMap, disk: 1, first: 4096, digests: bytes(3 * 8, (i) => (i * 53 + 7) & 0xff) } },
  { name: 'commit', message: { kind: MessageKind.Commit, vm: 'web01', cycle: 3, retention: null } },
  {
    name: 'commit with a retention request',
    message: {
      kind: MessageKind.Commit,
      vm: 'web01',
      cycle: 3,
      retention: { keep: 14, maxAgeSeconds: 30 * 86_400, maxBytes: 200 * 1024 * MiB, hourly: 24, daily: 7, weekly: 4, monthly: 12 },
    },
  },
  {
    name: 'committed',
    message: {
      kind: MessageKind.Committed,
      vm: 'web01',
      cycle: 3,
      generation: '0be5a2c47d1e9f3a6b8c0d2e4f617283',
      disks: [
        { disk: 0, mirrorCid: '1234abcd', size: 16 * 1024 * MiB },
        { disk: 1, mirrorCid: 'fedcba98', size: 2 * 1024 * MiB },
      ],
      retention: { keep: 14, maxAgeSeconds: 0, maxBytes: 0, hourly: 0, daily: 7, weekly: 0, monthly: 0 },
    },
  },
  {
    name: 'committed without restore points',
    message: {
      kind: MessageKind.Committed,
      vm: 'web01',
      cycle: 4,
      generation: '5c1f0e2d3b4a69788796a5b4c3d2e1f0',
      disks: [{ disk: 0, mirrorCid: '0badcafe', size: 16 * 1024 * MiB }],
      retention: null,
    },
  },
  {
    name: 'commit-progress of point merges',
    message: { kind: MessageKind.CommitProgress, vm: 'web01', cycle: 4, step: 'merge-points', doneBytes: 5 * 1024 * MiB, totalBytes: 12 * 1024 * MiB },
  },
  {
    name: 'points-dropped by a re-seed of a changed mirror',
    message: {
      kind: MessageKind.PointsDropped,
      vm: 'web01',
      cycle: 9,
      count: 3,
      oldest: 5,
      newest: 8,
      broken: true,
      reason: 'a disk was re-seeded or resynced over a mirror changed since its commit (booted or edited behind the receiver)',
    },
  },
  {
    name: 'points-dropped with the retention turned off',
    message: { kind: MessageKind.PointsDropped, vm: 'db01', cycle: 12, count: 1, oldest: 11, newest: 11, broken: false, reason: 'the VM keeps no restore points any more' },
  },
  {
    name: 'trivial-check',
    message: { kind: MessageKind.TrivialCheck, disk: 0, prefixBytes: 64 * MiB, algorithm: 'sha1', size: 16 * 1024 * MiB, digest: bytes(20) },
  },
  { name: 'trivial-result', message: { kind: MessageKind.TrivialResult, disk: 0, ok: true, size: 16 * 1024 * MiB, digest: bytes(20) } },
  { name: 'trivial-result without a mirror', message: { kind: MessageKind.TrivialResult, disk: 3, ok: false, size: 0, digest: new Uint8Array(0) } },
  { name: 'certify', message: { kind: MessageKind.Certify, disk: 0, algorithm: 'md5', digest: bytes(16) } },
  { name: 'certify-result', message: { kind: MessageKind.CertifyResult, disk: 0, ok: false, algorithm: 'md5', digest: bytes(16, (i) => 255 - i), bytes: 16 * 1024 * MiB } },
  { name: 'rollback', message: { kind: MessageKind.Rollback, vm: 'web01' } },
  { name: 'rolled-back', message: { kind: MessageKind.RolledBack, vm: 'web01', committedCycle: 2 } },
  { name: 'error', message: { kind: MessageKind.Error, code: 'E_CYCLE_MISMATCH', message: 'resume refused: cycle identity differs', fatal: false } },
]
