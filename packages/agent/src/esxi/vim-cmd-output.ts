/**
 * Pure parsers for what `vim-cmd` prints on ESXi 6.x, 7 and 8. The formats,
 * and where each was observed, are in test/fixtures/esxi/README.md.
 */
import { EsxiError } from './errors.ts'

/** One line of `vim-cmd vmsvc/getallvms`. */
export interface VmListEntry {
  /** the Vmid column */
  readonly id: string
  /** the Name column as printed (ESXi escapes `%`, `/`, `\` as %25, %2f, %5c) */
  readonly name: string
  /** the File column, `[datastore] dir/vm.vmx` */
  readonly vmxPath: string
  /** the datastore name inside the brackets */
  readonly datastore: string
  /** the path after `[datastore] ` */
  readonly relativePath: string
  /** the Guest OS column ('' when absent) */
  readonly guestOs: string
  /** the Version column, e.g. "vmx-19" ('' when absent) */
  readonly version: string
  /** the Annotation column; continuation lines joined with "\n" */
  readonly annotation: string
  /**
   * why this row cannot be trusted (absent when it can): its line holds more
   * than one `[datastore] ….vmx` (a name or annotation that looks like a
   * file: the File column cannot be told apart), or its Vmid is listed twice
   * (an annotation line that looks like a row). The driver refuses to open
   * such a VM rather than read another VM's files.
   */
  readonly ambiguous?: string
}

const GETALLVMS_HEADER = /^Vmid\s+Name\s+File\b/
// Vmid, Name (may hold spaces), `[datastore] path.vmx` (both may hold spaces),
// then optionally Guest OS, Version (vmx-NN) and Annotation.
const GETALLVMS_ROW = /^(\d+)\s+(\S.*?)\s+\[([^\]]+)\] ?(.*?\.vmx)(?:\s+(\S+)\s+(vmx-\d+)(?:\s+(.*?))?)?\s*$/
// every `[datastore] ….vmx` a row line holds: more than one and the File column is ambiguous
const VMX_PATH = /\[[^\]]+\] ?[^[]*?\.vmx(?=\s|$)/g
// hostd prints this (on stderr or stdout) for inventory entries it cannot load
const GETALLVMS_SKIP = /^Skipping invalid VM '\d+'/

/** Upper bound on listed VMs: a host holds at most a few thousand. */
const MAX_VMS = 100_000

/**
 * Parse `vim-cmd vmsvc/getallvms`. Lines after a row that are not rows
 * themselves are the continuation of that row's (multi-line) annotation.
 * @throws EsxiError E_PARSE when the header is missing or a line before the first row is not understood
 */
export function parseGetAllVms(text: string): VmListEntry[] {
  const lines = text.split(/\r?\n/)
  const out: Array<{ -readonly [K in keyof VmListEntry]: VmListEntry[K] }> = []
  let header = false
  for (const line of lines) {
    if (!header) {
      if (GETALLVMS_HEADER.test(line)) {
        header = true
        continue
      }
      if (line.trim() === '' || GETALLVMS_SKIP.test(line)) continue
      throw new EsxiError('E_PARSE', `getallvms: unexpected line before the header: ${JSON.stringify(line.slice(0, 200))}`)
    }
    if (GETALLVMS_SKIP.test(line)) continue
    const m = GETALLVMS_ROW.exec(line)
    if (m !== null) {
      if (out.length >= MAX_VMS) throw new EsxiError('E_PARSE', `getallvms: more than ${MAX_VMS} VMs`)
      out.push({
        id: m[1] as string,
        name: m[2] as string,
        datastore: m[3] as string,
        relativePath: m[4] as string,
        vmxPath: `[${m[3] as string}] ${m[4] as string}`,
        guestOs: m[5] ?? '',
        version: m[6] ?? '',
        annotation: m[7] ?? '',
      })
      const paths = line.match(VMX_PATH)?.length ?? 0
      if (paths > 1) (out[out.length - 1] as (typeof out)[number]).ambiguous = `its line holds ${paths} "[datastore] ….vmx" paths, so its name, file and annotation cannot be told apart`
      continue
    }
    const last = out[out.length - 1]
    if (last === undefined) {
      if (line.trim() === '') continue
      throw new EsxiError('E_PARSE', `getallvms: unexpected line: ${JSON.stringify(line.slice(0, 200))}`)
    }
    last.annotation = last.annotation === '' && line.trim() === '' ? '' : `${last.annotation}\n${line}`
  }
  if (!header) throw new EsxiError('E_PARSE', 'getallvms: no "Vmid Name File" header in the output')
  const ids = new Map<string, number>()
  for (const e of out) ids.set(e.id, (ids.get(e.id) ?? 0) + 1)
  for (const e of out) {
    e.annotation = e.annotation.replace(/\s+$/, '')
    if ((ids.get(e.id) ?? 0) > 1) e.ambiguous ??= `Vmid ${e.id} is listed ${ids.get(e.id)} times (an annotation line that looks like a row)`
  }
  return out
}

/**
 * Undo the escaping the vSphere API applies to VM names (`%25` → `%`,
 * `%2f` → `/`, `%5c` → `\`), as getallvms prints them.
 */
export function decodeVmName(name: string): string {
  return name.replace(/%(25|2f|5c)/gi, (_m, h: string) => String.fromCharCode(parseInt(h, 16)))
}

/** One node of the snapshot tree printed by `snapshot.get`. */
export interface SnapshotNode {
  /** "Snapshot Id" */
  readonly id: string
  /** "Snapshot Name" */
  readonly name: string
  /** "Snapshot Desciption" (sic) — may span lines */
  readonly description: string
  /** "Snapshot Created On" as printed, e.g. "10/4/2026 19:0:52" */
  readonly createdOn: string
  /** "Snapshot State", e.g. "powered off" */
  readonly state: string
  /** 0 for a root snapshot */
  readonly depth: number
  /** id of the parent snapshot, undefined for a root */
  readonly parentId?: string
  readonly children: readonly SnapshotNode[]
}

/** A parsed `Get Snapshot:` (or `Remove Snapshot:`, `Revert Snapshot:`) tree. */
export interface SnapshotTree {
  /** the title line without the colon, e.g. "Get Snapshot" */
  readonly title: string
  readonly roots: readonly SnapshotNode[]
  /** every node in print order (pre-order: a parent before its children) */
  readonly all: readonly SnapshotNode[]
}

const TREE_TITLE = /^(Get|Remove|Revert|Create) Snapshot:\s*$/
const TREE_MARK = /^(-*)\|-(ROOT|CHILD)\s*$/
// ESXi prints "Desciption" (sic); accept the correct spelling too
const TREE_FIELD = /^(-+)Snapshot (Name|Id|Desciption|Description|Created On|State)\s*:\s?(.*)$/
const MAX_SNAPSHOTS = 10_000

interface MutableNode {
  id: string
  name: string
  description: string
  createdOn: string
  state: string
  depth: number
  parentId?: string
  children: MutableNode[]
  seen: Set<string>
}

/**
 * Parse the snapshot tree vim-cmd prints. Nesting is the number of leading
 * dashes: fields of depth d start with 2(d+1) dashes, a child marker of depth d
 * with 2d dashes then `|-CHILD`. Lines that match nothing continue the previous
 * field (descriptions may span lines).
 * @throws EsxiError E_PARSE
 */
export function parseSnapshotTree(text: string): SnapshotTree {
  const lines = text.split(/\r?\n/)
  while (lines.length > 0 && (lines[lines.length - 1] as string).trim() === '') lines.pop()
  let i = 0
  while (i < lines.length && (lines[i] as string).trim() === '') i++
  const titleLine = lines[i]
  const t = titleLine === undefined ? null : TREE_TITLE.exec(titleLine)
  if (t === null) throw new EsxiError('E_PARSE', `snapshot tree: expected "Get Snapshot:", got ${JSON.stringify((titleLine ?? '').slice(0, 200))}`)
  i++
  const all: MutableNode[] = []
  const roots: MutableNode[] = []
  const stack: MutableNode[] = [] // stack[d] = last node at depth d
  let pendingDepth: number | undefined // a marker opened a node at this depth, no field yet
  let current: MutableNode | undefined
  let lastField: keyof Pick<MutableNode, 'name' | 'description' | 'createdOn' | 'state' | 'id'> | undefined

  const open = (depth: number): MutableNode => {
    if (depth > stack.length) throw new EsxiError('E_PARSE', `snapshot tree: line ${i + 1} nests deeper than its parent`)
    if (all.length >= MAX_SNAPSHOTS) throw new EsxiError('E_PARSE', 'snapshot tree: too many snapshots')
    const node: MutableNode = { id: '', name: '', description: '', createdOn: '', state: '', depth, children: [], seen: new Set() }
    const parent = depth === 0 ? undefined : stack[depth - 1]
    if (depth > 0 && parent === undefined) throw new EsxiError('E_PARSE', `snapshot tree: line ${i + 1} has no parent`)
    if (parent !== undefined) parent.children.push(node)
    else roots.push(node)
    stack.length = depth
    stack.push(node)
    all.push(node)
    return node
  }

  for (; i < lines.length; i++) {
    const line = lines[i] as string
    const mark = TREE_MARK.exec(line)
    if (mark !== null) {
      const dashes = (mark[1] as string).length
      if (dashes % 2 !== 0) throw new EsxiError('E_PARSE', `snapshot tree: odd indentation on line ${i + 1}`)
      const depth = dashes / 2
      if ((mark[2] === 'ROOT') !== (depth === 0)) throw new EsxiError('E_PARSE', `snapshot tree: ${mark[2] as string} at depth ${depth} on line ${i + 1}`)
      pendingDepth = depth
      current = undefined
      lastField = undefined
      continue
    }
    const f = TREE_FIELD.exec(line)
    if (f !== null) {
      const dashes = (f[1] as string).length
      if (dashes % 2 !== 0 || dashes < 2) throw new EsxiError('E_PARSE', `snapshot tree: odd indentation on line ${i + 1}`)
      const depth = dashes / 2 - 1
      const label = f[2] as string
      const key = label === 'Name' ? 'name' : label === 'Id' ? 'id' : label === 'Created On' ? 'createdOn' : label === 'State' ? 'state' : 'description'
      if (pendingDepth !== undefined) {
        if (depth !== pendingDepth) throw new EsxiError('E_PARSE', `snapshot tree: field at depth ${depth} after a marker of depth ${pendingDepth} (line ${i + 1})`)
        current = open(depth)
        pendingDepth = undefined
      } else if (current === undefined || current.depth !== depth || current.seen.has(key)) {
        // a sibling printed without its own marker
        current = open(depth)
      }
      current.seen.add(key)
      current[key] = (f[3] as string).replace(/\s+$/, '')
      lastField = key
      continue
    }
    if (current === undefined || lastField === undefined) {
      if (line.trim() === '') continue
      throw new EsxiError('E_PARSE', `snapshot tree: unexpected line ${i + 1}: ${JSON.stringify(line.slice(0, 200))}`)
    }
    current[lastField] = `${current[lastField]}\n${line.replace(/\s+$/, '')}`
  }
  if (pendingDepth !== undefined) throw new EsxiError('E_PARSE', 'snapshot tree: a marker without fields at the end')
  for (const n of all) {
    if (!/^\d+$/.test(n.id)) throw new EsxiError('E_PARSE', `snapshot tree: snapshot ${JSON.stringify(n.name)} has no numeric id`)
  }
  const freeze = (n: MutableNode, parentId: string | undefined): SnapshotNode => {
    const node: SnapshotNode = {
      id: n.id,
      name: n.name,
      description: n.description,
      createdOn: n.createdOn,
      state: n.state,
      depth: n.depth,
      ...(parentId === undefined ? {} : { parentId }),
      children: n.children.map((c) => freeze(c, n.id)),
    }
    return Object.freeze(node)
  }
  const frozenRoots = roots.map((r) => freeze(r, undefined))
  const flat: SnapshotNode[] = []
  const walk = (n: SnapshotNode): void => {
    flat.push(n)
    for (const c of n.children) walk(c)
  }
  for (const r of frozenRoots) walk(r)
  return Object.freeze({ title: (t[0] as string).replace(/:\s*$/, ''), roots: frozenRoots, all: flat })
}

/** A fault vim-cmd printed instead of a result. */
export interface VimFault {
  /** e.g. "vim.fault.NotFound" */
  readonly type: string
  /** the last part, e.g. "NotFound" */
  readonly name: string
  /** the `msg = "..."` field, '' when none */
  readonly msg: string
  /** the whole fault text */
  readonly text: string
}

// A fault is a top-level data object whose type is in a fault namespace:
// `(vim.fault.NotFound) {`, `(vmodl.fault.ManagedObjectNotFound) {`.
const FAULT_START = /^\(((?:vim|vmodl)(?:\.[A-Za-z]+)*\.fault\.([A-Za-z0-9_]+))\)\s*(\{.*)?$/m
const FAULT_MSG = /^\s*msg\s*=\s*(?:"(.*)"|'(.*)'),?\s*$/m

/** The fault in vim-cmd output, or undefined when the output holds none. */
export function parseFault(text: string): VimFault | undefined {
  const m = FAULT_START.exec(text)
  if (m === null) return undefined
  const rest = text.slice(m.index)
  const end = rest.search(/^\}\s*$/m)
  const body = end < 0 ? rest : rest.slice(0, end + 1)
  const msg = FAULT_MSG.exec(body)
  return Object.freeze({
    type: m[1] as string,
    name: m[2] as string,
    msg: msg === null ? '' : (msg[1] ?? msg[2] ?? ''),
    text: body.trimEnd(),
  })
}

/** True when a fault says the VM id does not exist. */
export function isVmNotFound(fault: VimFault): boolean {
  return fault.name === 'NotFound' && /Unable to find a VM corresponding to/.test(fault.msg)
}

/**
 * Check the output of `snapshot.create` / `snapshot.remove`: the title line
 * ("Create Snapshot:", "Remove Snapshot:") optionally followed by the
 * remaining tree (ESXi 6.x prints it after a remove).
 * @throws EsxiError E_PARSE when the output is something else
 */
export function checkSnapshotOpOutput(op: 'Create' | 'Remove', text: string): void {
  const first = text.split(/\r?\n/).find((l) => l.trim() !== '')
  if (first === undefined || first.trim() !== `${op} Snapshot:`) {
    throw new EsxiError('E_PARSE', `snapshot.${op.toLowerCase()}: expected "${op} Snapshot:", got ${JSON.stringify((first ?? '').slice(0, 200))}`)
  }
  const rest = text.slice(text.indexOf(`${op} Snapshot:`) + op.length + 10)
  if (rest.trim() !== '') {
    // the remaining tree must itself parse (title "Get Snapshot:" form)
    parseSnapshotTree(`Get Snapshot:\n${rest.replace(/^\r?\n/, '')}`)
  }
}

/** `consolidationNeeded = true` in `vim-cmd vmsvc/get.runtime` output; undefined when absent. */
export function parseConsolidationNeeded(text: string): boolean | undefined {
  const m = /^\s*consolidationNeeded\s*=\s*(true|false|<unset>)/m.exec(text)
  if (m === null || m[1] === '<unset>') return undefined
  return m[1] === 'true'
}

/** Which argument order the host's `snapshot.remove` takes. */
export type RemoveUsage = 'snapshot-id' | 'pre-5.1' | 'unknown'

/**
 * Classify the usage text `vim-cmd vmsvc/snapshot.remove` prints without
 * arguments: ESXi 5.1 and later print `Usage: snapshot.remove vmid snapId`
 * (the snapshot id second); earlier builds
 * `Usage: snapshot.remove vmid [removeChildren] [snapshotLevel] [snapshotIndex]`,
 * where a snapshot id given second is read as `removeChildren`.
 */
export function parseRemoveUsage(text: string): RemoveUsage {
  const m = /Usage:\s*snapshot\.remove\s+vmid\s+(\S+)/i.exec(text)
  if (m === null) return 'unknown'
  const second = (m[1] as string).replace(/[[\]]/g, '')
  if (/^snap(shot)?Id$/i.test(second)) return 'snapshot-id'
  if (/^removeChildren$/i.test(second)) return 'pre-5.1'
  return 'unknown'
}
