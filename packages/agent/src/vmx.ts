/**
 * .vmx / .vmsd files: `key = "value"` lines. Parsing is pure; a rewrite keeps
 * every line it does not change (unknown keys, comments, order).
 */
import { AgentError } from './errors.ts'

interface Line {
  /** original text, used when the entry is not changed */
  raw: string
  key?: string
  value?: string
}

// VMware escapes characters in values as `|XX` (hex), e.g. `|22` for a quote.
function decodeValue(v: string): string {
  return v.replace(/\|([0-9A-Fa-f]{2})/g, (_m, hex: string) => String.fromCharCode(parseInt(hex, 16)))
}
function encodeValue(v: string): string {
  return v.replace(/[|"\x00-\x1f]/g, (c) => '|' + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0'))
}

const LINE = /^\s*([A-Za-z0-9_.:-]+)\s*=\s*(?:"([^"]*)"|(\S*))\s*$/

/** A parsed .vmx (or .vmsd). Keys are case-insensitive, as VMware treats them. */
export class VmxConfig {
  readonly #lines: Line[]
  private constructor(lines: Line[]) {
    this.#lines = lines
  }

  /** Parse text. Lines that are not `key = value` are kept verbatim. */
  static parse(text: string, file = '<vmx>'): VmxConfig {
    if (text.length > 16 * 1024 * 1024) throw new AgentError('E_VMX', `${file}: larger than 16 MiB`)
    if (text.includes('\0')) throw new AgentError('E_VMX', `${file}: binary content`)
    const lines: Line[] = []
    for (const raw of text.split(/\r?\n/)) {
      const m = LINE.exec(raw)
      if (m === null || raw.trimStart().startsWith('#')) {
        lines.push({ raw })
        continue
      }
      lines.push({ raw, key: m[1] as string, value: decodeValue(m[2] ?? m[3] ?? '') })
    }
    while (lines.length > 0 && lines[lines.length - 1]?.raw === '' && lines[lines.length - 1]?.key === undefined) lines.pop()
    return new VmxConfig(lines)
  }

  /** An empty config. */
  static empty(): VmxConfig {
    return new VmxConfig([])
  }

  /** The value of `key` (case-insensitive), or undefined. The last assignment wins. */
  get(key: string): string | undefined {
    const k = key.toLowerCase()
    let v: string | undefined
    for (const l of this.#lines) if (l.key?.toLowerCase() === k) v = l.value
    return v
  }

  /** Every key/value pair in file order. */
  entries(): Array<[string, string]> {
    const out: Array<[string, string]> = []
    for (const l of this.#lines) if (l.key !== undefined) out.push([l.key, l.value ?? ''])
    return out
  }

  /** Set a key (replacing every assignment of it in place, or appending). */
  set(key: string, value: string): this {
    const k = key.toLowerCase()
    let found = false
    for (let i = 0; i < this.#lines.length; i++) {
      const l = this.#lines[i] as Line
      if (l.key?.toLowerCase() !== k) continue
      if (found) {
        this.#lines.splice(i, 1)
        i--
        continue
      }
      found = true
      this.#lines[i] = { raw: `${l.key} = "${encodeValue(value)}"`, key: l.key, value }
    }
    if (!found) this.#lines.push({ raw: `${key} = "${encodeValue(value)}"`, key, value })
    return this
  }

  /** Remove every assignment of a key. */
  delete(key: string): this {
    const k = key.toLowerCase()
    for (let i = this.#lines.length - 1; i >= 0; i--) if (this.#lines[i]?.key?.toLowerCase() === k) this.#lines.splice(i, 1)
    return this
  }

  /** Remove every key starting with `prefix` (case-insensitive). */
  deletePrefix(prefix: string): this {
    const p = prefix.toLowerCase()
    for (let i = this.#lines.length - 1; i >= 0; i--) if (this.#lines[i]?.key?.toLowerCase().startsWith(p) === true) this.#lines.splice(i, 1)
    return this
  }

  /** The text, unchanged lines verbatim, ending in a newline. */
  serialize(): string {
    return this.#lines.map((l) => l.raw).join('\n') + '\n'
  }
}

/** A hard disk named by a .vmx. */
export interface VmxDisk {
  /** "scsi0:0", "sata0:1", "nvme0:0", "ide1:0" (as spelled in the file) */
  readonly node: string
  /** the `.fileName` value (relative to the .vmx folder, absolute, or a datastore path) */
  readonly fileName: string
}

const DISK_KEY = /^((?:scsi|sata|nvme|ide)\d+:\d+)\.filename$/i
const NOT_DISK = /cdrom|atapi|floppy/i

/**
 * Every present hard disk of a .vmx, in file order: `<bus>N:M.fileName` with
 * `<bus>N:M.present = "TRUE"`, its controller `<bus>N.present` not FALSE, and a
 * deviceType that is not a CD-ROM (a missing deviceType counts as a disk when
 * the file name ends in `.vmdk`).
 */
export function vmxDisks(config: VmxConfig): VmxDisk[] {
  const out: VmxDisk[] = []
  const seen = new Set<string>()
  for (const [key, value] of config.entries()) {
    const m = DISK_KEY.exec(key)
    if (m === null) continue
    const node = m[1] as string
    if (seen.has(node.toLowerCase())) continue
    const present = config.get(`${node}.present`)
    if (present === undefined || present.toLowerCase() !== 'true') continue
    const controller = node.split(':')[0] as string
    if (config.get(`${controller}.present`)?.toLowerCase() === 'false') continue
    const deviceType = config.get(`${node}.deviceType`)
    const fileName = config.get(`${node}.fileName`) ?? value
    if (deviceType !== undefined ? NOT_DISK.test(deviceType) : !/\.vmdk$/i.test(fileName)) continue
    if (fileName === '') continue
    seen.add(node.toLowerCase())
    out.push({ node, fileName })
  }
  return out
}

/** Parse the numeric `virtualHW.version` (0 when absent). */
export function vmxHardwareVersion(config: VmxConfig): number {
  const v = Number(config.get('virtualHW.version') ?? '0')
  return Number.isSafeInteger(v) && v >= 0 ? v : 0
}
