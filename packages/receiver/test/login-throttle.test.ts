/**
 * The per-address brake on failed logins: the pure counter (window, /64
 * keys, memory bound), and a real receiver's HTTPS listener answering 429
 * with Retry-After after LOGIN_MAX_FAILURES wrong tokens — even for the right
 * token — while a session cookie obtained before keeps working.
 */
import t from 'tap'
import { writeFileSync } from 'node:fs'
import { LOGIN_MAX_ADDRESSES, LOGIN_MAX_FAILURES, LOGIN_WINDOW_MS, LoginThrottle, addressKey } from '../src/index.ts'
import { TOKEN, makeEnv, startReceiver } from './helpers.ts'
import { httpCall, scratchDir } from '@grainline/test-utils'

const VIEWER = 'viewer-noc-0123456789abcdef0123'

t.test('address keys: IPv4 as is, IPv4-mapped unwrapped, IPv6 by /64', async (t) => {
  t.equal(addressKey('192.0.2.7'), '192.0.2.7')
  t.equal(addressKey('::ffff:192.0.2.7'), '192.0.2.7')
  t.equal(addressKey('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64')
  t.equal(addressKey('2001:db8:1:2:bbbb:cccc:dddd:eeee'), '2001:db8:1:2::/64', 'one /64, one key')
  t.equal(addressKey('2001:db8::1'), '2001:db8:0:0::/64')
  t.equal(addressKey('::1'), '0:0:0:0::/64')
  t.equal(addressKey(undefined), '?')
})

t.test('the counter: a window, no reset by success, bounded memory', async (t) => {
  let now = 1_000_000
  const th = new LoginThrottle(() => now)
  for (let i = 0; i < LOGIN_MAX_FAILURES - 1; i++) th.failed('192.0.2.1')
  t.equal(th.retryAfter('192.0.2.1'), 0, `${LOGIN_MAX_FAILURES - 1} failures: may still try`)
  now += 1000
  th.failed('192.0.2.1')
  t.equal(th.retryAfter('192.0.2.1'), LOGIN_WINDOW_MS / 1000 - 1, 'braked until the oldest failure (1 s ago) leaves the window')
  t.equal(th.retryAfter('192.0.2.2'), 0, 'another address is not braked')
  now += LOGIN_WINDOW_MS - 500
  t.equal(th.retryAfter('192.0.2.1'), 0, 'the oldest failures left the window')
  now += LOGIN_WINDOW_MS
  t.equal(th.size, 1, 'not yet swept')
  t.equal(th.retryAfter('192.0.2.1'), 0)
  t.equal(th.size, 0, 'an address with no recent failure is forgotten')
  for (let i = 0; i < LOGIN_MAX_ADDRESSES + 50; i++) th.failed(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`)
  t.equal(th.size, LOGIN_MAX_ADDRESSES, 'at most LOGIN_MAX_ADDRESSES addresses are remembered')
  for (let i = 0; i < 3 * LOGIN_MAX_FAILURES; i++) th.failed('192.0.2.9')
  t.equal(th.retryAfter('192.0.2.9'), LOGIN_WINDOW_MS / 1000, 'at most LOGIN_MAX_FAILURES timestamps per address')
})

t.test('a real listener: wrong tokens brake the address, 429 with Retry-After, cookies keep working', async (t) => {
  const env = makeEnv(scratchDir(t))
  writeFileSync(
    env.tokensFile,
    JSON.stringify({
      tokens: [
        { name: 'proxy-a', token: TOKEN, vms: ['web-*'] },
        { name: 'noc', token: VIEWER, role: 'viewer' },
      ],
    }),
  )
  const { receiver, logs } = await startReceiver(env, { httpListen: { host: '127.0.0.1', port: 0 } })
  t.teardown(() => receiver.close())
  const base = `https://127.0.0.1:${receiver.httpAddress?.port as number}`
  const call = (path: string, o: { method?: string; headers?: Record<string, string>; body?: string } = {}) => httpCall(`${base}${path}`, { ...o, ca: env.tls.ca })
  const form = (tok: string) => ({ method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body: `token=${encodeURIComponent(tok)}` })

  const ok = await call('/login', form(VIEWER))
  t.equal(ok.headers.location, '/', 'a login before the brake')
  const session = String(ok.headers['set-cookie']).split(';')[0] as string
  t.equal((await call('/login', form(TOKEN))).headers.location, '/login?failed=403', "an agent's token is refused but is not a guess: not counted")
  for (let i = 0; i < LOGIN_MAX_FAILURES - 1; i++) t.equal((await call('/login', form(`wrong-${i}`))).headers.location, '/login?failed=401')
  t.equal((await call('/api/v1/status', { headers: { Authorization: 'Bearer wrong-bearer' } })).status, 401, `failure ${LOGIN_MAX_FAILURES}, by Bearer`)

  const braked = await call('/login', form(VIEWER))
  t.equal(braked.status, 429, 'the right token from a braked address: 429')
  t.ok(Number(braked.headers['retry-after']) > 0 && Number(braked.headers['retry-after']) <= LOGIN_WINDOW_MS / 1000, `Retry-After ${braked.headers['retry-after']}`)
  t.equal(braked.headers['set-cookie'], undefined, 'no session')
  const api = await call('/api/v1/status', { headers: { Authorization: `Bearer ${VIEWER}` } })
  t.equal(api.status, 429)
  t.equal(JSON.parse(api.text).error.code, 'E_THROTTLED')
  t.equal((await call('/api/v1/status', { headers: { Cookie: session } })).status, 200, 'a session cookie obtained before still reads the API')
  t.match((await call('/metrics')).text, /^grainline_connections_refused_total\{reason="auth-throttled"\} [1-9]/m, 'braked attempts are counted')
  t.ok(
    logs.lines.some((l) => l['reason'] === 'auth-throttled'),
    'and logged',
  )
})

t.test("metricsAuth 'viewer': /metrics only with an unrestricted viewer token or its session", async (t) => {
  const env = makeEnv(scratchDir(t))
  writeFileSync(
    env.tokensFile,
    JSON.stringify({
      tokens: [
        { name: 'proxy-a', token: TOKEN, vms: ['web-*'] },
        { name: 'noc', token: VIEWER, role: 'viewer' },
        { name: 'web-team', token: 'viewer-web-0123456789abcdef0123', role: 'viewer', vms: ['web-*'] },
      ],
    }),
  )
  const { receiver } = await startReceiver(env, { httpListen: { host: '127.0.0.1', port: 0 }, metricsAuth: 'viewer' })
  t.teardown(() => receiver.close())
  const base = `https://127.0.0.1:${receiver.httpAddress?.port as number}`
  const call = (o: { headers?: Record<string, string> } = {}) => httpCall(`${base}/metrics`, { ...o, ca: env.tls.ca })
  const none = await call()
  t.equal(none.status, 401, 'no token: 401')
  t.equal(none.headers['www-authenticate'], 'Bearer')
  t.notMatch(none.text, /grainline_/, 'and no metric')
  t.equal((await call({ headers: { Authorization: `Bearer ${TOKEN}` } })).status, 403, "an agent's token: 403")
  const limited = await call({ headers: { Authorization: 'Bearer viewer-web-0123456789abcdef0123' } })
  t.equal(limited.status, 403, 'a viewer limited to some VMs: 403 (the metrics name every VM)')
  const ok = await call({ headers: { Authorization: `Bearer ${VIEWER}` } })
  t.equal(ok.status, 200)
  t.match(ok.text, /^grainline_sessions /m, 'an unrestricted viewer reads the metrics')
})
