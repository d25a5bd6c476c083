/**
 * `parentCID=fffffffe` (ESXi writes it after a Storage vMotion: "no CID to
 * check"): the chain opens, the cycle ships, and the report says per disk that
 * the chain check is unverified (`cidVerified: false`), with a warning logged.
 * A real receiver process; the link is rewritten in the running delta right
 * after the snapshot, as ESXi would have written it.
 */
import t from 'tap'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { replicate } from '../src/replicate.ts'
import { formatReport } from '../src/report.ts'
import { createSampleVm } from '../src/sample-vm.ts'
import { haveReceiver, memoryLogger, MiB, scratch, startReceiver, TOKEN } from './helpers.ts'

if (!haveReceiver) throw new Error('packages/receiver/dist/src/main.js is missing: build the receiver first (npx tsc -b)')

t.test('a parentCID=fffffffe link is shipped and reported unverified', async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(join(dir, 'vms'), {
    name: 'cidvm',
    disks: [
      { sizeBytes: 2 * MiB, fill: 'random' },
      { sizeBytes: MiB, fill: 'random' },
    ],
  })
  const run = async (rewrite: boolean) => {
    const { logger, lines } = memoryLogger('warn')
    const r = await replicate(
      { logger },
      {
        vm: vm.vmxPath,
        to: rx.url,
        token: TOKEN,
        ca: rx.ca,
        stateDir: join(dir, 'agent-state'),
        progress: 'none',
        trivialMiB: 1,
        afterSnapshot: async (h) => {
          if (!rewrite) return
          // disk 0 only: its running delta's link to the frozen layer proves nothing
          const p = h.disks[0]?.path as string
          const text = await readFile(p, 'utf8')
          await writeFile(p, text.replace(/^parentCID=[0-9a-f]{8}$/m, 'parentCID=fffffffe'))
        },
      },
    )
    return { r, lines }
  }
  const first = await run(true)
  const v = first.r.vms[0]
  t.equal(first.r.ok, true, JSON.stringify(v?.error))
  t.same(
    v?.disks.map((d) => d.cidVerified),
    [false, undefined],
    'disk 0 unverified, disk 1 verified',
  )
  t.ok(
    first.lines.some((l) => typeof l.msg === 'string' && /chain check UNVERIFIED/.test(l.msg) && l.node === 'scsi0:0'),
    'warning logged for the disk',
  )
  t.match(formatReport(first.r), /scsi0:0 .*chain UNVERIFIED \(parentCID fffffffe\)/)
  t.notMatch(formatReport(first.r), /scsi0:1 .*UNVERIFIED/)
})
