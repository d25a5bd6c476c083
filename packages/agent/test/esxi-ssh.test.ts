import t from 'tap'
import { Writable } from 'node:stream'
import { pino } from 'pino'
import { EsxiSsh, sshFingerprint, normalizeFingerprint } from '../src/esxi/ssh.ts'
import { shJoin } from '../src/esxi/shell-quote.ts'
import { startSshHarness } from './esxi-harness.ts'

function logSink(): { logger: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l !== '') lines.push(JSON.parse(l) as Record<string, unknown>)
      cb()
    },
  })
  return { logger: pino({ level: 'debug' }, stream), lines }
}

const h = await startSshHarness()
t.teardown(() => h.stop())

const base = { host: '127.0.0.1', port: h.port, username: h.user, privateKey: h.userKey, hostKeyFingerprint: h.hostKeyFingerprint, connectTimeoutMs: 10_000 }

t.test('fingerprint format', async (t) => {
  t.equal(sshFingerprint(Buffer.from('abc')), 'SHA256:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0')
  t.equal(normalizeFingerprint(' SHA256:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0= '), 'SHA256:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0')
  for (const bad of ['', 'ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0', 'MD5:aa:bb', 'SHA256:short']) {
    t.throws(() => normalizeFingerprint(bad), { code: 'E_CONFIG' })
  }
})

t.test('connects when the pinned fingerprint is the one ssh-keygen prints; commands, quoting, logs', async (t) => {
  const { logger, lines } = logSink()
  const ssh = await EsxiSsh.connect(base, { logger })
  t.teardown(() => ssh.close())
  const tricky = ['web 01', "it's", '$(id)', 'a\nb', '*']
  const r = await ssh.exec(shJoin(['printf', '[%s]', ...tricky]), { vm: 'web 01' })
  t.equal(r.code, 0)
  t.equal(r.stdout, tricky.map((s) => `[${s}]`).join(''))
  const fail = await ssh.exec('echo oops >&2; exit 3')
  t.same([fail.code, fail.stderr], [3, 'oops\n'])
  const done = lines.filter((l) => l.msg === 'esxi command done')
  t.equal(done.length, 2)
  t.match(done[0], { level: 20, esxiHost: '127.0.0.1', vm: 'web 01', code: 0, stdout: r.stdout })
  t.match(String(done[0]?.command), /^printf/)
  t.match(done[1], { code: 3, stderr: 'oops\n' })
})

t.test('a host-key mismatch fails loudly, naming both fingerprints', async (t) => {
  const wrong = sshFingerprint(Buffer.from('not the host key'))
  const err = await EsxiSsh.connect({ ...base, hostKeyFingerprint: wrong }, { logger: pino({ level: 'silent' }) }).then(
    () => undefined,
    (e: unknown) => e,
  )
  t.match(err, { name: 'EsxiError', code: 'E_HOST_KEY', host: '127.0.0.1' })
  t.match(String((err as Error).message), h.hostKeyFingerprint)
  t.match(String((err as Error).message), wrong)
})

t.test('several pinned fingerprints: any of them matches; none is a config error', async (t) => {
  const other = sshFingerprint(Buffer.from('the host ecdsa key, say'))
  const ssh = await EsxiSsh.connect({ ...base, hostKeyFingerprint: [other, h.hostKeyFingerprint] }, { logger: pino({ level: 'silent' }) })
  await ssh.close()
  const err = (await EsxiSsh.connect({ ...base, hostKeyFingerprint: [other] }, { logger: pino({ level: 'silent' }) }).then(
    () => undefined,
    (e: unknown) => e,
  )) as Error
  t.match(err, { code: 'E_HOST_KEY' })
  t.match(err.message, h.hostKeyFingerprint)
  await t.rejects(EsxiSsh.connect({ ...base, hostKeyFingerprint: [] }, { logger: pino({ level: 'silent' }) }), { code: 'E_CONFIG' })
})

t.test('the key can come from a file', async (t) => {
  const { privateKey: _unused, ...noKey } = base
  const ssh = await EsxiSsh.connect({ ...noKey, privateKeyFile: `${h.dir}/user_key` }, { logger: pino({ level: 'silent' }) })
  t.equal((await ssh.exec('echo ok')).stdout, 'ok\n')
  await ssh.close()
  await t.rejects(EsxiSsh.connect({ ...noKey, privateKeyFile: `${h.dir}/missing` }, { logger: pino({ level: 'silent' }) }), { code: 'E_CONFIG', message: /privateKeyFile/ })
  await t.rejects(EsxiSsh.connect({ ...noKey }, { logger: pino({ level: 'silent' }) }), { code: 'E_CONFIG' })
})

t.test('a key the host does not accept', async (t) => {
  // the refusal names the host, the user, the key and where ESXi keeps the user's authorized keys
  await t.rejects(EsxiSsh.connect({ ...base, privateKey: h.otherKey }, { logger: pino({ level: 'silent' }) }), {
    code: 'E_SSH_AUTH',
    message: new RegExp(
      `^esxi: 127\\.0\\.0\\.1:${h.port} refused user "${h.user}" with the key given inline \\(privateKey\\): add its public key to /etc/ssh/keys-${h.user}/authorized_keys on the host`,
    ),
  })
  const { privateKey: _unused, ...noKey } = base
  const otherFile = `${h.dir}/other_key`
  await t.rejects(EsxiSsh.connect({ ...noKey, privateKeyFile: otherFile }, { logger: pino({ level: 'silent' }) }), {
    code: 'E_SSH_AUTH',
    message: new RegExp(`with the key of privateKeyFile ${otherFile}: add its public key \\(ssh-keygen -y -f ${otherFile}\\) to /etc/ssh/keys-${h.user}/authorized_keys`),
  })
  await t.rejects(EsxiSsh.connect({ ...base, privateKey: 'not a key' }, { logger: pino({ level: 'silent' }) }), { code: 'E_CONFIG' })
})

t.test('nobody listening', async (t) => {
  await t.rejects(EsxiSsh.connect({ ...base, port: 1 }, { logger: pino({ level: 'silent' }) }), { code: 'E_SSH_CONNECT' })
})

t.test('timeout, abort and output limit; the connection stays usable', async (t) => {
  const ssh = await EsxiSsh.connect(base, { logger: pino({ level: 'silent' }) })
  t.teardown(() => ssh.close())
  const started = Date.now()
  await t.rejects(ssh.exec('sleep 20', { timeoutMs: 300, vm: 'vm1' }), { code: 'E_TIMEOUT', command: 'sleep 20', vm: 'vm1', message: /within 300 ms/ })
  t.ok(Date.now() - started < 5000)
  const ac = new AbortController()
  setTimeout(() => {
    ac.abort()
  }, 200)
  await t.rejects(ssh.exec('sleep 20', { signal: ac.signal }), { code: 'E_ABORTED' })
  await t.rejects(ssh.exec('head -c 100000 /dev/zero', { maxOutputBytes: 1000 }), { code: 'E_OUTPUT_LIMIT' })
  const r = await ssh.exec('echo still here')
  t.equal(r.stdout, 'still here\n')
})
