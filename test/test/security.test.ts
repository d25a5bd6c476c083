// Security, end to end: no token, a wrong token, a token for another VM, a
// plain-text connection to a TLS listener — each refused, nothing written.
import t from 'tap'
import { readFile, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { once } from 'node:events'
import WebSocket from 'ws'
import { createSampleVm } from '@grainline/agent'
import { failIfLingering, scratchDir } from '@grainline/test-utils'
import { startSite, replicateCli, runCli } from '@grainline/e2e'

// a process its tests ended in and that does not exit fails at once, naming what keeps it (test-utils lingering.ts)
failIfLingering(t)

const MiB = 1024 * 1024

async function storeEntries(store: string): Promise<string[]> {
  try {
    return (await readdir(store)).filter((n) => !n.startsWith('.'))
  } catch {
    return []
  }
}

t.test('refusals', async (t) => {
  const dir = scratchDir(t, 'grainline-e2e-')
  const site = await startSite(join(dir, 'dr'), ['web-*'], [{ name: 'proxy-b', vms: ['db01'] }])
  t.teardown(() => site.receiver.stop())
  const vm = await createSampleVm(join(dir, 'src'), { name: 'web-01', disks: [{ sizeBytes: 8 * MiB }], seed: 3 })
  const other = await createSampleVm(join(dir, 'src'), { name: 'db02', disks: [{ sizeBytes: 8 * MiB }], seed: 4 })
  const ca = await readFile(site.cert)

  t.test('no token: 401 before the upgrade', async (t) => {
    const ws = new WebSocket(`wss://127.0.0.1:${site.receiver.port}`, 'grainline.v2', { ca })
    const [, res] = (await once(ws, 'unexpected-response')) as [unknown, { statusCode: number }]
    t.equal(res.statusCode, 401)
    ws.on('error', () => {})
    ws.terminate()
  })

  t.test('a wrong token: refused, reported, exit 1', async (t) => {
    const bad = join(dir, 'bad.token')
    await writeFile(bad, 'not-the-token\n')
    const r = await runCli(['replicate', vm.vmxPath, '--to', `wss://127.0.0.1:${site.receiver.port}`, '--token-file', bad, '--ca', site.cert, '--give-up', '2'])
    t.equal(r.code, 1)
    t.match(r.stdout + r.stderr, /AUTH|401|unauthori[sz]ed/i)
    t.notMatch(r.stdout + r.stderr, /not-the-token/, 'the token never appears in output')
    t.notMatch(site.receiver.lines.join('\n'), /not-the-token/, 'nor in the receiver logs')
  })

  t.test('a token for other VMs: forbidden, nothing learned', async (t) => {
    const r = await replicateCli(site, other.vmxPath, ['--give-up', '2'])
    t.equal(r.code, 1)
    t.match(JSON.stringify(r.report) + r.stderr, /FORBIDDEN/)
    const tokenB = join(dir, 'b.token')
    await writeFile(tokenB, `${site.extraTokens['proxy-b']}\n`)
    const r2 = await runCli(['replicate', vm.vmxPath, '--to', `wss://127.0.0.1:${site.receiver.port}`, '--token-file', tokenB, '--ca', site.cert, '--give-up', '2'])
    t.equal(r2.code, 1, 'proxy-b may not replicate web-01')
  })

  t.test('plain text to the TLS listener: refused', async (t) => {
    const r = await runCli(['replicate', vm.vmxPath, '--to', `ws://127.0.0.1:${site.receiver.port}`, '--token-file', site.tokenFile, '--give-up', '2'])
    t.equal(r.code, 1)
  })

  t.test('nothing was written by any refused attempt', async (t) => {
    t.same(await storeEntries(site.store), [], 'the store holds no mirror')
  })

  t.test('the right token still works afterwards', async (t) => {
    const r = await replicateCli(site, vm.vmxPath)
    t.equal(r.code, 0, r.stderr.slice(-1000))
    t.same(await storeEntries(site.store), ['web-01'])
  })
})
