import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { execFileSync } from 'node:child_process'
import { lstatSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { allocatedBytes } from '../src/store-usage.ts'
import { tokenRoom } from '../src/quota-room.ts'
import { listVmFolders } from '../src/vm-folders.ts'

/** What a sequential walk finds: st_blocks × 512 of every file under `dir`, links not followed. */
function walkSync(dir: string): number {
  let n = 0
  for (const e of readdirSync(dir)) {
    const st = lstatSync(join(dir, e))
    if (st.isSymbolicLink()) continue
    n += st.isDirectory() ? walkSync(join(dir, e)) : st.blocks * 512
  }
  return n
}

/** A VM's folder as the store keeps one: its state folder, points, disks of several sizes. */
function vmFolder(store: string, vm: string, k: number): void {
  const d = join(store, vm)
  mkdirSync(join(d, '.grainline', 'points'), { recursive: true })
  for (let p = 0; p < 12; p++) writeFileSync(join(d, '.grainline', 'points', `disk-p${p}.vmdk`), Buffer.alloc(4096 * ((p + k) % 5) + 1, 1))
  for (let f = 0; f < 8; f++) writeFileSync(join(d, `disk${f}-flat.vmdk`), Buffer.alloc(8192 * ((f * k) % 7) + 100, 2))
}

// allocatedBytes and tokenRoom walk folders with several lstats (and VMs) in flight: every file counted once,
// whatever order the calls end in (a `total += await …` would add to a total read before the others finished)
t.test('allocatedBytes: the sum of every file under the folder, links not followed, with many calls in flight', async (t) => {
  const dir = scratchDir(t)
  for (let k = 0; k < 6; k++) vmFolder(dir, `vm${k}`, k)
  writeFileSync(join(dir, 'outside-big'), Buffer.alloc(1 << 20, 3))
  symlinkSync(join(dir, 'outside-big'), join(dir, 'vm0', 'link-to-big'))
  symlinkSync(dir, join(dir, 'vm1', 'loop'))
  execFileSync('mkfifo', [join(dir, 'vm2', 'fifo')])
  const want = walkSync(dir)
  t.ok(want > (1 << 20) + 6 * 20 * 4096, `the tree allocates ${want} bytes`)
  for (let r = 0; r < 5; r++) t.equal(await allocatedBytes(dir), want, `round ${r}`)
  t.equal(await allocatedBytes(join(dir, 'vm0')), walkSync(join(dir, 'vm0')), 'the link to the big file not followed')
  t.equal(await allocatedBytes(join(dir, 'missing')), 0)
})

t.test('tokenRoom and listVmFolders: every covered VM counted once, in name order, what is not a VM folder skipped', async (t) => {
  const store = scratchDir(t)
  const vms = Array.from({ length: 30 }, (_, i) => `web-${String(i).padStart(2, '0')}`)
  for (const [i, vm] of vms.entries()) vmFolder(store, vm, i)
  mkdirSync(join(store, 'no-state'))
  writeFileSync(join(store, 'a-file'), 'x')
  symlinkSync(join(store, 'web-00'), join(store, 'linked'))
  mkdirSync(join(store, '.hidden', '.grainline'), { recursive: true })
  t.same(await listVmFolders(store), vms, 'the VM folders in name order')
  const covered = vms.filter((_, i) => i % 3 !== 0)
  const want = covered.reduce((n, vm) => n + walkSync(join(store, vm)), 0)
  for (let r = 0; r < 5; r++) {
    const room = await tokenRoom(store, (vm) => covered.includes(vm))
    t.equal(room.usedBytes, want, `round ${r}: the covered VMs' bytes`)
    t.equal(room.inflight.size, 0)
  }
})
