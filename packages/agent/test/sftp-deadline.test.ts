/**
 * SFTP request deadlines and the stop, against scripted channels: a channel
 * whose sftp-server never answers (a datastore stuck while SSH stays alive)
 * is ended after `requestTimeoutMs` and the read retried on a new one; an
 * answer that arrives after its deadline never writes into the caller's
 * buffer; a stop ends a hung request, a backoff, or a read not yet started at
 * once with `E_ABORTED` (and vmdk reports it as `E_ABORTED`, not `E_IO`).
 * The same through a real sshd with a SIGSTOPped sftp-server: esxi-sftp.test.
 */
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { getEventListeners } from 'node:events'
import { pino } from 'pino'
import type { SFTPWrapper } from 'ssh2'
import { openChain } from '@grainline/vmdk'
import { SftpFileAccess, type SftpSession } from '../src/esxi/sftp-files.ts'

type Cb = (err: Error | undefined, ...v: unknown[]) => void

interface Pending {
  readonly buf: Buffer
  readonly off: number
  readonly len: number
  readonly cb: Cb
}

interface FakeOptions {
  /** stat and fstat never answered */
  readonly hangStats?: boolean
  /** a read at this position fails with SFTP status FAILURE (an answer: not retried) */
  readonly failAt?: number
  /** other reads answer after this long */
  readonly readDelayMs?: number
}

/** A scripted SFTP channel over one in-memory file; `hangReads` keeps every read unanswered. */
class FakeChannel {
  ended = false
  readonly pending: Pending[] = []
  readonly data: Buffer
  readonly hangReads: boolean
  readonly opts: FakeOptions
  /** reads asked and not yet answered (hung ones included) */
  inFlight = 0
  constructor(data: Buffer, hangReads: boolean, opts: FakeOptions = {}) {
    this.data = data
    this.hangReads = hangReads
    this.opts = opts
  }
  #stats() {
    return { mode: 0o100644, size: this.data.length }
  }
  stat(_p: string, cb: Cb): void {
    if (this.opts.hangStats !== true) setImmediate(() => cb(undefined, this.#stats()))
  }
  fstat(_h: Buffer, cb: Cb): void {
    if (this.opts.hangStats !== true) setImmediate(() => cb(undefined, this.#stats()))
  }
  open(_p: string, _f: string, cb: Cb): void {
    setImmediate(() => cb(undefined, Buffer.from('handle')))
  }
  realpath(p: string, cb: Cb): void {
    setImmediate(() => cb(undefined, p))
  }
  close(_h: Buffer, cb: Cb): void {
    cb(undefined)
  }
  end(): void {
    this.ended = true
  }
  read(_h: Buffer, buf: Buffer, off: number, len: number, pos: number, cb: Cb): void {
    this.inFlight++
    if (this.hangReads) {
      this.pending.push({ buf, off, len, cb })
      return
    }
    if (pos === this.opts.failAt) {
      setImmediate(() => {
        this.inFlight--
        cb(Object.assign(new Error('Failure'), { code: 4 }))
      })
      return
    }
    setTimeout(() => {
      const n = this.data.copy(buf, off, pos, Math.min(pos + len, this.data.length))
      this.inFlight--
      cb(undefined, n, buf, pos)
    }, this.opts.readDelayMs ?? 0)
  }
}

/**
 * Channels handed out in order; an invalidated or dropped one is never handed
 * out again. A `'never'` entry is a channel whose opening never completes.
 */
function session(channels: Array<FakeChannel | 'never' | 'timeout'>, opts: { failConnect?: boolean } = {}): SftpSession & { connects: number; drops: number } {
  let i = 0
  const forget = (c: SFTPWrapper | undefined): void => {
    const cur = channels[i]
    if (c === undefined ? cur === 'never' : (c as unknown as FakeChannel) === cur) {
      i++
      if (cur instanceof FakeChannel) cur.end()
    }
  }
  const s = {
    connects: 0,
    drops: 0,
    sftp: async (): Promise<SFTPWrapper> => {
      s.connects++
      if (opts.failConnect === true) throw Object.assign(new Error('connection reset'), { code: 'ECONNRESET' })
      const c = channels[Math.min(i, channels.length - 1)]
      if (c === 'never') return await new Promise<never>(() => {})
      if (c === 'timeout') {
        // as EsxiSsh does for a channel that never opens: it drops the connection itself and says E_TIMEOUT
        i++
        throw Object.assign(new Error('esxi: the host opened no SFTP channel within 150 ms'), { code: 'E_TIMEOUT' })
      }
      return c as unknown as SFTPWrapper
    },
    invalidateSftp: forget,
    dropConnection: (c: SFTPWrapper | undefined): void => {
      s.drops++
      forget(c)
    },
  }
  return s
}

const logger = pino({ level: 'silent' })

/** `p`, or a rejection after `ms` naming what hung (so an old build fails clearly, not at tap's timeout). */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: still waiting after ${ms} ms`)), ms)
      }),
    ])
  } finally {
    clearTimeout(timer)
  }
}

t.test('a read the sftp-server never answers is retried on a new channel after its deadline; a late answer never reaches the caller', async (t) => {
  const data = randomBytes(600 * 1024)
  const hung = new FakeChannel(data, true)
  const healthy = new FakeChannel(data, false)
  const s = session([hung, healthy])
  const access = new SftpFileAccess(s, { logger, requestTimeoutMs: 200, maxReadBytes: 64 * 1024, retry: { initialBackoffMs: 1 } })
  const f = await access.open('/vmfs/volumes/ds/vm/vm-flat.vmdk', 'r')
  const target = Buffer.alloc(data.length)
  const started = Date.now()
  const n = await within(f.read(target, 0, target.length, 0), 10_000, 'the read on a hung channel')
  t.equal(n, data.length)
  t.ok(target.equals(data), 'the read returned the file, from the new channel')
  // libuv's timers count from the loop's cached time: a few ms of slack
  t.ok(Date.now() - started >= 190, 'after the deadline')
  t.equal(hung.ended, true, 'the hung channel was ended')
  t.ok(s.drops >= 1, 'its connection was dropped (not only the channel)')
  t.ok(hung.pending.length >= 1, `${hung.pending.length} requests were left unanswered on it`)
  t.ok(access.counters.timedOut >= 1, `timedOut ${access.counters.timedOut}`)
  t.ok(access.counters.retried >= 1 && access.counters.reopened >= 1, 'retried and reopened on the new channel')
  // the hung sftp-server wakes up and answers into the buffers it was given
  for (const p of hung.pending) {
    p.buf.fill(0xee, p.off, p.off + p.len)
    p.cb(undefined, p.len)
  }
  t.ok(target.equals(data), "the late answers did not write into the caller's buffer")
  // a read after that: the late answers did not corrupt the reused scratch buffers either
  const again = Buffer.alloc(data.length)
  t.equal(await f.read(again, 0, again.length, 0), data.length)
  t.ok(again.equals(data), 'a later read is exact')
})

t.test('a stop ends a hung request at once with E_ABORTED, without a retry', async (t) => {
  const data = randomBytes(256 * 1024)
  const hung = new FakeChannel(data, true)
  const stop = new AbortController()
  const s = session([hung, new FakeChannel(data, false)])
  const access = new SftpFileAccess(s, { logger, requestTimeoutMs: 60_000, signal: stop.signal })
  const f = await access.open('/vmfs/volumes/ds/vm/vm-flat.vmdk', 'r')
  const reading = f.read(Buffer.alloc(data.length), 0, data.length, 0)
  await new Promise((r) => setTimeout(r, 100))
  const connectsBefore = s.connects
  const stoppedAt = Date.now()
  stop.abort(new Error('SIGTERM'))
  await t.rejects(within(reading, 5000, 'the hung read after a stop'), { code: 'E_ABORTED', message: /read .*vm-flat\.vmdk: stopped/ })
  t.ok(Date.now() - stoppedAt < 1000, `heard the stop in ${Date.now() - stoppedAt} ms`)
  t.equal(access.counters.retried, 0, 'not retried')
  t.equal(s.connects, connectsBefore, 'no channel asked for after the stop')
})

t.test('a stop during the backoff after a dropped connection ends the wait at once', async (t) => {
  const stop = new AbortController()
  const s = session([], { failConnect: true })
  const access = new SftpFileAccess(s, { logger, signal: stop.signal, retry: { initialBackoffMs: 30_000, maxBackoffMs: 30_000 } })
  const stat = access.stat('/vmfs/volumes/ds/vm/vm.vmdk')
  await new Promise((r) => setTimeout(r, 100))
  stop.abort(new Error('SIGINT'))
  await t.rejects(within(stat, 5000, 'the backoff after a stop'), { code: 'E_ABORTED' })
  t.equal(s.connects, 1, 'no second attempt')
})

t.test('after a stop nothing is asked of the host, and vmdk reports E_ABORTED (not E_IO)', async (t) => {
  const stop = new AbortController()
  stop.abort(new Error('SIGTERM'))
  const s = session([new FakeChannel(Buffer.alloc(1024), false)])
  const access = new SftpFileAccess(s, { logger, signal: stop.signal })
  await t.rejects(access.stat('/vmfs/volumes/ds/vm/vm.vmdk'), { code: 'E_ABORTED' })
  await t.rejects(openChain('/vmfs/volumes/ds/vm/vm.vmdk', { files: access }), { code: 'E_ABORTED' })
  t.equal(s.connects, 0, 'no channel was asked for')
})

t.test('a channel that did not open in time is retried on a new connection; a stop ends the wait for a channel at once', async (t) => {
  const data = randomBytes(4096)
  const s = session(['timeout', new FakeChannel(data, false)])
  const access = new SftpFileAccess(s, { logger, requestTimeoutMs: 150, retry: { initialBackoffMs: 1 } })
  t.same(await within(access.stat('/vmfs/volumes/ds/vm/vm.vmdk'), 10_000, 'a stat behind a channel that never opens'), { kind: 'file', size: 4096 })
  t.equal(s.drops, 0, 'the session dropped that connection itself (not a newer one dropped again)')
  t.equal(access.counters.timedOut, 1)

  const stop = new AbortController()
  const stuck = session(['never'])
  const a2 = new SftpFileAccess(stuck, { logger, requestTimeoutMs: 60_000, signal: stop.signal })
  const pending = a2.stat('/vmfs/volumes/ds/vm/vm.vmdk')
  await new Promise((r) => setTimeout(r, 50))
  stop.abort(new Error('SIGTERM'))
  await t.rejects(within(pending, 5000, 'a channel opening after a stop'), { code: 'E_ABORTED' })
})

t.test('a stat or open the sftp-server never answers is retried on a new connection', async (t) => {
  const data = randomBytes(8192)
  const s = session([new FakeChannel(data, false, { hangStats: true }), new FakeChannel(data, false)])
  const access = new SftpFileAccess(s, { logger, requestTimeoutMs: 150, retry: { initialBackoffMs: 1 } })
  const f = await within(access.open('/vmfs/volumes/ds/vm/vm-flat.vmdk', 'r'), 10_000, 'an open whose stat hangs')
  const buf = Buffer.alloc(8192)
  t.equal(await f.read(buf, 0, 8192, 0), 8192)
  t.ok(buf.equals(data))
  t.equal(s.drops, 1)
  t.equal(access.counters.timedOut, 1)
})

t.test('a host that never answers fails the read with EIO naming the file, after the configured attempts', async (t) => {
  const data = randomBytes(4096)
  const hung = [new FakeChannel(data, true), new FakeChannel(data, true), new FakeChannel(data, true)]
  // stat and open are answered, reads never
  const s = session(hung)
  const access = new SftpFileAccess(s, { logger, requestTimeoutMs: 60, retry: { attempts: 3, initialBackoffMs: 1 } })
  const f = await access.open('/vmfs/volumes/ds/vm/vm-flat.vmdk', 'r')
  await t.rejects(within(f.read(Buffer.alloc(4096), 0, 4096, 0), 10_000, 'a read on hung channels'), {
    code: 'EIO',
    message: /read \/vmfs\/volumes\/ds\/vm\/vm-flat\.vmdk failed 3 times \(no answer within 60 ms\)/,
  })
  t.equal(access.counters.timedOut, 3)
})

t.test('a read that fails returns only once none of its pieces is in flight, and takes no more pieces', async (t) => {
  const data = randomBytes(1024 * 1024)
  // the first piece fails at once (an SFTP FAILURE status: not retried); the others answer 150 ms later
  const ch = new FakeChannel(data, false, { failAt: 0, readDelayMs: 150 })
  const access = new SftpFileAccess(session([ch]), { logger, maxReadBytes: 64 * 1024, concurrency: 4 })
  const f = await access.open('/vmfs/volumes/ds/vm/vm-flat.vmdk', 'r')
  const target = Buffer.alloc(data.length)
  await t.rejects(f.read(target, 0, target.length, 0), { code: 'EIO' })
  t.equal(ch.inFlight, 0, 'no piece was in flight when the read failed')
  t.equal(access.counters.requests, 4, 'the three pieces in flight finished; no further piece was asked for')
  const after = Buffer.from(target)
  await new Promise((r) => setTimeout(r, 300))
  t.ok(target.equals(after), 'nothing wrote into the buffer after the read failed')
})

t.test("close() forgets the run's signal and the kept buffers", async (t) => {
  const stop = new AbortController()
  const before = getEventListeners(stop.signal, 'abort').length
  const access = new SftpFileAccess(session([new FakeChannel(randomBytes(4096), false)]), { logger, signal: stop.signal })
  t.equal(getEventListeners(stop.signal, 'abort').length, before + 1, 'one listener per access')
  access.close()
  t.equal(getEventListeners(stop.signal, 'abort').length, before, 'removed at close')
})
