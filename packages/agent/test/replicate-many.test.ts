import t from 'tap'
import { join } from 'node:path'
import { replicateMany } from '../src/replicate.ts'
import { formatReport } from '../src/report.ts'
import { createSampleVm, simulateGuestWrites } from '../src/sample-vm.ts'
import { haveReceiver, memoryLogger, MiB, startReceiver, TOKEN, scratch } from './helpers.ts'

t.test('replicateMany: several VMs, one report; a failed VM fails the run', async (t) => {
  if (!haveReceiver) throw new Error('build the receiver first (npx tsc -b)')
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const a = await createSampleVm(dir, { name: 'vm-a', disks: [{ sizeBytes: 2 * MiB }] })
  const b = await createSampleVm(dir, { name: 'vm-b', disks: [{ sizeBytes: 2 * MiB }], seed: 2 })
  const { logger } = memoryLogger()
  const common = { to: rx.url, token: TOKEN, ca: rx.ca, progress: 'none' as const, stateDir: join(dir, 'agent-state') }
  const r1 = await replicateMany({ logger }, [
    { ...common, vm: a.vmxPath },
    { ...common, vm: b.vmxPath },
  ])
  t.ok(r1.ok)
  t.same(
    r1.vms.map((v) => [v.vm, v.cycle, v.disks[0]?.mode]),
    [
      ['vm-a', 1, 'seed'],
      ['vm-b', 1, 'seed'],
    ],
  )
  await simulateGuestWrites(a.vmxPath, { bytes: 64 * 1024 })
  const r2 = await replicateMany({ logger }, [
    { ...common, vm: a.vmxPath },
    { ...common, vm: join(dir, 'nope', 'nope.vmx') },
  ])
  t.notOk(r2.ok)
  t.equal(r2.vms[0]?.ok, true)
  t.equal(r2.vms[1]?.error?.code, 'E_VM_NOT_FOUND')
  t.match(formatReport(r2), /OK +vm-a cycle 2[\s\S]*FAIL .*E_VM_NOT_FOUND/)
  const bad = await replicateMany({ logger }, [{ ...common, vm: a.vmxPath, token: 'wrong-token' }])
  t.equal(bad.vms[0]?.error?.code, 'E_REFUSED', 'a wrong token is refused, not retried')
  const t0 = performance.now()
  const untrusted = await replicateMany({ logger }, [{ to: rx.url, token: TOKEN, progress: 'none', vm: a.vmxPath, giveUpMs: 60_000, stateDir: join(dir, 'agent-state') }])
  t.equal(untrusted.vms[0]?.error?.code, 'E_CONNECT', 'an untrusted receiver certificate fails with E_CONNECT')
  t.ok(performance.now() - t0 < 10_000, 'without retrying until the give-up time')
  const refusedPort = await replicateMany({ logger }, [{ to: 'wss://127.0.0.1:1', token: TOKEN, progress: 'none', vm: a.vmxPath, giveUpMs: 300, maxBackoffMs: 50, stateDir: join(dir, 'agent-state') }])
  t.equal(refusedPort.vms[0]?.error?.code, 'E_GAVE_UP', 'a receiver that is not there: retried, then given up')
})
