/**
 * `grainline points`, `points open|close`, `restore` and `mirror failover`
 * as processes against a store written by a real receiver process that keeps
 * points (retention in its config file): the listing, a restored point equal
 * to the frozen source image of its cycle, E_HELD, and a failover registered
 * on the stand-in `vim-cmd` over SSH (the esxi driver tests' sshd harness).
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { createSampleVm, simulateGuestWrites, VmxConfig, vmxDisks } from '@grainline/agent'
import { firstDifference, qemuRaw, runNode, scratchDir, startReceiverProcess, tlsFixture, tokenFileFixture, tokensFixture } from '@grainline/test-utils'

const bin = resolve(dirname(fileURLToPath(import.meta.url)), '../src/bin.js')
const harnessJs = resolve(dirname(fileURLToPath(import.meta.url)), '../../../agent/dist/test/esxi-harness.js')
const MiB = 1024 * 1024

interface Harness {
  port: number
  user: string
  hostKeyFingerprint: string
  userKey: string
  datastore: string
  readState(): Promise<{ vms: Array<{ id: string; name: string; vmx: string }> }>
  stop(): Promise<void>
}

t.test('points, restore, open/close and failover with registration, as processes', async (t) => {
  const dir = scratchDir(t)
  const store = join(dir, 'store')
  const cfg = join(dir, 'receiver.json')
  await writeFile(cfg, JSON.stringify({ store, retention: { keep: 3 } }))
  const tls = tlsFixture()
  const rx = await startReceiverProcess({ store, tokens: tokensFixture(dir).file, tls, args: ['--config', cfg] })
  t.teardown(() => rx.stop())
  const token = tokenFileFixture(dir)
  const vm = await createSampleVm(join(dir, 'src'), { name: 'db01', disks: [{ sizeBytes: 8 * MiB }], seed: 3 })
  const frozen: string[] = []
  for (let c = 1; c <= 3; c++) {
    if (c > 1) await simulateGuestWrites(vm.vmxPath, { bytes: MiB, writeSize: 16 * 1024, seed: c, zeroFraction: 0.1 })
    const cfgv = VmxConfig.parse(await readFile(vm.vmxPath, 'utf8'), vm.vmxPath)
    frozen[c] = join(dir, `frozen-${c}.raw`)
    await qemuRaw(join(dirname(vm.vmxPath), vmxDisks(cfgv)[0]?.fileName ?? ''), frozen[c] as string)
    const r = await runNode(bin, ['replicate', vm.vmxPath, '--to', rx.url, '--token-file', token, '--ca', tls.cert, '--state-dir', join(dir, 'state'), '--log-level', 'warn'])
    t.equal(r.code, 0, r.stderr)
  }
  const list = await runNode(bin, ['points', '--store', store, '--vm', 'db01'])
  t.equal(list.code, 0, list.stderr)
  t.match(list.stdout, /db01: 2 restore point\(s\) and the mirror/)
  t.match(list.stdout, /3 \(mirror\)/)
  const rs = await runNode(bin, ['restore', '--store', store, '--vm', 'db01', '--point', '1', '--to', join(dir, 'r1')])
  t.equal(rs.code, 0, rs.stderr)
  t.match(rs.stdout, /point 1 restored/)
  t.match(rs.stderr, /of 8\.00 MiB \(100 %/, 'progress with the total on stderr')
  t.equal(await firstDifference(join(dir, 'r1', 'db01-flat.vmdk'), frozen[1] as string), -1, 'restored point 1 = the frozen source of cycle 1')
  const bad = await runNode(bin, ['restore', '--store', store, '--vm', 'db01', '--point', '9', '--to', join(dir, 'r9')])
  t.equal(bad.code, 1)
  t.match(bad.stderr, /no point 9.*\[E_NOT_FOUND\]/)

  // open point 2, then an agent is refused with E_HELD until it is closed
  const open = await runNode(bin, ['points', 'open', '--store', store, '--vm', 'db01', '--point', '2', '--output', 'json'])
  t.equal(open.code, 0, open.stderr)
  const o = JSON.parse(open.stdout) as { dir: string; disks: string[] }
  const seen = join(dir, 'open-2.raw')
  await qemuRaw(o.disks[0] as string, seen)
  t.equal(await firstDifference(seen, frozen[2] as string), -1, 'QEMU reads point 2 through the opened folder')
  await simulateGuestWrites(vm.vmxPath, { bytes: MiB, writeSize: 16 * 1024, seed: 9, zeroFraction: 0.1 })
  const held = await runNode(bin, ['replicate', vm.vmxPath, '--to', rx.url, '--token-file', token, '--ca', tls.cert, '--state-dir', join(dir, 'state'), '--log-level', 'warn'])
  t.not(held.code, 0, 'the held VM is not replicated')
  t.match(held.stdout + held.stderr, /E_HELD/)
  const st = await runNode(bin, ['status', '--store', store])
  t.match(st.stdout, /held by an opened point/, 'status shows the hold')
  const close = await runNode(bin, ['points', 'close', '--store', store, '--vm', 'db01', '--to', o.dir])
  t.equal(close.code, 0, close.stderr)
  const again = await runNode(bin, ['replicate', vm.vmxPath, '--to', rx.url, '--token-file', token, '--ca', tls.cert, '--state-dir', join(dir, 'state'), '--log-level', 'warn'])
  t.equal(again.code, 0, `released: replication goes on ${again.stderr}`)

  // failover of point 3 onto the DR host: registered with the stand-in vim-cmd over SSH
  const { startSshHarness } = (await import(pathToFileURL(harnessJs).href)) as { startSshHarness: () => Promise<Harness> }
  const h = await startSshHarness()
  t.teardown(() => h.stop())
  const esxi = join(dir, 'esxi.json')
  await writeFile(join(dir, 'id_dr'), h.userKey, { mode: 0o600 })
  await writeFile(
    esxi,
    JSON.stringify({
      ssh: { host: '127.0.0.1', port: h.port, username: h.user, privateKeyFile: join(dir, 'id_dr'), hostKeyFingerprint: h.hostKeyFingerprint },
      datastores: { datastore1: h.datastore },
    }),
  )
  const to = join(h.datastore, 'db01-dr')
  const fo = await runNode(bin, ['mirror', 'failover', '--store', store, '--vm', 'db01', '--point', '3', '--to', to, '--network', 'VM Network=DR Network', '--register', esxi, '--output', 'json'])
  t.equal(fo.code, 0, fo.stderr)
  const f = JSON.parse(fo.stdout) as { registered: { vmid: string; name: string; path: string } }
  t.equal(f.registered.path, '[datastore1] db01-dr/db01.vmx')
  const vms = (await h.readState()).vms
  t.same(
    vms.map((v) => [v.id, v.vmx, v.name]),
    [[f.registered.vmid, '[datastore1] db01-dr/db01.vmx', 'db01 (grainline mirror failover)']],
    'registered on the DR host',
  )
  const vmx = await readFile(join(to, 'db01.vmx'), 'utf8')
  t.match(vmx, /ethernet0\.startConnected = "FALSE"/, 'NICs not connected at power-on')
  t.match(vmx, /ethernet0\.networkName = "DR Network"/, 'network mapped')
  t.match(vmx, /uuid\.bios = /)
  const fr = join(dir, 'failover.raw')
  execFileSync('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', join(to, 'db01.vmdk'), fr])
  t.equal(await firstDifference(fr, frozen[3] as string), -1, 'the failover disk reads as point 3')
  const refused = await runNode(bin, ['points', 'close', '--store', store, '--vm', 'db01', '--all'])
  t.not(refused.code, 0, 'close --all refuses a failover hold')
  t.match(refused.stderr, /failover folder.*--failover \[E_HELD\]/s)
  t.ok(existsSync(join(to, 'db01.vmx')), 'the failover folder is kept')
  const close2 = await runNode(bin, ['points', 'close', '--store', store, '--vm', 'db01', '--all', '--failover'])
  t.equal(close2.code, 0, close2.stderr)
})

t.test('the listing marks a point that keeps a whole disk (a base point) beside its size', async (t) => {
  const { renderPoints } = await import('../src/commands/points-run.js')
  const disk = (name: string, base?: true) => ({ name, source: `${name}.p3.vmdk`, bytes: 2 * MiB, trivial: null, certify: null, ...(base ? { base } : {}) })
  const pts = [
    { cycle: 3, committedAt: '2026-12-05T00:00:00.000Z', generation: 'g3', current: false, bytes: 2 * MiB, held: false, disks: [disk('a.vmdk', true), disk('b.vmdk')] },
    { cycle: 4, committedAt: '2026-12-05T01:00:00.000Z', generation: 'g4', current: false, bytes: 2 * MiB, held: false, disks: [disk('a.vmdk'), disk('b.vmdk')] },
    { cycle: 5, committedAt: '2026-12-05T02:00:00.000Z', generation: 'g5', current: true, bytes: 0, held: false, disks: [disk('a.vmdk'), disk('b.vmdk')] },
  ]
  const lines = renderPoints('vm1', pts, 0).split('\n')
  t.match(
    lines.find((l) => l.startsWith('3 ')),
    /\(whole a\.vmdk\)/,
    'point 3 keeps a.vmdk whole',
  )
  t.notMatch(
    lines.find((l) => l.startsWith('4 ')),
    /whole/,
    'point 4 holds increments only',
  )
})
