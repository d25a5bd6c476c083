/**
 * The receiver's HTTP listener in process, over real https with the
 * receiver's certificate: who may read what (none 401, an agent's token 403,
 * a viewer's token or its session cookie 200), strict headers, the login and
 * logout flow, bounded bodies and event streams, the JSON API after real
 * cycles (RPO, restore points, history, live progress, session errors), and
 * the pure parts (RPO states, history trimming, error ring, login sessions).
 */
import t from 'tap'
import { renameSync, writeFileSync } from 'node:fs'
import { request } from 'node:https'
import { connect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import type { ClientRequest, IncomingMessage } from 'node:http'
import WebSocket from 'ws'
import { SUBPROTOCOL } from '@grainline/protocol'
import {
  ERRORS_PER_VM,
  HTTP_MAX_SOCKETS_PER_ADDRESS,
  HISTORY_MAX_AGE_MS,
  HISTORY_MAX_ENTRIES,
  LiveState,
  MAX_EVENT_CLIENTS,
  MAX_EVENT_CLIENTS_PER_VIEWER,
  MAX_SESSIONS_PER_VIEWER,
  MAX_VIEWER_SESSIONS,
  MAX_LOGIN_BODY,
  SESSION_COOKIE,
  STORE_UNREADABLE,
  ViewerSessions,
  assessRpo,
  rpoTargetMs,
  trimHistory,
  type CycleHistoryEntry,
  type StoreOverview,
  type VmDetail,
} from '../src/index.ts'
import { Agent, MiB, TOKEN, TOKEN_B, makeEnv, pattern, runCycle, seedPlan, startReceiver, evolve, incPlan } from './helpers.ts'
import { httpCall, readEvents, scratchDir } from '@grainline/test-utils'

const VIEWER = 'viewer-noc-0123456789abcdef0123'
const VIEWER_WEB = 'viewer-web-0123456789abcdef0123'
/** more viewer tokens: the event streams' cap in all (each token holds at most a quarter of it) */
const VIEWERS_MORE = ['viewer-v03-0123456789abcdef0123', 'viewer-v04-0123456789abcdef0123', 'viewer-v05-0123456789abcdef0123']

t.test('the HTTP listener: auth matrix, headers, login, API after real cycles, live progress, errors, bounds', async (t) => {
  const env = makeEnv(scratchDir(t))
  writeFileSync(
    env.tokensFile,
    JSON.stringify({
      tokens: [
        { name: 'proxy-a', token: TOKEN, vms: ['web-*'], maxSessions: 16 },
        { name: 'proxy-b', token: TOKEN_B, vms: ['other-*'] },
        { name: 'noc', token: VIEWER, role: 'viewer' },
        { name: 'noc-web', token: VIEWER_WEB, role: 'viewer', vms: ['web-*'] },
        ...VIEWERS_MORE.map((token, i) => ({ name: `wall-${i}`, token, role: 'viewer', vms: ['none-*'] })),
      ],
    }),
  )
  const { receiver, url, logs } = await startReceiver(env, {
    httpListen: { host: '127.0.0.1', port: 0 },
    rpo: { targetMs: 3_600_000, vms: { 'web-*': 1_800_000 } },
    retention: { keep: 3 },
  })
  let closed = false
  t.teardown(() => (closed ? undefined : receiver.close()))
  const port = receiver.httpAddress?.port as number
  const base = `https://127.0.0.1:${port}`
  const call = (path: string, o: { method?: string; headers?: Record<string, string>; body?: string } = {}) => httpCall(`${base}${path}`, { ...o, ca: env.tls.ca })
  const bearer = (tok: string) => ({ headers: { Authorization: `Bearer ${tok}` } })

  // two cycles of web-01 (a restore point), one of other-01
  const img1 = Buffer.concat([pattern(1 * MiB, 1), Buffer.alloc(1 * MiB)])
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, 'web-01', 1, [seedPlan(0, 'web-01.vmdk', img1, 'aa01aa01aa01aa01')])
  a.ws.close()
  const img2 = evolve(img1, 7, [{ offset: 64 * 1024, length: 128 * 1024 }])
  const a2 = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a2, 'web-01', 2, [incPlan(0, 'web-01.vmdk', img2, 1, 'aa01aa01aa01aa02', [{ offset: 64 * 1024, length: 128 * 1024 }], 'web-01-000001.vmdk', 'web-01-000002.vmdk')])
  a2.ws.close()
  const b = await Agent.connect(url, { token: TOKEN_B, ca: env.tls.ca })
  await runCycle(b, 'other-01', 1, [seedPlan(0, 'other-01.vmdk', pattern(1 * MiB, 3), 'bb01bb01bb01bb01')])
  b.ws.close()

  t.test('who may read', async (t) => {
    const none = await call('/api/v1/status')
    t.equal(none.status, 401, 'no token: 401')
    t.equal(none.headers['www-authenticate'], 'Bearer')
    t.equal(JSON.parse(none.text).error.code, 'E_AUTH')
    t.equal((await call('/api/v1/status', bearer(TOKEN))).status, 403, "an agent's token: 403")
    t.equal((await call('/api/v1/status', bearer('not-a-token-at-all-xxxx'))).status, 401, 'an unknown token: 401')
    t.equal((await call('/', bearer(TOKEN))).status, 403, "an agent's token does not open the page either")
    const page = await call('/')
    t.equal(page.status, 303, 'the page without a session goes to the login form')
    t.equal(page.headers.location, '/login')
    const login = await call('/login')
    t.equal(login.status, 200)
    t.match(login.text, /<form class="login" method="post" action="\/login"/)
    t.equal((await call('/assets/dashboard.js')).headers['content-type'], 'text/javascript; charset=utf-8')
    t.equal((await call('/', bearer(VIEWER))).status, 200, 'a viewer token opens the page')
    t.equal((await call('/metrics')).status, 200, 'metrics need no token (scrapers)')
    t.equal((await call('/nope', bearer(VIEWER))).status, 404)
    t.equal((await call('/', { method: 'PUT' })).status, 405)
    // a viewer token never replicates
    const ws = new WebSocket(url, SUBPROTOCOL, { headers: { Authorization: `Bearer ${VIEWER}` }, ca: env.tls.ca })
    const status = await new Promise<number>((resolve) => {
      ws.on('unexpected-response', (_req: ClientRequest, res: IncomingMessage) => resolve(res.statusCode ?? 0))
      ws.on('open', () => resolve(101))
    })
    ws.on('error', () => {})
    ws.terminate()
    t.equal(status, 403, 'a viewer token on the replication port: 403')
  })

  t.test('strict headers on every answer', async (t) => {
    for (const [path, o] of [
      ['/login', {}],
      ['/', bearer(VIEWER)],
      ['/api/v1/status', bearer(VIEWER)],
      ['/api/v1/status', {}],
      ['/assets/dashboard.css', {}],
    ] as const) {
      const r = await call(path, o)
      const csp = String(r.headers['content-security-policy'])
      t.match(csp, /script-src 'self'/, `${path}: CSP script-src self`)
      t.notMatch(csp, /unsafe-inline|unsafe-eval/, `${path}: no inline script`)
      t.match(csp, /frame-ancestors 'none'/)
      t.equal(r.headers['x-content-type-options'], 'nosniff')
      t.equal(r.headers['referrer-policy'], 'no-referrer')
      t.equal(r.headers['cache-control'], 'no-store')
    }
  })

  t.test('login, cookie, logout; refused logins; body bound; the token in no log', async (t) => {
    const form = (tok: string) => ({ method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body: `token=${encodeURIComponent(tok)}` })
    const ok = await call('/login', form(VIEWER))
    t.equal(ok.status, 303)
    t.equal(ok.headers.location, '/')
    const cookie = String(ok.headers['set-cookie'])
    t.match(cookie, new RegExp(`^${SESSION_COOKIE}=[0-9a-f]{64}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200; Secure$`))
    t.notMatch(cookie, VIEWER, 'the cookie is not the token')
    const session = cookie.split(';')[0] as string
    t.equal((await call('/api/v1/status', { headers: { Cookie: session } })).status, 200, 'the cookie reads the API')
    const out = await call('/logout', { method: 'POST', headers: { Cookie: session } })
    t.equal(out.status, 303)
    t.match(String(out.headers['set-cookie']), /Max-Age=0/)
    t.equal((await call('/api/v1/status', { headers: { Cookie: session } })).status, 401, 'logged out')
    const agent = await call('/login', form(TOKEN))
    t.equal(agent.headers.location, '/login?failed=403', "an agent's token is refused")
    t.equal(agent.headers['set-cookie'], undefined)
    t.equal((await call('/login', form('wrong-token-wrong-token'))).headers.location, '/login?failed=401')
    const m = (await call('/metrics')).text
    t.match(
      m,
      /^grainline_connections_refused_total\{reason="auth"\} 3$/m,
      'refused logins go through the rate-limited refusal log and are counted (the viewer token on the replication port, two logins)',
    )

    const big = await call('/login', { method: 'POST', body: `token=${'x'.repeat(MAX_LOGIN_BODY)}` }).catch((err: Error) => ({ status: -1, text: err.message }))
    t.ok(big.status === 413 || big.status === -1, `a login body above ${MAX_LOGIN_BODY} bytes is refused (${big.status})`)
    for (const secret of [VIEWER, VIEWER_WEB, TOKEN]) t.notOk(logs.text().includes(secret), 'no token in the log')
    t.ok(
      logs.lines.some((l) => l['msg'] === 'dashboard login' && l['viewer'] === 'noc'),
      'the login is logged by name',
    )
  })

  t.test('the status document: RPO, restore points, history, usage; a viewer sees only its VMs', async (t) => {
    const r = await call('/api/v1/status', bearer(VIEWER))
    t.equal(r.headers['content-type'], 'application/json; charset=utf-8')
    const o = JSON.parse(r.text) as StoreOverview
    t.same(
      o.vms.map((v) => v.vm),
      ['other-01', 'web-01'],
    )
    const web = o.vms.find((v) => v.vm === 'web-01')
    t.match(web, { committedCycle: 2, rpo: { targetSeconds: 1800, state: 'ok' }, live: null, lastCycle: { cycle: 2, modes: ['incremental'] } })
    t.same(
      web?.restorePoints.map((p) => p.cycle),
      [1],
      'the restore point of cycle 1',
    )
    t.ok((web?.usedBytes ?? 0) > 0, 'space used')
    t.equal(o.vms.find((v) => v.vm === 'other-01')?.rpo.targetSeconds, 3600, 'the default target')
    const w = JSON.parse((await call('/api/v1/status', bearer(VIEWER_WEB))).text) as StoreOverview
    t.same(
      w.vms.map((v) => v.vm),
      ['web-01'],
      "a viewer's globs limit what it sees",
    )
    t.equal((await call('/api/v1/vms/other-01', bearer(VIEWER_WEB))).status, 404, 'and its VM pages')
    const d = JSON.parse((await call('/api/v1/vms/web-01', bearer(VIEWER))).text) as VmDetail
    t.same(
      d.history.map((h) => [h.cycle, h.dataBytes + h.zeroBytes]),
      [
        [1, 2 * MiB],
        [2, 128 * 1024],
      ],
      'the history: bytes each cycle covered',
    )
    t.equal((await call('/api/v1/vms/none', bearer(VIEWER))).status, 404)
    t.equal((await call('/api/v1/vms/%E0%A4%A', bearer(VIEWER))).status, 400)
    t.equal((await call('/api/v1/nope', bearer(VIEWER))).status, 404)
  })

  t.test('a cycle in flight shows its progress in the event stream; a failed session leaves its error', async (t) => {
    const c = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
    const img = pattern(4 * MiB, 9)
    const run = runCycle(c, 'web-02', 1, [seedPlan(0, 'web-02.vmdk', img, 'cc01cc01cc01cc01', 512 * 1024)], { stopAfter: 2, commit: false })
    await run
    // event-driven: read the stream until it shows web-02 in flight with bytes applied
    let seen: StoreOverview | undefined
    for (let i = 0; i < 50 && seen === undefined; i++) {
      const ev = await readEvents(`${base}/api/v1/events`, 1, { ...bearer(VIEWER), ca: env.tls.ca })
      t.equal(ev.status, 200)
      const o = JSON.parse(ev.events[0]?.data ?? '{}') as StoreOverview
      const live = o.vms?.find((v) => v.vm === 'web-02')?.live
      if (live !== null && live !== undefined && (live.disks[0]?.doneBytes ?? 0) > 0) seen = o
    }
    const live = seen?.vms.find((v) => v.vm === 'web-02')?.live
    t.match(live, { cycle: 1, peer: 'proxy-a', disks: [{ name: 'web-02.vmdk', mode: 'seed', totalBytes: 4 * MiB }] })
    t.ok((live?.disks[0]?.doneBytes ?? 0) > 0 && (live?.disks[0]?.doneBytes ?? 0) < 4 * MiB, `progress ${live?.disks[0]?.doneBytes} of ${4 * MiB}`)
    // a text frame is not the protocol: the session fails with E_MALFORMED, recorded for the VM
    c.ws.send('hello?')
    await new Promise<void>((resolve) => (c.ws.readyState === WebSocket.CLOSED ? resolve() : c.ws.once('close', () => resolve())))
    const d = JSON.parse((await call('/api/v1/vms/web-02', bearer(VIEWER))).text) as VmDetail
    t.match(d.errors, [{ cycle: 1, code: 'E_MALFORMED' }])
  })

  t.test(`at most ${MAX_EVENT_CLIENTS} event streams, ${MAX_EVENT_CLIENTS_PER_VIEWER} per viewer token; closing the receiver ends them`, async (t) => {
    const ended: Array<Promise<void>> = []
    const start = (token = VIEWER): Promise<number> =>
      new Promise((resolve, reject) => {
        const req = request(`${base}/api/v1/events`, { headers: { Authorization: `Bearer ${token}` }, ca: env.tls.ca, agent: false })
        req.on('response', (res) => {
          res.on('error', () => {})
          if (res.statusCode === 200) ended.push(new Promise((r) => res.on('close', () => r())))
          res.resume()
          resolve(res.statusCode ?? 0)
        })
        req.on('error', reject)
        req.end()
      })
    for (let i = 0; i < MAX_EVENT_CLIENTS_PER_VIEWER; i++) t.equal(await start(), 200)
    t.equal(await start(), 503, `a ${MAX_EVENT_CLIENTS_PER_VIEWER + 1}th stream of one viewer token: 503 (it cannot take them all)`)
    const tokens = [VIEWER_WEB, ...VIEWERS_MORE]
    for (let i = MAX_EVENT_CLIENTS_PER_VIEWER; i < MAX_EVENT_CLIENTS; i++) t.equal(await start(tokens[Math.floor(i / MAX_EVENT_CLIENTS_PER_VIEWER) - 1]), 200)
    t.equal(await start(VIEWERS_MORE[2]), 503, `one more in all (${MAX_EVENT_CLIENTS + 1}): 503`)
    closed = true
    await receiver.close()
    await Promise.all(ended)
    t.pass(`the receiver's close ended all ${ended.length} streams`)
  })
})

t.test(`one address holds at most ${HTTP_MAX_SOCKETS_PER_ADDRESS} sockets; silent ones end at the 5 s header deadline, not at Node's 30 s check`, async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, logs } = await startReceiver(env, { httpListen: { host: '127.0.0.1', port: 0 } })
  t.teardown(() => receiver.close())
  const port = receiver.httpAddress?.port as number
  // TLS handshaken, then silent: only the header deadline ends them
  const open = (localAddress: string): Promise<{ sock: Socket; closedAt: Promise<number> }> =>
    new Promise((resolve, reject) => {
      const tcp = connect({ port, host: '127.0.0.1', localAddress })
      tcp.on('error', () => {})
      const sock = tlsConnect({ socket: tcp, ca: env.tls.ca, servername: 'localhost' })
      sock.on('error', () => {})
      // flowing: a paused socket never sees the server's end
      sock.resume()
      const closedAt = new Promise<number>((r) => sock.once('close', () => r(Date.now())))
      // a socket closed before its handshake (above the cap) resolves too: its closedAt has come
      sock.once('secureConnect', () => resolve({ sock, closedAt }))
      sock.once('close', () => resolve({ sock, closedAt }))
      void reject
    })
  const t0 = Date.now()
  // silent sockets (no request line) from one address: the cap's worth is held, one more is closed at once
  const held = await Promise.all(Array.from({ length: HTTP_MAX_SOCKETS_PER_ADDRESS }, () => open('127.0.0.1')))
  await new Promise((r) => setTimeout(r, 200))
  const extra = await open('127.0.0.1')
  const extraClosed = await Promise.race([extra.closedAt, new Promise<number>((r) => setTimeout(() => r(-1), 3000))])
  t.ok(extraClosed > 0, 'one more socket from the same address is closed at once')
  t.ok(
    logs.lines.some((l) => l['msg'] === 'http: sockets of one address above the cap are closed'),
    'logged',
  )
  // another address is served meanwhile (Prometheus, a viewer)
  const other = await new Promise<number>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/metrics', localAddress: '127.0.0.2', ca: env.tls.ca, servername: 'localhost', agent: false }, (res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    req.on('error', reject)
    req.end()
  })
  t.equal(other, 200, 'a client from another address is served')
  // the silent ones end at the 5 s header deadline checked every second (Node's default check, every 30 s: ~30 s)
  const ends = await Promise.all(held.map((h) => h.closedAt))
  const latest = Math.max(...ends) - t0
  t.ok(latest < 20_000, `every silent socket closed after ${latest} ms`)
})

t.test('a store that cannot be read: viewers get a typed error without its paths, the receiver log the detail (once)', async (t) => {
  const env = makeEnv(scratchDir(t))
  writeFileSync(env.tokensFile, JSON.stringify({ tokens: [{ name: 'noc', token: VIEWER, role: 'viewer' }] }))
  const { receiver, logs } = await startReceiver(env, { httpListen: { host: '127.0.0.1', port: 0 } })
  t.teardown(() => receiver.close())
  const base = `https://127.0.0.1:${receiver.httpAddress?.port as number}`
  const auth = { headers: { Authorization: `Bearer ${VIEWER}` }, ca: env.tls.ca }
  renameSync(env.store, `${env.store}.gone`)
  const r = await httpCall(`${base}/api/v1/status`, auth)
  t.equal(r.status, 503)
  t.same(JSON.parse(r.text), { error: { code: 'E_NOT_FOUND', message: STORE_UNREADABLE } }, 'a typed answer')
  t.notMatch(r.text, env.dir, 'no path of the receiver in it')
  const ev = await readEvents(`${base}/api/v1/events`, 2, auth)
  t.same(
    ev.events.map((e) => e.event),
    ['failure', 'failure'],
  )
  t.same(JSON.parse(ev.events[0]?.data ?? '{}'), { code: 'E_NOT_FOUND', message: STORE_UNREADABLE }, 'the event stream says the same')
  for (const e of ev.events) t.notMatch(e.data, env.dir, 'no path in an event')
  const logged = logs.lines.filter((l) => l['msg'] === 'the store could not be read for the dashboard')
  t.equal(logged.length, 1, 'the detail logged once, however many events failed')
  t.match(JSON.stringify(logged[0]), env.store, 'naming the store')
})

t.test('RPO states', async (t) => {
  t.same(assessRpo(3_600_000, 0), { targetSeconds: 3600, ageSeconds: 0, state: 'ok' })
  t.equal(assessRpo(3_600_000, 2700).state, 'ok', '75 % of the target is still ok')
  t.equal(assessRpo(3_600_000, 2701).state, 'warning')
  t.equal(assessRpo(3_600_000, 3600).state, 'warning')
  t.equal(assessRpo(3_600_000, 3601).state, 'critical', 'above the target: missed')
  t.equal(assessRpo(3_600_000, null).state, 'critical', 'never committed')
  t.equal(rpoTargetMs(undefined, 'x'), 24 * 3_600_000, 'default 24 h')
  t.equal(rpoTargetMs({ targetMs: 5, vms: { 'db-*': 7, '*': 9 } }, 'db-1'), 7, 'first glob wins')
  t.equal(rpoTargetMs({ targetMs: 5, vms: { 'db-*': 7 } }, 'web'), 5)
})

t.test('history trimming by age and count', async (t) => {
  const now = Date.parse('2026-06-30T00:00:00Z')
  const e = (cycle: number, ageMs: number): CycleHistoryEntry => ({
    cycle,
    committedAt: new Date(now - ageMs).toISOString(),
    seconds: 1,
    dataBytes: 1,
    zeroBytes: 0,
    extents: 1,
    modes: ['incremental'],
  })
  t.same(
    trimHistory([e(1, HISTORY_MAX_AGE_MS + 1), e(2, HISTORY_MAX_AGE_MS), e(3, 0)], now).map((x) => x.cycle),
    [2, 3],
  )
  const many = Array.from({ length: HISTORY_MAX_ENTRIES + 5 }, (_, i) => e(i + 1, 1000))
  const kept = trimHistory(many, now)
  t.equal(kept.length, HISTORY_MAX_ENTRIES)
  t.equal(kept[0]?.cycle, 6, 'the oldest go')
})

t.test('live state: a bounded error ring per VM, progress, change events', async (t) => {
  const live = new LiveState()
  let changes = 0
  const stop = live.onChange(() => changes++)
  live.cycleOpened('vm', 3, 'peer')
  live.diskOpened('vm', 'd.vmdk', 'incremental', 100, 10)
  live.diskProgress('vm', 'd.vmdk', 10)
  live.diskProgress('vm', 'd.vmdk', 50)
  live.diskSealed('vm', 'd.vmdk')
  live.diskProgress('nope', 'd.vmdk', 5)
  t.match(live.cycle('vm'), { cycle: 3, disks: [{ name: 'd.vmdk', totalBytes: 100, doneBytes: 50, sealed: true }] })
  live.diskOpened('vm', 'd.vmdk', 'incremental', 100, 60)
  t.equal(live.cycle('vm')?.disks.length, 1, 'a reopened disk replaces its entry')
  for (let i = 0; i < ERRORS_PER_VM + 3; i++) live.sessionFailed('vm', i, 'E_IO', 'x'.repeat(1000))
  t.equal(live.errors('vm').length, ERRORS_PER_VM)
  t.equal(live.errors('vm')[0]?.cycle, 3, 'the oldest errors go')
  t.equal(live.errors('vm')[0]?.message.length, 500, 'messages are cut')
  live.sessionEnded('vm')
  t.equal(live.cycle('vm'), undefined)
  t.equal(changes, 1 + 1 + 1 + 1 + 1 + ERRORS_PER_VM + 3 + 1, 'one change per event that changed something')
  stop()
  live.cycleOpened('vm', 4, 'peer')
  t.equal(changes, 1 + 1 + 1 + 1 + 1 + ERRORS_PER_VM + 3 + 1, 'no events after stop')
})

t.test('viewer sessions: cookie parsing, expiry, cap', async (t) => {
  let now = 0
  const s = new ViewerSessions(() => now)
  const entry = { name: 'noc', token: VIEWER, vms: ['*'], role: 'viewer' as const }
  const id = s.create(entry)
  t.equal(s.lookup(`a=b; ${SESSION_COOKIE}=${id}`), entry)
  t.equal(s.lookup(`${SESSION_COOKIE}=nothex`), undefined)
  t.equal(s.lookup(undefined), undefined)
  now += 12 * 3600 * 1000
  t.equal(s.lookup(`${SESSION_COOKIE}=${id}`), undefined, 'expired after 12 h')
  // one token logging in in a loop evicts only its own sessions, never another viewer's
  const other = { ...entry, name: 'wall', token: VIEWER_WEB }
  const kept = s.create(other)
  for (let i = 0; i < 300; i++) s.create(entry)
  t.equal(s.size, MAX_SESSIONS_PER_VIEWER + 1, `${MAX_SESSIONS_PER_VIEWER} sessions of the looping token, and the other's`)
  t.equal(s.lookup(`${SESSION_COOKIE}=${kept}`), other, "the other viewer's session survives 300 logins of one token")
  // in all at most 256: when full, the oldest session of the token holding the most goes
  for (let v = 0; v < 20; v++) for (let i = 0; i < MAX_SESSIONS_PER_VIEWER; i++) s.create({ ...entry, name: `v${v}` })
  t.equal(s.size, MAX_VIEWER_SESSIONS, `at most ${MAX_VIEWER_SESSIONS} sessions`)
  t.equal(s.lookup(`${SESSION_COOKIE}=${kept}`), other, 'the token with one session keeps it when the cap in all is reached')
})
