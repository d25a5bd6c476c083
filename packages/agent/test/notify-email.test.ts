/** The report e-mail against a real SMTP server (smtp-server): STARTTLS with the test certificate, AUTH, what arrives parsed by mailparser. */
import t from 'tap'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { simpleParser, type ParsedMail } from 'mailparser'
import { SMTPServer, type SMTPServerOptions } from 'smtp-server'
import { memoryLogger, tlsFixture } from '@grainline/test-utils'
import { loadJob } from '../src/job/load-job.ts'
import { runJob } from '../src/job-runner.ts'
import { renderReportEmail } from '../src/notify/email-render.ts'
import { sendReportEmail } from '../src/notify/email.ts'
import { emptyDiskReport, emptyVmReport, formatReport, pointsDroppedWarning, type ReplicationReport, type VmReport } from '../src/report.ts'
import { scratch } from './helpers.ts'

const MiB = 1024 * 1024

interface Received {
  readonly mails: ParsedMail[]
  readonly auths: string[]
  readonly secured: boolean[]
  readonly port: number
  next: () => Promise<ParsedMail>
}

/** A real SMTP server on loopback: STARTTLS with the test certificate, AUTH PLAIN/LOGIN against one user. */
async function smtpServer(t: { teardown: (fn: () => unknown) => void }, opts: Partial<SMTPServerOptions> = {}): Promise<Received> {
  const tls = tlsFixture()
  const mails: ParsedMail[] = []
  const auths: string[] = []
  const secured: boolean[] = []
  const waiters: Array<(m: ParsedMail) => void> = []
  const server = new SMTPServer({
    key: readFileSync(tls.key),
    cert: readFileSync(tls.cert),
    authMethods: ['PLAIN', 'LOGIN'],
    logger: false,
    onAuth(auth, session, cb) {
      auths.push(auth.username ?? '')
      secured.push(session.secure)
      if (auth.username === 'grainline' && auth.password === 'smtp-secret') cb(null, { user: 'grainline' })
      else cb(new Error('Invalid username or password'))
    },
    onData(stream, _session, cb) {
      simpleParser(stream).then(
        (m) => {
          mails.push(m)
          waiters.shift()?.(m)
          cb()
        },
        (err: Error) => cb(err),
      )
    },
    ...opts,
  })
  server.listen(0, '127.0.0.1')
  await once(server.server, 'listening')
  t.teardown(() => new Promise<void>((r) => server.close(() => r())))
  const port = (server.server.address() as { port: number }).port
  return {
    mails,
    auths,
    secured,
    port,
    next: () =>
      mails.length > 0
        ? Promise.resolve(mails[mails.length - 1] as ParsedMail)
        : new Promise((r) => {
            waiters.push(r)
          }),
  }
}

function sampleReport(opts: { certify: boolean; fail: boolean }): ReplicationReport {
  const vm = emptyVmReport('web 01')
  vm.vm = 'web 01'
  vm.ok = !opts.fail
  vm.cycle = 12
  vm.durationMs = 63_000
  const d = emptyDiskReport('web 01.vmdk', 'scsi0:0', 16 * 1024 * MiB)
  d.ok = !opts.fail
  d.mode = 'incremental'
  d.dataBytes = 45.3 * MiB
  d.zeroBytes = 4.5 * MiB
  d.wireBytes = 31 * MiB
  d.trivial = { ok: true, prefixBytes: 16 * MiB, algorithm: 'xxh64' }
  if (opts.certify) d.certify = { ok: !opts.fail, algorithm: 'sha256', digest: 'ab'.repeat(32) }
  if (opts.fail) d.error = { code: 'E_CHECK', message: 'certify sha256 mismatch: the mirror differs from the frozen source' }
  vm.disks.push(d)
  const db = emptyVmReport('db<01>')
  db.ok = true
  db.cycle = 3
  const d2 = emptyDiskReport('db<01>.vmdk', 'scsi0:0', 8 * 1024 * MiB)
  d2.ok = true
  d2.mode = 'seed'
  d2.dataBytes = 2 * 1024 * MiB
  d2.trivial = { ok: true, prefixBytes: 16 * MiB, algorithm: 'xxh64' }
  if (opts.certify) d2.certify = { ok: true, algorithm: 'sha256', digest: 'cd'.repeat(32) }
  db.disks.push(d2)
  return { ok: !opts.fail, startedAt: '2026-11-30T02:00:00.000Z', finishedAt: '2026-11-30T02:01:05.000Z', vms: [vm, db] }
}

async function settings(dir: string, port: number, extra: Record<string, unknown> = {}, smtp: Record<string, unknown> = {}) {
  await writeFile(join(dir, 'smtp.password'), 'smtp-secret\n')
  await writeFile(join(dir, 'ca.pem'), tlsFixture().ca)
  const job = await loadJob({
    cwd: dir,
    vms: [join(dir, 'missing', 'missing.vmx')],
    options: { to: 'wss://127.0.0.1:1', token: 'x'.repeat(20) },
    jobOptions: {
      email: {
        to: ['ops@example.net', 'dr@example.net'],
        from: 'grainline@proxy.example.net',
        smtp: { host: '127.0.0.1', port, user: 'grainline', passwordFile: join(dir, 'smtp.password'), caFile: join(dir, 'ca.pem'), timeout: '10s', ...smtp },
        ...extra,
      },
    },
  })
  if (job.email === undefined) throw new Error('no email settings')
  return { job, email: job.email }
}

t.test('a trivial-check run: STARTTLS, AUTH, an HTML and a text part with each VM and disk', async (t) => {
  const dir = scratch(t)
  const srv = await smtpServer(t)
  const { email } = await settings(dir, srv.port)
  const sent = await sendReportEmail(email, sampleReport({ certify: false, fail: false }), { hostname: 'proxy-a' })
  const m = await srv.next()
  t.same(srv.auths, ['grainline'])
  t.same(srv.secured, [true], 'AUTH happened inside STARTTLS')
  t.equal(m.subject, '[grainline] OK: 2 VMs replicated (proxy-a)')
  t.equal(m.from?.text, 'grainline@proxy.example.net')
  t.match(JSON.stringify(m.to), /ops@example\.net.*dr@example\.net/)
  t.equal(m.headers.get('x-grainline-result'), 'ok')
  t.equal(sent.layout, 'trivial')
  const text = m.text ?? ''
  t.match(text, /Changed: 2\.04 GiB data, 4\.50 MiB zero, 31\.0 MiB on the wire/, 'human units')
  t.match(text, /web 01 +web 01\.vmdk +12 +incremental +49\.8 MiB +31\.0 MiB +1 min 03 s +ok \(16\.0 MiB, xxh64\) +ok/)
  t.match(text, /db<01> +db<01>\.vmdk +3 +seed/)
  const html = typeof m.html === 'string' ? m.html : ''
  t.match(html, /data-layout="trivial"/)
  t.match(html, /<th [^>]*>trivial check<\/th>/)
  t.match(html, /db&lt;01&gt;\.vmdk/, 'names are escaped in HTML')
  t.notMatch(html, /db<01>/)
})

t.test('a certified run that failed: the certified layout, the digest, the error and FAILED in the subject', async (t) => {
  const dir = scratch(t)
  const srv = await smtpServer(t)
  const { email } = await settings(dir, srv.port, { subjectPrefix: '[DR]' })
  await sendReportEmail(email, sampleReport({ certify: true, fail: true }), { hostname: 'proxy-a' })
  const m = await srv.next()
  t.equal(m.subject, '[DR] FAILED: 1 of 2 VMs failed: web 01 (proxy-a)')
  const html = typeof m.html === 'string' ? m.html : ''
  t.match(html, /data-layout="certified"/)
  t.match(html, /<th [^>]*>digest<\/th>/)
  t.match(html, new RegExp('cd'.repeat(32)))
  t.match(m.text, /MISMATCH sha256/)
  t.match(m.text, /Errors:\n {2}web 01 \/ web 01\.vmdk: E_CHECK: certify sha256 mismatch/)
  t.equal(m.headers.get('x-grainline-result'), 'failed')
})

t.test('a run that committed with a warning: WARNING in the subject and the header, the warning with what to do in both parts', async (t) => {
  const dir = scratch(t)
  const srv = await smtpServer(t)
  const { email } = await settings(dir, srv.port)
  const r = sampleReport({ certify: false, fail: false })
  const vm = r.vms[0] as VmReport
  vm.pointsDropped = { count: 3, oldest: 9, newest: 11, broken: true, reason: 'a re-seed of a mirror booted at the <DR> site' }
  vm.warnings = [pointsDroppedWarning(12, vm.pointsDropped)]
  await sendReportEmail(email, r, { hostname: 'proxy-a' })
  const m = await srv.next()
  t.equal(m.subject, '[grainline] WARNING: 2 VMs replicated, a warning: web 01 (proxy-a)')
  t.equal(m.headers.get('x-grainline-result'), 'warning')
  t.match(m.text, /VMs: 2 ok, 0 failed, 1 with warnings/)
  t.match(
    m.text,
    /Warnings:\n {2}web 01: W_POINTS_DROPPED: the receiver dropped 3 restore points \(cycles 9 to 11\) at the commit of cycle 12: they could not be kept \(a re-seed of a mirror booted at the <DR> site\)\. The mirror can be restored to cycle 12 and later only; the archive grows again from this cycle\./,
  )
  const html = typeof m.html === 'string' ? m.html : ''
  t.match(html, /<h3>Warnings<\/h3><ul>\n<li class="warning">web 01: W_POINTS_DROPPED: the receiver dropped 3 restore points/)
  t.match(html, /booted at the &lt;DR&gt; site/, 'escaped in HTML')
  t.match(html, /color:#9a6700/, 'amber, not green')
  // the terminal summary says it too
  t.match(formatReport(r), /^WARN web 01 cycle 12.*\n(?:.*\n)* {2}WARN W_POINTS_DROPPED: the receiver dropped 3 restore points/m)
  // the receiver's retention turned off: one point, what to do differs
  const off = pointsDroppedWarning(5, { count: 1, oldest: 4, newest: 4, broken: false, reason: 'retention off' })
  t.match(off.message, /^the receiver dropped restore point 4 at the commit of cycle 5: it keeps no restore points of this VM any more \(retention off\)\. .*turn the receiver's retention back on/)
  // the receiver's words stay on one line: a newline cannot fake a line of the report
  const forged = pointsDroppedWarning(5, { count: 1, oldest: 4, newest: 4, broken: true, reason: 'x\nOK   other-vm cycle 9\r\u2028y' })
  t.notMatch(forged.message, /[\n\r\u2028]/)
  t.match(forged.message, /\(x OK {3}other-vm cycle 9 y\)/)
  // nor rewrite the operator's terminal or turn the text around: escapes removed, bidi overrides a space
  const escaped = pointsDroppedWarning(5, { count: 1, oldest: 4, newest: 4, broken: true, reason: 'a\u001b[2J\u001b]0;owned\u0007b\u202ec\u2066d' })
  t.notMatch(escaped.message, /[\u001b\u0007\u202e\u2066]/, 'no escape, BEL or bidi override left')
  t.match(escaped.message, /\(ab c d\)/)
  // a failed run with a warning is FAILED: failure wins
  r.ok = false
  ;(r.vms[1] as VmReport).ok = false
  t.match(renderReportEmail(r, { hostname: 'p' }).subject, /^\[grainline\] FAILED: 1 of 2 VMs failed/)
})

t.test('refusals are errors: no STARTTLS offered, a wrong password', async (t) => {
  const dir = scratch(t)
  const bare = await smtpServer(t, { disabledCommands: ['STARTTLS'], allowInsecureAuth: true })
  const { email } = await settings(dir, bare.port)
  await t.rejects(sendReportEmail(email, sampleReport({ certify: false, fail: false })), /STARTTLS/i, 'starttls is required: never AUTH in clear')
  t.same(bare.auths, [], 'the password never went out')
  const srv = await smtpServer(t)
  await writeFile(join(dir, 'wrong.password'), 'nope\n')
  const { email: wrong } = await settings(dir, srv.port, {}, { passwordFile: join(dir, 'wrong.password') })
  await t.rejects(sendReportEmail(wrong, sampleReport({ certify: false, fail: false })), /Invalid username or password|535/)
})

t.test('a job run mails on its outcome: on failure only, and the result is in the report', async (t) => {
  const dir = scratch(t)
  const srv = await smtpServer(t)
  const log = memoryLogger({ level: 'info' })
  const onlySuccess = await settings(dir, srv.port, { on: 'success' })
  const r1 = await runJob({ logger: log.logger }, onlySuccess.job, { view: 'none', hostname: 'proxy-a' })
  t.notOk(r1.ok, 'the VM does not exist: the run fails')
  t.equal(r1.notifications, undefined, 'on "success" only: nothing sent for a failed run')
  t.equal(srv.mails.length, 0)
  const onFailure = await settings(dir, srv.port, { on: ['failure'] })
  const report = join(dir, 'report.json')
  const r2 = await runJob({ logger: log.logger }, { ...onFailure.job, report }, { view: 'none', hostname: 'proxy-a' })
  const m = await srv.next()
  t.match(m.subject, /^\[grainline\] FAILED: 1 of 1 VM failed: .*missing.* E_VM_NOT_FOUND \(proxy-a\)$/)
  t.same(r2.notifications, [{ kind: 'email', target: 'ops@example.net, dr@example.net', ok: true }])
  t.match(JSON.parse(readFileSync(report, 'utf8')), { ok: false, notifications: [{ kind: 'email', ok: true }] }, 'the report file records the notification')
  const down = await settings(dir, 1)
  const r3 = await runJob({ logger: log.logger }, down.job, { view: 'none' })
  t.match(r3.notifications, [{ kind: 'email', ok: false, error: /ECONNREFUSED|connect/ }], 'a failed e-mail is recorded, not thrown')
  t.ok(log.find('the report e-mail was not sent'))
})

t.test('render: interrupted runs, VMs without disks', async (t) => {
  const r = sampleReport({ certify: false, fail: true })
  r.interrupted = 'interrupted by SIGTERM'
  const v = emptyVmReport('never')
  v.error = { code: 'E_ABORTED', message: 'not started', remoteCode: 'E_X' }
  r.vms.push(v)
  const m = renderReportEmail(r, { hostname: 'p', layout: 'certified' })
  t.match(m.subject, /^\[grainline\] INTERRUPTED: 2 of 3 VMs failed/)
  t.match(m.text, /Result: INTERRUPTED \(interrupted by SIGTERM\)/)
  t.match(m.text, /never +- +- +- +- +- +0 ms +- +- +FAILED E_ABORTED/)
  t.match(m.text, /never: E_ABORTED \(E_X\): not started/)
})
