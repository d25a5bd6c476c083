/**
 * Seed and incremental cycles through `replicate()` with driver 'esxi': the
 * agent drives snapshots over a real sshd (vim-cmd stand-in) and ships to a
 * real receiver process; each mirror must equal `qemu-img convert -O raw` of
 * the frozen source point of its cycle.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, symlinkSync } from 'node:fs'
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { createInterface } from 'node:readline'
import path from 'node:path'
import { pino } from 'pino'
import { replicate } from '../src/replicate.ts'
import type { EsxiDriverInit } from '../src/esxi/esxi-driver.ts'
import type { VmHandle } from '../src/driver.ts'
import { openChain, openWriter } from '@grainline/vmdk'
import { repoRoot, startSshHarness, qemuRaw as harnessQemuRaw, mirrorFlat } from './esxi-harness.ts'
import { buildVm } from './esxi-vm-builder.ts'

const h = await startSshHarness()
t.teardown(() => h.stop())
const uuid = '5f1a2b3c-4d5e6f70-8192-a1b2c3d4e5f6'

/** what an NFS mount of the datastore gives the agent */
const dsPathMap = { [`/vmfs/volumes/${uuid}`]: h.datastore, '/vmfs/volumes/datastore1': h.datastore }

function qemuRaw(descriptor: string): Buffer {
  return harnessQemuRaw(descriptor, dsPathMap, h.dir)
}

// the receiver process
const store = path.join(h.dir, 'store')
await mkdir(store)
const token = randomBytes(24).toString('hex')
const tokens = path.join(h.dir, 'tokens.json')
await writeFile(tokens, JSON.stringify({ tokens: [{ name: 'test', token, vms: ['*'] }] }))
const recv = spawn(process.execPath, [path.join(repoRoot, 'packages/receiver/dist/src/main.js'), '--listen', '127.0.0.1:0', '--store', store, '--tokens', tokens], {
  stdio: ['ignore', 'pipe', 'pipe'],
})
const recvLogs: string[] = []
createInterface({ input: recv.stderr }).on('line', (l) => {
  recvLogs.push(l)
})
const port = await new Promise<number>((resolve, reject) => {
  const timer = setTimeout(() => {
    reject(new Error(`receiver did not start: ${recvLogs.join('\n')}`))
  }, 20_000)
  createInterface({ input: recv.stdout }).on('line', (line) => {
    recvLogs.push(line)
    try {
      const ev = JSON.parse(line) as { event?: string; port?: number }
      if (ev.event === 'listening' && typeof ev.port === 'number') {
        clearTimeout(timer)
        resolve(ev.port)
      }
    } catch {}
  })
  recv.once('exit', (code) => {
    clearTimeout(timer)
    reject(new Error(`receiver exited ${String(code)}: ${recvLogs.join('\n')}`))
  })
})
t.teardown(async () => {
  if (recv.exitCode === null) {
    recv.kill('SIGTERM')
    await once(recv, 'exit')
  }
})

// one VM per ESXi delta format; the SEsparse one gets absolute parent hints
const VMS = [
  { id: '31', name: 'app 01', stem: 'app01', deltaFormat: 'sesparse' as const, absoluteHints: true },
  { id: '32', name: 'app 02', stem: 'app02', deltaFormat: 'vmfssparse' as const, absoluteHints: false },
]
const s = await h.readState()
for (const v of VMS) {
  await buildVm(h.datastore, uuid, v.name, v.stem)
  s.vms.push({ id: v.id, name: v.name, vmx: `[datastore1] ${v.name}/${v.stem}.vmx`, deltaFormat: v.deltaFormat, absoluteHints: v.absoluteHints })
}
await h.writeState(s)

const esxi: EsxiDriverInit = {
  ssh: { host: '127.0.0.1', port: h.port, username: h.user, privateKey: h.userKey, hostKeyFingerprint: h.hostKeyFingerprint },
  datastores: { datastore1: { localPath: h.datastore, uuid } },
  verifyTimeoutMs: 5000,
  pollIntervalMs: 50,
}

async function guestWrites(vm: VmHandle, seed: number): Promise<void> {
  for (const d of vm.disks) {
    const w = await openWriter(d.path, { pathMap: dsPathMap })
    try {
      for (let i = 0; i < 5; i++) await w.write(((seed * 31 + i * 397) % 1900) * 512, randomBytes(3000 + 512 * i - (3000 % 512)))
      await w.writeZeroes(128 * 1024 * (1 + (seed % 3)), 16384)
    } finally {
      await w.close()
    }
  }
}

for (const v of VMS)
  for (const cycle of [1, 2, 3]) {
    t.test(`${v.deltaFormat}: cycle ${cycle} (${cycle === 1 ? 'seed' : 'incremental'})`, async (t) => {
      let frozen: Buffer[] = []
      const report = await replicate(
        { logger: pino({ level: 'silent' }) },
        {
          vm: v.name,
          driver: 'esxi',
          esxi,
          to: `ws://127.0.0.1:${port}`,
          token,
          stateDir: path.join(h.dir, 'agent-state'),
          progress: 'none',
          trivialMiB: 1,
          certify: 'sha256',
          afterSnapshot: async (vm) => {
            // the frozen point: the parent of each new running delta
            frozen = []
            for (const d of vm.disks) {
              const chain = await openChain(d.path, { pathMap: { [`/vmfs/volumes/${uuid}`]: h.datastore, '/vmfs/volumes/datastore1': h.datastore } })
              const parent = chain.layers[1]?.path
              await chain.close()
              if (parent === undefined) throw new Error('no frozen layer')
              frozen.push(qemuRaw(parent))
            }
            // the VM keeps writing while the cycle ships
            await guestWrites(vm, cycle * 10)
          },
        },
      )
      t.equal(report.ok, true, JSON.stringify(report.vms[0]?.error ?? report.vms[0]))
      const vr = report.vms[0]
      t.equal(vr?.disks.length, 2)
      t.same(
        vr?.disks.map((d) => d.mode),
        cycle === 1 ? ['seed', 'seed'] : ['incremental', 'incremental'],
      )
      t.same(vr?.removedSnapshots, cycle === 1 ? [] : [`grainline-${cycle - 1}`])
      t.same(await readFile(await mirrorFlat(h, v.stem)), frozen[0], 'disk 0 mirror = frozen source')
      t.same(await readFile(await mirrorFlat(h, `${v.stem}_1`)), frozen[1], 'disk 1 mirror = frozen source')
      // the source VM runs on exactly one grainline snapshot
      const vmsd = await readFile(path.join(h.datastore, `${v.name}/${v.stem}.vmsd`), 'utf8')
      t.match(vmsd, /snapshot\.numSnapshots = "1"/)
      t.match(vmsd, new RegExp(`displayName = "grainline-${cycle}"`))
    })
  }

t.test("a local datastore mount holding the agent's own files (token file, state dir; by name or through a link): the VM fails with E_CONFIG before anything is read", async (t) => {
  const v = VMS[0] as (typeof VMS)[number]
  const vmsdPath = path.join(h.datastore, `${v.name}/${v.stem}.vmsd`)
  const vmsdBefore = await readFile(vmsdPath, 'utf8')
  const mirrorBefore = await readFile(await mirrorFlat(h, v.stem))
  // the agent's token file on the datastore, as a careless install might leave it
  const tokenFile = path.join(h.datastore, 'agent.token')
  await writeFile(tokenFile, `${token}\n`)
  t.teardown(() => rm(tokenFile, { force: true }))
  const link = path.join(h.dir, 'datastore1-link')
  symlinkSync(h.datastore, link)
  const base = { vm: v.name, driver: 'esxi' as const, to: `ws://127.0.0.1:${port}`, token, progress: 'none' as const, giveUpMs: 0 }
  const cases: Array<[string, Parameters<typeof replicate>[1], string]> = [
    ['the token file (ownFiles)', { ...base, esxi, stateDir: path.join(h.dir, 'agent-state'), ownFiles: [tokenFile] }, tokenFile],
    [
      'the token file, the mount through a symbolic link',
      { ...base, esxi: { ...esxi, datastores: { datastore1: { localPath: link, uuid } } }, stateDir: path.join(h.dir, 'agent-state'), ownFiles: [tokenFile] },
      tokenFile,
    ],
    ['the state dir', { ...base, esxi, stateDir: path.join(h.datastore, '.grainline') }, path.join(h.datastore, '.grainline')],
  ]
  for (const [what, init, own] of cases) {
    let snapped = false
    const report = await replicate(
      { logger: pino({ level: 'silent' }) },
      {
        ...init,
        afterSnapshot: async () => {
          snapped = true
        },
      },
    )
    const mount = what.includes('link') ? link : h.datastore
    t.match(
      report.vms[0]?.error,
      {
        code: 'E_CONFIG',
        message: `esxi.datastores.datastore1: ${mount} contains the agent's own ${own} (its state, credentials or settings), which a descriptor could then name and ship: map the datastore to the folder it is mounted at on this proxy (e.g. /mnt/nfs/ds2), one that holds no agent file`,
      },
      what,
    )
    t.equal(snapped, false, `${what}: no snapshot`)
  }
  t.equal(await readFile(vmsdPath, 'utf8'), vmsdBefore, 'the VM keeps its snapshots: nothing was run on the host')
  t.same(await readFile(await mirrorFlat(h, v.stem)), mirrorBefore, 'the mirror is unchanged')
  t.notOk(existsSync(path.join(h.datastore, '.grainline')), 'no state written in the mount')
})

t.test(
  "replicate() with unpinned mounts: one missing at the VM's start fails only a VM with a file on it, named by the settings file and key; one inside the agent's state dir is refused",
  async (t) => {
    const v = VMS[0] as (typeof VMS)[number]
    const vmsdPath = path.join(h.datastore, `${v.name}/${v.stem}.vmsd`)
    const stateDir = path.join(h.dir, 'agent-state')
    const base = { vm: v.name, driver: 'esxi' as const, to: `ws://127.0.0.1:${port}`, token, stateDir, progress: 'none' as const, giveUpMs: 0, trivialMiB: 1 }
    const notMounted = path.join(h.dir, 'not-mounted')
    // a datastore the VM does not use, not mounted: the VM runs without it
    const unused = await replicate({ logger: pino({ level: 'silent' }) }, { ...base, esxi: { ...esxi, datastores: { datastore1: { localPath: h.datastore, uuid }, ds9: notMounted } } })
    t.equal(unused.ok, true, `a missing mount no file of the VM is on: ${JSON.stringify(unused.vms[0]?.error)}`)
    t.equal(unused.vms[0]?.disks.length, 2, 'both disks shipped')
    // the VM's own datastore not mounted: refused when its .vmx is resolved, before any snapshot; named by the settings file and key
    const vmsdBefore = await readFile(vmsdPath, 'utf8')
    const settings = '/etc/grainline/esxi.json: datastores.datastore1.localPath'
    let snapped = false
    const used = await replicate(
      { logger: pino({ level: 'silent' }) },
      {
        ...base,
        esxi: { ...esxi, datastores: { datastore1: { localPath: notMounted, uuid }, ds2: h.datastore } },
        esxiDatastoreSources: { datastore1: settings },
        afterSnapshot: async () => {
          snapped = true
        },
      },
    )
    t.match(
      used.vms[0]?.error,
      {
        code: 'E_CONFIG',
        message: `${settings}: ${notMounted} does not exist (is datastore "datastore1" mounted?): the VM's file ${path.join(notMounted, v.name, `${v.stem}.vmx`)} is on it, and nothing on a mount missing at the VM's start is read (which datastores a VM uses is known only once its .vmx is read): mount the datastore there, or map "datastore1" to the folder it is mounted at on this proxy`,
      },
      'the mount of the datastore the VM is on',
    )
    t.equal(snapped, false, 'no snapshot')
    t.equal(await readFile(vmsdPath, 'utf8'), vmsdBefore, 'the VM keeps its snapshots')
    // a mount inside the agent's state dir (by name, or through a link): its cycle records could be named as disks
    const inside = path.join(stateDir, 'ds9')
    await mkdir(inside, { recursive: true })
    t.teardown(() => rm(inside, { recursive: true, force: true }))
    const insideLink = path.join(h.dir, 'inside-state-link')
    symlinkSync(inside, insideLink)
    for (const mount of [inside, insideLink]) {
      const r = await replicate({ logger: pino({ level: 'silent' }) }, { ...base, esxi: { ...esxi, datastores: { datastore1: { localPath: h.datastore, uuid }, ds9: mount } } })
      t.match(
        r.vms[0]?.error,
        {
          code: 'E_CONFIG',
          message: `esxi.datastores.ds9: ${mount} lies inside the agent's own ${stateDir} (its state: cycle records, snapshot lists, locks), whose files a .vmx or descriptor could then name as disks and ship: map the datastore to the folder it is mounted at on this proxy (e.g. /mnt/nfs/ds2), one outside the agent's state dir`,
        },
        `a mount inside the state dir: ${mount}`,
      )
    }
    t.equal(await readFile(vmsdPath, 'utf8'), vmsdBefore, 'the VM keeps its snapshots')
  },
)
