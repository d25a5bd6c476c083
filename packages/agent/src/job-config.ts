/**
 * Job configuration: several VMs replicated by one run.
 *
 * ```json
 * { "to": "wss://dr.example:7443", "tokenFile": "/etc/grainline/token", "caFile": "/etc/grainline/ca.pem",
 *   "defaults": { "certify": "xxh64", "bwlimit": "20M" },
 *   "vms": [ { "vm": "/vmfs/web01/web01.vmx" }, { "vm": "db01", "driver": "esxi", "certify": "sha256" } ] }
 * ```
 * Relative paths resolve against the config file's folder.
 */
import { readFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { AgentError } from './errors.ts'
import type { ReplicateInit } from './replicate.ts'

const KEYS = new Set(['vm', 'to', 'token', 'tokenFile', 'driver', 'esxi', 'deltaFormat', 'certify', 'trivialMiB', 'bwlimit', 'compress',
  'digests', 'consolidateExisting', 'caFile', 'insecure', 'insecurePlaintext', 'stateDir', 'giveUpMs', 'maxBackoffMs', 'windowBytes', 'maxExtentBytes'])
const PATH_KEYS = ['tokenFile', 'caFile', 'stateDir'] as const

function checkEntry (o: unknown, where: string): Record<string, unknown> {
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new AgentError('E_CONFIG', `${where}: expected an object`)
  for (const k of Object.keys(o)) if (!KEYS.has(k)) throw new AgentError('E_CONFIG', `${where}: unknown key "${k}"`)
  return o as Record<string, unknown>
}

/** Read a job config file into one ReplicateInit per VM (tokens read from their files). */
export async function loadJobConfig (file: string): Promise<ReplicateInit[]> {
  let raw: unknown
  try {
    raw = JSON.parse(await readFile(file, 'utf8'))
  } catch (err) {
    throw new AgentError('E_CONFIG', `${file}: ${(err as Error).message}`, { cause: err })
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new AgentError('E_CONFIG', `${file}: expected a JSON object`)
  const top = raw as Record<string, unknown>
  for (const k of Object.keys(top)) if (k !== 'vms' && k !== 'defaults' && !KEYS.has(k)) throw new AgentError('E_CONFIG', `${file}: unknown key "${k}"`)
  if (!Array.isArray(top.vms) || top.vms.length === 0) throw new AgentError('E_CONFIG', `${file}: "vms" must be a non-empty array`)
  const { vms, defaults, ...rest } = top
  const base = { ...checkEntry(defaults ?? {}, `${file} defaults`), ...checkEntry(rest, file) }
  const dir = dirname(resolve(file))
  const out: ReplicateInit[] = []
  for (const [i, entry] of (vms as unknown[]).entries()) {
    const e: Record<string, unknown> = { ...base, ...checkEntry(entry, `${file} vms[${i}]`) }
    for (const k of PATH_KEYS) if (typeof e[k] === 'string') e[k] = resolve(dir, e[k])
    if (typeof e.vm !== 'string' || e.vm === '') throw new AgentError('E_CONFIG', `${file} vms[${i}]: "vm" is required`)
    if ((e.driver ?? 'local') === 'local') e.vm = resolve(dir, e.vm)
    if (typeof e.to !== 'string') throw new AgentError('E_CONFIG', `${file} vms[${i}]: "to" is required`)
    if (e.insecurePlaintext !== undefined && typeof e.insecurePlaintext !== 'boolean') throw new AgentError('E_CONFIG', `${file} vms[${i}]: "insecurePlaintext" must be true or false`)

    if (typeof e.token !== 'string') {
      if (typeof e.tokenFile !== 'string') throw new AgentError('E_CONFIG', `${file} vms[${i}]: "tokenFile" (or "token") is required`)
      e.token = (await readFile(e.tokenFile, 'utf8')).trim()
    }
    delete e.tokenFile
    out.push(e as unknown as ReplicateInit)
  }
  return out
}
