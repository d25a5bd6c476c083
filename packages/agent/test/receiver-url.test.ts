/**
 * SPEC §1.2: the agent refuses to send its token in clear text to a
 * non-loopback host. A plain TCP listener on a non-loopback address of this
 * machine records whatever reaches it: without the rule (the code before
 * issue #10) `replicate` connected and sent `Authorization: Bearer <token>`
 * in plain text; now it refuses with E_INSECURE before any connection,
 * unless `insecurePlaintext` is set.
 */
import t from 'tap'
import { once } from 'node:events'
import { writeFile } from 'node:fs/promises'
import { createServer, type Socket } from 'node:net'
import { networkInterfaces } from 'node:os'
import { join } from 'node:path'
import { canonicalReceiverUrl, checkReceiverUrl, isLoopbackHost } from '../src/receiver-url.ts'
import { replicate, replicateMany } from '../src/replicate.ts'
import { loadJobConfig } from '../src/job-config.ts'
import { createLocalDriver } from '../src/local-driver.ts'
import { createSampleVm } from '../src/sample-vm.ts'
import { memoryLogger, MiB, scratch } from './helpers.ts'

t.test('loopback hosts and the URL rule', async (t) => {
  for (const [host, loop] of [
    ['localhost', true],
    ['LOCALHOST', true],
    ['db.localhost', true],
    ['127.0.0.1', true],
    ['127.8.9.10', true],
    ['[::1]', true],
    ['[::ffff:7f00:1]', true],
    ['10.0.0.1', false],
    ['192.0.2.2', false],
    ['[fd00::2]', false],
    ['dr.example', false],
    ['localhost.example', false],
    ['128.0.0.1', false],
    ['[::]', false],
    ['0.0.0.0', false],
  ] as const)
    t.equal(isLoopbackHost(host), loop, host)
  t.equal(checkReceiverUrl('ws://127.0.0.1:7443').host, '127.0.0.1:7443')
  t.equal(checkReceiverUrl('ws://[::1]:7443').hostname, '[::1]')
  t.equal(checkReceiverUrl('wss://dr.example:7443').protocol, 'wss:')
  t.equal(checkReceiverUrl('ws://dr.example:7443', { insecurePlaintext: true }).protocol, 'ws:')
  t.throws(() => checkReceiverUrl('ws://dr.example:7443'), { code: 'E_INSECURE', message: /clear text to dr\.example:7443.*wss:\/\//s })
  t.equal(checkReceiverUrl('ws://0x7f.0.0.2:1').hostname, '127.0.0.2', 'a hex loopback address is normalized by the URL parser')
  t.throws(() => checkReceiverUrl('http://dr.example'), { code: 'E_CONFIG' })
  t.throws(() => checkReceiverUrl('not a url'), { code: 'E_CONFIG' })
  t.throws(() => checkReceiverUrl('wss://user:pw@dr.example'), { code: 'E_CONFIG' })
})

t.test('a receiver URL without a port is refused (it would try 443 or 80, not the listen port of the receiver); an explicit one, 443 included, is taken', async (t) => {
  for (const url of ['wss://dr.example', 'wss://dr.example/', 'wss://dr.example:/', 'ws://127.0.0.1', 'ws://[::1]/x', 'wss://dr.example?x=:443', 'wss://dr.example#:443'])
    t.throws(
      () => checkReceiverUrl(url),
      { code: 'E_CONFIG', message: /names no port: wss?:\/\/ would use (443|80), and a receiver listens on the port of its "listen" \(7443 in the docs\) — give it, e\.g\. wss?:\/\/[^ ]+:7443/ },
      url,
    )
  t.throws(() => checkReceiverUrl('wss://dr.example'), {
    message:
      'receiver URL "wss://dr.example" names no port: wss:// would use 443, and a receiver listens on the port of its "listen" (7443 in the docs) — give it, e.g. wss://dr.example:7443 (or :443 if the receiver really is there)',
  })
  for (const url of ['wss://dr.example:443', 'wss://dr.example:443/', 'ws://127.0.0.1:80', 'ws://[::1]:7443/x', 'wss://DR.example:7443?a=b']) t.ok(checkReceiverUrl(url), url)
  t.equal(checkReceiverUrl('wss://dr.example:443').port, '', 'the URL parser drops the default port it was given')
})

/** A non-loopback IPv4 address of this machine, if it has one. */
function externalAddress(): string | undefined {
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address
  return undefined
}

/** A TCP listener that records every connection and the bytes it receives, and drops each one once its request headers are in. */
async function recorder(t: { teardown: (fn: () => unknown) => void }, host: string): Promise<{ port: number; connections: () => number; received: () => string }> {
  let n = 0
  let text = ''
  const sockets = new Set<Socket>()
  const server = createServer((s) => {
    n++
    sockets.add(s)
    let mine = ''
    s.on('data', (d: Buffer) => {
      text += d.toString('latin1')
      mine += d.toString('latin1')
      if (mine.includes('\r\n\r\n')) s.destroy()
    })
    s.on('error', () => {})
    s.on('close', () => sockets.delete(s))
  })
  server.listen(0, host)
  await once(server, 'listening')
  t.teardown(() => {
    for (const s of sockets) s.destroy()
    server.close()
  })
  return { port: (server.address() as { port: number }).port, connections: () => n, received: () => text }
}

const SECRET = 'secret-token-must-not-travel-in-clear'

t.test('replicate, replicateMany and job files refuse ws:// to another host before any connection', async (t) => {
  const host = externalAddress()
  if (host === undefined) {
    // no second interface: the rule still holds for a name that is not loopback (no connection can be observed)
    await t.rejects(replicate({ logger: memoryLogger().logger }, { vm: '/nonexistent.vmx', to: 'ws://dr.example:7443', token: SECRET }), { code: 'E_INSECURE' })
    return
  }
  const rec = await recorder(t, host)
  const dir = scratch(t)
  const vm = await createSampleVm(dir, { name: 'clear', disks: [{ sizeBytes: 1 * MiB }] })
  const { logger } = memoryLogger()
  const to = `ws://${host}:${rec.port}`
  await t.rejects(replicate({ logger }, { vm: vm.vmxPath, to, token: SECRET, progress: 'none' }), { code: 'E_INSECURE', message: new RegExp(`clear text to ${host.replace(/\./g, '\\.')}`) })
  // a job whose second VM names the plain URL: refused before the first VM runs
  await writeFile(join(dir, 'token'), SECRET)
  await writeFile(
    join(dir, 'job.json'),
    JSON.stringify({
      tokenFile: 'token',
      vms: [
        { vm: vm.vmxPath, to: 'ws://127.0.0.1:1' },
        { vm: vm.vmxPath, to },
      ],
    }),
  )
  // the job file is refused while it is read (every problem named by key), before any VM is touched
  await t.rejects(loadJobConfig(join(dir, 'job.json')), { code: 'E_CONFIG', message: /job\.vms\[1\]\.to: refusing to send the token in clear text/ })
  const driver = createLocalDriver()
  t.same(await driver.listSnapshots(await driver.openVm(vm.vmxPath)), [], 'no VM of the job was touched (no snapshot)')
  t.equal(rec.connections(), 0, 'nothing reached the listener')
  t.notOk(rec.received().includes(SECRET))

  // the explicit flag (job key insecurePlaintext) lets it through: the token then travels in clear, which is what the rule prevents
  await writeFile(join(dir, 'job2.json'), JSON.stringify({ tokenFile: 'token', giveUp: '0s', stateDir: 'agent-state', vms: [{ vm: vm.vmxPath, to, insecurePlaintext: true }] }))
  const jobs = await loadJobConfig(join(dir, 'job2.json'))
  t.equal(jobs[0]?.insecurePlaintext, true)
  // the listener drops every upgrade request: the agent retries, then gives up (giveUpMs 0)
  const r = await replicateMany({ logger }, jobs)
  t.equal(r.vms[0]?.error?.code, 'E_GAVE_UP')
  t.ok(rec.connections() >= 1, 'the agent connected')
  t.match(rec.received(), new RegExp(`Authorization: Bearer ${SECRET}`, 'i'), 'with the flag, the bearer token is readable on the wire')
})

t.test('two spellings of one receiver URL are one: scheme and host case, a trailing slash, a written default port, an IPv4 spelling', async (t) => {
  for (const [a, b] of [
    ['wss://H:7443', 'wss://h:7443/'],
    ['WSS://DR.Example.NET:7443/', 'wss://dr.example.net:7443'],
    ['wss://dr.example:443', 'wss://dr.example:443/'],
    ['ws://127.0.0.1:7443', 'ws://0x7f.0.0.1:7443/'],
    ['ws://[::1]:7443', 'ws://[0:0::1]:7443/'],
  ] as const)
    t.equal(canonicalReceiverUrl(a), canonicalReceiverUrl(b), `${a} = ${b}`)
  t.equal(canonicalReceiverUrl('WSS://H:7443/'), 'wss://h:7443')
  t.equal(canonicalReceiverUrl('wss://dr.example:443/'), 'wss://dr.example:443', 'the port written stays written (checkReceiverUrl takes it)')
  t.equal(checkReceiverUrl(canonicalReceiverUrl('wss://dr.example:443/')).hostname, 'dr.example')
  t.equal(canonicalReceiverUrl('ws://[::1]:7443/x/'), 'ws://[::1]:7443/x/', 'a path other than / is kept')
  t.not(canonicalReceiverUrl('wss://h:7443'), canonicalReceiverUrl('wss://h:7444'))
  t.not(canonicalReceiverUrl('wss://h:7443'), canonicalReceiverUrl('ws://h:7443'))
  t.equal(canonicalReceiverUrl('not a url'), 'not a url')
})

t.test('a job: an invalid shared "to" is said once, not once per VM; two spellings of one receiver are one (two folders of one name are one mirror there)', async (t) => {
  const dir = scratch(t)
  await writeFile(join(dir, 't.token'), 'secret-token\n', { mode: 0o600 })
  const vmx = async (sub: string): Promise<string> => (await createSampleVm(join(dir, sub), { name: 'web', disks: [{ sizeBytes: MiB }] })).vmxPath
  const [a, b, c] = [await vmx('a'), await vmx('b'), await vmx('c')]
  const bad = join(dir, 'bad.json')
  await writeFile(bad, JSON.stringify({ to: 'wss://dr.example', tokenFile: 't.token', vms: [{ vm: a }, { vm: b }, { vm: c }] }))
  const e1 = await loadJobConfig(bad).then(
    () => undefined,
    (err: unknown) => err as { issues?: unknown[]; message: string },
  )
  t.same(
    e1?.issues,
    [
      'job.to: receiver URL "wss://dr.example" names no port: wss:// would use 443, and a receiver listens on the port of its "listen" (7443 in the docs) — give it, e.g. wss://dr.example:7443 (or :443 if the receiver really is there)',
    ],
    'one problem for three VMs',
  )
  const two = join(dir, 'two.json')
  await writeFile(
    two,
    JSON.stringify({
      tokenFile: 't.token',
      vms: [
        { vm: a, to: 'wss://DR.example:7443' },
        { vm: b, to: 'wss://dr.example:7443/' },
      ],
    }),
  )
  const e2 = await loadJobConfig(two).then(
    () => undefined,
    (err: unknown) => err as { message: string },
  )
  t.match(e2?.message, /are two VMs the receiver at wss:\/\/dr\.example:7443 would keep as one mirror "web"/)
  const ok = join(dir, 'ok.json')
  await writeFile(ok, JSON.stringify({ tokenFile: 't.token', vms: [{ vm: a, to: 'WSS://DR.example:7443/' }] }))
  t.equal((await loadJobConfig(ok))[0]?.to, 'wss://dr.example:7443', 'the job carries one spelling')
})
