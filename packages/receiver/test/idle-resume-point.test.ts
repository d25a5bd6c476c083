/**
 * The resume point of the last acknowledged batch is on disk while the agent
 * sends nothing more (a stalled link, an agent waiting on its source). An
 * in-place (incremental) batch queues its "applied" marker instead of writing
 * it, because a write there could overlap the next batch's journal records;
 * before the session's idle flush wrote it out, a single batch acked before a
 * stall left the store's resume point at 0 until another batch or the
 * connection's end — the cause of the e2e "receiver killed with SIGKILL
 * during apply" hang once batches grew (perf3's partial-batch hold): no
 * durable point was ever seen while the link was held.
 */
import t from 'tap'
import { MessageKind, initDigests } from '@grainline/protocol'
import { pollUntil, scratchDir } from '@grainline/test-utils'
import { storeStatus } from '../src/index.ts'
import { Agent, MiB, TOKEN, diskOpen, evolve, extentMessage, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startReceiver, vmOpen } from './helpers.ts'

t.test('an acked in-place batch is the store resume point while the agent sends nothing more', async (t) => {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  const img = pattern(4 * MiB, 1)
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  t.equal((await runCycle(a, 'vm-ip', 1, [seedPlan(0, 'vm-ip.vmdk', img, '01'.repeat(8))])).committed?.cycle, 1, 'seed')
  a.close()
  await a.whenClosed()
  // cycle 2 rewrites four scattered ranges in place; the agent sends two extents and then stalls, connection open
  const ranges = [0, 1, 2, 3].map((k) => ({ offset: k * MiB, length: 64 * 1024 }))
  const plan = incPlan(0, 'vm-ip.vmdk', evolve(img, 2, ranges), 1, '02'.repeat(8), ranges, 'vm-ip-000001.vmdk', 'vm-ip-000002.vmdk')
  const b = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  t.teardown(() => b.terminate())
  b.send(hello())
  await b.expect(MessageKind.Welcome)
  b.send(vmOpen('vm-ip', 2, ['vm-ip-000001.vmdk']))
  const st = await b.expect(MessageKind.VmState)
  b.send(diskOpen(plan, 2, 'vm-ip', st.generation))
  t.equal((await b.expect(MessageKind.DiskState)).resumeSeq, 0)
  b.send(extentMessage(plan, 0, 'sha256'))
  b.send(extentMessage(plan, 1, 'sha256'))
  // acks are cumulative: wait for the one covering seq 1 (the extents may arrive in one batch or two)
  for (;;) {
    const ack = await b.expect(MessageKind.ExtentAck)
    if (ack.seq === 1) break
  }
  // the receiver acked seq 1: data durable. The store's resume point must follow without any further message
  // (before the fix it stayed at 0 for as long as the agent sent nothing: the poll then ends at its bound and fails)
  const resume = await pollUntil(
    async () => {
      const seq = (await storeStatus(env.store)).vms.find((v) => v.vm === 'vm-ip')?.disks[0]?.inflight?.resumeSeq ?? 0
      return seq === 2 ? seq : undefined
    },
    { intervalMs: 20, signal: AbortSignal.timeout(60_000) },
  ).catch(async () => (await storeStatus(env.store)).vms.find((v) => v.vm === 'vm-ip')?.disks[0]?.inflight?.resumeSeq ?? 0)
  t.equal(resume, 2, 'the store resumes after seq 1 while the link is stalled, connection still open')
  t.equal(b.closed, undefined, 'the connection was never closed')
})
