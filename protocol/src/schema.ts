/**
 * Field schemas of every message (SPEC §6) and the walkers over them: the
 * pre-scan of a frame (`scanSpec`), the validation and sizing of a value
 * (`sizeSpec`, used before encoding and after msgpackr has decoded) and the
 * key-ordered object msgpackr encodes (`toWire`). Semantic checks that span fields live in `checks.ts`.
 */
import { ProtocolError } from './errors.ts'
import { MAX_REFUSAL_DETAIL_BYTES, MessageKind } from './messages.ts'
import {
  BinRef,
  collectionHeaderSize,
  PART_MIN_BYTES,
  PATH_DICT_KEY,
  PATH_DICT_VALUE,
  PATH_INDEX,
  PATH_KEY,
  PATH_STRUCT_KEY,
  sameBytes,
  type Scanner,
  strHeaderAt,
  strHeaderSize,
  strLengthAt,
  binHeaderSize,
  uintSize,
  Uint64,
} from './msgpack.ts'
import { isWellFormed, validateName, MAX_NAME_BYTES } from './names.ts'
import { maxMessageBytesFor } from './limits.ts'
import { DDB_KEY, DESCRIPTOR_UNSAFE, MAX_DDB_ENTRIES, MAX_DDB_VALUE_BYTES } from './ddb.ts'
import { MAX_BLOCK_SIZE, MAX_MAP_BLOCKS } from './block-map.ts'

export interface UintSpec {
  readonly t: 'uint'
  readonly max: number
}
export interface BoolSpec {
  readonly t: 'bool'
}
export interface StrSpec {
  readonly t: 'str'
  readonly maxBytes: number
  /** extra check of the decoded/encoded value (pattern, name rules); throws ProtocolError */
  readonly check?: (s: string, field: string) => void
  /** what `check` requires, for SPEC §6 */
  readonly doc?: string
}
export interface BinSpec {
  readonly t: 'bin'
  readonly maxBytes: number
}
export interface ArraySpec {
  readonly t: 'array'
  readonly of: Spec
  readonly max: number
  readonly min: number
}
export interface StructSpec {
  readonly t: 'struct'
  readonly keys: readonly string[]
  readonly fields: Readonly<Record<string, Spec>>
  /** the keys as UTF-8, in schema order (the pre-scan matches wire keys against them without decoding) */
  readonly keyBytes: readonly Uint8Array[]
  /** bit k set: key k must be present (the others are {@link OptionalSpec} fields) */
  readonly required: number
}
/**
 * A struct field that may be absent (SPEC §2.1, §6 `absent | …`): which
 * versions send it is the conversation's rule (session-state.ts), not the
 * codec's, which stays stateless. Present, it is checked as `of`.
 */
export interface OptionalSpec {
  readonly t: 'optional'
  readonly of: Spec
}
export interface NullableSpec {
  readonly t: 'nullable'
  readonly of: Spec
}
export interface DictSpec {
  readonly t: 'dict'
  readonly maxEntries: number
  readonly key: StrSpec
  readonly value: StrSpec
}
export type Spec = UintSpec | BoolSpec | StrSpec | BinSpec | ArraySpec | StructSpec | NullableSpec | DictSpec | OptionalSpec

const SAFE = Number.MAX_SAFE_INTEGER

function bad(field: string, msg: string): ProtocolError {
  return new ProtocolError('E_SCHEMA', `${field}: ${msg}`, { field })
}

const uint = (max = SAFE): UintSpec => ({ t: 'uint', max })
const bool: BoolSpec = { t: 'bool' }
const str = (maxBytes: number, check?: StrSpec['check'], doc?: string): StrSpec => (check === undefined ? { t: 'str', maxBytes } : { t: 'str', maxBytes, check, ...(doc === undefined ? {} : { doc }) })
const bin = (maxBytes: number): BinSpec => ({ t: 'bin', maxBytes })
const array = (of: Spec, max: number, min = 0): ArraySpec => ({ t: 'array', of, max, min })
const nullable = (of: Spec): NullableSpec => ({ t: 'nullable', of })
const optional = (of: Spec): OptionalSpec => ({ t: 'optional', of })
function struct(fields: Record<string, Spec>): StructSpec {
  const keys = Object.keys(fields)
  if (keys.length > 31) throw new Error('a struct has at most 31 keys (the pre-scan tracks them in a bit mask)')
  const keyBytes = keys.map((k) => Buffer.from(k, 'utf8'))
  const required = keys.reduce((m, k, i) => (fields[k]?.t === 'optional' ? m : m | (1 << i)), 0)
  return { t: 'struct', keys, fields, keyBytes, required }
}
const pattern =
  (re: RegExp, what: string) =>
  (s: string, field: string): void => {
    if (!re.test(s)) throw bad(field, `${JSON.stringify(s.slice(0, 80))} is not ${what}`)
  }

/** Hard caps of protocol v2 (SPEC §1.3). */
export const HARD_LIMITS = Object.freeze({
  /** largest frame either side may ever announce */
  maxMessageBytes: maxMessageBytesFor(64 * 1024 * 1024),
  /** largest extent payload either side may ever announce */
  maxExtentBytes: 64 * 1024 * 1024,
  /** VmOpen: configuration files per VM */
  maxFiles: 64,
  /** VmOpen: bytes per configuration file */
  maxFileBytes: 16 * 1024 * 1024,
  /** VmOpen.disks, Committed.disks; disk handles are 0 … maxDisks-1 */
  maxDisks: 256,
  /** SourceIdentity.layers */
  maxLayers: 64,
  /** DiskOpen.ddb entries */
  maxDdbEntries: MAX_DDB_ENTRIES,
})

const name = (what: string): StrSpec => str(MAX_NAME_BYTES, (s, field) => validateName(s, field.length > 0 ? field : what), 'name')
const code = str(64, pattern(/^E_[A-Z0-9_]{1,62}$/, 'an error code (E_[A-Z0-9_]+)'), '/^E_[A-Z0-9_]{1,62}$/')
const cid = str(8, pattern(/^[0-9a-f]{8}$/, '8 lowercase hex digits'), '/^[0-9a-f]{8}$/')
const token = str(32, pattern(/^[a-z0-9][a-z0-9._-]{0,31}$/, 'an algorithm name'), 'token /^[a-z0-9][a-z0-9._-]{0,31}$/')
const digestBytes = bin(64)
const disk = uint(HARD_LIMITS.maxDisks - 1)
/** the step a VmProgress, DiskProgress or CommitProgress reports (SPEC §4.2, §4.3, §5.1, §5.5) */
const progressStep = str(32, pattern(/^[a-z][a-z0-9-]{0,31}$/, 'a lowercase step name'), '/^[a-z][a-z0-9-]{0,31}$/')
/** SPEC §5.8: a generation id is 128 random bits as 32 lowercase hex digits */
const generation = str(32, pattern(/^[0-9a-f]{32}$/, '32 lowercase hex digits'), '/^[0-9a-f]{32}$/')
const maybeGeneration = str(32, pattern(/^(?:|[0-9a-f]{32})$/, '32 lowercase hex digits or ""'), '"" | /^[0-9a-f]{32}$/')
const limits = struct({
  maxMessageBytes: uint(HARD_LIMITS.maxMessageBytes),
  maxExtentBytes: uint(HARD_LIMITS.maxExtentBytes),
  windowBytes: uint(),
})
const layer = struct({ file: name('file'), cid, parentCid: cid })
const source = struct({ layers: array(layer, HARD_LIMITS.maxLayers, 1), successor: name('successor') })
const retentionSpec = struct({
  keep: uint(1_000_000),
  maxAgeSeconds: uint(),
  maxBytes: uint(),
  hourly: uint(1_000_000),
  daily: uint(1_000_000),
  weekly: uint(1_000_000),
  monthly: uint(1_000_000),
})
const text = (maxBytes: number): StrSpec =>
  str(
    maxBytes,
    (s, field) => {
      if (DESCRIPTOR_UNSAFE.test(s)) throw bad(field, 'control character or double quote')
    },
    "no C0/DEL control character, no '\"'",
  )

const ddbKeyPattern = pattern(DDB_KEY, 'a DDB key')
const ddbKey = (s: string, field: string): void => {
  ddbKeyPattern(s, field)
  // decoded maps are plain objects (msgpackr mapsAsObjects), where this key is special
  if (s === '__proto__') throw bad(field, '"__proto__" is not allowed')
}

/** Field schemas per message kind; keys are in wire order (SPEC §6). */
export const Schemas: Readonly<Record<number, StructSpec>> = {
  [MessageKind.Hello]: struct({
    versions: array(uint(0xffff), 16, 1),
    software: str(256),
    digests: array(token, 16, 1),
    compressions: array(token, 16, 1),
    limits,
  }),
  [MessageKind.Welcome]: struct({
    version: uint(0xffff),
    software: str(256),
    digest: token,
    compression: token,
    limits,
    session: str(128),
  }),
  [MessageKind.VmOpen]: struct({
    vm: name('vm'),
    cycle: uint(),
    compat: struct({ hwVersion: uint(0xffff), datastoreType: str(64), guestOS: str(128) }),
    files: array(struct({ name: name('file'), data: bin(HARD_LIMITS.maxFileBytes) }), HARD_LIMITS.maxFiles),
    disks: array(name('disk'), HARD_LIMITS.maxDisks),
  }),
  [MessageKind.VmState]: struct({
    vm: name('vm'),
    exists: bool,
    committedCycle: uint(),
    inflightCycle: uint(),
    compatible: bool,
    generation: maybeGeneration,
    /** SPEC §4.2, §5.10 (version 8 and later, where it is required): the identity of the last committed cycle, "" if unknown */
    committedCycleId: optional(str(64, pattern(/^(?:|[0-9a-f]{64})$/, '64 lowercase hex digits or ""'), '"" | /^[0-9a-f]{64}$/')),
  }),
  [MessageKind.DiskOpen]: struct({
    disk,
    name: name('disk'),
    capacity: uint(),
    cycle: uint(),
    mode: str(16, pattern(/^(seed|incremental|resync)$/, '"seed", "incremental" or "resync"'), '"seed" | "incremental" | "resync"'),
    baseCycle: uint(),
    baseGeneration: maybeGeneration,
    source,
    cycleId: str(128, pattern(/^(?:[0-9a-f]{2}){8,64}$/, 'lowercase hex of 16 to 128 digits'), 'lowercase hex, 16…128 digits, even'),
    ddb: { t: 'dict', maxEntries: HARD_LIMITS.maxDdbEntries, key: str(128, ddbKey, '/^[A-Za-z0-9._:-]{1,128}$/, not "__proto__"'), value: text(MAX_DDB_VALUE_BYTES) },
    totalBytes: uint(),
    totalExtents: uint(),
    blockSize: uint(MAX_BLOCK_SIZE),
  }),
  [MessageKind.DiskState]: struct({
    disk,
    accepted: bool,
    reason: str(64, pattern(/^(?:|E_[A-Z0-9_]{1,62})$/, 'an error code or ""'), '"" | /^E_[A-Z0-9_]{1,62}$/'),
    committedCycle: uint(),
    committedSource: nullable(source),
    mirrorCid: str(8, pattern(/^(?:|[0-9a-f]{8})$/, '8 lowercase hex digits or ""'), '"" | /^[0-9a-f]{8}$/'),
    modified: bool,
    resumeSeq: uint(),
    resumeBytes: uint(),
    /** SPEC §5.1 (version 9 and later, on a refusal only): the receiver's explanation of the refusal */
    detail: optional(str(MAX_REFUSAL_DETAIL_BYTES)),
  }),
  [MessageKind.VmProgress]: struct({ vm: name('vm'), step: progressStep, doneBytes: uint(), totalBytes: uint() }),
  [MessageKind.DiskProgress]: struct({ disk, step: progressStep, doneBytes: uint(), totalBytes: uint() }),
  [MessageKind.Extent]: struct({
    disk,
    seq: uint(),
    offset: uint(),
    length: uint(),
    zero: bool,
    compression: token,
    data: bin(HARD_LIMITS.maxExtentBytes),
    digest: digestBytes,
  }),
  [MessageKind.ExtentAck]: struct({ disk, seq: uint() }),
  [MessageKind.DiskEnd]: struct({ disk, extents: uint(), dataBytes: uint(), zeroBytes: uint(), digest: digestBytes }),
  [MessageKind.DiskEnded]: struct({ disk }),
  [MessageKind.BlockMapRequest]: struct({ disk, first: uint(), count: uint(MAX_MAP_BLOCKS) }),
  [MessageKind.BlockMap]: struct({ disk, first: uint(), digests: bin(MAX_MAP_BLOCKS * 64) }),
  [MessageKind.Commit]: struct({ vm: name('vm'), cycle: uint(), retention: nullable(retentionSpec) }),
  [MessageKind.Committed]: struct({
    vm: name('vm'),
    cycle: uint(),
    generation,
    disks: array(struct({ disk, mirrorCid: cid, size: uint() }), HARD_LIMITS.maxDisks),
    retention: nullable(retentionSpec),
  }),
  [MessageKind.CommitProgress]: struct({ vm: name('vm'), cycle: uint(), step: progressStep, doneBytes: uint(), totalBytes: uint() }),
  [MessageKind.PointsDropped]: struct({ vm: name('vm'), cycle: uint(), count: uint(), oldest: uint(), newest: uint(), broken: bool, reason: str(1024) }),
  [MessageKind.TrivialCheck]: struct({ disk, prefixBytes: uint(), algorithm: token, size: uint(), digest: digestBytes }),
  [MessageKind.TrivialResult]: struct({ disk, ok: bool, size: uint(), digest: digestBytes }),
  [MessageKind.Certify]: struct({ disk, algorithm: token, digest: digestBytes }),
  [MessageKind.CertifyResult]: struct({ disk, ok: bool, algorithm: token, digest: digestBytes, bytes: uint() }),
  [MessageKind.BlockCheck]: struct({ disk, blockSize: uint(MAX_BLOCK_SIZE), blocks: bin(MAX_MAP_BLOCKS * 8), digests: bin(MAX_MAP_BLOCKS * 64) }),
  [MessageKind.BlockCheckResult]: struct({ disk, ok: bool, mismatched: bin(MAX_MAP_BLOCKS * 8) }),
  [MessageKind.Rollback]: struct({ vm: name('vm') }),
  [MessageKind.RolledBack]: struct({ vm: name('vm'), committedCycle: uint() }),
  [MessageKind.Error]: struct({ code, message: str(4096), fatal: bool }),
}

const join = (base: string, key: string): string => (base === '' ? key : `${base}.${key}`)

/**
 * Pre-scan one value of `spec` at `r` (SPEC §2.2): check types, lengths and
 * counts against the bytes left and the schema's bounds, refuse extensions,
 * unknown, duplicate and missing fields — without building any value. Nesting
 * follows the schema (at most four levels), so recursion is bounded.
 */
export function scanSpec(r: Scanner, spec: Spec): void {
  switch (spec.t) {
    case 'uint':
      r.uint(spec.max)
      return
    case 'bool':
      r.bool()
      return
    case 'str':
      r.str(spec.maxBytes)
      return
    case 'bin':
      r.bin(spec.maxBytes)
      return
    case 'nullable':
      if (!r.nil()) scanSpec(r, spec.of)
      return
    case 'optional':
      // present: the field's value (absence is the struct's business)
      scanSpec(r, spec.of)
      return
    case 'array': {
      const n = r.arrayHeader(spec.max)
      if (n < spec.min) throw r.bad(`needs at least ${spec.min} item(s)`)
      if (n === 0) return
      r.enter(PATH_INDEX, '', 0, 0)
      for (let i = 0; i < n; i++) {
        r.index(i)
        scanSpec(r, spec.of)
      }
      r.leave()
      return
    }
    case 'struct': {
      // no count cap here: every entry past the known keys is an unknown or duplicate field and fails by name
      const n = r.mapHeader(0xffffffff)
      let seen = 0
      for (let i = 0; i < n; i++) {
        r.enter(PATH_STRUCT_KEY, '', 0, 0)
        const len = r.str(64)
        r.leave()
        const at = r.strStart
        const k = findKey(spec, r.buf, at, len, i)
        if (k < 0) throw r.bad('unknown field', r.text(at, len))
        const key = spec.keys[k] as string
        if ((seen & (1 << k)) !== 0) throw r.bad('duplicate field', key)
        seen |= 1 << k
        r.enter(PATH_KEY, key, 0, 0)
        scanSpec(r, spec.fields[key] as Spec)
        r.leave()
      }
      if ((seen & spec.required) !== spec.required) {
        const missing = spec.keys.find((_, k) => (spec.required & ~seen & (1 << k)) !== 0) as string
        throw r.bad('missing field', missing)
      }
      return
    }
    case 'dict': {
      const n = r.mapHeader(spec.maxEntries)
      const first = r.pos
      for (let i = 0; i < n; i++) {
        const keyAt = r.pos
        r.enter(PATH_DICT_KEY, '', 0, 0)
        const len = r.str(spec.key.maxBytes)
        const at = r.strStart
        // msgpackr's plain-object maps rename "__proto__"; it is no DDB key anyway
        if (len === PROTO.length && PROTO.every((c, x) => r.buf[at + x] === c)) throw r.bad('"__proto__" is not allowed')
        r.leave()
        r.enter(PATH_DICT_VALUE, '', at, len)
        if (dictHasKey(r, first, keyAt, at, len)) throw r.bad('duplicate key')
        scanSpec(r, spec.value)
        r.leave()
      }
    }
  }
}

const PROTO = Buffer.from('__proto__')

/** Index of the wire key at `at` (`len` bytes) in `spec.keys`, or -1; tries `hint` first (keys usually come in schema order). */
function findKey(spec: StructSpec, b: Uint8Array, at: number, len: number, hint: number): number {
  const n = spec.keyBytes.length
  for (let j = 0; j < n; j++) {
    const k = (hint + j) % n
    const kb = spec.keyBytes[k] as Uint8Array
    if (kb.length !== len) continue
    let same = true
    for (let x = 0; x < len; x++) {
      if (kb[x] !== b[at + x]) {
        same = false
        break
      }
    }
    if (same) return k
  }
  return -1
}

/** true if a dict entry between `first` and `end` (entries of str → str, already scanned) has the key at `at` (`len` bytes) */
function dictHasKey(r: Scanner, first: number, end: number, at: number, len: number): boolean {
  const b = r.buf
  let p = first
  while (p < end) {
    const h = strHeaderAt(b, p)
    const n = strLengthAt(b, r.view, p)
    if (n === len && sameBytes(b, p + h, at, len)) return true
    p += h + n
    p += strHeaderAt(b, p) + strLengthAt(b, r.view, p) // the value
  }
  return false
}

/** What `sizeSpec` tallies besides the size. */
export interface SizeTally {
  /** UTF-8 bytes of the longest string */
  maxStr: number
  /** bytes of binaries of `PART_MIN_BYTES` or more */
  bigBin: number
}

/**
 * Check `value` against `spec` (types, ranges, sizes, patterns, names) and
 * return the bytes its canonical encoding takes. The schema validation of
 * both directions: before encoding, and after msgpackr has decoded a
 * pre-scanned frame.
 */
export function sizeSpec(spec: Spec, value: unknown, field: string, tally: SizeTally): number {
  switch (spec.t) {
    case 'uint':
      if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw bad(field, `expected a non-negative safe integer, got ${describe(value)}`)
      if (value > spec.max) throw bad(field, `${value} exceeds ${spec.max}`)
      return uintSize(value)
    case 'bool':
      if (typeof value !== 'boolean') throw bad(field, `expected a boolean, got ${describe(value)}`)
      return 1
    case 'str': {
      if (typeof value !== 'string') throw bad(field, `expected a string, got ${describe(value)}`)
      if (!isWellFormed(value)) throw bad(field, 'lone UTF-16 surrogate')
      const n = Buffer.byteLength(value, 'utf8')
      if (n > spec.maxBytes) throw bad(field, `string of ${n} bytes exceeds ${spec.maxBytes}`)
      spec.check?.(value, field)
      if (n > tally.maxStr) tally.maxStr = n
      return strHeaderSize(n) + n
    }
    case 'bin':
      if (!(value instanceof Uint8Array)) throw bad(field, `expected a Uint8Array, got ${describe(value)}`)
      if (value.length > spec.maxBytes) throw bad(field, `${value.length} bytes exceed ${spec.maxBytes}`)
      if (value.length >= PART_MIN_BYTES) tally.bigBin += value.length
      return binHeaderSize(value.length) + value.length
    case 'nullable':
      return value === null ? 1 : sizeSpec(spec.of, value, field, tally)
    case 'optional':
      return sizeSpec(spec.of, value, field, tally)
    case 'array': {
      if (!Array.isArray(value)) throw bad(field, `expected an array, got ${describe(value)}`)
      if (value.length > spec.max) throw bad(field, `${value.length} items exceed ${spec.max}`)
      if (value.length < spec.min) throw bad(field, `needs at least ${spec.min} item(s)`)
      let n = collectionHeaderSize(value.length)
      for (let i = 0; i < value.length; i++) n += sizeSpec(spec.of, value[i], `${field}[${i}]`, tally)
      return n
    }
    case 'struct': {
      if (typeof value !== 'object' || value === null || Array.isArray(value) || value instanceof Uint8Array) throw bad(field, `expected an object, got ${describe(value)}`)
      const o = value as Record<string, unknown>
      let n = 0
      let present = 0
      for (let i = 0; i < spec.keys.length; i++) {
        const key = spec.keys[i] as string
        const v = o[key]
        if (v === undefined) {
          if ((spec.required & (1 << i)) !== 0) throw bad(join(field, key), 'missing field')
          continue
        }
        present++
        n += 1 + (spec.keyBytes[i] as Uint8Array).length + sizeSpec(spec.fields[key] as Spec, v, join(field, key), tally)
      }
      n += collectionHeaderSize(present)
      for (const key of Object.keys(o)) {
        if (key !== 'kind' || field !== '') {
          if (!Object.hasOwn(spec.fields, key) && o[key] !== undefined) throw bad(join(field, key), 'unknown field')
        }
      }
      return n
    }
    case 'dict': {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad(field, `expected an object, got ${describe(value)}`)
      const entries = Object.entries(value)
      if (entries.length > spec.maxEntries) throw bad(field, `${entries.length} entries exceed ${spec.maxEntries}`)
      let n = collectionHeaderSize(entries.length)
      for (const [k, v] of entries) {
        n += sizeSpec(spec.key, k, `${field}(key)`, tally)
        n += sizeSpec(spec.value, v, `${field}[${JSON.stringify(k)}]`, tally)
      }
      return n
    }
  }
}

/**
 * The object msgpackr encodes for `value` (already checked by `sizeSpec`):
 * map keys in schema order, integers above 2^32 - 1 as `Uint64` (written as
 * `cf`), and — when `refs` is given — binaries of `PART_MIN_BYTES` or more as
 * `BinRef`s (header only, payload passed by reference).
 */
export function toWire(spec: Spec, value: unknown, refs: BinRef[] | undefined): unknown {
  switch (spec.t) {
    case 'uint':
      return (value as number) > 0xffffffff ? new Uint64(value as number) : value
    case 'bool':
    case 'str':
      return value
    case 'bin': {
      const data = value as Uint8Array
      if (refs === undefined || data.length < PART_MIN_BYTES) return data
      const ref = new BinRef(data)
      refs.push(ref)
      return ref
    }
    case 'nullable':
      return value === null ? null : toWire(spec.of, value, refs)
    case 'optional':
      return toWire(spec.of, value, refs)
    case 'array':
      return (value as unknown[]).map((item) => toWire(spec.of, item, refs))
    case 'struct': {
      const o = value as Record<string, unknown>
      const out: Record<string, unknown> = {}
      // an absent optional field is not written (sizeSpec counted only the present ones)
      for (const key of spec.keys) if (o[key] !== undefined) out[key] = toWire(spec.fields[key] as Spec, o[key], refs)
      return out
    }
    case 'dict': {
      // keys were checked by sizeSpec: never "__proto__"
      const out: Record<string, unknown> = {}
      for (const [k, v] of Object.entries(value as Record<string, string>)) out[k] = v
      return out
    }
  }
}

function describe(v: unknown): string {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'array'
  if (v instanceof Uint8Array) return 'Uint8Array'
  return typeof v
}

function describeSpec(spec: Spec, indent: string): string {
  switch (spec.t) {
    case 'uint':
      return spec.max === SAFE ? 'uint' : `uint ≤ ${spec.max}`
    case 'bool':
      return 'bool'
    case 'str':
      return `str ≤ ${spec.maxBytes} B${spec.doc === undefined ? '' : `, ${spec.doc}`}`
    case 'bin':
      return `bin ≤ ${spec.maxBytes} B`
    case 'nullable':
      return `nil | ${describeSpec(spec.of, indent)}`
    case 'optional':
      return `absent | ${describeSpec(spec.of, indent)}`
    case 'array':
      return `array[${spec.min > 0 ? `${spec.min}…` : '≤ '}${spec.max}] of ${describeSpec(spec.of, indent)}`
    case 'dict':
      return `map[≤ ${spec.maxEntries}] of (${describeSpec(spec.key, indent)}) → (${describeSpec(spec.value, indent)})`
    case 'struct': {
      const inner = indent + '  '
      return `map {\n${spec.keys.map((k) => `${inner}${k}: ${describeSpec(spec.fields[k] as Spec, inner)}`).join('\n')}\n${indent}}`
    }
  }
}

/** The byte grammar of every message, generated from the schemas (the SPEC §6 block). */
export function describeGrammar(): string {
  const lines: string[] = []
  for (const [key, kind] of Object.entries(MessageKind)) {
    const spec = Schemas[kind] as StructSpec
    const name = key.replace(/[A-Z]/g, (c, i: number) => (i > 0 ? '-' : '') + c.toLowerCase())
    lines.push(`${name} := u8(0x${kind.toString(16).padStart(2, '0')}) • ${describeSpec(spec, '')}`)
  }
  return lines.join('\n\n')
}
