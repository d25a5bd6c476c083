import { createHash, timingSafeEqual } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { parseByteSize } from '@grainline/protocol'
import { ReceiverError } from './errors.ts'

/** Sessions one token may hold at once unless its entry says otherwise. */
export const DEFAULT_MAX_SESSIONS = 4

/** VMs one token may keep in the store unless its entry says otherwise (vm-count.ts). */
export const DEFAULT_MAX_VMS = 1024

/** One entry of the tokens file. */
export interface TokenEntry {
  /** who holds the token (logged; the token itself never is) */
  readonly name: string
  readonly token: string
  /** globs on VM names this token may replicate (`*` and `?` wildcards) */
  readonly vms: readonly string[]
  /**
   * sessions (upgraded connections) this token may hold at once; one more gets HTTP 503
   * @default 4
   */
  readonly maxSessions?: number
  /**
   * bytes the mirrors of this token's VMs may take (allocated, plus what a
   * DiskOpen could add); above it a DiskOpen fails with E_QUOTA. In the
   * tokens file a size such as "500G" or a number of bytes.
   * @default undefined (no quota)
   */
  readonly quota?: number
  /**
   * VMs this token may keep in the store (the store's VMs its `vms` globs
   * cover); a VmOpen of one more new VM fails with E_QUOTA before anything
   * of it is written
   * @default 1024
   */
  readonly maxVms?: number
  /**
   * `"agent"` replicates (the replication port); `"viewer"` only reads the
   * dashboard and its API on the HTTP listener (and sees only the VMs its
   * `vms` globs cover). Neither is accepted where the other belongs.
   * @default "agent"
   */
  readonly role?: TokenRole
}

/** What a token is for. */
export const TokenRoles = ['agent', 'viewer'] as const
export type TokenRole = (typeof TokenRoles)[number]

const TOKEN_KEYS = new Set(['name', 'token', 'vms', 'maxSessions', 'maxVms', 'quota', 'role'])

/** A loaded token table: constant-time lookup and VM globs. */
export interface TokenTable {
  /** the entry whose token equals `presented`, compared in constant time, or undefined */
  lookup(presented: string): TokenEntry | undefined
  readonly size: number
}

/** Parse and validate `{"tokens":[{"name","token","vms":[…],"maxSessions"?,"maxVms"?,"quota"?,"role"?}]}` (a viewer's `vms` defaults to `["*"]`). */
export function parseTokens(json: unknown, source = 'tokens'): TokenEntry[] {
  const list = (json as { tokens?: unknown } | null)?.tokens
  if (!Array.isArray(list)) throw new ReceiverError('E_CONFIG', `${source}: expected {"tokens": [...]}`)
  const out: TokenEntry[] = []
  list.forEach((e: unknown, i) => {
    const o = e as Record<string, unknown> | null
    if (o === null || typeof o !== 'object') throw new ReceiverError('E_CONFIG', `${source}: tokens[${i}] is not an object`)
    const { name, token, maxSessions, maxVms, quota, role } = o
    const vms = o['vms'] === undefined && role === 'viewer' ? ['*'] : o['vms']
    if (typeof name !== 'string' || name === '') throw new ReceiverError('E_CONFIG', `${source}: tokens[${i}].name must be a non-empty string`)
    for (const k of Object.keys(o)) if (!TOKEN_KEYS.has(k)) throw new ReceiverError('E_CONFIG', `${source}: tokens[${i}] (${name}): unknown key ${k}`)
    if (typeof token !== 'string' || token.length < 16) throw new ReceiverError('E_CONFIG', `${source}: tokens[${i}] (${name}): token must be a string of at least 16 characters`)
    if (role !== undefined && !TokenRoles.includes(role as TokenRole)) throw new ReceiverError('E_CONFIG', `${source}: tokens[${i}] (${name}): role must be "agent" or "viewer"`)
    if (!Array.isArray(vms) || !vms.every((v) => typeof v === 'string' && v !== '')) throw new ReceiverError('E_CONFIG', `${source}: tokens[${i}] (${name}): vms must be a list of globs`)
    if (maxSessions !== undefined && (typeof maxSessions !== 'number' || !Number.isSafeInteger(maxSessions) || maxSessions < 1)) {
      throw new ReceiverError('E_CONFIG', `${source}: tokens[${i}] (${name}): maxSessions must be a positive integer`)
    }
    if (maxVms !== undefined && (typeof maxVms !== 'number' || !Number.isSafeInteger(maxVms) || maxVms < 1)) {
      throw new ReceiverError('E_CONFIG', `${source}: tokens[${i}] (${name}): maxVms must be a positive integer`)
    }
    let quotaBytes: number | undefined
    if (quota !== undefined && quota !== null) {
      if (typeof quota !== 'string' && typeof quota !== 'number') throw new ReceiverError('E_CONFIG', `${source}: tokens[${i}] (${name}): quota must be a size such as "500G"`)
      try {
        quotaBytes = parseByteSize(quota, `${source}: tokens[${i}] (${name}): quota`)
      } catch (err) {
        throw new ReceiverError('E_CONFIG', (err as Error).message)
      }
    }
    out.push(
      Object.freeze({
        name,
        token,
        vms: Object.freeze([...(vms as string[])]),
        ...(maxSessions === undefined ? {} : { maxSessions }),
        ...(maxVms === undefined ? {} : { maxVms: maxVms as number }),
        ...(quotaBytes === undefined ? {} : { quota: quotaBytes }),
        ...(role === 'viewer' ? { role: 'viewer' as const } : {}),
      }),
    )
  })
  return out
}

/** Read a tokens file. */
export async function loadTokensFile(file: string): Promise<TokenEntry[]> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new ReceiverError('E_CONFIG', `cannot read tokens file ${file}: ${(err as Error).message}`)
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw new ReceiverError('E_CONFIG', `tokens file ${file} is not JSON: ${(err as Error).message}`)
  }
  return parseTokens(json, file)
}

function hash(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest()
}

/**
 * Build a token table. Presented tokens are compared against every entry
 * with `timingSafeEqual` over SHA-256 digests (equal lengths, no early exit),
 * so timing reveals neither which entry matched nor a token's length.
 */
export function createTokenTable(entries: readonly TokenEntry[]): TokenTable {
  const hashed = entries.map((e) => ({ entry: e, h: hash(e.token) }))
  return {
    size: hashed.length,
    lookup(presented: string): TokenEntry | undefined {
      const h = hash(presented)
      let found: TokenEntry | undefined
      for (const x of hashed) {
        if (timingSafeEqual(h, x.h) && found === undefined) found = x.entry
      }
      return found
    },
  }
}

/** Extract the token of an `Authorization: Bearer <token>` header. */
export function bearerToken(header: string | undefined): string | undefined {
  if (header === undefined) return undefined
  const m = /^Bearer[ ]+([\x21-\x7e]+)[ ]*$/i.exec(header)
  return m?.[1]
}

/** Glob match on a VM name: `*` any run, `?` one character, all else literal. */
export function globMatch(glob: string, name: string): boolean {
  const re = new RegExp(
    '^' +
      glob
        .split('')
        .map((ch) => {
          if (ch === '*') return '.*'
          if (ch === '?') return '.'
          return ch.replace(/[\\^$.|+()[\]{}]/g, '\\$&')
        })
        .join('') +
      '$',
    's',
  )
  return re.test(name)
}

/** Whether a token may touch a VM. */
export function mayAccess(entry: TokenEntry, vm: string): boolean {
  return entry.vms.some((g) => globMatch(g, vm))
}
