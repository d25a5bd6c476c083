import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { MessageKind, ProtocolErrorCodes, encodeMessage, initDigests, type Message } from '@grainline/protocol'
import { Agent, MiB, TOKEN, diskEnd, diskOpen, extentMessage, hello, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen } from './helpers.ts'

/** Small deterministic PRNG (mulberry32) so a failure can be replayed by seed. */
function rng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

const ITERATIONS = Number(process.env['GRAINLINE_FUZZ_ITERATIONS'] ?? 400)

t.test(`fuzz: ${ITERATIONS} connections of random and mutated frames against a live receiver`, async (t) => {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const { receiver, url, logs } = await startReceiver(env, { lockWaitMs: 50 })
  t.teardown(() => receiver.close())
  const img = Buffer.concat([pattern(MiB, 3), Buffer.alloc(MiB)])
  const a0 = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a0, 'web-keep', 1, [seedPlan(0, 'web-keep.vmdk', img, 'fe'.repeat(8))])
  a0.close()
  await a0.whenClosed()
  const kept = join(env.store, 'web-keep', 'web-keep-flat.vmdk')

  const d = seedPlan(0, 'web-f.vmdk', img, 'fa'.repeat(8))
  const corpus: Message[] = [
    hello(),
    vmOpen('web-f', 1, ['web-f.vmdk']),
    diskOpen(d, 1, 'web-f'),
    extentMessage(d, 0, 'sha256'),
    extentMessage(d, 1, 'sha256'),
    diskEnd(d, 'sha256'),
    { kind: MessageKind.Commit, vm: 'web-f', cycle: 1, retention: null },
    { kind: MessageKind.Rollback, vm: 'web-f' },
    { kind: MessageKind.TrivialCheck, disk: 0, prefixBytes: MiB, algorithm: 'sha256', size: 2 * MiB, digest: new Uint8Array(32) },
    { kind: MessageKind.Certify, disk: 0, algorithm: 'md5', digest: new Uint8Array(16) },
  ]
  const frames = corpus.map((m) => Buffer.from(encodeMessage(m)))
  const known = new Map<string, number>(Object.entries(ProtocolErrorCodes).map(([k, v]) => [k, v.closeCode]))
  const r = rng(20261126)
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T
  const mutate = (f: Buffer): Buffer => {
    const b = Buffer.from(f)
    const op = Math.floor(r() * 5)
    if (op === 0) {
      for (let i = 0; i < 1 + r() * 4; i++) b[Math.floor(r() * b.length)] = Math.floor(r() * 256)
      return b
    }
    if (op === 1) return b.subarray(0, Math.floor(r() * b.length))
    if (op === 2) return Buffer.concat([b, Buffer.from(pattern(1 + Math.floor(r() * 64), Math.floor(r() * 1000)))])
    if (op === 3) {
      b[0] = Math.floor(r() * 256)
      return b
    }
    return Buffer.from(pattern(1 + Math.floor(r() * 300), Math.floor(r() * 1e6)))
  }
  const closeCodes = new Map<number, number>()
  for (let i = 0; i < ITERATIONS; i++) {
    const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    // a valid prefix of random length, then a mutated frame, then a guaranteed-bad text frame
    const prefix = Math.floor(r() * 7)
    for (let k = 0; k < prefix; k++) a.sendRaw(frames[k] as Buffer)
    const n = 1 + Math.floor(r() * 3)
    for (let k = 0; k < n; k++) a.sendRaw(mutate(pick(frames)))
    a.ws.send('end')
    const timer = setTimeout(() => a.terminate(), 10000)
    const e = await a.expectError()
    clearTimeout(timer)
    closeCodes.set(e.closeCode, (closeCodes.get(e.closeCode) ?? 0) + 1)
    if (e.code !== '(none)') {
      if (!known.has(e.code) || known.get(e.code) !== e.closeCode) t.fail(`iteration ${i}: unknown code or close code ${JSON.stringify(e)}`)
    } else if (e.closeCode !== 1009 && e.closeCode !== 1002 && e.closeCode !== 1007) {
      t.fail(`iteration ${i}: closed ${e.closeCode} without an Error message`)
    }
  }
  t.pass(`close codes seen: ${JSON.stringify([...closeCodes])}`)
  t.notOk(
    logs.lines.some((l) => l['msg'] === 'session aborted' && l['level'] === 50),
    'no internal error',
  )
  t.ok(readFileSync(kept).equals(img), 'committed mirror untouched')
  const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const res = await runCycle(b, 'web-after', 1, [seedPlan(0, 'web-after.vmdk', img, 'fb'.repeat(8))])
  t.equal(res.committed?.cycle, 1, 'receiver still serves a full cycle')
  b.close()
})
