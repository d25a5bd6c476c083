/**
 * The typed receiver client against scripted receivers: replies and refusals
 * are values, retryable Errors are connection losses, and a message that
 * breaks the conversation (SPEC §8) is E_PROTOCOL.
 */
import t from 'tap'
import { once } from 'node:events'
import { WebSocketServer, type WebSocket } from 'ws'
import { decodeMessage, encodeMessage, MessageKind, PROTOCOL_VERSION, PROTOCOL_VERSIONS, SUBPROTOCOL, type Message } from '@grainline/protocol'
import { isRetryable } from '../src/connection.ts'
import { ReceiverClient, VM_PROGRESS_MAX_BYTES, commitLimitMs, diskOpenLimitMs, vmProgressLimitMs } from '../src/receiver-client.ts'

/** A receiver whose answer to each message kind is scripted (undefined: the default happy answer). */
async function scripted(t: { teardown: (fn: () => unknown) => void }, answer: (m: Message, ws: WebSocket) => Message | 'default' | 'none'): Promise<string> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (p) => (p.has(SUBPROTOCOL) ? SUBPROTOCOL : false) })
  await once(wss, 'listening')
  wss.on('connection', (ws) => {
    ws.on('message', (d: Buffer) => {
      const m = decodeMessage(d)
      const a = answer(m, ws)
      if (a === 'none') return
      if (a !== 'default') {
        ws.send(encodeMessage(a))
        return
      }
      if (m.kind === MessageKind.Hello)
        ws.send(encodeMessage({ kind: MessageKind.Welcome, version: PROTOCOL_VERSION, software: 'scripted', digest: 'xxh64', compression: 'none', limits: m.limits, session: 's' }))
      if (m.kind === MessageKind.VmOpen)
        ws.send(encodeMessage({ kind: MessageKind.VmState, vm: m.vm, exists: true, committedCycle: 3, inflightCycle: 0, compatible: true, generation: 'ab'.repeat(16) }))
    })
  })
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate()
        wss.close(() => resolve())
      }),
  )
  return `ws://127.0.0.1:${(wss.address() as { port: number }).port}`
}

// every version, as the agent offers them (session.ts greet): the scripted receivers answer older ones too
const hello = {
  versions: [...PROTOCOL_VERSIONS],
  software: 't',
  digests: ['xxh64'] as const,
  compressions: ['none'] as const,
  limits: { maxMessageBytes: 2 << 20, maxExtentBytes: 1 << 20, windowBytes: 64 << 20 },
}
const vmOpen = { vm: 'vm', cycle: 4, compat: { hwVersion: 14, datastoreType: 'local', guestOS: '' }, files: [], disks: ['d.vmdk'] }
const diskOpen = {
  disk: 0,
  name: 'd.vmdk',
  capacity: 1 << 20,
  cycle: 4,
  mode: 'incremental' as const,
  baseCycle: 3,
  baseGeneration: 'cd'.repeat(16),
  source: { layers: [{ file: 'd-000001.vmdk', cid: '00000002', parentCid: '00000001' }], successor: 'd-000002.vmdk' },
  cycleId: '00'.repeat(32),
  ddb: {},
  totalBytes: 0,
  totalExtents: 0,
  blockSize: 0,
}

/** A DiskState for `disk`: accepted, or refused with `reason`. */
const diskState = (disk: number, reason = ''): Message => ({
  kind: MessageKind.DiskState,
  disk,
  accepted: reason === '',
  reason,
  committedCycle: 3,
  committedSource: null,
  mirrorCid: '',
  modified: false,
  resumeSeq: 0,
  resumeBytes: 0,
})

t.test('replies and refusals are values', async (t) => {
  const url = await scripted(t, (m) => {
    if (m.kind === MessageKind.DiskOpen) return diskState(m.disk, m.disk === 0 ? 'E_GENERATION' : '')
    return 'default'
  })
  const c = await ReceiverClient.connect({ url, token: 'x' })
  t.teardown(() => c.terminate())
  const w = await c.hello(hello)
  t.match(w, { ok: true, value: { kind: MessageKind.Welcome, digest: 'xxh64' } })
  const s = await c.vmOpen(vmOpen)
  t.match(s, { ok: true, value: { committedCycle: 3, generation: 'ab'.repeat(16) } })
  const refused = await c.openDisk(diskOpen)
  t.match(refused, { ok: false, refusal: { code: 'E_GENERATION', fatal: false }, state: { accepted: false, committedCycle: 3 } })
  // SPEC §8.2: the refused handle is spent; the disk opens again under a new handle, in the same connection
  const again = await c.openDisk({ ...diskOpen, disk: 1, mode: 'seed', baseCycle: 0, baseGeneration: '' })
  t.match(again, { ok: true, value: { disk: 1, accepted: true } })
})

t.test('an Error in place of a reply is a refusal; E_BUSY, E_SHUTDOWN and E_TIMEOUT are retryable losses', async (t) => {
  const forbidden = await scripted(t, (m) => (m.kind === MessageKind.VmOpen ? { kind: MessageKind.Error, code: 'E_FORBIDDEN', message: 'not yours', fatal: true } : 'default'))
  const c = await ReceiverClient.connect({ url: forbidden, token: 'x' })
  t.teardown(() => c.terminate())
  await c.hello(hello)
  t.same(await c.vmOpen(vmOpen), { ok: false, refusal: { code: 'E_FORBIDDEN', message: 'not yours', fatal: true } })
  for (const [code, close] of [
    ['E_BUSY', 4429],
    ['E_SHUTDOWN', 1001],
    ['E_TIMEOUT', 4408],
  ] as const) {
    const url = await scripted(t, (m, ws) => {
      if (m.kind !== MessageKind.Hello) return 'default'
      ws.send(encodeMessage({ kind: MessageKind.Error, code, message: 'later', fatal: true }))
      ws.close(close)
      return 'none'
    })
    const k = await ReceiverClient.connect({ url, token: 'x' })
    const err = await k.hello(hello).then(
      () => undefined,
      (e: unknown) => e,
    )
    t.match(err, { name: 'ConnectionLost' }, code)
    t.ok(isRetryable(err), `${code} is retried`)
    k.terminate()
  }
})

t.test("a retryable Error's text is untrusted too: the ConnectionLost (the run's error once retries end) has no escape, control character or bidi override", async (t) => {
  const hostile = `later\u001b]8;;http://evil/\u0007click\u001b]8;;\u0007\r\nFAKE LINE\u202eesrever ${'\u001b[31m€'.repeat(2000)}`
  const url = await scripted(t, (m, ws) => {
    if (m.kind !== MessageKind.Hello) return 'default'
    ws.send(encodeMessage({ kind: MessageKind.Error, code: 'E_BUSY', message: hostile.slice(0, 1500), fatal: true }))
    ws.close(4429)
    return 'none'
  })
  const k = await ReceiverClient.connect({ url, token: 'x' })
  t.teardown(() => k.terminate())
  const err = (await k.hello(hello).then(
    () => undefined,
    (e: unknown) => e,
  )) as Error | undefined
  t.match(err, { name: 'ConnectionLost' })
  t.ok(isRetryable(err), 'still retried')
  t.match(err?.message, /^receiver: E_BUSY laterclick FAKE LINE esrever €€€/, 'the words kept, the escapes gone')
  t.notMatch(err?.message, /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/, 'no control character or bidi override')
})

t.test('a Welcome choosing a version, digest or compression the Hello did not offer breaks the conversation: E_PROTOCOL', async (t) => {
  const welcome =
    (over: Partial<Record<'version' | 'digest' | 'compression', unknown>>) =>
    (m: Message): Message | 'default' =>
      m.kind === MessageKind.Hello
        ? ({ kind: MessageKind.Welcome, version: PROTOCOL_VERSION, software: 'hostile', digest: 'xxh64', compression: 'none', limits: m.limits, session: 's', ...over } as Message)
        : 'default'
  const cases: Array<[string, Partial<Record<'version' | 'digest' | 'compression', unknown>>, RegExp]> = [
    ['a version never offered', { version: 99 }, /protocol version 99, which the agent did not offer/],
    ['a version older than offered', { version: 1 }, /protocol version 1, which the agent did not offer/],
    ['a digest not offered', { digest: 'md5' }, /digest "md5", which the agent did not offer \(xxh64\)/],
    ['a compression not offered', { compression: 'lz4' }, /compression "lz4", which the agent did not offer \(none\)/],
  ]
  for (const [what, over, message] of cases) {
    const c = await ReceiverClient.connect({ url: await scripted(t, welcome(over)), token: 'x' })
    t.teardown(() => c.terminate())
    await t.rejects(c.hello(hello), { code: 'E_PROTOCOL', message }, what)
    await t.rejects(c.vmOpen(vmOpen), { code: 'E_PROTOCOL' }, `${what}: the connection is done`)
  }
  // what was offered is accepted, an older version included
  const ok = await ReceiverClient.connect({ url: await scripted(t, welcome({ version: 2, digest: 'sha256', compression: 'lz4' })), token: 'x' })
  t.teardown(() => ok.terminate())
  t.match(await ok.hello({ ...hello, digests: ['xxh64', 'sha256'], compressions: ['lz4', 'none'] }), { ok: true, value: { version: 2, digest: 'sha256', compression: 'lz4' } })
})

t.test('a reply out of turn breaks the conversation: E_PROTOCOL', async (t) => {
  // DiskEnded before any disk was opened (SPEC §8): checked by the conversation state machine on receipt
  const url = await scripted(t, (m) => (m.kind === MessageKind.VmOpen ? { kind: MessageKind.DiskEnded, disk: 0 } : 'default'))
  const c = await ReceiverClient.connect({ url, token: 'x' })
  t.teardown(() => c.terminate())
  await c.hello(hello)
  await t.rejects(c.vmOpen(vmOpen), { code: 'E_PROTOCOL', message: /conversation/ })
  // and the agent's own illegal message is caught before it leaves
  const d = await ReceiverClient.connect({ url: await scripted(t, () => 'default'), token: 'x' })
  t.teardown(() => d.terminate())
  await t.rejects(d.vmOpen(vmOpen), { code: 'E_PROTOCOL', message: /internal: the agent broke the conversation/ }, 'VmOpen before Hello')
})

t.test("a fatal Error that overtakes the agent's extents is the cause reported, not the agent's next message", async (t) => {
  // the receiver's disk fills while extents are in flight: its Error arrives before the agent's next send (the
  // disk-full e2e case once reported "internal: the agent broke the conversation" here)
  const url = await scripted(t, (m, ws) => {
    if (m.kind === MessageKind.DiskOpen)
      return { kind: MessageKind.DiskState, disk: m.disk, accepted: true, reason: '', committedCycle: 3, committedSource: null, mirrorCid: '', modified: false, resumeSeq: 0, resumeBytes: 0 }
    if (m.kind !== MessageKind.Extent) return 'default'
    ws.send(encodeMessage({ kind: MessageKind.Error, code: 'E_NO_SPACE', message: 'no space left while writing disk d.vmdk', fatal: true }))
    return 'none'
  })
  const c = await ReceiverClient.connect({ url, token: 'x' })
  t.teardown(() => c.terminate())
  await c.hello(hello)
  await c.vmOpen(vmOpen)
  t.match(await c.openDisk(diskOpen), { ok: true })
  const failed = c.failed()
  const extent = { disk: 0, seq: 0, offset: 0, length: 512, zero: true, compression: 'none' as const, data: new Uint8Array(0), digest: new Uint8Array(0) }
  await c.sendExtent(extent)
  // wait for the Error to arrive before the next extent leaves
  const deadline = Date.now() + 10_000
  let err: unknown
  while (err === undefined && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20))
    err = await c.sendExtent({ ...extent, seq: 1, offset: 512 }).then(
      () => undefined,
      (e: unknown) => e,
    )
  }
  t.match(err, { code: 'E_REFUSED', remoteCode: 'E_NO_SPACE', message: /extent 1 of disk 0: the receiver refused \(E_NO_SPACE: no space left.*free space/ }, 'the next send throws the receiver error')
  t.notMatch(String((err as Error).message), /broke the conversation/)
  // a request after it gets the Error as its refusal; the connection's failure is the refusal too
  t.match(await c.endDisk({ disk: 0, extents: 2, dataBytes: 0, zeroBytes: 1024, digest: new Uint8Array(8) }), { ok: false, refusal: { code: 'E_NO_SPACE', fatal: true } })
  c.terminate()
  await t.rejects(failed, { code: 'E_REFUSED', remoteCode: 'E_NO_SPACE' }, 'failed() rejects with the refusal, not the lost connection')
})

t.test('retryable Errors that end the conversation stay retryable for the next send', async (t) => {
  const url = await scripted(t, (m, ws) => {
    if (m.kind !== MessageKind.VmOpen) return 'default'
    ws.send(encodeMessage({ kind: MessageKind.Error, code: 'E_SHUTDOWN', message: 'stopping', fatal: true }))
    return 'none'
  })
  const c = await ReceiverClient.connect({ url, token: 'x' })
  t.teardown(() => c.terminate())
  await c.hello(hello)
  t.match(await c.vmOpen(vmOpen).then(undefined, (e: unknown) => e), { name: 'ConnectionLost', closeCode: 1001 })
  const err = await c.rollback('vm').then(undefined, (e: unknown) => e)
  t.match(err, { name: 'ConnectionLost', closeCode: 1001 })
  t.ok(isRetryable(err))
})

t.test('BlockChecks in flight (SPEC §5.6): up to 4 unanswered, answers read in order; a fifth or an answer for another disk breaks the conversation', async (t) => {
  const u64 = (xs: readonly number[]): Uint8Array => {
    const b = new Uint8Array(xs.length * 8)
    for (const [i, x] of xs.entries()) new DataView(b.buffer).setBigUint64(i * 8, BigInt(x), true)
    return b
  }
  // answers BlockChecks only once four are queued (all were sent before any answer), the one of block 13 for disk 1,
  // those of blocks from 100 never
  const firstBlock = (m: { blocks: Uint8Array }): number => Number(new DataView(m.blocks.buffer, m.blocks.byteOffset).getBigUint64(0, true))
  const held: Array<Extract<Message, { kind: typeof MessageKind.BlockCheck }>> = []
  const url = await scripted(t, (m, ws) => {
    if (m.kind === MessageKind.DiskOpen)
      return { kind: MessageKind.DiskState, disk: m.disk, accepted: true, reason: '', committedCycle: 3, committedSource: null, mirrorCid: '', modified: false, resumeSeq: 0, resumeBytes: 0 }
    if (m.kind === MessageKind.DiskEnd) return { kind: MessageKind.DiskEnded, disk: m.disk }
    if (m.kind === MessageKind.Commit)
      return { kind: MessageKind.Committed, vm: m.vm, cycle: m.cycle, generation: 'ef'.repeat(16), disks: [{ disk: 0, mirrorCid: '0badcafe', size: 1 << 20 }], retention: null }
    if (m.kind !== MessageKind.BlockCheck) return 'default'
    if (firstBlock(m) >= 100) return 'none'
    held.push(m)
    if (held.length === 4 || firstBlock(m) === 13) {
      for (const h of held.splice(0)) {
        const first = firstBlock(h)
        ws.send(encodeMessage({ kind: MessageKind.BlockCheckResult, disk: first === 13 ? 1 : h.disk, ok: first !== 2, mismatched: first === 2 ? u64([2]) : new Uint8Array(0) }))
      }
    }
    return 'none'
  })
  const committed = async (): Promise<ReceiverClient> => {
    const c = await ReceiverClient.connect({ url, token: 'x' })
    t.teardown(() => c.terminate())
    await c.hello(hello)
    await c.vmOpen(vmOpen)
    await c.openDisk(diskOpen)
    await c.endDisk({ disk: 0, extents: 0, dataBytes: 0, zeroBytes: 0, digest: new Uint8Array(8) })
    t.match(await c.commit('vm', 4), { ok: true })
    return c
  }
  const c = await committed()
  const check = (b: number) => ({ disk: 0, blockSize: 4096, blocks: u64([b]), digests: new Uint8Array(8) })
  for (const b of [100, 101, 102, 103]) await c.sendBlockCheck(check(b))
  // a fifth before an answer is read: the agent's own conversation state refuses it before it leaves
  await t.rejects(c.sendBlockCheck(check(104)), { code: 'E_PROTOCOL', message: /internal: the agent broke the conversation/ }, 'a fifth unanswered BlockCheck')
  const d = await committed()
  for (const b of [0, 1, 2, 3]) await d.sendBlockCheck(check(b))
  const answers = []
  for (let i = 0; i < 4; i++) answers.push(await d.blockCheckResult(0, 60_000))
  t.same(
    answers.map((a) => (a.ok ? [a.value.ok, a.value.mismatched.length / 8] : a.refusal.code)),
    [
      [true, 0],
      [true, 0],
      [false, 1],
      [true, 0],
    ],
    'four answers, in the order sent',
  )
  await d.sendBlockCheck(check(13))
  // checked on receipt by the conversation state machine (disk 1 was never opened)
  await t.rejects(d.blockCheckResult(0, 60_000), { code: 'E_PROTOCOL', message: /receiver broke the conversation.*disk 1 is not open/ }, 'an answer for another disk')
})

/**
 * A receiver that speaks `version`, and answers a DiskOpen after `reports`
 * DiskProgress frames 150 ms apart (their doneBytes from `done(i)`), or
 * never when `answer` is false.
 */
async function slowOpen(t: { teardown: (fn: () => unknown) => void }, version: number, reports: number, done: (i: number) => number, answer = true): Promise<string> {
  return await scripted(t, (m, ws) => {
    if (m.kind === MessageKind.Hello) return { kind: MessageKind.Welcome, version, software: 'slow', digest: 'xxh64', compression: 'none', limits: m.limits, session: 's' }
    if (m.kind !== MessageKind.DiskOpen) return 'default'
    let i = 0
    const tick = setInterval(() => {
      if (ws.readyState !== ws.OPEN) return clearInterval(tick)
      if (i < reports) {
        ws.send(encodeMessage({ kind: MessageKind.DiskProgress, disk: m.disk, step: 'base-copy', doneBytes: done(i++), totalBytes: 10 << 20 }))
        return
      }
      clearInterval(tick)
      if (answer) ws.send(encodeMessage(diskState(m.disk)))
    }, 150)
    return 'none'
  })
}

t.test('DiskProgress (v3) restarts the wait for a long DiskOpen; progress that does not move forward does not', async (t) => {
  // 10 reports over 1.5 s against a 500 ms wait: the copy moves, the open is answered
  const moving = await slowOpen(t, 3, 10, (i) => i << 20)
  const c = await ReceiverClient.connect({ url: moving, token: 'x', idleTimeoutMs: 500 })
  t.teardown(() => c.terminate())
  t.match(await c.hello({ ...hello, versions: [3, 2] }), { ok: true, value: { version: 3 } })
  await c.vmOpen(vmOpen)
  const seen: number[] = []
  // a disk of 1 GiB: progress may put the answer off by 107 s past the idle timeout (diskOpenLimitMs)
  const r = await c.openDisk({ ...diskOpen, capacity: 1 << 30 }, (p) => seen.push(p.doneBytes))
  t.match(r, { ok: true, value: { disk: 0, accepted: true } })
  t.same(
    seen,
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map((i) => i << 20),
    'every report that moved forward was heard',
  )

  // the same reports, all at 1 MiB: a copy that has stopped; the first one restarts the wait, then it runs out
  const stuck = await slowOpen(t, 3, 10, () => 1 << 20)
  const s = await ReceiverClient.connect({ url: stuck, token: 'x', idleTimeoutMs: 500 })
  t.teardown(() => s.terminate())
  await s.hello({ ...hello, versions: [3, 2] })
  await s.vmOpen(vmOpen)
  const t0 = performance.now()
  await t.rejects(s.openDisk(diskOpen), { name: 'ConnectionLost', message: /no answer from receiver for 500 ms/ })
  t.ok(performance.now() - t0 < 1400, 'timed out before the reports ended')

  // without DiskProgress, the same wait runs out as before
  const silent = await slowOpen(t, 3, 0, () => 0, false)
  const q = await ReceiverClient.connect({ url: silent, token: 'x', idleTimeoutMs: 300 })
  t.teardown(() => q.terminate())
  await q.hello({ ...hello, versions: [3, 2] })
  await q.vmOpen(vmOpen)
  await t.rejects(q.openDisk(diskOpen), { name: 'ConnectionLost' })
})

t.test('DiskProgress on a version 2 connection breaks the conversation (E_PROTOCOL)', async (t) => {
  const url = await slowOpen(t, 2, 3, (i) => i)
  const c = await ReceiverClient.connect({ url, token: 'x', idleTimeoutMs: 2000 })
  t.teardown(() => c.terminate())
  await c.hello(hello)
  await c.vmOpen(vmOpen)
  await t.rejects(c.openDisk(diskOpen), { code: 'E_PROTOCOL', message: /DiskProgress is not part of protocol version 2/ })
})

t.test('the wait a DiskOpen may be put off by progress is bounded by the disk (diskOpenLimitMs)', async (t) => {
  t.equal(diskOpenLimitMs(0), 120_000)
  t.equal(diskOpenLimitMs(1e12), 120_000 + 1e8, '1 TB at 10 MB/s')
  t.equal(diskOpenLimitMs(1e12, 500), 500 + 1e8, 'from the idle timeout')
  // a 1 MiB disk's copy reported for 3 s against a 500 ms idle wait: past 500 + 105 ms, progress no longer restarts it
  const c = await ReceiverClient.connect({ url: await slowOpen(t, 3, 20, (i) => i), token: 'x', idleTimeoutMs: 500 })
  t.teardown(() => c.terminate())
  await c.hello({ ...hello, versions: [3, 2] })
  await c.vmOpen(vmOpen)
  const t0 = performance.now()
  await t.rejects(c.openDisk(diskOpen), { name: 'ConnectionLost' })
  t.ok(performance.now() - t0 < 2900, 'timed out before the reports ended')
})

/** The Committed a scripted receiver answers to the Commit `m`. */
const committedOf = (m: { vm: string; cycle: number }): Message => ({
  kind: MessageKind.Committed,
  vm: m.vm,
  cycle: m.cycle,
  generation: 'ef'.repeat(16),
  disks: [{ disk: 0, mirrorCid: '0badcafe', size: 1 << 20 }],
  retention: null,
})

/**
 * A receiver that speaks `version`, seals the disk, and answers a Commit
 * after `reports` CommitProgress frames 150 ms apart (`progress(i)`: their
 * doneBytes, or fields that replace the frame's), or never when `answer` is
 * false.
 */
async function slowCommit(t: { teardown: (fn: () => unknown) => void }, version: number, reports: number, progress: (i: number) => number | Partial<Message>, answer = true): Promise<string> {
  return await scripted(t, (m, ws) => {
    if (m.kind === MessageKind.Hello) return { kind: MessageKind.Welcome, version, software: 'slow', digest: 'xxh64', compression: 'none', limits: m.limits, session: 's' }
    if (m.kind === MessageKind.DiskOpen) return diskState(m.disk)
    if (m.kind === MessageKind.DiskEnd) return { kind: MessageKind.DiskEnded, disk: m.disk }
    if (m.kind !== MessageKind.Commit) return 'default'
    let i = 0
    const tick = setInterval(() => {
      if (ws.readyState !== ws.OPEN) return clearInterval(tick)
      if (i < reports) {
        const p = progress(i++)
        const frame = { kind: MessageKind.CommitProgress, vm: m.vm, cycle: m.cycle, step: 'merge-points', doneBytes: 0, totalBytes: 100 << 20, ...(typeof p === 'number' ? { doneBytes: p } : p) }
        ws.send(encodeMessage(frame as Message))
        return
      }
      clearInterval(tick)
      if (answer) ws.send(encodeMessage(committedOf(m)))
    }, 150)
    return 'none'
  })
}

/** A client of `url` speaking `versions`, with the cycle's one disk sealed, ready to Commit. */
async function sealedClient(t: { teardown: (fn: () => unknown) => void }, url: string, versions: number[], idleTimeoutMs: number): Promise<ReceiverClient> {
  const c = await ReceiverClient.connect({ url, token: 'x', idleTimeoutMs })
  t.teardown(() => c.terminate())
  await c.hello({ ...hello, versions })
  await c.vmOpen(vmOpen)
  await c.openDisk(diskOpen)
  await c.endDisk({ disk: 0, extents: 0, dataBytes: 0, zeroBytes: 0, digest: new Uint8Array(8) })
  return c
}

t.test('CommitProgress (v4) restarts the wait for a long Commit; progress that does not move forward does not', async (t) => {
  // 10 reports over 1.5 s against a 500 ms wait: the merges move, the commit is answered
  const c = await sealedClient(t, await slowCommit(t, 4, 10, (i) => i << 20), [4, 3, 2], 500)
  const seen: number[] = []
  const r = await c.commit('vm', 4, { capacity: 1 << 30, onProgress: (p) => seen.push(p.doneBytes) })
  t.match(r, { ok: true, value: { vm: 'vm', cycle: 4 } })
  t.same(
    seen,
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map((i) => i << 20),
    'every report that moved forward was heard',
  )

  // the same reports, all at 1 MiB: merges that have stopped; the first one restarts the wait, then it runs out
  const s = await sealedClient(t, await slowCommit(t, 4, 10, () => 1 << 20), [4, 3, 2], 500)
  const t0 = performance.now()
  await t.rejects(s.commit('vm', 4, { capacity: 1 << 30 }), { name: 'ConnectionLost', message: /no answer from receiver for 500 ms/ })
  t.ok(performance.now() - t0 < 1400, 'timed out before the reports ended')

  // without CommitProgress, the same wait runs out as before
  const q = await sealedClient(t, await slowCommit(t, 4, 0, () => 0, false), [4, 3, 2], 300)
  await t.rejects(q.commit('vm', 4), { name: 'ConnectionLost' })
})

t.test('a stop during a long Commit: the answer is still awaited, but progress no longer restarts the wait', async (t) => {
  const c = await sealedClient(t, await slowCommit(t, 4, 10, (i) => i << 20), [4, 3, 2], 500)
  const stop = new AbortController()
  setTimeout(() => stop.abort(), 400)
  const seen: number[] = []
  const t0 = performance.now()
  await t.rejects(c.commit('vm', 4, { abortable: false, capacity: 1 << 30, stop: stop.signal, onProgress: (p) => seen.push(p.doneBytes) }), { name: 'ConnectionLost' })
  const ms = performance.now() - t0
  t.ok(ms >= 400 && ms < 1400, `gave up ${Math.round(ms)} ms in: one idle timeout after the last report before the stop, not after the reports ended`)
  t.ok(seen.length >= 2, `the reports went on being heard (${seen.length})`)
})

t.test('CommitProgress on a version 3 connection, or of another cycle, breaks the conversation (E_PROTOCOL)', async (t) => {
  const v3 = await sealedClient(t, await slowCommit(t, 3, 3, (i) => i), [4, 3, 2], 2000)
  await t.rejects(v3.commit('vm', 4), { code: 'E_PROTOCOL', message: /CommitProgress is not part of protocol version 3/ })
  const other = await sealedClient(t, await slowCommit(t, 4, 3, () => ({ cycle: 5 })), [4, 3, 2], 2000)
  await t.rejects(other.commit('vm', 4), { code: 'E_PROTOCOL', message: /CommitProgress names another VM or cycle/ })
})

/** A receiver that speaks `version`, seals the disk and answers a Commit with `before` (PointsDropped frames and the like), then `pause` ms later the Committed. */
async function droppingCommit(
  t: { teardown: (fn: () => unknown) => void },
  version: number,
  before: (m: Extract<Message, { kind: typeof MessageKind.Commit }>) => Array<Message | Uint8Array>,
  pause = 0,
): Promise<string> {
  return await scripted(t, (m, ws) => {
    if (m.kind === MessageKind.Hello) return { kind: MessageKind.Welcome, version, software: 'drop', digest: 'xxh64', compression: 'none', limits: m.limits, session: 's' }
    if (m.kind === MessageKind.DiskOpen) return diskState(m.disk)
    if (m.kind === MessageKind.DiskEnd) return { kind: MessageKind.DiskEnded, disk: m.disk }
    if (m.kind !== MessageKind.Commit) return 'default'
    for (const f of before(m)) ws.send(f instanceof Uint8Array ? f : encodeMessage(f))
    const answer = setTimeout(() => ws.send(encodeMessage(committedOf(m))), pause)
    ws.on('close', () => clearTimeout(answer))
    return 'none'
  })
}

const dropped = (m: { vm: string; cycle: number }, o: Partial<Message> = {}): Message =>
  ({ kind: MessageKind.PointsDropped, vm: m.vm, cycle: m.cycle, count: 2, oldest: 1, newest: 3, broken: true, reason: 'a re-seed of a changed mirror', ...o }) as Message

t.test('PointsDropped (v6) before the Committed goes to onPointsDropped; it does not restart the wait', async (t) => {
  const c = await sealedClient(t, await droppingCommit(t, 6, (m) => [dropped(m)]), [6, 5, 4, 3, 2], 2000)
  const heard: unknown[] = []
  const r = await c.commit('vm', 4, { onPointsDropped: (p) => heard.push(p) })
  t.match(r, { ok: true, value: { vm: 'vm', cycle: 4 } })
  t.match(heard, [{ vm: 'vm', cycle: 4, count: 2, oldest: 1, newest: 3, broken: true, reason: 'a re-seed of a changed mirror' }])
  // a receiver that says it and then never answers: the wait runs out as without it
  const s = await sealedClient(t, await droppingCommit(t, 6, (m) => [dropped(m)], 60_000), [6, 5, 4, 3, 2], 300)
  const t0 = performance.now()
  await t.rejects(s.commit('vm', 4), { name: 'ConnectionLost', message: /no answer from receiver for 300 ms/ })
  t.ok(performance.now() - t0 < 1000, 'not put off by the PointsDropped')
})

t.test('PointsDropped on a version 5 connection, twice, or of another cycle breaks the conversation (E_PROTOCOL)', async (t) => {
  const v5 = await sealedClient(t, await droppingCommit(t, 5, (m) => [dropped(m)]), [6, 5, 4, 3, 2], 2000)
  await t.rejects(v5.commit('vm', 4), { code: 'E_PROTOCOL', message: /PointsDropped is not part of protocol version 5/ })
  const twice = await sealedClient(t, await droppingCommit(t, 6, (m) => [dropped(m), dropped(m)]), [6, 5, 4, 3, 2], 2000)
  await t.rejects(twice.commit('vm', 4), { code: 'E_PROTOCOL', message: /a second PointsDropped/ })
  const other = await sealedClient(t, await droppingCommit(t, 6, (m) => [dropped(m, { cycle: 5 })]), [6, 5, 4, 3, 2], 2000)
  await t.rejects(other.commit('vm', 4), { code: 'E_PROTOCOL', message: /PointsDropped names another VM or cycle/ })
  // a malformed one (a point not older than the cycle: the encoder refuses it, so its bytes are patched) is a bad frame
  const malformed = (m: { vm: string; cycle: number }): Uint8Array => {
    const f = Buffer.from(encodeMessage(dropped(m)))
    const at = f.indexOf(Buffer.from('\xa6newest', 'latin1')) + 7
    t.equal(f[at], 3, 'newest is the fixint 3')
    f[at] = 4
    return f
  }
  const bad = await sealedClient(t, await droppingCommit(t, 6, (m) => [malformed(m)]), [6, 5, 4, 3, 2], 2000)
  await t.rejects(bad.commit('vm', 4), { code: 'E_PROTOCOL', message: /newest/ })
})

/** A receiver that speaks `version` and answers a VmOpen with `before` (PointsDropped frames and the like), then a VmState whose committed cycle is `committed`. */
async function droppingOpen(t: { teardown: (fn: () => unknown) => void }, version: number, before: (m: { vm: string; cycle: number }) => Message[], committed = 4): Promise<string> {
  return await scripted(t, (m, ws) => {
    if (m.kind === MessageKind.Hello) return { kind: MessageKind.Welcome, version, software: 'drop', digest: 'xxh64', compression: 'none', limits: m.limits, session: 's' }
    if (m.kind !== MessageKind.VmOpen) return 'default'
    for (const f of before(m)) ws.send(encodeMessage(f))
    return { kind: MessageKind.VmState, vm: m.vm, exists: true, committedCycle: committed, inflightCycle: 0, compatible: true, generation: 'ab'.repeat(16) }
  })
}

t.test('PointsDropped (v7) before the VmState of the cycle committed already goes to onPointsDropped; it does not restart the wait', async (t) => {
  const c = await greetedClient(t, await droppingOpen(t, 7, (m) => [dropped(m)]), [7, 6, 5, 4, 3, 2], 2000)
  const heard: unknown[] = []
  const r = await c.vmOpen(vmOpen, undefined, (p) => heard.push(p))
  t.match(r, { ok: true, value: { vm: 'vm', committedCycle: 4 } })
  t.match(heard, [{ vm: 'vm', cycle: 4, count: 2, oldest: 1, newest: 3, broken: true }])
  // on version 6 it is no part of a VmOpen; twice, of another cycle, or before a VmState that does not say the cycle is committed
  const v6 = await greetedClient(t, await droppingOpen(t, 6, (m) => [dropped(m)]), [7, 6, 5, 4, 3, 2], 2000)
  await t.rejects(v6.vmOpen(vmOpen), { code: 'E_PROTOCOL', message: /before a VmState is not part of protocol version 6/ })
  const twice = await greetedClient(t, await droppingOpen(t, 7, (m) => [dropped(m), dropped(m)]), [7, 6, 5, 4, 3, 2], 2000)
  await t.rejects(twice.vmOpen(vmOpen), { code: 'E_PROTOCOL', message: /a second PointsDropped for one VmOpen/ })
  const other = await greetedClient(t, await droppingOpen(t, 7, (m) => [dropped({ vm: m.vm, cycle: 3 }, { oldest: 1, newest: 2 })]), [7, 6, 5, 4, 3, 2], 2000)
  await t.rejects(other.vmOpen(vmOpen), { code: 'E_PROTOCOL', message: /another VM or cycle than the VmOpen/ })
  const notCommitted = await greetedClient(t, await droppingOpen(t, 7, (m) => [dropped(m)], 3), [7, 6, 5, 4, 3, 2], 2000)
  await t.rejects(notCommitted.vmOpen(vmOpen), { code: 'E_PROTOCOL', message: /before a VmState whose committed cycle is 3/ })
})

t.test('the wait a Commit may be put off by progress is bounded by the work announced first, at most 16 merges of the disks whole (commitLimitMs)', async (t) => {
  t.equal(commitLimitMs(0, 1e12), 120_000)
  t.equal(commitLimitMs(1e11, 1e12), 120_000 + 1e7, '100 GB announced at 10 MB/s')
  t.equal(commitLimitMs(2 ** 52, 1e12), 120_000 + 1.6e9, 'a hostile total is capped at 16 × the capacity')
  // a receiver that announces 1 byte and then ever larger totals is held to the first: past 500 ms + 1 ms, progress no longer restarts the wait
  const c = await sealedClient(t, await slowCommit(t, 4, 20, (i) => ({ doneBytes: i + 1, totalBytes: i === 0 ? 1 : 1e15 })), [4, 3, 2], 500)
  const t0 = performance.now()
  await t.rejects(c.commit('vm', 4, { capacity: 1e12 }), { name: 'ConnectionLost' })
  t.ok(performance.now() - t0 < 2900, 'the later totals did not stretch the bound')
})

/**
 * A receiver that speaks `version` and answers the VmOpen (`at` 'open') or
 * the Rollback (`at` 'rollback'; its VmState reports cycle 4 in flight)
 * after `reports` VmProgress frames 150 ms apart (`progress(i)`: their
 * doneBytes, or fields that replace the frame's), or never when `answer` is
 * false.
 */
async function slowVm(
  t: { teardown: (fn: () => unknown) => void },
  at: 'open' | 'rollback',
  version: number,
  reports: number,
  progress: (i: number) => number | Partial<Message>,
  answer = true,
): Promise<string> {
  return await scripted(t, (m, ws) => {
    if (m.kind === MessageKind.Hello) return { kind: MessageKind.Welcome, version, software: 'slow', digest: 'xxh64', compression: 'none', limits: m.limits, session: 's' }
    const state: Message = { kind: MessageKind.VmState, vm: 'vm', exists: true, committedCycle: 3, inflightCycle: 4, compatible: true, generation: 'ab'.repeat(16) }
    const reply: Message | undefined = m.kind === MessageKind.VmOpen ? state : m.kind === MessageKind.Rollback ? { kind: MessageKind.RolledBack, vm: m.vm, committedCycle: 3 } : undefined
    if (reply === undefined) return 'default'
    if ((m.kind === MessageKind.VmOpen) !== (at === 'open')) return reply
    let i = 0
    const tick = setInterval(() => {
      if (ws.readyState !== ws.OPEN) return clearInterval(tick)
      if (i < reports) {
        const p = progress(i++)
        const frame = { kind: MessageKind.VmProgress, vm: 'vm', step: at === 'open' ? 'merge-points' : 'undo', doneBytes: 0, totalBytes: 100 << 20, ...(typeof p === 'number' ? { doneBytes: p } : p) }
        ws.send(encodeMessage(frame as Message))
        return
      }
      clearInterval(tick)
      if (answer) ws.send(encodeMessage(reply))
    }, 150)
    return 'none'
  })
}

/** A client of `url` speaking `versions`, greeted; with `opened`, its VmOpen answered. */
async function greetedClient(t: { teardown: (fn: () => unknown) => void }, url: string, versions: number[], idleTimeoutMs: number, opened = false): Promise<ReceiverClient> {
  const c = await ReceiverClient.connect({ url, token: 'x', idleTimeoutMs })
  t.teardown(() => c.terminate())
  await c.hello({ ...hello, versions })
  if (opened) await c.vmOpen(vmOpen)
  return c
}

for (const at of ['open', 'rollback'] as const) {
  const ask = (c: ReceiverClient, onProgress?: (p: { step: string; doneBytes: number }) => void): Promise<unknown> => (at === 'open' ? c.vmOpen(vmOpen, onProgress) : c.rollback('vm', onProgress))
  const what = at === 'open' ? 'a VmOpen that finishes an interrupted commit' : "a Rollback's undo"
  t.test(`VmProgress (v5) restarts the wait for ${what}; progress that does not move forward does not`, async (t) => {
    // 10 reports over 1.5 s against a 500 ms wait: the work moves, the answer comes
    const c = await greetedClient(t, await slowVm(t, at, 5, 10, (i) => i << 20), [5, 4, 3, 2], 500, at === 'rollback')
    const seen: Array<[string, number]> = []
    const r = await ask(c, (p) => seen.push([p.step, p.doneBytes]))
    t.match(r, { ok: true, value: { vm: 'vm' } })
    t.same(
      seen,
      [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map((i) => [at === 'open' ? 'merge-points' : 'undo', i << 20]),
      'every report that moved forward was heard',
    )
    // the same reports, all at 1 MiB: work that has stopped; the first one restarts the wait, then it runs out
    const s = await greetedClient(t, await slowVm(t, at, 5, 10, () => 1 << 20), [5, 4, 3, 2], 500, at === 'rollback')
    const t0 = performance.now()
    await t.rejects(ask(s), { name: 'ConnectionLost', message: /no answer from receiver for 500 ms/ })
    t.ok(performance.now() - t0 < 1400, 'timed out before the reports ended')
    // without VmProgress, the same wait runs out as before
    const q = await greetedClient(t, await slowVm(t, at, 5, 0, () => 0, false), [5, 4, 3, 2], 300, at === 'rollback')
    await t.rejects(ask(q), { name: 'ConnectionLost' })
  })

  t.test(`VmProgress for ${what} on a version 4 connection, or of another VM, breaks the conversation (E_PROTOCOL)`, async (t) => {
    const v4 = await greetedClient(t, await slowVm(t, at, 4, 3, (i) => i), [5, 4, 3, 2], 2000, at === 'rollback')
    await t.rejects(ask(v4), { code: 'E_PROTOCOL', message: /VmProgress is not part of protocol version 4/ })
    const other = await greetedClient(t, await slowVm(t, at, 5, 3, () => ({ vm: 'other' })), [5, 4, 3, 2], 2000, at === 'rollback')
    await t.rejects(ask(other), { code: 'E_PROTOCOL', message: /VmProgress names another VM/ })
  })
}

t.test('the wait a VmOpen or a Rollback may be put off by progress is bounded by the work announced first, at most 16 TiB (vmProgressLimitMs)', async (t) => {
  t.equal(vmProgressLimitMs(0), 120_000)
  t.equal(vmProgressLimitMs(1e11), 120_000 + 1e7, '100 GB announced at 10 MB/s')
  t.equal(vmProgressLimitMs(2 ** 52), 120_000 + Math.ceil(VM_PROGRESS_MAX_BYTES / 10_000), 'a hostile total is capped at 16 TiB')
  t.equal(vmProgressLimitMs(1e11, 500), 500 + 1e7, 'from the idle timeout')
  // a receiver that announces 1 byte and then ever larger totals is held to the first: past 500 ms + 1 ms, progress no longer restarts the wait
  for (const at of ['open', 'rollback'] as const) {
    const c = await greetedClient(t, await slowVm(t, at, 5, 20, (i) => ({ doneBytes: i + 1, totalBytes: i === 0 ? 1 : 1e15 })), [5, 4, 3, 2], 500, at === 'rollback')
    const t0 = performance.now()
    await t.rejects((at === 'open' ? c.vmOpen(vmOpen) : c.rollback('vm')) as Promise<unknown>, { name: 'ConnectionLost' })
    t.ok(performance.now() - t0 < 2900, `${at}: the later totals did not stretch the bound`)
  }
})
