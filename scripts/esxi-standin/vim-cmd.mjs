// Stand-in for ESXi's `vim-cmd` (vmsvc/getallvms, snapshot.get,
// snapshot.create, snapshot.remove, get.runtime, solo/registervm). It makes the file-level
// changes ESXi makes — a new `<disk>-00000N.vmdk` descriptor with its
// `-sesparse.vmdk` or `-delta.vmdk` extent, the .vmx switched to it, the .vmsd
// updated; on remove the delta merged into its parent — using @grainline/vmdk,
// and prints what vim-cmd prints (layouts: packages/agent/test/fixtures/esxi/).
//
// State: the JSON file named by $ESXI_STANDIN_STATE:
// { "removeUsage": "5.1" | "pre-5.1",                  // usage text of snapshot.remove without arguments
//   "datastores": { "<name>": { "path": "/local/dir", "uuid": "..." } },
//   "vms": [ { "id": "1", "name": "...", "vmx": "[ds] dir/x.vmx", "guest": "...",
//              "version": "vmx-19", "annotation": "...",
//              "deltaFormat": "sesparse" | "vmfssparse",
//              "fail": { "<op>": "<FaultName>" },      // print that vim fault
//              "hang": { "<op>": <seconds> },          // sleep before doing anything
//              "skipConsolidation": true,              // remove the snapshot, keep the delta
//              "absoluteHints": true,                  // parentFileNameHint as /vmfs/volumes/<uuid>/...
//              "quietOutput": true,                    // print nothing on create/remove success
//              "applyDelayMs": 700,                    // report success at once, change the files later
//              "applyGate": "/tmp/x/gate",             // …and only once this file exists (snapshot.get appends
//                                                      //   a line to "<gate>.polls" while it does not)
//              "removeTooMuch": true,                  // snapshot.remove also drops the snapshot's children
//              "noDeltaFor": ["scsi0:1"],                // give these disks no delta (a check fails after create)
//              "consolidationNeeded": false } ] }
// Disks with `<node>.mode = "independent-*"` and physical RDMs (base createType
// vmfsPassthroughRawDeviceMap) get no delta and no .vmsd record, as on ESXi.
import { readFileSync, writeFileSync, renameSync, existsSync, appendFileSync } from 'node:fs'
import { spawn } from 'node:child_process'
import path from 'node:path'

const statePath = process.env.ESXI_STANDIN_STATE
const [cmd, ...args] = process.argv.slice(2)

let out = (s) => {
  process.stdout.write(s)
}
function fault(type, msg) {
  out(`(vim.fault.${type}) {\n   faultCause = (vmodl.MethodFault) null,\n   faultMessage = <unset>\n   msg = "${msg}"\n}\n`)
  process.exit(1)
}
function writeAtomic(p, text) {
  const tmp = `${p}.standin-tmp`
  writeFileSync(tmp, text)
  renameSync(tmp, p)
}

if (statePath === undefined) {
  process.stderr.write('vim-cmd stand-in: ESXI_STANDIN_STATE is not set\n')
  process.exit(2)
}
const state = JSON.parse(readFileSync(statePath, 'utf8'))
const saveState = () => writeAtomic(statePath, JSON.stringify(state, null, 2))

function dsPath(p) {
  const m = /^\[([^\]]+)\] ?(.*)$/.exec(p) ?? /^\/vmfs\/volumes\/([^/]+)\/(.*)$/.exec(p)
  if (m === null) return undefined
  const ds = state.datastores[m[1]] ?? Object.values(state.datastores).find((d) => d.uuid === m[1])
  return ds === undefined ? undefined : path.join(ds.path, m[2])
}

// --- .vmx / .vmsd: `key = "value"` lines (kept in order) ---
function parseKv(text) {
  const lines = []
  for (const raw of text.split('\n')) {
    const m = /^\s*([^=\s]+)\s*=\s*"(.*)"\s*$/.exec(raw)
    lines.push(m === null ? { raw } : { raw, key: m[1], value: m[2] })
  }
  while (lines.length > 0 && lines[lines.length - 1].raw === '') lines.pop()
  return lines
}
const kvGet = (lines, k) => lines.findLast?.((l) => l.key?.toLowerCase() === k.toLowerCase())?.value
function kvSet(lines, k, v) {
  const l = lines.find((x) => x.key?.toLowerCase() === k.toLowerCase())
  if (l !== undefined) {
    l.value = v
    l.raw = `${l.key} = "${v}"`
  } else lines.push({ key: k, value: v, raw: `${k} = "${v}"` })
}
const kvText = (lines) => lines.map((l) => l.raw).join('\n') + '\n'

function vmDisks(vmx) {
  const disks = []
  for (const l of vmx) {
    const m = /^((?:scsi|sata|nvme|ide)\d+:\d+)\.fileName$/i.exec(l.key ?? '')
    if (m === null) continue
    if (kvGet(vmx, `${m[1]}.present`)?.toLowerCase() !== 'true') continue
    if (/cdrom/i.test(kvGet(vmx, `${m[1]}.deviceType`) ?? '') || !/\.vmdk$/i.test(l.value)) continue
    disks.push({ node: m[1], fileName: l.value })
  }
  return disks
}

// .vmsd: ESXi's snapshot database
function readVmsd(p) {
  const lines = existsSync(p) ? parseKv(readFileSync(p, 'utf8')) : []
  const n = Number(kvGet(lines, 'snapshot.numSnapshots') ?? '0')
  const snaps = []
  for (let i = 0; i < n; i++) {
    const g = (k) => kvGet(lines, `snapshot${i}.${k}`)
    const disks = []
    for (let d = 0; d < Number(g('numDisks') ?? '0'); d++) disks.push({ node: g(`disk${d}.node`), fileName: g(`disk${d}.fileName`) })
    snaps.push({
      uid: Number(g('uid')),
      parent: Number(g('parent') ?? '0'),
      displayName: g('displayName') ?? '',
      description: g('description') ?? '',
      createTime: Number(g('createTimeHigh') ?? '0') * 2 ** 32 + Number(g('createTimeLow') ?? '0'),
      filename: g('filename') ?? '',
      disks,
    })
  }
  return { lastUID: Number(kvGet(lines, 'snapshot.lastUID') ?? '0'), current: Number(kvGet(lines, 'snapshot.current') ?? '0'), snaps }
}
function writeVmsd(p, db) {
  const lines = ['.encoding = "UTF-8"']
  if (db.snaps.length > 0) {
    lines.push(`snapshot.lastUID = "${db.lastUID}"`, `snapshot.current = "${db.current}"`)
  }
  db.snaps.forEach((s, i) => {
    const k = `snapshot${i}.`
    lines.push(`${k}uid = "${s.uid}"`)
    if (s.parent !== 0) lines.push(`${k}parent = "${s.parent}"`)
    lines.push(`${k}filename = "${s.filename}"`, `${k}displayName = "${s.displayName}"`, `${k}description = "${s.description}"`)
    lines.push(`${k}createTimeHigh = "${Math.floor(s.createTime / 2 ** 32)}"`, `${k}createTimeLow = "${s.createTime % 2 ** 32}"`)
    lines.push(`${k}numDisks = "${s.disks.length}"`)
    s.disks.forEach((d, j) => {
      lines.push(`${k}disk${j}.fileName = "${d.fileName}"`, `${k}disk${j}.node = "${d.node}"`)
    })
  })
  lines.push(`snapshot.numSnapshots = "${db.snaps.length}"`)
  writeAtomic(p, lines.join('\n') + '\n')
}

function printTree(title, db) {
  let s = `${title}:\n`
  const byParent = (p) => db.snaps.filter((x) => x.parent === p)
  const when = (us) => {
    const d = new Date(us / 1000)
    return `${d.getUTCMonth() + 1}/${d.getUTCDate()}/${d.getUTCFullYear()} ${d.getUTCHours()}:${d.getUTCMinutes()}:${d.getUTCSeconds()}`
  }
  const walk = (snap, depth) => {
    const mark = '-'.repeat(2 * depth)
    const f = '-'.repeat(2 * depth + 2)
    s += depth === 0 ? '|-ROOT\n' : `${mark}|-CHILD\n`
    s += `${f}Snapshot Name        : ${snap.displayName}\n`
    s += `${f}Snapshot Id        : ${snap.uid}\n`
    s += `${f}Snapshot Desciption  : ${snap.description}\n`.replace(/ \n$/, '\n')
    s += `${f}Snapshot Created On  : ${when(snap.createTime)}\n`
    s += `${f}Snapshot State       : powered off\n`
    for (const c of byParent(snap.uid)) walk(c, depth + 1)
  }
  for (const r of byParent(0)) walk(r, 0)
  out(s)
}

// the descriptor chain from a top descriptor, top first (text descriptors only)
function chainOf(top) {
  const chain = []
  let cur = top
  while (cur !== undefined) {
    chain.push(cur)
    const m = /^parentFileNameHint="([^"]*)"/m.exec(readFileSync(cur, 'utf8'))
    cur = m === null ? undefined : resolveName(path.dirname(cur), m[1])
  }
  return chain
}

async function hangIfAsked(vm, op) {
  const secs = vm.hang?.[op]
  if (secs === undefined) return
  // exit as soon as the SSH channel goes away (stdin closes), else after `secs`
  await new Promise((resolve) => {
    const t = setTimeout(resolve, secs * 1000)
    process.stdin.on('end', () => {
      clearTimeout(t)
      process.exit(143)
    })
    process.stdin.on('close', () => {
      clearTimeout(t)
      process.exit(143)
    })
    process.stdin.resume()
  })
  process.stdin.pause()
}

// a file name from a .vmx/.vmsd/descriptor: datastore path, or relative to `dir`
const resolveName = (dir, n) => (n.startsWith('/vmfs/volumes/') || n.startsWith('[') ? dsPath(n) : path.resolve(dir, n))

function findVm(id) {
  const vm = state.vms.find((v) => v.id === id)
  if (vm === undefined) fault('NotFound', `Unable to find a VM corresponding to "${id}"`)
  return vm
}

function vmFiles(vm) {
  const vmxPath = dsPath(vm.vmx)
  return { vmxPath, dir: path.dirname(vmxPath), vmsdPath: vmxPath.replace(/\.vmx$/, '.vmsd'), stem: path.basename(vmxPath, '.vmx') }
}

// `/vmfs/volumes/<key>` -> local folder, for @grainline/vmdk
function pathMap() {
  const m = {}
  for (const [name, ds] of Object.entries(state.datastores)) {
    m[`/vmfs/volumes/${name}`] = ds.path
    if (ds.uuid !== undefined) m[`/vmfs/volumes/${ds.uuid}`] = ds.path
  }
  return m
}

// ESXi may write the parent hint as an absolute /vmfs/volumes/<uuid>/... path
async function absoluteHint(childPath, parentPath) {
  const { parseDescriptor, serializeDescriptor } = await import('@grainline/vmdk')
  const entry = Object.values(state.datastores).find((ds) => parentPath.startsWith(ds.path + path.sep))
  if (entry === undefined) return
  const abs = `/vmfs/volumes/${entry.uuid ?? Object.keys(state.datastores).find((k) => state.datastores[k] === entry)}/${path.relative(entry.path, parentPath).split(path.sep).join('/')}`
  const d = parseDescriptor(readFileSync(childPath, 'utf8'))
  writeAtomic(childPath, serializeDescriptor(d.withParent(abs, d.parentCid)))
}

const escName = (n) => n.replace(/%/g, '%25').replace(/\//g, '%2f').replace(/\\/g, '%5c')

// ESXi over NFS: the command may return before its file changes show on the
// mount. Report success now and let a detached copy of this process apply the
// change after the delay.
function deferIfAsked(vm, title) {
  const delay = vm.applyDelayMs
  const gate = vm.applyGate
  if ((delay === undefined && gate === undefined) || process.env.ESXI_STANDIN_DEFERRED !== undefined) return false
  spawn(process.execPath, process.argv.slice(1), { detached: true, stdio: 'ignore', env: { ...process.env, ESXI_STANDIN_DEFERRED: String(delay ?? 0), ESXI_STANDIN_GATE: gate ?? '' } }).unref()
  out(`${title}:\n`)
  return true
}
// the deferred copy waits for the delay, then until the gate file exists (a test opens it when it is ready)
async function deferredSleep() {
  await new Promise((resolve) => setTimeout(resolve, Number(process.env.ESXI_STANDIN_DEFERRED ?? '0')))
  const gate = process.env.ESXI_STANDIN_GATE ?? ''
  for (let waited = 0; gate !== '' && !existsSync(gate); waited += 20) {
    if (waited > 600_000) process.exit(3)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
if (process.env.ESXI_STANDIN_DEFERRED !== undefined) out = () => {}

async function main() {
  switch (cmd) {
    case 'solo/registervm': {
      // vim-cmd solo/registervm <vmx path> [name]: prints the new vmid
      const [vmx, name] = args
      const local = vmx === undefined ? undefined : dsPath(vmx)
      if (local === undefined || !existsSync(local)) fault('NotFound', `The object or item referred to could not be found: ${vmx}`)
      if (state.vms.some((v) => v.vmx === vmx)) fault('AlreadyExists', 'The specified key, name, or identifier already exists.')
      const id = String(state.vms.reduce((m, v) => Math.max(m, Number(v.id)), 0) + 1)
      state.vms.push({ id, name: name ?? path.basename(local, '.vmx'), vmx })
      saveState()
      out(`${id}\n`)
      return
    }
    case 'vmsvc/getallvms': {
      let s = 'Vmid     Name                 File                        Guest OS        Version   Annotation\n'
      for (const v of state.vms) {
        s += `${v.id.padEnd(6)} ${escName(v.name).padEnd(12)}   ${v.vmx}   ${v.guest ?? 'otherLinux64Guest'}   ${v.version ?? 'vmx-19'}`
        s += v.annotation ? `   ${v.annotation}\n` : '\n'
      }
      out(s)
      return
    }
    case 'vmsvc/snapshot.get': {
      const vm = findVm(args[0])
      if (vm.fail?.['snapshot.get'] !== undefined) fault(vm.fail['snapshot.get'], 'The operation is not allowed in the current state.')
      if (vm.applyGate !== undefined && !existsSync(vm.applyGate)) appendFileSync(`${vm.applyGate}.polls`, '.\n')
      printTree('Get Snapshot', readVmsd(vmFiles(vm).vmsdPath))
      return
    }
    case 'vmsvc/get.runtime': {
      const vm = findVm(args[0])
      out(`Runtime information\n(vim.vm.RuntimeInfo) {\n   connectionState = "connected",\n   powerState = "poweredOn",\n   consolidationNeeded = ${vm.consolidationNeeded === true},\n}\n`)
      return
    }
    case 'vmsvc/snapshot.create': {
      const [id, name = '', description = '', memory = '0', quiesce = '0'] = args
      const vm = findVm(id)
      await hangIfAsked(vm, 'snapshot.create')
      if (vm.fail?.['snapshot.create'] !== undefined) fault(vm.fail['snapshot.create'], 'An error occurred while taking a snapshot: The operation is not allowed in the current state.')
      if (memory !== '0' || quiesce !== '0') fault('InvalidState', 'The stand-in takes only snapshots without memory and without quiescing.')
      if (deferIfAsked(vm, 'Create Snapshot')) return
      await deferredSleep()
      const { createDelta } = await import('@grainline/vmdk')
      const { vmxPath, dir, vmsdPath, stem } = vmFiles(vm)
      const vmx = parseKv(readFileSync(vmxPath, 'utf8'))
      const db = readVmsd(vmsdPath)
      const uid = db.lastUID + 1
      const recs = []
      for (const d of vmDisks(vmx)) {
        const parent = resolveName(dir, d.fileName)
        // as ESXi: independent disks and physical RDMs are not part of a snapshot (no delta, no record)
        if (/^independent-/i.test(kvGet(vmx, `${d.node}.mode`) ?? '')) continue
        // a disk ESXi skips though the .vmx does not say why (tests: a check failing after the create)
        if ((vm.noDeltaFor ?? []).includes(d.node)) continue
        if (/^createType="vmfsPassthroughRawDeviceMap"/im.test(readFileSync(chainOf(parent).at(-1), 'latin1'))) continue
        const base = path.basename(d.fileName, '.vmdk').replace(/-\d{6}$/, '')
        let n = 1
        while (existsSync(path.join(dir, `${base}-${String(n).padStart(6, '0')}.vmdk`))) n++
        const childName = `${base}-${String(n).padStart(6, '0')}.vmdk`
        await createDelta(parent, path.join(dir, childName), { format: vm.deltaFormat === 'vmfssparse' ? 'vmfssparse' : 'sesparse', pathMap: pathMap() })
        if (vm.absoluteHints === true) await absoluteHint(path.join(dir, childName), parent)
        kvSet(vmx, `${d.node}.fileName`, childName)
        recs.push({ node: d.node, fileName: d.fileName })
      }
      const vmsn = `${stem}-Snapshot${uid}.vmsn`
      writeAtomic(path.join(dir, vmsn), 'stand-in snapshot state (no memory)\n')
      db.snaps.push({ uid, parent: db.current, displayName: name, description, createTime: Date.now() * 1000, filename: vmsn, disks: recs })
      db.lastUID = uid
      db.current = uid
      writeVmsd(vmsdPath, db)
      writeAtomic(vmxPath, kvText(vmx))
      if (vm.quietOutput !== true) out('Create Snapshot:\n')
      return
    }
    case 'vmsvc/snapshot.remove': {
      if (args.length < 2) {
        // ESXi's usage text: 5.1 and later take the snapshot id; before 5.1 the second argument was removeChildren
        out(
          state.removeUsage === 'pre-5.1'
            ? 'Insufficient arguments.\nUsage: snapshot.remove vmid [removeChildren] [snapshotLevel] [snapshotIndex]\n'
            : 'Insufficient arguments.\nUsage: snapshot.remove vmid snapId\n',
        )
        process.exit(1)
      }
      const [id, snapId] = args
      const vm = findVm(id)
      await hangIfAsked(vm, 'snapshot.remove')
      if (vm.fail?.['snapshot.remove'] !== undefined) fault(vm.fail['snapshot.remove'], 'The operation is not allowed in the current state.')
      if (deferIfAsked(vm, 'Remove Snapshot')) return
      await deferredSleep()
      const { vmxPath, dir, vmsdPath } = vmFiles(vm)
      const db = readVmsd(vmsdPath)
      const snap = db.snaps.find((s) => String(s.uid) === snapId)
      if (snap === undefined) fault('NotFound', 'The object or item referred to could not be found.')
      const vmx = parseKv(readFileSync(vmxPath, 'utf8'))
      const renamed = new Map() // merged child file name -> parent file name
      if (vm.skipConsolidation === true) {
        vm.consolidationNeeded = true
        saveState()
      } else {
        const { consolidate } = await import('@grainline/vmdk')
        for (const rec of snap.disks) {
          const top = kvGet(vmx, `${rec.node}.fileName`)
          const chain = chainOf(resolveName(dir, top))
          const repr = resolveName(dir, rec.fileName)
          const i = chain.indexOf(repr)
          if (i < 1) fault('InvalidState', `Disk ${rec.node}: ${rec.fileName} has no child delta.`)
          const child = chain[i - 1]
          await consolidate(child, { pathMap: pathMap() })
          renamed.set(path.basename(child), rec.fileName)
          if (resolveName(dir, top) === child) kvSet(vmx, `${rec.node}.fileName`, rec.fileName)
        }
      }
      // removeTooMuch: the snapshot's children go too (what removeChildren does); their deltas stay
      const gone = new Set([snap])
      if (vm.removeTooMuch === true) for (const s of db.snaps) if (gone.has(db.snaps.find((x) => x.uid === s.parent))) gone.add(s)
      db.snaps = db.snaps.filter((s) => !gone.has(s))
      for (const s of db.snaps) {
        if (s.parent === snap.uid) s.parent = snap.parent
        for (const d of s.disks) if (renamed.has(d.fileName)) d.fileName = renamed.get(d.fileName)
      }
      if (db.current === snap.uid) db.current = snap.parent
      writeAtomic(vmxPath, kvText(vmx))
      writeVmsd(vmsdPath, db)
      if (vm.quietOutput !== true) out('Remove Snapshot:\n')
      return
    }
    case 'vmsvc/snapshot.consolidate': {
      // merge every delta whose parent no snapshot record names any more (left by a remove that did not merge)
      const vm = findVm(args[0])
      if (vm.fail?.['snapshot.consolidate'] !== undefined) fault(vm.fail['snapshot.consolidate'], 'The operation is not allowed in the current state.')
      const { consolidate } = await import('@grainline/vmdk')
      const { vmxPath, dir, vmsdPath } = vmFiles(vm)
      const db = readVmsd(vmsdPath)
      const vmx = parseKv(readFileSync(vmxPath, 'utf8'))
      for (const d of vmDisks(vmx)) {
        for (;;) {
          const chain = chainOf(resolveName(dir, kvGet(vmx, `${d.node}.fileName`)))
          const named = new Set(db.snaps.flatMap((s) => s.disks.filter((x) => x.node === d.node).map((x) => resolveName(dir, x.fileName))))
          const i = chain.findIndex((p, k) => k >= 1 && !named.has(p))
          if (i < 1) break
          const child = chain[i - 1]
          const parentName = path.relative(dir, chain[i])
          await consolidate(child, { pathMap: pathMap() })
          for (const s of db.snaps) for (const x of s.disks) if (resolveName(dir, x.fileName) === child) x.fileName = parentName
          if (i - 1 === 0) kvSet(vmx, `${d.node}.fileName`, parentName)
        }
      }
      vm.consolidationNeeded = false
      saveState()
      writeAtomic(vmxPath, kvText(vmx))
      writeVmsd(vmsdPath, db)
      return
    }
    default:
      process.stderr.write(`vim-cmd stand-in: unsupported command ${JSON.stringify(cmd ?? '')}\n`)
      process.exit(1)
  }
}

main().catch((err) => {
  process.stderr.write(`vim-cmd stand-in failed: ${err?.stack ?? err}\n`)
  process.exit(1)
})
