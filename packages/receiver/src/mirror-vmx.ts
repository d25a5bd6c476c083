import { basename } from 'node:path'

/** @default " (grainline mirror)" */
export const DEFAULT_DISPLAY_SUFFIX = ' (grainline mirror)'

/** The base disk name a .vmx disk reference stands for (strips `-000001` delta suffixes and any path). */
export function baseDiskName (ref: string): string {
  const b = basename(ref.replace(/\\/g, '/'))
  return b.replace(/-\d{6}\.vmdk$/i, '.vmdk')
}

/**
 * Rewrite a source .vmx for the mirror: `displayName` gets `suffix`, each
 * `<device>.fileName` naming a disk whose base name is in `diskMap` is pointed
 * at the mirror descriptor; other lines are kept byte for byte.
 */
export function mirrorVmx (text: string, opts: { suffix: string, diskMap: ReadonlyMap<string, string> }): string {
  const eol = text.includes('\r\n') ? '\r\n' : '\n'
  const lines = text.split(/\r?\n/)
  let sawName = false
  const out = lines.map((line) => {
    const m = /^([ \t]*)([A-Za-z0-9_.:-]+)([ \t]*=[ \t]*)"(.*)"[ \t]*$/.exec(line)
    if (m === null) return line
    const [, lead, key, eq, value] = m as unknown as [string, string, string, string, string]
    const k = key.toLowerCase()
    if (k === 'displayname') {
      sawName = true
      return value.endsWith(opts.suffix) ? line : `${lead}${key}${eq}"${value}${opts.suffix}"`
    }
    if (k.endsWith('.filename') && /\.vmdk$/i.test(value)) {
      const mirror = opts.diskMap.get(baseDiskName(value))
      if (mirror !== undefined) return `${lead}${key}${eq}"${mirror}"`
    }
    return line
  })
  if (!sawName) {
    const at = out.length > 0 && out[out.length - 1] === '' ? out.length - 1 : out.length
    out.splice(at, 0, `displayName = "${opts.suffix.trim()}"`)
  }
  return out.join(eol)
}
