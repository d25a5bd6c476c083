/**
 * `grainline points`, `points open|close`, `restore` and `mirror failover`
 * as processes against a store written by a real receiver process that keeps
 * points (retention in its config file): the listing, a restored point equal
 * to the frozen source image of its cycle, E_HELD, and a failover registered
 * on the stand-in `vim-cmd` over SSH (the esxi driver tests' sshd harness).
 */
import t from 'tap'
import { execFile, execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chmod, mkdir, readdir, readFile, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { createSampleVm, simulateGuestWrites } from '@grainline/agent'
import { firstDifference, qemuRaw, runNode, startEsxiHarness, type EsxiHarness } from '@grainline/test-utils'
import { BIN, cliSite, pointsFixture } from './helpers.ts'

const MiB = 1024 * 1024

t.test('points, restore, open/close and failover with registration, as processes', async (t) => {
  const { dir, store, vm, frozen, replicate } = await pointsFixture(t, 'db01', { seed: 3, cycles: 3 })
  const list = await runNode(BIN, ['points', '--store', store, '--vm', 'db01'])
  t.equal(list.code, 0, list.stderr)
  t.match(list.stdout, /db01: 2 restore point\(s\) and the mirror/)
  t.match(list.stdout, /3 \(mirror\)/)
  const rs = await runNode(BIN, ['restore', '--store', store, '--vm', 'db01', '--point', '1', '--to', join(dir, 'r1')])
  t.equal(rs.code, 0, rs.stderr)
  t.match(rs.stdout, /point 1 restored/)
  t.match(rs.stderr, /restoring db01\.vmdk: 8\.00 MiB of 8\.00 MiB of the VM's disks \(100 %/, 'progress with the total on stderr')
  t.equal(await firstDifference(join(dir, 'r1', 'db01-flat.vmdk'), frozen[1] as string), -1, 'restored point 1 = the frozen source of cycle 1')
  const bad = await runNode(BIN, ['restore', '--store', store, '--vm', 'db01', '--point', '9', '--to', join(dir, 'r9')])
  t.equal(bad.code, 1)
  t.match(bad.stderr, /no point 9.*\[E_NOT_FOUND\]/)

  // open point 2, then an agent is refused with E_HELD until it is closed
  const open = await runNode(BIN, ['points', 'open', '--store', store, '--vm', 'db01', '--point', '2', '--output', 'json'])
  t.equal(open.code, 0, open.stderr)
  const o = JSON.parse(open.stdout) as { dir: string; disks: string[] }
  const seen = join(dir, 'open-2.raw')
  await qemuRaw(o.disks[0] as string, seen)
  t.equal(await firstDifference(seen, frozen[2] as string), -1, 'QEMU reads point 2 through the opened folder')
  await simulateGuestWrites(vm.vmxPath, { bytes: MiB, writeSize: 16 * 1024, seed: 9, zeroFraction: 0.1 })
  const held = await replicate()
  t.not(held.code, 0, 'the held VM is not replicated')
  t.match(held.stdout + held.stderr, /E_HELD/)
  const st = await runNode(BIN, ['status', '--store', store])
  t.match(st.stdout, /held by an opened point/, 'status shows the hold')
  const close = await runNode(BIN, ['points', 'close', '--store', store, '--vm', 'db01', '--to', o.dir])
  t.equal(close.code, 0, close.stderr)
  const again = await replicate()
  t.equal(again.code, 0, `released: replication goes on ${again.stderr}`)

  // failover of point 3 onto the DR host: registered with the stand-in vim-cmd over SSH
  const h = await startEsxiHarness()
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
  const fo = await runNode(BIN, ['mirror', 'failover', '--store', store, '--vm', 'db01', '--point', '3', '--to', to, '--network', 'VM Network=DR Network', '--register', esxi, '--output', 'json'])
  t.equal(fo.code, 0, fo.stderr)
  const f = JSON.parse(fo.stdout) as { registered: { vmid: string; name: string; path: string } }
  t.equal(f.registered.path, '[datastore1] db01-dr/db01.vmx')
  const vms = (await h.readState()).vms
  t.same(
    vms.map((v) => [v.id, v.vmx, v.name]),
    [[f.registered.vmid, '[datastore1] db01-dr/db01.vmx', 'db01 (grainline failover)']],
    'registered on the DR host',
  )
  const vmx = await readFile(join(to, 'db01.vmx'), 'utf8')
  t.match(vmx, /ethernet0\.startConnected = "FALSE"/, 'NICs not connected at power-on')
  t.match(vmx, /ethernet0\.networkName = "DR Network"/, 'network mapped')
  t.match(vmx, /uuid\.bios = /)
  const fr = join(dir, 'failover.raw')
  execFileSync('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', join(to, 'db01.vmdk'), fr])
  t.equal(await firstDifference(fr, frozen[3] as string), -1, 'the failover disk reads as point 3')
  const refused = await runNode(BIN, ['points', 'close', '--store', store, '--vm', 'db01', '--all'])
  t.not(refused.code, 0, 'close --all refuses a failover hold')
  t.match(refused.stderr, /failover folder.*--failover \[E_HELD\]/s)
  t.ok(existsSync(join(to, 'db01.vmx')), 'the failover folder is kept')
  const close2 = await runNode(BIN, ['points', 'close', '--store', store, '--vm', 'db01', '--all', '--failover'])
  t.equal(close2.code, 0, close2.stderr)
})

/** Run a command line grainline printed as an operator pastes it: `sh -c` from `cwd`, `grainline` on PATH (this bin). */
async function paste(line: string, cwd: string, binDir: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return await new Promise((done) => {
    execFile('sh', ['-c', line], { cwd, env: { ...process.env, PATH: `${binDir}:${process.env['PATH'] ?? ''}` } }, (err, stdout, stderr) =>
      done({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr }),
    )
  })
}

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const srv = createServer()
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r))
  const port = (srv.address() as { port: number }).port
  await new Promise<void>((r) => srv.close(() => r()))
  return port
}

t.test('a VM named with a space: the release commands grainline prints paste as printed; a failover whose registration fails is undone', async (t) => {
  const { dir, store, args } = await cliSite(t)
  const vm = await createSampleVm(join(dir, 'src'), { name: 'web 01', disks: [{ sizeBytes: 4 * MiB }], seed: 5 })
  const replicate = async () => await runNode(BIN, args(vm.vmxPath, '--log-level', 'warn'))
  const first = await replicate()
  t.equal(first.code, 0, first.stderr)
  // `grainline` on PATH, run from another folder than the store's or the test's
  const binDir = join(dir, 'bin')
  await mkdir(binDir)
  await writeFile(join(binDir, 'grainline'), `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)} "$@"\n`)
  await chmod(join(binDir, 'grainline'), 0o755)
  const elsewhere = join(dir, 'elsewhere')
  await mkdir(elsewhere)
  const held = async () => (await runNode(BIN, ['status', '--store', store])).stdout

  // the agent's E_HELD: the store's folder not told, the hold's folder inside the store relative to it, --store named STORE
  const open = await runNode(BIN, ['points', 'open', '--store', store, '--vm', 'web 01'])
  t.equal(open.code, 0, open.stderr)
  const refused = await replicate()
  t.not(refused.code, 0, 'the held VM is not replicated')
  const peer = /release it on the receiver with "(grainline points close [^"]+)"/.exec(refused.stdout + refused.stderr)?.[1]
  t.equal(peer, "grainline points close --store STORE --vm 'web 01' --to '.open/web 01-point-1'", `the agent is told the command, the store unnamed: ${refused.stderr}`)
  t.notMatch(refused.stdout + refused.stderr, store, "the store's folder does not reach the agent")
  const viaPeer = await paste((peer ?? '').replace('STORE', `'${store}'`), elsewhere, binDir)
  t.equal(viaPeer.code, 0, `the agent's command, STORE filled in, releases the hold from any folder: ${viaPeer.stderr}`)
  t.notMatch(await held(), /held by/, 'released')

  // points open prints the command with every argument quoted and the folder absolute
  const open2 = await runNode(BIN, ['points', 'open', '--store', store, '--vm', 'web 01'])
  t.equal(open2.code, 0, open2.stderr)
  const printed = /until "(grainline points close [^"]+)"/.exec(open2.stdout)?.[1]
  t.equal(printed, `grainline points close --store ${store} --vm 'web 01' --to '${join(store, '.open', 'web 01-point-1')}'`)
  const viaOpen = await paste(printed ?? '', elsewhere, binDir)
  t.equal(viaOpen.code, 0, `points open's command pastes: ${viaOpen.stderr}`)
  t.notMatch(await held(), /held by/, 'released')

  // --register with a DR host that cannot be reached: refused before anything is opened
  const datastore = join(dir, 'datastore1')
  await mkdir(datastore)
  const h = await startEsxiHarness()
  t.teardown(() => h.stop())
  await writeFile(join(dir, 'id_dr'), h.userKey, { mode: 0o600 })
  const settings = (port: number) => ({
    ssh: { host: '127.0.0.1', port, username: h.user, privateKeyFile: join(dir, 'id_dr'), hostKeyFingerprint: h.hostKeyFingerprint },
    datastores: { datastore1: h.datastore },
  })
  const down = join(dir, 'down.json')
  await writeFile(down, JSON.stringify(settings(await closedPort())))
  const downTo = join(h.datastore, 'down', 'web01-dr')
  const fo1 = await runNode(BIN, ['mirror', 'failover', '--store', store, '--vm', 'web 01', '--to', downTo, '--register', down])
  t.equal(fo1.code, 1, fo1.stderr)
  t.match(fo1.stderr, /VM web 01: the DR host of .*down\.json cannot be reached over SSH \(.*\); nothing was opened, the mirror is not held\. Check its ssh settings .*\[E_SSH_CONNECT\]/s)
  t.notOk(existsSync(join(h.datastore, 'down')), 'no folder was made')
  t.notMatch(await held(), /held by/, 'the mirror is not held')

  // the host answers but refuses the registration (a VM registered there already at that path): the opening is undone
  const esxi = join(dir, 'esxi.json')
  await writeFile(esxi, JSON.stringify(settings(h.port)))
  const state = await h.readState()
  const taken = (p: string) => ({ id: String(40 + state.vms.length), name: 'other', vmx: `[datastore1] ${p}/web 01.vmx` })
  state.vms.push(taken('pre-made'))
  state.vms.push(taken('fresh/web01-dr'))
  await h.writeState(state as Parameters<EsxiHarness['writeState']>[0])
  await mkdir(join(h.datastore, 'pre-made'))
  const fo2 = await runNode(BIN, ['mirror', 'failover', '--store', store, '--vm', 'web 01', '--to', join(h.datastore, 'pre-made'), '--register', esxi])
  t.equal(fo2.code, 1, fo2.stderr)
  t.match(fo2.stderr, /registering \[datastore1\] pre-made\/web 01\.vmx as "web 01 \(grainline failover\)" on 127\.0\.0\.1 failed: .*AlreadyExists/s)
  t.match(fo2.stderr, /the failover was undone: VM web 01 is no longer held, the files written into .*pre-made removed\. Fix the cause, then run the failover again \[E_REGISTER\]/s)
  t.same(await readdir(join(h.datastore, 'pre-made')), [], 'the folder that was there is kept, emptied of what the failover wrote')
  t.notMatch(await held(), /held by/, 'the mirror is not held')
  const fo3 = await runNode(BIN, ['mirror', 'failover', '--store', store, '--vm', 'web 01', '--to', join(h.datastore, 'fresh', 'web01-dr'), '--register', esxi])
  t.equal(fo3.code, 1, fo3.stderr)
  t.match(fo3.stderr, /the failover was undone: VM web 01 is no longer held, .*fresh\/web01-dr removed.*\[E_REGISTER\]/s)
  t.notOk(existsSync(join(h.datastore, 'fresh')), 'the folders the failover made are gone')
  t.ok(existsSync(h.datastore), 'the datastore stays')
  t.notMatch(await held(), /held by/, 'the mirror is not held')
  const again = await replicate()
  t.equal(again.code, 0, `replication goes on: ${again.stderr}`)

  // a registered failover: one name in the inventory and in the .vmx, not stacked on the mirror's; its release command pastes
  const to = join(h.datastore, 'web01-dr')
  const fo4 = await runNode(BIN, ['mirror', 'failover', '--store', store, '--vm', 'web 01', '--to', to, '--register', esxi])
  t.equal(fo4.code, 0, fo4.stderr)
  t.match(fo4.stdout, /registered as vmid \d+ "web 01 \(grainline failover\)"/)
  t.equal((await h.readState()).vms.at(-1)?.name, 'web 01 (grainline failover)', 'registered by that name')
  t.match(await readFile(join(to, 'web 01.vmx'), 'utf8'), /^displayName = "web 01 \(grainline failover\)"$/m, 'the .vmx shows the same name')
  const release = /then, with the VM powered off, "(grainline points close [^"]+)"/.exec(fo4.stdout)?.[1]
  t.equal(release, `grainline points close --store ${store} --vm 'web 01' --to ${to} --failover`)
  const viaFo = await paste(release ?? '', elsewhere, binDir)
  t.equal(viaFo.code, 0, `the failover's command pastes: ${viaFo.stderr}`)
  t.notMatch(await held(), /held by/, 'released')
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
