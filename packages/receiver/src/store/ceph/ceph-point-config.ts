/**
 * The configuration of a Ceph restore point (docs/POINTS.md, as the folder
 * store's point-config.ts): the source's .vmx as the state held it while
 * the VM was at that point, kept in the state object's `configs` under the
 * first 128 bits of its sha256 (points with the same .vmx share one entry)
 * and named by the point's `vmx`. Written with the state that records the
 * point (one atomic object write); entries no point names go at the same
 * write. Pure.
 */
import { createHash } from 'node:crypto'
import type { CephPoint, CephVmState } from './ceph-state.ts'

const isVmx = (name: string): boolean => /\.vmx$/i.test(name)

/** The key of a configuration (base64 of the .vmx) in `configs`. */
export function cephConfigKey(b64: string): string {
  return createHash('sha256').update(Buffer.from(b64, 'base64')).digest('hex').slice(0, 32)
}

/**
 * The point a commit records for the state's committed cycle, with that
 * cycle's .vmx (from the state's files) saved in the returned `configs`.
 */
export function withCephPointConfig(s: CephVmState, point: CephPoint): { point: CephPoint; configs: Record<string, string> } {
  const configs: Record<string, string> = { ...(s.configs ?? {}) }
  const vmx = Object.entries(s.files ?? {}).find(([name, b64]) => isVmx(name) && typeof b64 === 'string')
  if (vmx === undefined) return { point, configs }
  const key = cephConfigKey(vmx[1])
  configs[key] = vmx[1]
  return { point: { ...point, vmx: key }, configs }
}

/** The entries of `configs` some point of `points` names. */
export function keptCephConfigs(configs: Readonly<Record<string, string>> | undefined, points: readonly CephPoint[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (const p of points) {
    const b64 = p.vmx === undefined ? undefined : configs?.[p.vmx]
    if (typeof b64 === 'string') out[p.vmx as string] = b64
  }
  return out
}

/**
 * The configuration files point `cycle` is restored with: the last
 * commit's, its .vmx replaced by the point's own when the point has one
 * (the latest cycle, and points recorded before configurations were kept,
 * use the last commit's .vmx; so does a point whose entry is missing).
 */
export function cephPointFiles(s: CephVmState, cycle: number): Readonly<Record<string, string>> {
  const files = s.files ?? {}
  if (cycle === s.committedCycle) return files
  const key = s.points.find((p) => p.cycle === cycle)?.vmx
  const own = typeof key === 'string' ? s.configs?.[key] : undefined
  if (typeof own !== 'string') return files
  const out: Record<string, string> = {}
  let name = `${s.vm}.vmx`
  for (const [f, b64] of Object.entries(files)) {
    if (isVmx(f)) name = f
    else out[f] = b64
  }
  out[name] = own
  return out
}
