import { VmdkError } from './errors.ts'

/** VMDK 1.1 §"Extent descriptions": access modes of an extent line. */
export type ExtentAccess = 'RW' | 'RDONLY' | 'NOACCESS'

/** One extent line: `ACCESS SECTORS TYPE ["FILENAME" [OFFSET [extra...]]]`. */
export interface ExtentLine {
  readonly access: ExtentAccess
  /** extent size in 512-byte sectors */
  readonly sectors: number
  /** FLAT, SPARSE, ZERO, VMFS, VMFSSPARSE, SESPARSE, VMFSRDM, VMFSRAW, VSANSPARSE, ... (upper case) */
  readonly type: string
  /** file name as written (relative to the descriptor's folder unless absolute) */
  readonly file?: string
  /** offset in sectors into the file (FLAT lines) */
  readonly offset?: number
  /** anything after the offset (partition UUID, device id), kept verbatim */
  readonly extra?: string
}

type Line =
  | { readonly kind: 'raw'; readonly text: string }
  | { readonly kind: 'header'; readonly key: string; readonly value: string; readonly quoted: boolean; readonly text: string }
  | { readonly kind: 'extent'; readonly extent: ExtentLine; readonly text: string }
  | { readonly kind: 'ddb'; readonly key: string; readonly value: string; readonly text: string }

/** Bound before we parse: a descriptor is a few KiB; anything near this is not one. */
export const MAX_DESCRIPTOR_BYTES = 1024 * 1024
const MAX_SECTORS = 2 ** 53 / 512

const EXTENT_RE = /^(RW|RDONLY|NOACCESS)[ \t]+(\d+)[ \t]+([A-Za-z0-9_]+)(?:[ \t]+"([^"]*)"(?:[ \t]+(\d+))?)?(.*)$/
// applied to trimmed lines; no lazy quantifier before a `$` (quadratic on long blank runs)
const DDB_RE = /^(ddb\.[^=\s]+)[ \t]*=[ \t]*"(.*)"$/i
const HEADER_RE = /^([A-Za-z][A-Za-z0-9_.]*)[ \t]*=[ \t]*(.*)$/

/** `"x"` → x (and a flag), otherwise as is. */
function unquote(v: string): { value: string; quoted: boolean } {
  if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) return { value: v.slice(1, -1), quoted: true }
  return { value: v, quoted: false }
}

function renderExtent(e: ExtentLine): string {
  let s = `${e.access} ${e.sectors} ${e.type}`
  if (e.file !== undefined) {
    s += ` "${e.file}"`
    if (e.offset !== undefined) s += ` ${e.offset}`
  }
  return s + (e.extra ?? '')
}

function validateExtent(e: ExtentLine): void {
  if (!Number.isSafeInteger(e.sectors) || e.sectors < 0 || e.sectors > MAX_SECTORS) {
    throw new VmdkError('E_DESCRIPTOR', `extent size out of range: ${e.sectors}`)
  }
  if (e.file !== undefined && /["\r\n\0]/.test(e.file)) throw new VmdkError('E_DESCRIPTOR', 'extent file name contains a quote, newline or NUL')
  if (e.offset !== undefined && (!Number.isSafeInteger(e.offset) || e.offset < 0 || e.offset > MAX_SECTORS)) {
    throw new VmdkError('E_DESCRIPTOR', `extent offset out of range: ${e.offset}`)
  }
}

/**
 * A parsed text descriptor. Immutable: the `with…` methods return new objects.
 * Lines that were not changed serialize byte-for-byte as they were read
 * (comments, unknown keys, spacing), so a parse/serialize round trip is exact.
 */
export class Descriptor {
  readonly #lines: readonly Line[]
  /** line separator found in the input (`\n` or `\r\n`); used for changed/added lines */
  readonly newline: '\n' | '\r\n'
  readonly #trailing: string

  /** @internal use {@link parseDescriptor} */
  constructor(lines: readonly Line[], newline: '\n' | '\r\n', trailing: string) {
    this.#lines = Object.freeze(lines.slice())
    this.newline = newline
    this.#trailing = trailing
    Object.freeze(this)
  }

  /** A header key's value (case-insensitive, quotes removed), or undefined. */
  get(key: string): string | undefined {
    const k = key.toLowerCase()
    for (const l of this.#lines) if (l.kind === 'header' && l.key.toLowerCase() === k) return l.value
    return undefined
  }

  /** All header keys in order (unquoted values). */
  get header(): ReadonlyArray<readonly [string, string]> {
    const out: Array<readonly [string, string]> = []
    for (const l of this.#lines) if (l.kind === 'header') out.push([l.key, l.value])
    return out
  }

  /** `version=` as a number (1 if missing). */
  get version(): number {
    const v = this.get('version')
    const n = v === undefined ? 1 : Number(v)
    return Number.isSafeInteger(n) ? n : NaN
  }

  /** `CID` as written (hex, QEMU may omit leading zeros). */
  get cid(): string {
    return this.get('CID') ?? 'ffffffff'
  }
  /** `parentCID` as written; `ffffffff` means no parent. */
  get parentCid(): string {
    return this.get('parentCID') ?? 'ffffffff'
  }
  get createType(): string {
    return this.get('createType') ?? ''
  }
  get parentFileNameHint(): string | undefined {
    return this.get('parentFileNameHint')
  }
  get changeTrackPath(): string | undefined {
    return this.get('changeTrackPath')
  }
  get encoding(): string | undefined {
    return this.get('encoding')
  }

  get extents(): readonly ExtentLine[] {
    const out: ExtentLine[] = []
    for (const l of this.#lines) if (l.kind === 'extent') out.push(l.extent)
    return out
  }

  /** The disk data base (`ddb.*` keys, values unquoted), in file order. */
  get ddb(): ReadonlyMap<string, string> {
    const m = new Map<string, string>()
    for (const l of this.#lines) if (l.kind === 'ddb') m.set(l.key, l.value)
    return m
  }

  /** Size of the disk described: sum of all extent sizes, in bytes. */
  get capacity(): number {
    let s = 0
    for (const e of this.extents) s += e.sectors * 512
    return s
  }

  /** Set (or add, after the last header key) a header key. `undefined` removes it. */
  with(key: string, value: string | undefined, quoted?: boolean): Descriptor {
    const k = key.toLowerCase()
    if (value !== undefined && /["\r\n\0]/.test(value)) throw new VmdkError('E_DESCRIPTOR', `value of ${key} contains a quote, newline or NUL`)
    const lines = this.#lines.slice()
    const idx = lines.findIndex((l) => l.kind === 'header' && l.key.toLowerCase() === k)
    if (value === undefined) {
      if (idx >= 0) lines.splice(idx, 1)
      return new Descriptor(lines, this.newline, this.#trailing)
    }
    const old = idx >= 0 ? lines[idx] : undefined
    const q = quoted ?? (old?.kind === 'header' ? old.quoted : defaultQuoted(key))
    const name = old?.kind === 'header' ? old.key : key
    const line: Line = { kind: 'header', key: name, value, quoted: q, text: `${name}=${q ? `"${value}"` : value}` }
    if (idx >= 0) {
      lines[idx] = line
    } else {
      let last = -1
      for (let i = 0; i < lines.length; i++) if (lines[i]?.kind === 'header' && !isSectionKey((lines[i] as { key: string }).key)) last = i
      if (last < 0) last = lines.findIndex((l) => l.kind === 'raw' && /^#\s*Disk DescriptorFile/i.test(l.text))
      lines.splice(last + 1, 0, line)
    }
    return new Descriptor(lines, this.newline, this.#trailing)
  }

  withCid(cid: string): Descriptor {
    return this.with('CID', formatCid(cid), false)
  }
  withParentCid(cid: string): Descriptor {
    return this.with('parentCID', formatCid(cid), false)
  }
  withCreateType(t: string): Descriptor {
    return this.with('createType', t, true)
  }
  /** Set parentFileNameHint and parentCID together (`undefined` hint removes the parent). */
  withParent(hint: string | undefined, parentCid: string): Descriptor {
    return this.with('parentFileNameHint', hint, true).withParentCid(parentCid)
  }

  /** Replace all extent lines (new lines go where the old ones were, or after the header). */
  withExtents(extents: readonly ExtentLine[]): Descriptor {
    for (const e of extents) validateExtent(e)
    const lines = this.#lines.slice()
    let at = lines.findIndex((l) => l.kind === 'extent')
    const kept: Line[] = lines.filter((l) => l.kind !== 'extent')
    if (at < 0) {
      const hdr = kept.findIndex((l) => l.kind === 'raw' && /^#\s*Extent description/i.test(l.text))
      at = hdr >= 0 ? hdr + 1 : kept.length
    } else {
      // position among kept lines = number of non-extent lines before the first extent
      at = lines.slice(0, at).filter((l) => l.kind !== 'extent').length
    }
    kept.splice(at, 0, ...extents.map((e) => ({ kind: 'extent' as const, extent: e, text: renderExtent(e) })))
    return new Descriptor(kept, this.newline, this.#trailing)
  }

  /** Set (or append) a `ddb.` key; `undefined` removes it. */
  withDdb(key: string, value: string | undefined): Descriptor {
    const k = key.toLowerCase().startsWith('ddb.') ? key : `ddb.${key}`
    if (value !== undefined && /["\r\n\0]/.test(value)) throw new VmdkError('E_DESCRIPTOR', `value of ${k} contains a quote, newline or NUL`)
    const lines = this.#lines.slice()
    const idx = lines.findIndex((l) => l.kind === 'ddb' && l.key.toLowerCase() === k.toLowerCase())
    if (value === undefined) {
      if (idx >= 0) lines.splice(idx, 1)
      return new Descriptor(lines, this.newline, this.#trailing)
    }
    const line: Line = { kind: 'ddb', key: k, value, text: `${k} = "${value}"` }
    if (idx >= 0) {
      lines[idx] = line
    } else {
      let last = -1
      for (let i = 0; i < lines.length; i++) if (lines[i]?.kind === 'ddb') last = i
      if (last < 0) {
        lines.push({ kind: 'raw', text: '' }, { kind: 'raw', text: '# The Disk Data Base' }, { kind: 'raw', text: '#DDB' }, { kind: 'raw', text: '' })
        last = lines.length - 1
      }
      lines.splice(last + 1, 0, line)
    }
    return new Descriptor(lines, this.newline, this.#trailing)
  }

  /** Serialize; unchanged lines come back exactly as parsed. */
  toString(): string {
    return this.#lines.map((l) => l.text).join(this.newline) + this.#trailing
  }
}

function isSectionKey(key: string): boolean {
  return key.toLowerCase() === 'changetrackpath'
}

function defaultQuoted(key: string): boolean {
  return !/^(version|CID|parentCID)$/i.test(key)
}

/** Normalize a CID to 8 lowercase hex digits; throws E_DESCRIPTOR on anything else. */
export function formatCid(cid: string): string {
  if (!/^[0-9a-fA-F]{1,8}$/.test(cid)) throw new VmdkError('E_DESCRIPTOR', `bad CID: ${JSON.stringify(cid)}`)
  return cid.toLowerCase().padStart(8, '0')
}

/** Compare two CIDs numerically (QEMU writes them without leading zeros). */
export function sameCid(a: string, b: string): boolean {
  const x = Number.parseInt(a, 16)
  const y = Number.parseInt(b, 16)
  return /^[0-9a-fA-F]{1,8}$/.test(a) && /^[0-9a-fA-F]{1,8}$/.test(b) && x === y
}

/** A new random CID, never one of the reserved values ffffffff/fffffffe [OV]. */
export function randomCid(): string {
  for (;;) {
    const v = (Math.random() * 0x100000000) >>> 0
    if (v < 0xfffffffe) return v.toString(16).padStart(8, '0')
  }
}

/**
 * Parse a text descriptor (VMDK.md §1.2). Pure. Accepts LF or CRLF, comments, blank
 * lines, unknown keys (kept for the round trip). Throws `VmdkError('E_DESCRIPTOR')`
 * for text that is not a descriptor.
 */
export function parseDescriptor(text: string): Descriptor {
  if (text.length > MAX_DESCRIPTOR_BYTES) throw new VmdkError('E_DESCRIPTOR', `descriptor larger than ${MAX_DESCRIPTOR_BYTES} bytes`)
  if (text.includes('\0')) throw new VmdkError('E_DESCRIPTOR', 'descriptor contains NUL bytes')
  const newline: '\n' | '\r\n' = text.includes('\r\n') ? '\r\n' : '\n'
  // keep the final separator(s) verbatim so the round trip is exact (scanned by hand:
  // a regex anchored at the end would be quadratic on long runs of newlines)
  let end = text.length
  while (end > 0 && (text[end - 1] === '\n' || text[end - 1] === '\r')) end--
  const trailing = text.slice(end)
  const body = text.slice(0, end)
  const raw = body.length > 0 ? body.split('\n') : []
  const lines: Line[] = []
  let sawVersion = false
  for (const r of raw) {
    // a CRLF file yields "...\r" per line; the separator is re-added on output
    const textLine = newline === '\r\n' && r.endsWith('\r') ? r.slice(0, -1) : r
    const t = textLine.trim()
    if (t === '' || t.startsWith('#')) {
      lines.push({ kind: 'raw', text: textLine })
      continue
    }
    const em = EXTENT_RE.exec(t)
    if (em !== null) {
      const extent: ExtentLine = {
        access: em[1] as ExtentAccess,
        sectors: Number(em[2]),
        type: (em[3] ?? '').toUpperCase(),
        ...(em[4] !== undefined ? { file: em[4] } : {}),
        ...(em[5] !== undefined ? { offset: Number(em[5]) } : {}),
        ...(em[6] !== undefined && em[6] !== '' ? { extra: em[6] } : {}),
      }
      validateExtent(extent)
      lines.push({ kind: 'extent', extent, text: textLine })
      continue
    }
    const dm = DDB_RE.exec(t)
    if (dm !== null) {
      lines.push({ kind: 'ddb', key: dm[1] ?? '', value: dm[2] ?? '', text: textLine })
      continue
    }
    const hm = HEADER_RE.exec(t)
    if (hm !== null) {
      const key = hm[1] ?? ''
      const { value, quoted } = unquote(hm[2] ?? '')
      if (key.toLowerCase() === 'version') sawVersion = true
      if (key.toLowerCase().startsWith('ddb.')) {
        lines.push({ kind: 'ddb', key, value, text: textLine })
      } else {
        lines.push({ kind: 'header', key, value, quoted, text: textLine })
      }
      continue
    }
    throw new VmdkError('E_DESCRIPTOR', `unrecognised descriptor line: ${JSON.stringify(t.slice(0, 80))}`)
  }
  const d = new Descriptor(lines, newline, trailing)
  if (!sawVersion && d.createType === '') throw new VmdkError('E_DESCRIPTOR', 'not a VMDK descriptor (no version or createType)')
  const cid = d.get('CID')
  if (cid !== undefined && !/^[0-9a-fA-F]{1,8}$/.test(cid)) throw new VmdkError('E_DESCRIPTOR', `bad CID: ${JSON.stringify(cid)}`)
  const pcid = d.get('parentCID')
  if (pcid !== undefined && !/^[0-9a-fA-F]{1,8}$/.test(pcid)) throw new VmdkError('E_DESCRIPTOR', `bad parentCID: ${JSON.stringify(pcid)}`)
  return d
}

/** Serialize a descriptor (inverse of {@link parseDescriptor}). */
export function serializeDescriptor(d: Descriptor): string {
  return d.toString()
}

/** Build a fresh descriptor from parts (used by the writers). */
export function buildDescriptor(init: {
  cid: string
  parentCid?: string
  createType: string
  parentFileNameHint?: string
  extents: readonly ExtentLine[]
  ddb?: ReadonlyArray<readonly [string, string]>
  encoding?: string | null
}): Descriptor {
  const L: string[] = ['# Disk DescriptorFile', 'version=1']
  if (init.encoding !== null) L.push(`encoding="${init.encoding ?? 'UTF-8'}"`)
  L.push(`CID=${formatCid(init.cid)}`, `parentCID=${formatCid(init.parentCid ?? 'ffffffff')}`)
  if (init.createType === 'vmfsSparse' || init.createType === 'seSparse') L.push('isNativeSnapshot="no"')
  L.push(`createType="${init.createType}"`)
  if (init.parentFileNameHint !== undefined) L.push(`parentFileNameHint="${init.parentFileNameHint}"`)
  L.push('', '# Extent description')
  for (const e of init.extents) {
    validateExtent(e)
    L.push(renderExtent(e))
  }
  L.push('', '# The Disk Data Base', '#DDB', '')
  for (const [k, v] of init.ddb ?? []) L.push(`${k.startsWith('ddb.') ? k : `ddb.${k}`} = "${v}"`)
  return parseDescriptor(L.join('\n') + '\n')
}
