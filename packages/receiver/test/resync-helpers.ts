/**
 * A scripted agent's side of a resync (SPEC §5.9) for the receiver's tests:
 * one VM with one 2 MiB disk of 64 KiB blocks, sha256.
 */
import { join } from 'node:path'
import { CycleDigest, cycleIdentity, digestOf, MessageKind, type DiskOpenMessage, type ExtentMessage, type Message } from '@grainline/protocol'
import { Agent, MiB, TOKEN, hello, source, vmOpen, type Env } from './helpers.ts'

export const VM = 'vm-r'
export const NAME = 'vm-r.vmdk'
export const BS = 64 * 1024
export const SIZE = 2 * MiB
export const BLOCKS = SIZE / BS
export const ALG = 'sha256' as const
export const LEN = 32

export function resyncOpen(cycle: number, handle = 0, blockSize = BS, vm = VM): DiskOpenMessage {
  const src = source([NAME], 'vm-r-000001.vmdk')
  const f = { vm, name: NAME, cycle, mode: 'resync' as const, baseCycle: 0, baseGeneration: '', source: src, blockSize }
  const { vm: _vm, ...fields } = f
  return { kind: MessageKind.DiskOpen, disk: handle, ...fields, capacity: SIZE, cycleId: cycleIdentity(f), ddb: {}, totalBytes: SIZE, totalExtents: 0 }
}

export async function open(env: Env, url: string, cycle: number, opts: { rollback?: boolean; maxMessageBytes?: number; vm?: string } = {}): Promise<Agent> {
  const vm = opts.vm ?? VM
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const h = hello(ALG) as Extract<Message, { kind: typeof MessageKind.Hello }>
  a.send(opts.maxMessageBytes === undefined ? h : { ...h, limits: { ...h.limits, maxMessageBytes: opts.maxMessageBytes, maxExtentBytes: 512 * 1024 } })
  await a.expect(MessageKind.Welcome)
  a.send(vmOpen(vm, cycle, ['vm-r-000001.vmdk']))
  const st = await a.expect(MessageKind.VmState)
  if (opts.rollback === true && st.inflightCycle !== 0) {
    a.send({ kind: MessageKind.Rollback, vm })
    await a.expect(MessageKind.RolledBack)
  }
  return a
}

/** The digests of `image`'s blocks, concatenated. */
export function mapOf(image: Buffer): Buffer {
  return Buffer.concat(Array.from({ length: BLOCKS }, (_, b) => digestOf(ALG, image.subarray(b * BS, (b + 1) * BS))))
}

export const flat = (env: Env): string => join(env.store, VM, 'vm-r-flat.vmdk')

/** The agent's half: the extents for the blocks of `target` whose digests differ from `map`. */
export function differing(target: Buffer, map: Buffer): Array<Omit<ExtentMessage, 'kind' | 'seq' | 'disk'>> {
  const out: Array<Omit<ExtentMessage, 'kind' | 'seq' | 'disk'>> = []
  for (let b = 0; b < BLOCKS; b++) {
    const raw = target.subarray(b * BS, (b + 1) * BS)
    const d = digestOf(ALG, raw)
    if (Buffer.from(d).equals(map.subarray(b * LEN, (b + 1) * LEN))) continue
    const zero = raw.every((x) => x === 0)
    out.push({ offset: b * BS, length: BS, zero, compression: 'none', data: zero ? new Uint8Array(0) : raw, digest: zero ? new Uint8Array(0) : d })
  }
  return out
}

export async function readMap(a: Agent, requests: Array<[number, number]>): Promise<Buffer> {
  for (const [first, count] of requests) a.send({ kind: MessageKind.BlockMapRequest, disk: 0, first, count })
  const parts: Buffer[] = []
  for (const [first] of requests) {
    const m = await a.expect(MessageKind.BlockMap)
    if (m.first !== first) throw new Error(`BlockMap for ${m.first}, expected ${first}`)
    parts.push(Buffer.from(m.digests))
  }
  return Buffer.concat(parts)
}

export async function untilAck(a: Agent, seq: number): Promise<void> {
  for (;;) {
    const m = await a.expect(MessageKind.ExtentAck)
    if (m.seq >= seq) return
  }
}

/**
 * One whole resync cycle of `target` from a fresh connection: the map in one
 * request, the differing blocks, DiskEnd, Commit. Returns the map the
 * receiver sent and the blocks sent.
 */
export async function resyncCycle(env: Env, url: string, cycle: number, target: Buffer, vm = VM): Promise<{ map: Buffer; sent: number[] }> {
  const a = await open(env, url, cycle, { vm })
  a.send(resyncOpen(cycle, 0, BS, vm))
  const ds = await a.expect(MessageKind.DiskState)
  if (!ds.accepted) throw new Error(`resync refused: ${ds.reason}`)
  const map = await readMap(a, [[0, BLOCKS]])
  const extents = differing(target, map)
  const cd = new CycleDigest(ALG)
  for (const [seq, e] of extents.entries()) {
    cd.add(e)
    a.send({ kind: MessageKind.Extent, disk: 0, seq, ...e })
  }
  const dataBytes = extents.filter((e) => !e.zero).reduce((n, e) => n + e.length, 0)
  const zeroBytes = extents.filter((e) => e.zero).reduce((n, e) => n + e.length, 0)
  a.send({ kind: MessageKind.DiskEnd, disk: 0, extents: extents.length, dataBytes, zeroBytes, digest: cd.digest() })
  for (;;) if ((await a.next())?.kind === MessageKind.DiskEnded) break
  a.send({ kind: MessageKind.Commit, vm, cycle, retention: null })
  await a.expect(MessageKind.Committed)
  a.close()
  await a.whenClosed()
  return { map, sent: extents.map((e) => e.offset / BS) }
}
