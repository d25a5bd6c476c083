/**
 * The rules a disk's DDB (descriptor database: `ddb.key = "value"` lines)
 * is held to on the wire (DiskOpen.ddb, SPEC §6) and wherever grainline
 * writes one into a descriptor again (a restore from the S3 archive): one
 * definition, so what the receiver records is exactly what a restore accepts.
 */

/** A DDB key: what VMware writes (`ddb.adapterType`, `ddb.uuid`, `ddb.toolsVersion`…). */
export const DDB_KEY = /^[A-Za-z0-9._:-]{1,128}$/

/** A DDB value's bound, UTF-8 bytes. */
export const MAX_DDB_VALUE_BYTES = 4096

/** At most this many DDB entries on one disk. */
export const MAX_DDB_ENTRIES = 256

/**
 * What a descriptor's quoted value may not hold: a C0 control character or
 * DEL (a line break would add lines), a double quote (would end the value).
 */
// eslint-disable-next-line no-control-regex
export const DESCRIPTOR_UNSAFE = /[\u0000-\u001f\u007f"]/

/**
 * What is wrong with `ddb` by those rules, in words (a key or value shown
 * cut to 80 characters), or undefined when it keeps them. `__proto__` is no
 * key: decoded maps are plain objects, where it is special.
 */
export function ddbProblem(ddb: Readonly<Record<string, unknown>>): string | undefined {
  const entries = Object.entries(ddb)
  if (entries.length > MAX_DDB_ENTRIES) return `${entries.length} entries, over ${MAX_DDB_ENTRIES}`
  for (const [k, v] of entries) {
    if (!DDB_KEY.test(k) || k === '__proto__') return `the key ${JSON.stringify(k.slice(0, 80))}`
    if (typeof v !== 'string' || Buffer.byteLength(v) > MAX_DDB_VALUE_BYTES || DESCRIPTOR_UNSAFE.test(v))
      return `the value of ${k} (${JSON.stringify(String(v).slice(0, 80))}: a quote, a control character, or over ${MAX_DDB_VALUE_BYTES} bytes)`
  }
  return undefined
}
