/**
 * The cycle connects and says Hello while it opens the VM (cycle.ts `#early`):
 * the receiver's round trips overlap the reading of the VM's files. Real
 * receiver process over TLS, real VMware-format files.
 */
import t from 'tap'
import { once } from 'node:events'
import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { HypervisorDriver } from '../src/driver.ts'
import { createLocalDriver } from '../src/local-driver.ts'
import { replicate } from '../src/replicate.ts'
import { createSampleVm } from '../src/sample-vm.ts'
import { haveReceiver, memoryLogger, MiB, scratch, startReceiver, TOKEN, type ReceiverEnv } from './helpers.ts'

/** Wait (on the receiver's log events, no timer) until `n` lines carry `msg`. */
async function receiverLogged(rx: ReceiverEnv, msg: string, n = 1): Promise<void> {
  const count = (): number => rx.logs.filter((l) => l.includes(`"msg":"${msg}"`)).length
  while (count() < n) await once(rx.proc.stderr!, 'data')
}

t.test('the receiver has answered Hello before the VM is opened; the cycle uses that connection', { skip: !haveReceiver }, async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'early', disks: [{ sizeBytes: 4 * MiB }], seed: 3 })
  const local = createLocalDriver()
  let opened = 0
  // the VM's first open waits for the receiver's Hello: without a connection started beside it, this never ends
  // (the test fails on tap's timeout)
  const driver: HypervisorDriver = {
    ...local,
    name: local.name,
    host: local.host,
    openVm: async (ref, opts) => {
      if (opened++ === 0) await receiverLogged(rx, 'negotiated')
      return await local.openVm(ref, opts)
    },
  }
  const { logger } = memoryLogger()
  const r = await replicate({ logger }, { vm: vm.vmxPath, to: rx.url, token: TOKEN, ca: rx.ca, driver, progress: 'none', stateDir: join(dir, 'state'), trivialMiB: 1 })
  t.ok(r.ok, JSON.stringify(r.vms[0]?.error))
  t.equal(r.vms[0]?.reconnects, 0)
  t.equal(rx.logs.filter((l) => l.includes('"msg":"connection opened"')).length, 1, 'one connection: the early one, taken by the cycle')
  t.equal(rx.logs.filter((l) => l.includes('"msg":"vm opened"')).length, 1)
})

t.test('a VM that cannot be opened: its error is reported and the early connection is closed', { skip: !haveReceiver }, async (t) => {
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'gone', disks: [{ sizeBytes: 1 * MiB }], seed: 4 })
  await rm(vm.vmxPath)
  const local = createLocalDriver()
  const driver: HypervisorDriver = {
    ...local,
    name: local.name,
    host: local.host,
    openVm: async (ref, opts) => {
      // the Hello is answered first, so the connection exists when the open fails
      await receiverLogged(rx, 'negotiated')
      return await local.openVm(ref, opts)
    },
  }
  const { logger } = memoryLogger()
  const r = await replicate({ logger }, { vm: vm.vmxPath, to: rx.url, token: TOKEN, ca: rx.ca, driver, progress: 'none', stateDir: join(dir, 'state') })
  t.equal(r.ok, false)
  t.match(r.vms[0]?.error?.code, /^E_/)
  t.not(r.vms[0]?.error?.code, 'E_ABORTED', "the VM's own error, not the early connection's end")
  // the cycle's end closed it: the receiver sees the connection end (waited on its log, no timer)
  await receiverLogged(rx, 'connection closed')
  t.notOk(
    rx.logs.some((l) => l.includes('"msg":"vm opened"')),
    'no VmOpen was sent',
  )
})
