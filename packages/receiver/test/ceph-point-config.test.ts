import t from 'tap'
import { cephConfigKey, cephPointFiles, keptCephConfigs, withCephPointConfig } from '../src/store/ceph/ceph-point-config.ts'
import { cephConfigFiles } from '../src/store/ceph/ceph-archive.ts'
import { emptyCephState, type CephPoint, type CephVmState } from '../src/store/ceph/ceph-state.ts'

const b64 = (s: string): string => Buffer.from(s).toString('base64')
const VMX1 = 'displayName = "web"\nmemSize = "1024"\nscsi0:0.fileName = "web-000001.vmdk"\nscsi0:1.fileName = "data-000001.vmdk"\n'
const VMX3 = 'displayName = "web"\nmemSize = "4096"\nscsi0:0.fileName = "web-000003.vmdk"\n'
const point = (cycle: number): CephPoint => ({ cycle, committedAt: '2026-12-01T00:00:00Z', generation: `g${cycle}`, disks: {} })

t.test('a Ceph point keeps the .vmx of its cycle; points with the same one share an entry; unused entries go', async (t) => {
  const at = (cycle: number, vmx: string, prev?: CephVmState): CephVmState => ({
    ...emptyCephState('web'),
    ...prev,
    committedCycle: cycle,
    files: { 'web.vmx': b64(vmx), 'web.nvram': b64('nv') },
  })
  // cycles 1 and 2 with VMX1, cycle 3 with VMX3 (a disk removed, memory raised)
  let s = at(1, VMX1)
  let points: CephPoint[] = []
  for (const [cycle, vmx] of [
    [2, VMX1],
    [3, VMX3],
    [4, VMX3],
  ] as const) {
    const c = withCephPointConfig(s, point(s.committedCycle))
    points = [...points, c.point]
    s = { ...at(cycle, vmx, s), points, configs: keptCephConfigs(c.configs, points) }
  }
  t.same(
    points.map((p) => p.vmx),
    [cephConfigKey(b64(VMX1)), cephConfigKey(b64(VMX1)), cephConfigKey(b64(VMX3))],
    'points 1 and 2 name the first .vmx, point 3 the second',
  )
  t.same(Object.keys(s.configs ?? {}).sort(), [cephConfigKey(b64(VMX1)), cephConfigKey(b64(VMX3))].sort(), 'one entry per distinct .vmx')
  const text = (files: Readonly<Record<string, string>>): string => Buffer.from(files['web.vmx'] as string, 'base64').toString()
  t.equal(text(cephPointFiles(s, 2)), VMX1, 'point 2 restores with its own .vmx (the removed disk, the memory it had)')
  t.equal(text(cephPointFiles(s, 3)), VMX3)
  t.equal(text(cephPointFiles(s, 4)), VMX3, "the latest: the last commit's")
  t.equal(cephPointFiles(s, 2)['web.nvram'], b64('nv'), "the .nvram is the last commit's")
  const archived = cephConfigFiles(s, 2, ['web.vmdk', 'data.vmdk'])
  t.match(archived[0]?.data.toString(), /scsi0:1\.fileName = "data\.vmdk"/, 'an archive of point 2 attaches the removed disk')
  t.match(archived[0]?.data.toString(), /memSize = "1024"/)
  // points 1 and 2 dropped: the first .vmx goes with them
  t.same(Object.keys(keptCephConfigs(s.configs, points.slice(2))), [cephConfigKey(b64(VMX3))], 'an entry no point names is dropped')
})

t.test("points recorded before, a missing entry, a hostile key: the last commit's .vmx", async (t) => {
  const s: CephVmState = {
    ...emptyCephState('web'),
    committedCycle: 3,
    files: { 'web.vmx': b64(VMX3) },
    points: [point(1), { ...point(2), vmx: 'f'.repeat(32) }, { ...point(3), vmx: '__proto__' }],
    configs: {},
  }
  for (const c of [1, 2]) t.equal(Buffer.from(cephPointFiles(s, c)['web.vmx'] as string, 'base64').toString(), VMX3, `point ${c}`)
  t.same(keptCephConfigs({ toString: 'x' } as unknown as Record<string, string>, s.points), {}, 'nothing kept that no point names as a string entry')
  const none = withCephPointConfig({ ...emptyCephState('web'), committedCycle: 1 }, point(1))
  t.equal(none.point.vmx, undefined, 'no .vmx in the state: the point names none')
})
