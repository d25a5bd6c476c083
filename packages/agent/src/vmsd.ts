/**
 * The .vmsd snapshot database, modelled as ESXi writes it:
 * `snapshot.lastUID`, `snapshot.current`, `snapshot.numSnapshots`,
 * `snapshotK.uid/.parent/.displayName/.filename/.numDisks/.diskD.fileName/.diskD.node`.
 */
import { AgentError } from './errors.ts'
import { VmxConfig } from './vmx.ts'

/** One snapshot record. */
export interface VmsdSnapshot {
  uid: number
  /** uid of the parent snapshot, 0 for a root */
  parent: number
  displayName: string
  /** the .vmsn file name */
  filename: string
  /** per disk: the disk that represents the snapshot (the delta's parent) */
  disks: Array<{ node: string; fileName: string }>
  /** other `snapshotK.*` keys, kept on rewrite (suffix after `snapshotK.`) */
  extra: Array<[string, string]>
}

/** The whole database. */
export interface Vmsd {
  lastUID: number
  /** uid of the current snapshot, 0 when none */
  current: number
  /** in file order (creation order) */
  snapshots: VmsdSnapshot[]
  /** keys outside `snapshot*`, kept on rewrite */
  other: Array<[string, string]>
}

const SNAP_KEY = /^snapshot(\d+)\.(.+)$/i

function int(v: string | undefined, what: string): number {
  const n = Number(v ?? '0')
  if (!Number.isSafeInteger(n) || n < 0) throw new AgentError('E_VMX', `.vmsd: bad ${what} "${v ?? ''}"`)
  return n
}

/** Parse .vmsd text (an empty text is an empty database). */
export function parseVmsd(text: string): Vmsd {
  const cfg = VmxConfig.parse(text, '.vmsd')
  const byIndex = new Map<number, Map<string, string>>()
  const other: Array<[string, string]> = []
  for (const [k, v] of cfg.entries()) {
    const m = SNAP_KEY.exec(k)
    if (m !== null) {
      const i = Number(m[1])
      let rec = byIndex.get(i)
      if (rec === undefined) {
        rec = new Map()
        byIndex.set(i, rec)
      }
      rec.set(m[2] as string, v)
    } else if (!/^snapshot\./i.test(k)) {
      other.push([k, v])
    }
  }
  const num = int(cfg.get('snapshot.numSnapshots'), 'numSnapshots')
  const snapshots: VmsdSnapshot[] = []
  for (const i of [...byIndex.keys()].sort((a, b) => a - b)) {
    if (snapshots.length >= num && num !== 0) break
    const rec = byIndex.get(i) as Map<string, string>
    const get = (k: string): string | undefined => {
      for (const [kk, vv] of rec) if (kk.toLowerCase() === k.toLowerCase()) return vv
      return undefined
    }
    const numDisks = int(get('numDisks'), 'numDisks')
    if (numDisks > 256) throw new AgentError('E_VMX', '.vmsd: too many disks')
    const disks: Array<{ node: string; fileName: string }> = []
    for (let d = 0; d < numDisks; d++) {
      disks.push({ node: get(`disk${d}.node`) ?? '', fileName: get(`disk${d}.fileName`) ?? '' })
    }
    const known = /^(uid|parent|displayName|filename|numDisks|disk\d+\.(fileName|node))$/i
    snapshots.push({
      uid: int(get('uid'), 'uid'),
      parent: int(get('parent'), 'parent'),
      displayName: get('displayName') ?? '',
      filename: get('filename') ?? '',
      disks,
      extra: [...rec].filter(([k]) => !known.test(k)),
    })
  }
  if (num !== snapshots.length) throw new AgentError('E_VMX', `.vmsd: numSnapshots ${num} but ${snapshots.length} records`)
  return {
    lastUID: int(cfg.get('snapshot.lastUID'), 'lastUID'),
    current: int(cfg.get('snapshot.current'), 'current'),
    snapshots,
    other,
  }
}

/** Serialize a database the way ESXi lays it out. */
export function serializeVmsd(db: Vmsd): string {
  const cfg = VmxConfig.empty()
  if (!db.other.some(([k]) => k.toLowerCase() === '.encoding')) cfg.set('.encoding', 'UTF-8')
  for (const [k, v] of db.other) cfg.set(k, v)
  if (db.snapshots.length > 0) {
    cfg.set('snapshot.lastUID', String(db.lastUID))
    cfg.set('snapshot.current', String(db.current))
  }
  db.snapshots.forEach((s, i) => {
    const p = `snapshot${i}.`
    cfg.set(p + 'uid', String(s.uid))
    if (s.parent !== 0) cfg.set(p + 'parent', String(s.parent))
    cfg.set(p + 'filename', s.filename)
    cfg.set(p + 'displayName', s.displayName)
    for (const [k, v] of s.extra) cfg.set(p + k, v)
    cfg.set(p + 'numDisks', String(s.disks.length))
    s.disks.forEach((d, j) => {
      cfg.set(`${p}disk${j}.fileName`, d.fileName)
      cfg.set(`${p}disk${j}.node`, d.node)
    })
  })
  cfg.set('snapshot.numSnapshots', String(db.snapshots.length))
  return cfg.serialize()
}
