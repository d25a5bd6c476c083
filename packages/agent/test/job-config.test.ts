import t from 'tap'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { loadJobConfig } from '../src/job-config.ts'
import { replicateMany } from '../src/replicate.ts'
import { formatReport } from '../src/report.ts'
import { createSampleVm, simulateGuestWrites } from '../src/sample-vm.ts'
import { DiskProgress, logProgressSink, ttyProgressSink, type ProgressEvent } from '../src/progress.ts'
import { haveReceiver, memoryLogger, MiB, startReceiver, TOKEN, scratch } from './helpers.ts'

t.test('job config: defaults, per-VM overrides, relative paths, token file', async (t) => {
  const dir = scratch(t)
  await writeFile(join(dir, 'token.txt'), 'secret-token\n')
  await writeFile(join(dir, 'ca.pem'), 'x')
  const file = join(dir, 'job.json')
  await writeFile(file, JSON.stringify({
    to: 'wss://dr:7443', tokenFile: 'token.txt', caFile: 'ca.pem', defaults: { certify: 'xxh64', bwlimit: '20M' },
    vms: [{ vm: 'a/a.vmx' }, { vm: 'db01', driver: 'esxi', certify: 'sha256', trivialMiB: 4 }],
  }))
  const jobs = await loadJobConfig(file)
  t.equal(jobs.length, 2)
  t.match(jobs[0], { vm: join(dir, 'a/a.vmx'), to: 'wss://dr:7443', token: 'secret-token', caFile: join(dir, 'ca.pem'), certify: 'xxh64', bwlimit: '20M' })
  t.match(jobs[1], { vm: 'db01', driver: 'esxi', certify: 'sha256', trivialMiB: 4 })
  t.notOk('tokenFile' in (jobs[0] as object), 'the token file is read, not passed on')
  for (const [bad, why] of [
    ['{', /JSON|Unexpected|Expected/],
    ['[]', /object/],
    ['{"vms": []}', /non-empty/],
    ['{"to": "wss://x", "token": "t", "vms": [{"vm": "a.vmx", "colour": "red"}]}', /unknown key "colour"/],
    ['{"token": "t", "vms": [{"vm": "a.vmx"}]}', /"to" is required/],
    ['{"to": "wss://x", "vms": [{"vm": "a.vmx"}]}', /tokenFile/],
  ] as const) {
    await writeFile(file, bad)
    await t.rejects(loadJobConfig(file), { code: 'E_CONFIG', message: why })
  }
  await t.rejects(loadJobConfig(join(dir, 'missing.json')), { code: 'E_CONFIG' })
})

t.test('progress: exact totals, rate and ETA; TTY line and pino logs', async (t) => {
  const events: ProgressEvent[] = []
  const p = new DiskProgress('vm', 'd.vmdk', (e) => events.push(e), 0)
  p.totalBytes = 100 * MiB
  p.update('send', true)
  p.doneBytes = 50 * MiB
  await new Promise((r) => setTimeout(r, 120))
  p.update('send', true)
  const last = events[events.length - 1] as ProgressEvent
  t.equal(last.totalBytes, 100 * MiB)
  t.ok(last.rate > 0 && last.etaSeconds !== undefined && last.etaSeconds > 0, `rate ${last.rate}, eta ${last.etaSeconds}`)
  let out = ''
  const fake = { columns: 80, write: (s: string) => { out += s; return true } } as unknown as NodeJS.WriteStream
  ttyProgressSink(fake)(last)
  t.match(out, /^\rvm d\.vmdk: send 50\.0 MiB\/100 MiB 50\.0% .*\/s ETA \d+:\d\d/)
  const { logger, lines } = memoryLogger()
  const sink = logProgressSink(logger, 10_000)
  sink(last); sink(last); sink({ ...last, phase: 'done' })
  t.equal(lines.length, 2, 'rate-limited, but phase changes always log')
  t.match(lines[0], { msg: 'progress', vm: 'vm', disk: 'd.vmdk', totalBytes: 100 * MiB })
})

t.test('replicateMany: several VMs, one report; a failed VM fails the run', async (t) => {
  if (!haveReceiver) throw new Error('build the receiver first (npx tsc -b)')
  const dir = scratch(t)
  const rx = await startReceiver(join(dir, 'rx'))
  t.teardown(() => rx.stop())
  const a = await createSampleVm(dir, { name: 'vm-a', disks: [{ sizeBytes: 2 * MiB }] })
  const b = await createSampleVm(dir, { name: 'vm-b', disks: [{ sizeBytes: 2 * MiB }], seed: 2 })
  const { logger } = memoryLogger()
  const common = { to: rx.url, token: TOKEN, ca: rx.ca, progress: 'none' as const, stateDir: join(dir, 'agent-state') }
  const r1 = await replicateMany({ logger }, [{ ...common, vm: a.vmxPath }, { ...common, vm: b.vmxPath }])
  t.ok(r1.ok)
  t.same(r1.vms.map((v) => [v.vm, v.cycle, v.disks[0]?.mode]), [['vm-a', 1, 'seed'], ['vm-b', 1, 'seed']])
  await simulateGuestWrites(a.vmxPath, { bytes: 64 * 1024 })
  const r2 = await replicateMany({ logger }, [{ ...common, vm: a.vmxPath }, { ...common, vm: join(dir, 'nope', 'nope.vmx') }])
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
