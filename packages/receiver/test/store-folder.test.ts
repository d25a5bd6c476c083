// The store conformance suite (store-conformance.ts) against the folder store.
import t from 'tap'
import { open, readFile, readdir } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { pino } from 'pino'
import { scratchDir } from '@grainline/test-utils'
import { closePoint, listPoints, openPoint, prunePoints, restorePoint } from '../src/index.ts'
import { storeConformance } from './store-conformance.ts'
import { storeOverview } from '../src/store-overview.ts'

let n = 0
const base = scratchDir(t, 'grainline-store-folder-')
storeConformance(
  t,
  {
    kind: 'folder',
    init: () => ({}),
    readDisk: async (env, vm, disk) => await readFile(join(env.store, vm, disk.replace(/\.vmdk$/, '-flat.vmdk'))),
    points: async (env, vm) => (await listPoints(env.store, vm)).points.filter((p) => !p.current).map((p) => p.cycle),
    readPoint: async (env, vm, cycle, disk) => {
      const to = join(env.dir, `restore-${cycle}-${n++}`)
      const r = await restorePoint(env.store, vm, cycle, to, { logger: pino({ level: 'silent' }) })
      const d = r.disks.find((x) => x.name === disk)
      if (d === undefined) throw new Error(`no disk ${disk} restored`)
      return await readFile(d.flat.startsWith('/') ? d.flat : join(to, d.flat))
    },
    corrupt: async (env, vm, disk, offset, data) => {
      const fh = await open(join(env.store, vm, disk.replace(/\.vmdk$/, '-flat.vmdk')), 'r+')
      await fh.write(data, 0, data.length, offset)
      await fh.close()
    },
    prune: async (env, vm, what) => await prunePoints(env.store, vm, what, { logger: pino({ level: 'silent' }) }),
    failover: async (env, vm, cycle, dir) => {
      // QEMU reads (and writes) vmfssparse children; ESXi's sesparse default it only reads
      const o = await openPoint(env.store, vm, cycle, dir, { logger: pino({ level: 'silent' }), kind: 'failover', format: 'vmfssparse' })
      return Object.fromEntries(o.disks.map((d) => [basename(d), d]))
    },
    close: async (env, vm, dir, failover) => (await closePoint(env.store, vm, { logger: pino({ level: 'silent' }), dir, failover: failover === true })).length,
    overview: async (env) => await storeOverview(env.store),
    // whole-disk data: the mirror's flats and the base points' (a re-seeded disk's old mirror)
    storage: async (env, vm) => {
      const flats = async (d: string): Promise<string[]> => (await readdir(d).catch(() => [])).filter((f) => f.endsWith('-flat.vmdk')).map((f) => join(d, f))
      return [...(await flats(join(env.store, vm))), ...(await flats(join(env.store, vm, '.grainline', 'points')))].sort()
    },
  },
  () => join(base, String(n++)),
)
