/**
 * The mirror's .vmx: the source .vmx rewritten so that the mirror boots from
 * its own files and nothing else. A .vmx is shipped by the agent; booting it
 * at the DR site must never attach another tenant's mirror, a host device or
 * a file outside the mirror folder.
 */
import { basename } from 'node:path'

/** @default " (grainline mirror)" */
export const DEFAULT_DISPLAY_SUFFIX = ' (grainline mirror)'

/** The base disk name a .vmx disk reference stands for (strips `-000001` delta suffixes and any path). */
export function baseDiskName(ref: string): string {
  const b = basename(ref.replace(/\\/g, '/'))
  return b.replace(/-\d{6}\.vmdk$/i, '.vmdk')
}

/** The names a device's `fileName` may be mirrored under, most specific first (agent vm-files.ts mirrorDiskNames). */
function diskCandidates(diskMap: ReadonlyMap<string, string>, device: string, value: string): string[] {
  const raw = basename(value.replace(/\\/g, '/'))
  const base = baseDiskName(value)
  const node = device.replace(/:/g, '-')
  return [...new Set([`${node}_${raw}`, `${node}_${base}`, raw, base])].filter((k) => diskMap.has(k))
}

/**
 * Which mirrored disk (its key in `diskMap`) each disk device of a .vmx
 * attaches (by lowercased device), each disk to one device at most.
 * - Two disks of a VM with one base name (on two datastores) are mirrored
 *   under distinct names: the agent prefixes every later one with its
 *   device node (`scsi0:1` → `scsi0-1_x.vmdk`); by its base name alone the
 *   second device would attach the first disk.
 * - The names are given by position among the disks the agent replicates:
 *   when the first of two such disks leaves the VM or is made independent,
 *   the second is mirrored under the plain name. A name the agent `carried`
 *   in the cycle wins over one no cycle writes any more.
 * - A device whose candidates are all taken attaches nothing (its device is
 *   disabled): devices not in independent mode choose first (the agent
 *   replicates them), then file order — so an independent disk sharing a
 *   replicated disk's name never attaches that disk's mirror.
 * A base disk whose own name ends in `-NNNNNN` is found by its name as is.
 */
function assignDisks(lines: readonly string[], diskMap: ReadonlyMap<string, string>, carried: ReadonlySet<string> | undefined): Map<string, string> {
  const values = new Map<string, string>()
  const refs: Array<{ device: string; value: string }> = []
  for (const line of lines) {
    const m = LINE.exec(line)
    if (m === null) continue
    const key = m[2] as string
    const value = unescapeVmx(m[4] ?? m[5] ?? '')
    values.set(key.toLowerCase(), value)
    if (/\.filename$/i.test(key) && /\.vmdk$/i.test(value)) refs.push({ device: key.slice(0, -'.fileName'.length), value })
  }
  const devices = refs.map((r, order) => {
    const cands = diskCandidates(diskMap, r.device, r.value)
    return {
      device: r.device.toLowerCase(),
      // carried names first, otherwise the most specific
      cands: [...cands.filter((k) => carried?.has(k) === true), ...cands.filter((k) => carried?.has(k) !== true)],
      independent: /independent/i.test(values.get(`${r.device.toLowerCase()}.mode`) ?? ''),
      order,
    }
  })
  devices.sort((a, b) => Number(a.independent) - Number(b.independent) || a.order - b.order)
  const taken = new Set<string>()
  const out = new Map<string, string>()
  for (const d of devices) {
    if (out.has(d.device)) continue
    const k = d.cands.find((c) => !taken.has(c))
    if (k === undefined) continue
    taken.add(k)
    out.set(d.device, k)
  }
  return out
}

/**
 * The mirrored disks (of `names`) a source .vmx attaches: a device's
 * `fileName` names it ({@link assignDisks}), whatever the device's
 * `present` says — a disk an independent or disabled device still names is
 * not taken for removed. A disk the .vmx does not name was removed from the
 * VM (commit.ts records the cycle). `carried`: the disks the cycle wrote.
 */
export function attachedDisks(text: string, names: Iterable<string>, carried?: ReadonlySet<string>): Set<string> {
  return new Set(mirrorVmx(text, { suffix: '', diskMap: new Map([...names].map((n) => [n, n])), ...(carried === undefined ? {} : { carried }) }).attached)
}

/** VmOpen.disks as mirror disk names: each as it is (the agent sends mirror names), and as a delta file name would stand for its base (`x-000002.vmdk` → `x.vmdk`). */
export function namedDisks(disks: readonly string[]): Set<string> {
  return new Set([...disks, ...disks.map(baseDiskName)])
}

/**
 * The disks a commit takes for attached: those the staged .vmx attaches and
 * those the VmOpen names (the agent read them from that .vmx: a disk it
 * names is never taken for removed, whatever the rewrite's mapping makes of
 * its device); undefined (nothing known) stays undefined.
 */
export function withNamed(attached: ReadonlySet<string> | undefined, named: ReadonlySet<string>): Set<string> | undefined {
  return attached === undefined ? undefined : new Set([...attached, ...named])
}

/** A reference the rewrite did not keep, and what it did instead. */
export interface DroppedReference {
  /** the .vmx key, e.g. "scsi0:2.fileName", "nvram" */
  readonly key: string
  /** its value as the source .vmx had it (escapes decoded) */
  readonly value: string
  /** `device disabled` (present = FALSE), `disconnected` (a CD-ROM image: startConnected = FALSE), `removed` (the line) */
  readonly action: 'device disabled' | 'disconnected' | 'removed'
}

/** Keys (lowercase) whose value names a file or folder, besides `<device>.fileName`. */
const PATH_KEYS = new Set([
  'nvram',
  'extendedconfigfile',
  'vmxstats.filename',
  'checkpoint.vmstate',
  'sched.swap.derivedname',
  'sched.swap.dir',
  'workingdir',
  'suspend.directory',
  'migrate.hostlog',
  'log.filename',
])

/** Device slots of disk controllers (`scsi0:1`, `ide1:0`, `sata0:0`, `nvme0:2`): a non-disk image there is a CD-ROM. */
const DISK_SLOT = /^(?:scsi|ide|sata|nvme)\d+:\d+$/
/** Devices whose `fileName` attaches a file or host device, and that `present = "FALSE"` disables. */
const DEVICE = /^(?:(?:scsi|ide|sata|nvme)\d+:\d+|serial\d+|parallel\d+|floppy\d+)$/

const LINE = /^([ \t]*)([A-Za-z0-9_.:-]+)([ \t]*=[ \t]*)(?:"(.*)"|([^"\s]*))[ \t]*$/

/**
 * The .vmx key in which grainline records the mark it added to `displayName` (the mirror's suffix, an opened,
 * restored or archived point's, a failover's). The next mark replaces exactly that one: a name of the VM's own that
 * looks like a mark (`Build (opened)`, `web (point 2)`) is kept. ESXi keeps keys it does not know, so the record
 * travels with the .vmx: a VM restored or opened, registered and replicated since carries it to its mirror.
 */
export const DISPLAY_MARK_KEY = 'grainline.displayMark'

/**
 * `name` without the mark grainline `recorded` (when the name still ends with it: a VM renamed since keeps its new
 * name whole), or, in a .vmx written before marks were recorded (`recorded` undefined), without `legacy` (the
 * mirror's suffix, the one mark such a .vmx is known to carry), with `suffix` after it. A name that is nothing but
 * its mark keeps it (an empty name is no name).
 */
export function markedDisplayName(name: string, suffix: string, recorded: string | undefined, legacy?: string): string {
  const mark = recorded ?? legacy ?? ''
  const base = mark !== '' && name.length > mark.length && name.endsWith(mark) ? name.slice(0, -mark.length) : name
  return `${base}${suffix}`
}

/**
 * The .vmx `text` with its display name marked: {@link markedDisplayName} (the mark recorded under
 * {@link DISPLAY_MARK_KEY} replaced by `suffix`, or by what `suffix` makes of the recorded mark), and the new mark
 * recorded after it (no record for an empty suffix). The one function every .vmx grainline writes is marked by (the
 * mirror's, an opened or restored point's, a failover's, an archive's restore). A .vmx without a displayName is
 * returned as it is.
 */
export function markVmx(text: string, suffix: string | ((recorded: string | undefined) => string), legacy?: string): string {
  const eol = text.includes('\r\n') ? '\r\n' : '\n'
  const lines = text.split(/\r?\n/)
  const keyOf = (line: string): string | undefined => LINE.exec(line)?.[2]?.toLowerCase()
  const markKey = DISPLAY_MARK_KEY.toLowerCase()
  const at = lines.findIndex((l) => keyOf(l) === 'displayname')
  if (at < 0) return text
  let recorded: string | undefined
  for (const l of lines) {
    const m = LINE.exec(l)
    if (m?.[2]?.toLowerCase() === markKey) recorded = m[4] ?? m[5] ?? ''
  }
  const mark = typeof suffix === 'string' ? suffix : suffix(recorded)
  const out: string[] = []
  lines.forEach((line, i) => {
    if (i === at) {
      const [, lead, key, eq, quoted, bare] = LINE.exec(line) as unknown as [string, string, string, string, string | undefined, string | undefined]
      out.push(`${lead}${key}${eq}"${markedDisplayName(quoted ?? bare ?? '', mark, recorded, legacy)}"`)
      if (mark !== '') out.push(`${DISPLAY_MARK_KEY} = "${mark}"`)
    } else if (keyOf(line) !== markKey) out.push(line)
  })
  return out.join(eol)
}

/** Decode the .vmx `|XX` hex escapes (ESXi reads `..|2F` as `../`). */
function unescapeVmx(v: string): string {
  return v.replace(/\|([0-9A-Fa-f]{2})/g, (_m, h: string) => String.fromCharCode(Number.parseInt(h, 16)))
}

/** A bare name inside the mirror folder: no separator, no parent, no drive. */
function insideFolder(v: string): boolean {
  return v !== '' && v !== '..' && !/[/\\]/.test(v) && !/^[A-Za-z]:/.test(v)
}

function isPathKey(k: string): boolean {
  return k.endsWith('.filename') || PATH_KEYS.has(k)
}

/**
 * Rewrite a source .vmx for the mirror. `displayName` gets `suffix` (markVmx). A
 * `<device>.fileName` naming a mirrored disk (assignDisks: its node-prefixed name, then its base name, in `diskMap`; each disk to one device) points
 * at the mirror descriptor. Every other file reference is kept only if it is
 * a bare name inside the mirror folder (not a .vmdk that is not mirrored):
 * a disk elsewhere gets its device disabled (`present = "FALSE"`), a CD-ROM
 * image elsewhere loses its file and `startConnected` (the drive stays), a
 * serial, parallel or floppy device reaching outside is disabled, any other
 * path setting (`nvram`, swap, log, working folder…) is removed so that the
 * VM uses its defaults in its own folder. Other lines are kept byte for byte.
 * Returns the text and what was dropped.
 */
export function mirrorVmx(
  text: string,
  opts: { suffix: string; diskMap: ReadonlyMap<string, string>; carried?: ReadonlySet<string> },
): { text: string; dropped: DroppedReference[]; attached: string[] } {
  const eol = text.includes('\r\n') ? '\r\n' : '\n'
  const lines = text.split(/\r?\n/)
  const dropped: DroppedReference[] = []
  /** keys of `diskMap` a device's fileName was pointed at */
  const attached = new Set<string>()
  const assigned = assignDisks(lines, opts.diskMap, opts.carried)
  /** device → the setting forced on it */
  const force = new Map<string, { key: 'present' | 'startconnected'; name: string }>()
  let sawName = false
  const out: Array<string | undefined> = lines.map((line) => {
    const m = LINE.exec(line)
    if (m === null) {
      // an unparsable line that sets a path key cannot be judged: drop it
      const k = /^[ \t]*([A-Za-z0-9_.:-]+)[ \t]*=/.exec(line)?.[1]
      if (k !== undefined && isPathKey(k.toLowerCase())) {
        dropped.push({ key: k, value: line.slice(line.indexOf('=') + 1).trim(), action: 'removed' })
        return undefined
      }
      return line
    }
    const [, lead, key, eq, quoted, bare] = m as unknown as [string, string, string, string, string | undefined, string | undefined]
    const k = key.toLowerCase()
    const value = unescapeVmx(quoted ?? bare ?? '')
    // marked below (markVmx), as every .vmx grainline writes
    if (k === 'displayname') sawName = true
    if (!isPathKey(k)) return line
    const isVmdk = /\.vmdk$/i.test(value)
    if (k.endsWith('.filename') && isVmdk) {
      const mk = assigned.get(key.slice(0, -'.fileName'.length).toLowerCase())
      if (mk !== undefined) {
        attached.add(mk)
        return `${lead}${key}${eq}"${opts.diskMap.get(mk)}"`
      }
    } else if (insideFolder(value) || (k === 'workingdir' && value === '.')) {
      return line
    }
    // a reference out of the mirror (or to a disk it does not hold)
    const dev = key.slice(0, -'.fileName'.length)
    if (k.endsWith('.filename') && DEVICE.test(dev.toLowerCase())) {
      const slot = DISK_SLOT.test(dev.toLowerCase())
      const action = slot && !isVmdk ? 'disconnected' : 'device disabled'
      force.set(dev.toLowerCase(), action === 'disconnected' ? { key: 'startconnected', name: dev } : { key: 'present', name: dev })
      dropped.push({ key, value, action })
    } else {
      dropped.push({ key, value, action: 'removed' })
    }
    return undefined
  })
  // apply the forced settings, replacing existing lines of them
  const done = new Set<string>()
  for (let i = 0; i < out.length; i++) {
    const line = out[i]
    if (line === undefined) continue
    const m = LINE.exec(line)
    if (m === null) continue
    const [, lead, key, eq] = m as unknown as [string, string, string, string]
    const dot = key.lastIndexOf('.')
    const dev = key.slice(0, dot).toLowerCase()
    const f = force.get(dev)
    if (f !== undefined && key.slice(dot + 1).toLowerCase() === f.key) {
      out[i] = `${lead}${key}${eq}"FALSE"`
      done.add(dev)
    }
  }
  const kept = out.filter((l): l is string => l !== undefined)
  const at = kept.length > 0 && kept[kept.length - 1] === '' ? kept.length - 1 : kept.length
  const extra: string[] = []
  for (const [dev, f] of force) {
    if (!done.has(dev)) extra.push(`${f.name}.${f.key === 'present' ? 'present' : 'startConnected'} = "FALSE"`)
  }
  if (!sawName) extra.push(`displayName = "${opts.suffix.trim()}"`)
  kept.splice(at, 0, ...extra)
  // the mirror's name: the source's, without a mark grainline recorded in it (a VM restored or opened and replicated
  // since), and the mirror's suffix; a source .vmx of no record that ends with the suffix already is not marked twice
  const joined = kept.join(eol)
  return { text: sawName && opts.suffix !== '' ? markVmx(joined, opts.suffix, opts.suffix) : joined, dropped, attached: [...attached] }
}
