import t from 'tap'
import { ReceiverMetrics } from '../src/metrics.ts'
import { isShared, sharedStoreReader } from '../src/shared-store-reader.ts'
import type { StoreReader } from '../src/store-overview.ts'
import type { VmStatus } from '../src/store-admin.ts'

/** A reader counting its reads; each status read resolves when `release` is called (or at once with `auto`). */
function countingReader(auto = true): StoreReader & { counts: { status: number; extras: number; history: number }; release(): void; failNext: boolean } {
  const waiting: Array<() => void> = []
  const r = {
    store: '/s',
    counts: { status: 0, extras: 0, history: 0 },
    failNext: false,
    release: () => {
      for (const w of waiting.splice(0)) w()
    },
    status: async () => {
      r.counts.status++
      const n = r.counts.status
      if (r.failNext) {
        r.failNext = false
        throw Object.assign(new Error('store unreadable'), { code: 'E_IO' })
      }
      if (!auto) await new Promise<void>((res) => waiting.push(res))
      return { store: '/s', vms: [{ vm: `read-${n}` } as unknown as VmStatus] }
    },
    extras: async () => {
      r.counts.extras++
      return { usedBytes: r.counts.extras, restorePoints: [] }
    },
    history: async () => {
      r.counts.history++
      return []
    },
  }
  return r
}

t.test('concurrent requests share one store read; extras and history once per read', async (t) => {
  const inner = countingReader(false)
  let clock = 1000
  const r = sharedStoreReader(inner, { maxAgeMs: 1000, now: () => clock })
  const pending = Array.from({ length: 50 }, () => r.status())
  inner.release()
  const all = await Promise.all(pending)
  t.equal(inner.counts.status, 1, '50 concurrent requests: one read')
  t.ok(
    all.every((s) => s.vms[0]?.vm === 'read-1'),
    'all see it',
  )
  const v = all[0]?.vms[0] as VmStatus
  await Promise.all(Array.from({ length: 20 }, () => r.extras(v)))
  await Promise.all(Array.from({ length: 20 }, () => r.history('read-1')))
  t.same([inner.counts.extras, inner.counts.history], [1, 1], 'per VM once per read')
  clock += 999
  await r.status()
  t.equal(inner.counts.status, 1, 'younger than maxAgeMs: reused')
  clock += 1
  const p = r.status()
  inner.release()
  t.equal((await p).vms[0]?.vm, 'read-2', 'at maxAgeMs: read again')
  await r.extras(v)
  t.equal(inner.counts.extras, 2, 'extras read again with the new read')
})

t.test('invalidate drops the read, including one in flight', async (t) => {
  const inner = countingReader(false)
  const r = sharedStoreReader(inner, { maxAgeMs: 60_000, now: () => 0 })
  const before = r.status()
  r.invalidate()
  const after = r.status()
  inner.release()
  t.equal((await before).vms[0]?.vm, 'read-1')
  t.equal((await after).vms[0]?.vm, 'read-2', 'a request after the change does not get the read begun before it')
  r.invalidate()
  const again = r.status()
  inner.release()
  t.equal((await again).vms[0]?.vm, 'read-3')
})

t.test('a failed read is not kept', async (t) => {
  const inner = countingReader()
  const r = sharedStoreReader(inner, { maxAgeMs: 60_000, now: () => 0 })
  inner.failNext = true
  await t.rejects(r.status(), { code: 'E_IO' })
  t.equal((await r.status()).vms[0]?.vm, 'read-2', 'the next request reads again')
  t.equal((await r.status()).vms[0]?.vm, 'read-2', 'then shares it')
})

t.test('/metrics scrapes read through the shared reader: a scrape loop costs one store read per maxAgeMs', async (t) => {
  let reads = 0
  const inner: StoreReader = {
    store: '/s',
    status: async () => {
      reads++
      return { store: '/s', vms: [{ vm: 'web', committedCycle: reads, needsRecovery: false, committedAt: null, disks: [] } as unknown as VmStatus] }
    },
    extras: async () => ({ usedBytes: 0, restorePoints: [] }),
    history: async () => [],
  }
  let clock = 5000
  const shared = sharedStoreReader(inner, { maxAgeMs: 1000, now: () => clock })
  t.ok(isShared(shared), 'the receiver hands its HTTP listener a shared reader, used as it is')
  t.notOk(isShared(inner), 'a plain reader is wrapped')
  t.notOk(isShared('/store'), 'a folder is wrapped')
  const metrics = new ReceiverMetrics(shared, () => 0)
  for (let k = 0; k < 30; k++) await metrics.registry.metrics()
  t.equal(reads, 1, '30 scrapes back to back (no token needed by default): one store read')
  // a viewer's status in the same second is the same read
  await shared.status()
  t.equal(reads, 1, 'the dashboard shares it')
  clock += 1000
  const text = await metrics.registry.metrics()
  t.equal(reads, 2, 'read again once it is maxAgeMs old')
  t.match(text, /grainline_mirror_committed_cycle\{vm="web"\} 2/, 'the new read is what the scrape shows')
  shared.invalidate()
  await metrics.registry.metrics()
  t.equal(reads, 3, 'a live change (a commit) drops it at once')
})
