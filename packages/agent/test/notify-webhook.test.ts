/** Webhooks against a local HTTP server: signed JSON, retried with back-off (bounded), a failing-then-succeeding endpoint, signatures checked. */
import t from 'tap'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { createServer, type IncomingMessage } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import { createServer as createNetServer } from 'node:net'
import { join } from 'node:path'
import { memoryLogger, tlsFixture } from '@grainline/test-utils'
import { loadJob } from '../src/job/load-job.ts'
import { outcomesOf, type WebhookSettings } from '../src/job/notify-schema.ts'
import { runJob } from '../src/job-runner.ts'
import { DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sendWebhook, signWebhook, verifyWebhookSignature, type WebhookPayload } from '../src/notify/webhook.ts'
import { emptyVmReport, formatReport, pointsDroppedWarning, runOutcome, type ReplicationReport } from '../src/report.ts'
import { scratch } from './helpers.ts'

const SECRET = 'webhook-secret-0123456789'

interface Hit {
  readonly headers: IncomingMessage['headers']
  readonly body: string
}

/** A local endpoint answering each request with the next status of `statuses` (then 200). */
async function endpoint(t: { teardown: (fn: () => unknown) => void }, statuses: number[], opts: { tls?: boolean; headers?: Record<string, string> } = {}) {
  const hits: Hit[] = []
  const handler = (req: IncomingMessage, res: import('node:http').ServerResponse): void => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      hits.push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8') })
      res.writeHead(statuses.shift() ?? 200, opts.headers ?? {})
      res.end('thanks')
    })
  }
  const tls = tlsFixture()
  const srv = opts.tls === true ? createHttpsServer({ key: readFileSync(tls.key), cert: readFileSync(tls.cert) }, handler) : createServer(handler)
  srv.listen(0, '127.0.0.1')
  await once(srv, 'listening')
  t.teardown(() => new Promise((r) => srv.close(r)))
  const port = (srv.address() as { port: number }).port
  return { hits, url: `${opts.tls === true ? 'https' : 'http'}://127.0.0.1:${port}/hook` }
}

const report: ReplicationReport = { ok: true, startedAt: '2026-11-30T02:00:00.000Z', finishedAt: '2026-11-30T02:00:10.000Z', vms: [] }

function hook(url: string, over: Partial<WebhookSettings> = {}): WebhookSettings {
  return { url, secretFile: { path: '/x', secret: SECRET }, ...over }
}

/** A job of one VM that is not there (the run fails at once) with `webhooks`, its secret file written in `dir`. */
async function missingVmJob(dir: string, webhooks: unknown[]): Promise<Awaited<ReturnType<typeof loadJob>>> {
  await writeFile(join(dir, 'hook.secret'), SECRET + '\n')
  return await loadJob({ cwd: dir, vms: [join(dir, 'missing.vmx')], options: { to: 'wss://127.0.0.1:1', token: 'x'.repeat(20) }, jobOptions: { webhooks } })
}

t.test('a signed JSON POST; the signature checks out, a wrong secret, a changed body or an old timestamp do not', async (t) => {
  const ep = await endpoint(t, [])
  const r = await sendWebhook(hook(ep.url), report, { hostname: 'proxy-a' })
  t.same(r, { ok: true, attempts: 1, status: 200 })
  const hit = ep.hits[0] as Hit
  const payload = JSON.parse(hit.body) as WebhookPayload
  t.match(payload, { event: 'run.succeeded', host: 'proxy-a', software: /^grainline-agent\//, report: { ok: true } })
  t.equal(hit.headers['content-type'], 'application/json')
  t.equal(hit.headers[EVENT_HEADER], 'run.succeeded')
  t.match(hit.headers[DELIVERY_HEADER], /^[0-9a-f-]{36}$/)
  const sig = hit.headers[SIGNATURE_HEADER] as string
  t.match(sig, /^t=\d+,v1=[0-9a-f]{64}$/)
  t.same(verifyWebhookSignature({ secret: SECRET, header: sig, body: hit.body }), { ok: true }, 'the receiver can check it with the shared secret')
  t.same(verifyWebhookSignature({ secret: 'another-secret', header: sig, body: hit.body }), { ok: false, reason: 'mismatch' }, 'a wrong secret fails')
  t.same(verifyWebhookSignature({ secret: SECRET, header: sig, body: hit.body.replace('proxy-a', 'proxy-b') }), { ok: false, reason: 'mismatch' }, 'a changed body fails')
  t.same(verifyWebhookSignature({ secret: SECRET, header: sig, body: Buffer.from(hit.body), now: Date.now() + 3_600_000 }), { ok: false, reason: 'stale' }, 'replayed an hour later: refused')
  t.same(verifyWebhookSignature({ secret: SECRET, header: 'v1=abc', body: hit.body }), { ok: false, reason: 'malformed' })
  t.same(verifyWebhookSignature({ secret: SECRET, header: undefined, body: hit.body }), { ok: false, reason: 'malformed' })
  // the scheme as documented: HMAC-SHA256(secret, "<t>.<body>")
  const t0 = Number(/^t=(\d+)/.exec(sig)?.[1])
  t.equal(signWebhook(SECRET, hit.body, t0), sig)
})

t.test('a failing-then-succeeding endpoint: 503, 500, then 200 — three attempts, one delivery id, each attempt signed', async (t) => {
  const ep = await endpoint(t, [503, 500])
  const log = memoryLogger({ level: 'info' })
  const r = await sendWebhook(hook(ep.url), { ...report, ok: false }, { retryBaseMs: 5, logger: log.logger })
  t.same(r, { ok: true, attempts: 3, status: 200 })
  t.equal(ep.hits.length, 3)
  t.equal(new Set(ep.hits.map((h) => h.headers[DELIVERY_HEADER])).size, 1, 'one delivery id for every attempt')
  for (const h of ep.hits) t.same(verifyWebhookSignature({ secret: SECRET, header: h.headers[SIGNATURE_HEADER] as string, body: h.body }), { ok: true })
  t.equal(ep.hits[0]?.headers[EVENT_HEADER], 'run.failed')
  t.equal(log.filter('webhook attempt failed; retrying').length, 2)
})

t.test('bounded: attempts run out; a 4xx is final; a dead endpoint; 429 honours a short Retry-After', async (t) => {
  const always = await endpoint(t, [500, 500, 500, 500])
  t.same(await sendWebhook(hook(always.url, { attempts: 3 }), report, { retryBaseMs: 1 }), { ok: false, attempts: 3, status: 500, error: 'HTTP 500' })
  t.equal(always.hits.length, 3)
  const refused = await endpoint(t, [401])
  t.same(await sendWebhook(hook(refused.url), report, { retryBaseMs: 1 }), { ok: false, attempts: 1, status: 401, error: 'HTTP 401' }, 'a refusal is not retried')
  const dead = await sendWebhook(hook('http://127.0.0.1:1/hook', { attempts: 2 }), report, { retryBaseMs: 1 })
  t.match(dead, { ok: false, attempts: 2, error: /ECONNREFUSED/ })
  const busy = await endpoint(t, [429], { headers: { 'retry-after': '0' } })
  t.match(await sendWebhook(hook(busy.url), report, { retryBaseMs: 60_000 }), { ok: true, attempts: 2 }, 'Retry-After: 0 replaces the minute of back-off')
})

t.test('https with a private CA', async (t) => {
  const ep = await endpoint(t, [], { tls: true })
  t.match(await sendWebhook(hook(ep.url, { attempts: 1 }), report), { ok: false, error: /self-signed/ }, 'untrusted without the CA')
  t.same(await sendWebhook(hook(ep.url, { caFile: { path: '/ca', pem: tlsFixture().ca.toString('utf8') } }), report), { ok: true, attempts: 1, status: 200 })
})

t.test('a run that committed with a warning is event run.warning; "failure" and "success" subscribers both hear it', async (t) => {
  const ep = await endpoint(t, [])
  const vm = { ...emptyVmReport('web01'), ok: true, cycle: 7 }
  vm.warnings = [pointsDroppedWarning(7, { count: 2, oldest: 5, newest: 6, broken: true, reason: 'a re-seed of a changed mirror' })]
  const warned: ReplicationReport = { ...report, vms: [vm] }
  t.equal(runOutcome(warned), 'warning')
  t.equal(runOutcome(report), 'success')
  t.equal(runOutcome({ ...warned, ok: false }), 'failure', 'a failure wins over a warning')
  t.match(await sendWebhook(hook(ep.url), warned), { ok: true })
  t.equal(ep.hits[0]?.headers[EVENT_HEADER], 'run.warning')
  const payload = JSON.parse(ep.hits[0]?.body ?? '{}') as WebhookPayload
  t.match(payload, { event: 'run.warning', report: { ok: true, vms: [{ vm: 'web01', warnings: [{ code: 'W_POINTS_DROPPED', message: /restore points \(cycles 5 to 6\)/ }] }] } })
  t.ok(verifyWebhookSignature({ secret: SECRET, header: ep.hits[0]?.headers[SIGNATURE_HEADER] as string, body: ep.hits[0]?.body ?? '' }).ok)
  t.same([...outcomesOf(['failure'])].sort(), ['failure', 'warning'], '"failure" covers warnings: they need a look')
  t.same([...outcomesOf('success')].sort(), ['success', 'warning'], '"success" too: the run committed (a heartbeat endpoint hears every committed run)')
  t.same([...outcomesOf(['warning'])], ['warning'])
  t.same([...outcomesOf(undefined)].sort(), ['failure', 'success', 'warning'])
})

t.test('a job run posts its report to its webhooks, on the outcomes asked for', async (t) => {
  const ep = await endpoint(t, [])
  const job = await missingVmJob(scratch(t), [
    { url: ep.url, secretFile: 'hook.secret', on: 'failure', timeout: '5s', attempts: 2 },
    { url: `${ep.url}?success`, secretFile: 'hook.secret', on: ['success'] },
    { url: 'http://127.0.0.1:1/down', secretFile: 'hook.secret', attempts: 1 },
  ])
  const log = memoryLogger({ level: 'info' })
  const r = await runJob({ logger: log.logger }, job, { view: 'none' })
  t.notOk(r.ok)
  t.equal(ep.hits.length, 1, 'only the failure hook fired')
  t.match(r.notifications, [
    { kind: 'webhook', target: ep.url, ok: true, attempts: 1 },
    { kind: 'webhook', target: 'http://127.0.0.1:1/down', ok: false, attempts: 1, error: /ECONNREFUSED/ },
  ])
  t.ok(log.find('webhook delivered'))
  t.ok(log.find('webhook not delivered'), 'a failed delivery is logged, and the run goes on')
  const payload = JSON.parse(ep.hits[0]?.body ?? '{}') as WebhookPayload
  t.match(payload.report.vms[0], { ok: false, error: { code: 'E_VM_NOT_FOUND' } })
})

t.test('credentials in an http:// URL: refused at load to a non-loopback host (unless insecurePlaintext); sent as Basic auth to loopback, never shown in the report or logs', async (t) => {
  const dir = scratch(t)
  await writeFile(join(dir, 'hook.secret'), SECRET + '\n')
  const load = async (webhooks: unknown[]) => await loadJob({ cwd: dir, vms: [join(dir, 'missing.vmx')], options: { to: 'wss://127.0.0.1:1', token: 'x'.repeat(20) }, jobOptions: { webhooks } })
  const err = (await load([{ url: 'http://ops:hunter2@192.0.2.2/hook', secretFile: 'hook.secret' }]).then(
    () => undefined,
    (e: unknown) => e,
  )) as { code?: string; issues?: string[] } | undefined
  t.equal(err?.code, 'E_CONFIG')
  t.same(err?.issues, [
    "options.webhooks[0].url: the URL's credentials would go in clear (HTTP Basic auth over http://) to 192.0.2.2: use https://, or set insecurePlaintext (--webhook-insecure-plaintext) on a network you trust",
  ])
  t.ok(await load([{ url: 'http://ops:hunter2@192.0.2.2/hook', secretFile: 'hook.secret', insecurePlaintext: true }]), 'the opt-in')
  t.ok(await load([{ url: 'http://192.0.2.2/hook', secretFile: 'hook.secret' }]), 'no credentials: only the signed report travels (the HMAC key never does)')
  const ep = await endpoint(t, [])
  const withCreds = ep.url.replace('http://', 'http://ops:hunter2@')
  const job = await load([{ url: withCreds, secretFile: 'hook.secret', attempts: 1 }])
  const log = memoryLogger({ level: 'info' })
  const r = await runJob({ logger: log.logger }, job, { view: 'none' })
  t.equal(ep.hits[0]?.headers.authorization, `Basic ${Buffer.from('ops:hunter2').toString('base64')}`, 'loopback: sent')
  t.match(r.notifications, [{ kind: 'webhook', target: ep.url.replace('http://', 'http://ops:***@'), ok: true }])
  t.notMatch(JSON.stringify(r), /hunter2/, 'not in the report')
  t.ok(log.find('webhook delivered'))
  t.notMatch(log.text(), /hunter2/, 'not in the logs')
})

/** A raw endpoint: reads the POST, writes `head` at once, then `answer` a byte every `everyMs`; `sent` counts the bytes of `answer` it wrote before the client closed. */
async function trickler(t: { teardown: (fn: () => unknown) => void }, head: string, answer: string, everyMs: number) {
  const state = { sent: 0, closed: 0, connections: 0 }
  const srv = createNetServer((sock) => {
    state.connections++
    let started = false
    let timer: NodeJS.Timeout | undefined
    sock.on('data', (c: Buffer) => {
      // the body ends the request (its content-length was small): answer then, a byte at a time
      if (started || !c.toString('latin1').includes('}')) return
      started = true
      sock.write(head)
      let i = 0
      timer = setInterval(() => {
        if (i >= answer.length || sock.destroyed) return
        sock.write(answer.charAt(i++))
        state.sent = i
      }, everyMs)
    })
    sock.on('close', () => {
      clearInterval(timer)
      state.closed++
    })
    sock.on('error', () => {})
  })
  srv.listen(0, '127.0.0.1')
  await once(srv, 'listening')
  t.teardown(() => new Promise((r) => srv.close(r)))
  return { state, url: `http://127.0.0.1:${(srv.address() as { port: number }).port}/hook` }
}

t.test('bounded in time: an answer trickled a byte at a time is cut at the attempt timeout (each byte used to re-arm it)', async (t) => {
  // the status line came, the body trickles: the status is the answer, the rest is not waited for
  const body = 'x'.repeat(60)
  const slowBody = await trickler(t, `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`, body, 100)
  const r = await sendWebhook(hook(slowBody.url, { timeout: 1500, attempts: 1 }), report, { retryBaseMs: 1 })
  t.same(r, { ok: true, attempts: 1, status: 200 }, 'delivered: the endpoint said 200')
  t.ok(slowBody.state.sent < body.length, `the client left before the trickled body ended (${slowBody.state.sent} bytes of ${body.length} written)`)
  // the status line itself trickles: no answer within the timeout, retried, then given up
  const slowStatus = await trickler(t, '', 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n', 100)
  const s = await sendWebhook(hook(slowStatus.url, { timeout: 1000, attempts: 2 }), report, { retryBaseMs: 1 })
  t.match(s, { ok: false, attempts: 2, error: 'no answer within 1000 ms' }, 'two attempts, each cut at its timeout')
  t.equal(slowStatus.state.connections, 2)
  t.ok(slowStatus.state.sent < 38, 'no attempt read a whole status line')
})

t.test("the run's stop: the attempt in flight ends, no retry, no back-off wait; a stopped job's report still goes once", async (t) => {
  const ep = await endpoint(t, [503, 503, 503, 503])
  const stop = new AbortController()
  const log = memoryLogger({ level: 'info' })
  const pending = sendWebhook(hook(ep.url, { attempts: 5 }), report, { retryBaseMs: 60_000, signal: stop.signal, logger: log.logger })
  // stopped while the first back-off (a minute) runs
  while (log.filter('webhook attempt failed; retrying').length === 0) await new Promise((r) => setImmediate(r))
  stop.abort()
  t.same(await pending, { ok: false, attempts: 1, status: 503, error: 'HTTP 503; not retried: the run was stopped' })
  t.equal(ep.hits.length, 1, 'one POST')
  t.ok(log.find('webhook not retried: the run was stopped'))
  // runJob gives the job's webhooks the run's signal: stopped before it ends, the report is posted once, not retried
  const down = await endpoint(t, [503, 503, 503])
  const job = await missingVmJob(scratch(t), [{ url: down.url, secretFile: 'hook.secret', attempts: 3 }])
  const r = await runJob({ logger: memoryLogger({ level: 'info' }).logger }, job, { view: 'none', signal: AbortSignal.abort() })
  t.equal(down.hits.length, 1, 'posted once')
  t.match(r.notifications, [{ kind: 'webhook', target: down.url, ok: false, attempts: 1, error: 'HTTP 503; not retried: the run was stopped' }])
})

t.test("a delivery's attempts and time are in the run's summary, not only in the report's notifications", async (t) => {
  const down = await endpoint(t, [503, 503, 503])
  const flaky = await endpoint(t, [500])
  const job = await missingVmJob(scratch(t), [
    { url: down.url, secretFile: 'hook.secret', attempts: 2 },
    { url: flaky.url, secretFile: 'hook.secret', attempts: 3 },
    { url: `${flaky.url}?once`, secretFile: 'hook.secret' },
    { url: 'http://127.0.0.1:1/down', secretFile: 'hook.secret', attempts: 1 },
  ])
  const log = memoryLogger({ level: 'info' })
  const r = await runJob({ logger: log.logger }, job, { view: 'none' })
  t.equal(down.hits.length, 2, 'two attempts at the endpoint that stays down')
  t.match(r.notifications, [
    { kind: 'webhook', target: down.url, ok: false, attempts: 2, durationMs: Number, error: 'HTTP 503' },
    { kind: 'webhook', target: flaky.url, ok: true, attempts: 2, durationMs: Number },
    { kind: 'webhook', target: `${flaky.url}?once`, ok: true, attempts: 1, durationMs: Number },
    { kind: 'webhook', target: 'http://127.0.0.1:1/down', ok: false, attempts: 1, durationMs: Number },
  ])
  const lines = formatReport(r).split('\n')
  const took = String.raw`(\d+ ms|\d+\.\d s)`
  t.ok(
    lines.some((l) => new RegExp(`^NOT SENT webhook to ${down.url} after 2 attempts in ${took}: HTTP 503$`).test(l)),
    'a failed delivery: its attempts and time, then the last error',
  )
  t.ok(
    lines.some((l) => new RegExp(`^sent webhook to ${flaky.url} after 2 attempts in ${took}$`).test(l)),
    'a delivery that needed a retry says so',
  )
  t.ok(lines.includes(`sent webhook to ${flaky.url}?once`), 'a delivery at the first attempt: as before')
  t.ok(
    lines.some((l) => new RegExp(`^NOT SENT webhook to http://127\\.0\\.0\\.1:1/down after 1 attempt in ${took}: .*ECONNREFUSED`).test(l)),
    'one attempt, said in the singular',
  )
  const failed = log.find('webhook not delivered')
  t.match(failed, { url: down.url, attempts: 2, durationMs: Number, error: 'HTTP 503' }, 'the log has the count and the time too')
})

t.test("the summary's words for a delivery, from a report as written", async (t) => {
  const notified: ReplicationReport = {
    ...report,
    notifications: [
      { kind: 'webhook', target: 'https://hooks.example/a', ok: false, attempts: 5, durationMs: 31_200, error: 'HTTP 502' },
      { kind: 'webhook', target: 'https://hooks.example/b', ok: false, attempts: 3, error: 'timeout' },
      { kind: 'email', target: 'ops@example.com', ok: false, error: 'ECONNREFUSED' },
    ],
  }
  const lines = formatReport(notified).split('\n')
  t.ok(lines.includes('NOT SENT webhook to https://hooks.example/a after 5 attempts in 31.2 s: HTTP 502'), 'attempts and time')
  t.ok(lines.includes('NOT SENT webhook to https://hooks.example/b after 3 attempts: timeout'), 'a report written without the time: the count alone')
  t.ok(lines.includes('NOT SENT email to ops@example.com: ECONNREFUSED'), 'an e-mail: no attempts to tell')
})
