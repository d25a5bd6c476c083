/**
 * A cycle in flight on the folder store and its journal rewritten with valid
 * crcs: the journal tests' fixture (journal-head.test.ts, journal-records.test.ts).
 */
import type { Test } from 'tap'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import { scratchDir } from '@grainline/test-utils'
import { Agent, MiB, TOKEN, evolve, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, type DiskPlan, type Env } from './helpers.ts'
import type { VmStateFile } from '../src/state-file.ts'
import { undoInflight } from '../src/rollback.ts'
import { VmPaths } from '../src/vm-paths.ts'

/** The disk's capacity. */
export const CAP = 12 * MiB

export function stateOf(store: string, vm: string): VmStateFile {
  return JSON.parse(readFileSync(join(store, vm, '.grainline', 'state.json'), 'utf8')) as VmStateFile
}

/** A seed (cycle 1) of disk d.vmdk of `vm`, then an incremental cycle 2 (`ranges` changed) sent whole but not committed; the receiver closed. */
export async function inflightCycle(
  t: Test,
  vm: string,
  keep: number | undefined,
  ranges: ReadonlyArray<{ readonly offset: number; readonly length: number; readonly zero?: boolean }> = [
    { offset: 0, length: 5 * MiB },
    { offset: 6 * MiB, length: 3 * MiB, zero: true },
  ],
) {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env, keep === undefined ? {} : { retention: { keep } })
  const img1 = pattern(CAP, 3)
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', img1, 'ac01ac01ac01ac01')])
  a.close()
  const img2 = evolve(img1, 9, [...ranges])
  const inc = incPlan(0, 'd.vmdk', img2, 1, 'ac02ac02ac02ac02', [...ranges], 'd-000001.vmdk', 'd-000002.vmdk')
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 2, [inc], { commit: false })
  a.close()
  await a.whenClosed()
  await receiver.close()
  t.equal(stateOf(env.store, vm).inflight?.cycle, 2, 'cycle 2 is in flight')
  return { env, inc, img1, img2 }
}

/**
 * A seed (cycle 1) of disk d.vmdk of `vm`, then a seed of cycle 2 (another image, a disk seeded anew) sent whole
 * but not committed; the receiver closed. Its mirror flat is cycle 1's (`img1`), the seed's bytes are in d-flat.vmdk.seed.
 */
export async function inflightSeed(t: Test, vm: string) {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  const img1 = pattern(CAP, 3)
  let a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 1, [seedPlan(0, 'd.vmdk', img1, 'ac01ac01ac01ac01')])
  a.close()
  const seed = seedPlan(0, 'd.vmdk', pattern(CAP, 11), 'ac03ac03ac03ac03')
  a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, vm, 2, [seed], { commit: false })
  a.close()
  await a.whenClosed()
  await receiver.close()
  t.match(stateOf(env.store, vm).inflight, { cycle: 2, disks: { 'd.vmdk': { mode: 'seed', target: 'seed' } } }, 'cycle 2, a seed, is in flight')
  t.ok(existsSync(join(env.store, vm, 'd-flat.vmdk.seed')), 'its bytes are in d-flat.vmdk.seed')
  return { env, inc: seed, img1 }
}

/** Frame a record as journal.ts does: u32 length • u32 crc (from `seed`) • u8 type • u32 hlen • header • data. */
export function frame(type: number, header: object, data: Buffer, seed: number): Buffer {
  const h = Buffer.from(JSON.stringify(header), 'utf8')
  const pre = Buffer.alloc(13)
  pre.writeUInt32LE(5 + h.length + data.length, 0)
  pre.writeUInt8(type, 8)
  pre.writeUInt32LE(h.length, 9)
  pre.writeUInt32LE(crc32(data, crc32(h, crc32(pre.subarray(8, 13), seed))) >>> 0, 4)
  return Buffer.concat([pre, h, data])
}

/** Rewrite the head record of journal `path` with `patch` (its crc starts from 0). */
export function patchHead(path: string, patch: Record<string, unknown>): void {
  const buf = readFileSync(path)
  const len = buf.readUInt32LE(0)
  const hlen = buf.readUInt32LE(9)
  const head = JSON.parse(buf.subarray(13, 13 + hlen).toString('utf8')) as Record<string, unknown>
  writeFileSync(path, Buffer.concat([frame(1, { ...head, ...patch }, Buffer.alloc(0), 0), buf.subarray(8 + len)]))
}

/** The bytes of every file a refused resume or rollback must leave alone. */
export function files(store: string, vm: string): Record<string, Buffer> {
  const out: Record<string, Buffer> = {}
  for (const f of ['d-flat.vmdk', 'd.vmdk', '.grainline/d.journal', '.grainline/state.json']) out[f] = readFileSync(join(store, vm, f))
  return out
}

export function unchanged(t: Test, store: string, vm: string, before: Record<string, Buffer>): void {
  for (const [f, bytes] of Object.entries(before)) t.ok(readFileSync(join(store, vm, f)).equals(bytes), `${f} unchanged byte for byte`)
  t.notOk(existsSync(join(store, vm, '.grainline', 'd.journal.undo')), 'no undo begun (the journal not renamed)')
}

/**
 * An agent resumes cycle 2 of `vm` (from {@link inflightCycle} or {@link inflightSeed}, its journal already rewritten) against a new
 * receiver: the resume must be refused, the receiver's log must say `why`, and every file stay as it was.
 */
export async function resumeRefused(t: Test, vm: string, { env, inc }: { readonly env: Env; readonly inc: DiskPlan }, why: string | RegExp): Promise<void> {
  const before = files(env.store, vm)
  const { receiver, url, logs } = await startReceiver(env, { recover: false })
  t.teardown(() => receiver.close())
  await resumeFailsAt(t, url, env, vm, inc)
  t.match(logs.text(), why, 'the receiver logs why')
  unchanged(t, env.store, vm, before)
}

/** An agent at receiver `url` runs cycle 2 of `vm` again (`inc`, resuming what is in flight): it must not commit. */
export async function resumeFailsAt(t: Test, url: string, env: Env, vm: string, inc: DiskPlan): Promise<void> {
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const res = await runCycle(a, vm, 2, [inc]).then(
    () => 'committed',
    (e: unknown) => String((e as Error).message),
  )
  a.terminate()
  await a.whenClosed()
  t.not(res, 'committed', `the resume fails (${res.slice(0, 120)})`)
}

/** Roll back the cycle in flight of `vm` (rollback.ts undoInflight) and return what it threw (undefined: it went through). */
export async function undoError(store: string, vm: string): Promise<{ code?: string; message?: string } | undefined> {
  const infl = stateOf(store, vm).inflight
  if (infl === null) throw new Error('no cycle in flight')
  return (await undoInflight(new VmPaths(store, vm), infl).then(
    () => undefined,
    (e: unknown) => e,
  )) as { code?: string; message?: string } | undefined
}
