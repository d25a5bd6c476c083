/**
 * The DR dashboard in a real headless Chromium (Debian's /usr/bin/chromium,
 * driven by playwright-core) against a real receiver process after real
 * `grainline replicate` runs: the login refuses an agent's token, the page
 * shows what the store holds (cycles, RPO against its target, checks,
 * restore points, space), a VM named `<img src=x onerror=alert(1)>` is text,
 * the progress of a cycle held open by a cutting/holding proxy changes on
 * the page without a reload, the VM page draws its cycle history, both pages
 * pass axe-core with no serious or critical violation, and the viewer token
 * appears in no URL and no log line. Screenshots of both pages are saved in
 * the test's scratch folder (and to $GRAINLINE_DASHBOARD_PNG when set: the
 * README's docs/dashboard.png is made that way).
 */
import t from 'tap'
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { chromium, type Browser, type Page } from 'playwright-core'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { failIfLingering, httpCall, scratchDir, startCuttingProxy } from '@grainline/test-utils'
import { httpPort, replicateCli, runCli, startSite } from '@grainline/e2e'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

// the few browser globals the page functions below use (they run in Chromium, not here; the e2e tsconfig has no DOM lib)
interface PageElement {
  getAttribute(name: string): string | null
  readonly textContent: string | null
}
declare const document: { querySelector(s: string): PageElement | null; querySelectorAll(s: string): { readonly length: number }; readonly body: unknown }
declare const MutationObserver: new (cb: () => void) => { observe(node: unknown, opts: unknown): void }

const MiB = 1024 * 1024
const CHROMIUM = '/usr/bin/chromium'
/** The flags that work in this sandbox (see the CI machine notes): no sandbox, GPU, QUIC or background traffic. */
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
const XSS = '<img src=x onerror=alert(1)>'
const VIEWER = `viewer-${'0123456789abcdef'.repeat(2)}`

/** The serious and critical axe-core violations of the page (axe injected from node_modules). */
async function axeViolations(page: Page, source: string): Promise<Array<{ id: string; impact: string | null; help: string; nodes: number }>> {
  await page.evaluate(source)
  const all = await page.evaluate(async () => {
    const axe = (globalThis as unknown as { axe: { run(ctx: unknown, o: unknown): Promise<{ violations: Array<{ id: string; impact: string | null; help: string; nodes: unknown[] }> }> } }).axe
    const r = await axe.run(document, { resultTypes: ['violations'] })
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length }))
  })
  return all.filter((v) => v.impact === 'serious' || v.impact === 'critical')
}

t.test('the dashboard in headless Chromium: real cycles, login, XSS as text, live progress, charts, accessibility', async (t) => {
  // never skipped: .ci/run installs Debian's chromium; a machine without it fails here, saying so
  t.ok(existsSync(CHROMIUM), `${CHROMIUM} is installed (apt-get install chromium)`)
  const dir = scratchDir(t, 'grainline-dashboard-')
  const shots = join(dir, 'screenshots')
  await mkdir(shots, { recursive: true })
  const dr = join(dir, 'dr')
  await mkdir(dr, { recursive: true })
  const cfg = join(dr, 'receiver.json')
  await writeFile(cfg, JSON.stringify({ store: 'store', rpo: { target: '2h', vms: { 'web-*': '1h' } }, retention: { keep: 5 } }))
  const site = await startSite(dr, ['*'], [], ['--http-listen', '127.0.0.1:0', '--config', cfg])
  t.teardown(() => site.receiver.stop())
  // a viewer entry beside the agent's token, then the receiver restarted to read it
  const tokens = JSON.parse(await readFile(site.tokens, 'utf8')) as { tokens: unknown[] }
  tokens.tokens.push({ name: 'noc', token: VIEWER, role: 'viewer' })
  await writeFile(site.tokens, JSON.stringify(tokens))
  await site.restart()
  const base = `https://127.0.0.1:${httpPort(site.receiver.lines)}`
  const ca = await readFile(site.cert)

  // real cycles: web-01 seeded (certified) and incremented; the hostile name seeded
  const web = await createSampleVm(join(dir, 'src'), { name: 'web-01', disks: [{ sizeBytes: 64 * MiB, fill: 'random' }], seed: 4 })
  t.equal((await replicateCli(site, web.vmxPath)).code, 0, 'web-01 seeded')
  await simulateGuestWrites(web.vmxPath, { bytes: 2 * MiB, seed: 5, zeroFraction: 0 })
  t.equal((await replicateCli(site, web.vmxPath, ['--certify', 'sha256'])).code, 0, 'web-01 cycle 2, certified')
  const xss = await createSampleVm(join(dir, 'src'), { name: XSS, disks: [{ sizeBytes: 4 * MiB }], seed: 6 })
  const xr = await replicateCli(site, xss.vmxPath)
  t.equal(xr.code, 0, `the hostile name replicates: ${xr.stderr.slice(-500)}`)

  // the API and `grainline status --output json` serve the same document
  const api = JSON.parse((await httpCall(`${base}/api/v1/status`, { headers: { Authorization: `Bearer ${VIEWER}` }, ca })).text) as {
    vms: Array<{ vm: string; committedCycle: number; rpo: { targetSeconds: number; state: string }; restorePoints: Array<{ cycle: number }>; lastCycle: { cycle: number } | null }>
  }
  const cli = await runCli(['status', '--store', site.store, '--config', cfg, '--output', 'json'])
  const offline = JSON.parse(cli.stdout) as typeof api
  // ages move between the two reads: compare the target and the state
  const shape = (o: typeof api) =>
    o.vms.map((v) => ({ vm: v.vm, cycle: v.committedCycle, rpo: { targetSeconds: v.rpo.targetSeconds, state: v.rpo.state }, points: v.restorePoints.map((p) => p.cycle), last: v.lastCycle?.cycle }))
  t.same(shape(offline), shape(api), '`grainline status --output json` = GET /api/v1/status')
  t.same(shape(api), [
    { vm: XSS, cycle: 1, rpo: { targetSeconds: 7200, state: 'ok' }, points: [], last: 1 },
    { vm: 'web-01', cycle: 2, rpo: { targetSeconds: 3600, state: 'ok' }, points: [1], last: 2 },
  ])

  const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true })
  t.teardown(() => browser.close())
  // the receiver's certificate is self-signed for 127.0.0.1: the test trusts it by ignoring the error
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1400, height: 900 } })
  const page = await context.newPage()
  const urls: string[] = []
  const dialogs: string[] = []
  const consoleErrors: string[] = []
  page.on('request', (r) => urls.push(r.url()))
  page.on('dialog', (d) => {
    dialogs.push(d.message())
    void d.dismiss()
  })
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(m.text())
  })
  const axeSource = await readFile(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8')

  // no session: the login form; an agent's token is refused there
  await page.goto(`${base}/`)
  t.equal(new URL(page.url()).pathname, '/login', 'without a viewer session the page is the login form')
  t.same(await axeViolations(page, axeSource), [], 'the login form: no serious or critical axe violation')
  await page.fill('#token', site.token)
  await page.click('button[type=submit]')
  await page.waitForSelector('#login-failed:not([hidden])')
  t.match(await page.textContent('#login-failed'), /not a viewer token/, "an agent's token is refused")
  t.equal((await context.cookies()).length, 0, 'and gets no cookie')
  await page.fill('#token', VIEWER)
  await page.click('button[type=submit]')
  await page.waitForSelector('tr[data-vm="web-01"]')
  t.equal(new URL(page.url()).pathname, '/', 'logged in')
  const cookie = (await context.cookies())[0]
  t.match(cookie, { name: 'grainline_session', httpOnly: true, sameSite: 'Strict', secure: true }, 'an HttpOnly SameSite=Strict cookie')

  // what the store holds
  const row = page.locator('tr[data-vm="web-01"]')
  const text = (await row.textContent()) ?? ''
  t.match(text, /cycle 2/, 'the committed cycle')
  t.match(text, /ok: .* old \(target 1 h 00 min\)|ok: \d+ s old \(target 60 min\)|ok: .*target/, 'RPO state in words with its target')
  t.match(text, /certify sha256 ok/, 'the certify result')
  t.match(text, /1: cycle 1/, 'the restore point')
  t.match(text, /MiB|KiB/, 'space used')
  t.equal((await row.locator('.badge.ok').count()) >= 2, true, 'ok badges (colour and text)')
  // the hostile name is text: no element made from it, no dialog
  const names = await page.locator('th.vm-name').allTextContents()
  t.ok(names.includes(XSS), 'the hostile VM name is shown as text')
  t.equal(await page.locator('img').count(), 0, 'no <img> element on the page')
  t.same(dialogs, [], 'no dialog opened')
  await page.screenshot({ path: join(shots, 'overview.png'), fullPage: true })
  t.same(await axeViolations(page, axeSource), [], 'the overview: no serious or critical axe violation')

  // live progress: a cycle held by the proxy at 8 MiB, cut, resumed and held again at 16 MiB
  await page.evaluate(() => {
    const w = globalThis as unknown as { __mark: string; __seen: number[] }
    w.__mark = 'same page'
    w.__seen = []
    new MutationObserver(() => {
      const el = document.querySelector('tr[data-vm="web-01"] .live')
      const v = Number(el?.getAttribute('data-done') ?? Number.NaN)
      if (Number.isFinite(v) && w.__seen.at(-1) !== v) w.__seen.push(v)
    }).observe(document.body, { subtree: true, childList: true, attributes: true })
  })
  await simulateGuestWrites(web.vmxPath, { bytes: 40 * MiB, seed: 7, zeroFraction: 0 })
  const proxy = await startCuttingProxy(site.receiver.port)
  t.teardown(() => proxy.close())
  proxy.plan = [{ holdAfter: 8 * MiB }, { holdAfter: 16 * MiB }]
  const run = replicateCli(site, web.vmxPath, ['--give-up', '120', '--compress', 'none'], { port: proxy.port })
  await proxy.waitForHolds(1)
  const liveDone = (min: number) =>
    page.waitForFunction(
      (m) => {
        const el = document.querySelector('tr[data-vm="web-01"] .live')
        return el !== null && Number(el.getAttribute('data-done')) > m ? Number(el.getAttribute('data-done')) : false
      },
      min,
      { timeout: 120_000 },
    )
  const a = Number(await (await liveDone(0)).jsonValue())
  t.ok(a > 0, `held at the first hold: the page shows ${a} bytes applied`)
  t.match((await row.locator('.live-text').textContent()) ?? '', /cycle 3: .* of .* applied \(\d+ %\)/, 'progress in words')
  proxy.cutAll()
  await proxy.waitForHolds(2)
  const b = Number(await (await liveDone(a)).jsonValue())
  t.ok(b > a, `after the cut and resume the page shows more: ${b} > ${a}, without a reload`)
  await page.screenshot({ path: join(shots, 'overview-live.png'), fullPage: true })
  proxy.release()
  const r = await run
  t.equal(r.code, 0, `the held cycle completes: ${r.stderr.slice(-800)}`)
  await page.waitForFunction(() => /cycle 3,/.test(document.querySelector('tr[data-vm="web-01"]')?.textContent ?? '') && document.querySelector('tr[data-vm="web-01"] .live') === null, undefined, {
    timeout: 120_000,
  })
  const after = await page.evaluate(() => (globalThis as unknown as { __mark?: string; __seen: number[] }).__mark)
  t.equal(after, 'same page', 'the page was never reloaded')
  const seen = await page.evaluate(() => (globalThis as unknown as { __seen: number[] }).__seen)
  t.ok(new Set(seen).size >= 2, `the page showed ${new Set(seen).size} different progress values (${seen.join(', ')})`)

  // the VM page: history charts (3 cycles × 3 charts), disks, points
  await page.click('tr[data-vm="web-01"] a')
  await page.waitForFunction(() => document.querySelectorAll('svg.chart rect.bar').length === 9, undefined, { timeout: 60_000 })
  t.equal(await page.textContent('#vm-name'), 'web-01')
  t.match((await page.textContent('#disks')) ?? '', /web-01\.vmdk/)
  t.match((await page.textContent('#points')) ?? '', /cycle 1.*cycle 2|cycle 1/s, 'restore points listed')
  t.same(await page.locator('figcaption').allTextContents(), ['Bytes changed per cycle', 'Bytes sent per cycle', 'Duration per cycle'])
  await page.screenshot({ path: join(shots, 'vm.png'), fullPage: true })
  t.same(await axeViolations(page, axeSource), [], 'the VM page: no serious or critical axe violation')

  // the hostile VM's own page: its name as text in the heading
  await page.goto(`${base}/vm?name=${encodeURIComponent(XSS)}`)
  await page.waitForFunction((n) => document.querySelector('#vm-name')?.textContent === n, XSS)
  t.equal(await page.locator('img').count(), 0)
  t.same(dialogs, [], 'still no dialog')

  // without the CSP's help (bypassed here), the page's own rendering still makes the hostile name text
  const bare = await browser.newContext({ ignoreHTTPSErrors: true, bypassCSP: true })
  const bp = await bare.newPage()
  bp.on('dialog', (d) => {
    dialogs.push(d.message())
    void d.dismiss()
  })
  bp.on('request', (r) => urls.push(r.url()))
  await bp.goto(`${base}/login`)
  await bp.fill('#token', VIEWER)
  await bp.click('button[type=submit]')
  await bp.waitForSelector('th.vm-name')
  t.ok((await bp.locator('th.vm-name').allTextContents()).includes(XSS), 'CSP bypassed: the name is still text')
  t.equal(await bp.locator('img').count(), 0, 'CSP bypassed: no <img>')
  t.same(dialogs, [], 'CSP bypassed: no dialog')
  await bare.close()

  // the token travelled in a form body once: in no URL, no log line
  t.notOk(
    urls.some((u) => u.includes(VIEWER)),
    'the viewer token is in no URL the browser requested',
  )
  t.notOk(
    site.receiver.lines.some((l) => l.includes(VIEWER)),
    "the viewer token is in none of the receiver's log lines",
  )
  t.same(consoleErrors, [], 'no script error in the console (CSP violations included)')
  t.comment(`screenshots in ${shots}`)
  const png = process.env['GRAINLINE_DASHBOARD_PNG']
  if (png !== undefined && png !== '') {
    await copyFile(join(shots, 'overview.png'), png)
    await copyFile(join(shots, 'vm.png'), png.replace(/\.png$/, '-vm.png'))
  }
})
