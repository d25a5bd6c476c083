/**
 * The resync rows of the open-disk decision (SPEC §5.1, §5.9), kept apart
 * from `open-decision.ts` so that the incremental rules read as they were.
 * Pure.
 */
import type { MirrorFacts, OpenDecision, OpenInputs } from './open-decision.ts'
import type { InflightDisk } from './state-file.ts'

/**
 * Why a fresh resync cannot start, or undefined when it can: it needs a
 * compatible VM and a committed mirror whose flat exists and whose capacity
 * does not shrink. Generation, chain, modification and divergence do not
 * matter: a resync makes the mirror equal to the source whatever it holds.
 */
export function resyncRefusal(x: OpenInputs): OpenDecision | undefined {
  const { request: req, record: rec } = x
  if (!x.compatible) {
    return {
      kind: 'refuse',
      code: 'E_INCOMPATIBLE',
      message: `VM ${x.vm}: hardware version or datastore type differ from the mirror's (SPEC §4.2): no resync; seed a new mirror after checking the VM`,
    }
  }
  if (rec === undefined) return { kind: 'refuse', code: 'E_CHAIN_MISMATCH', message: `disk ${req.name} has no committed mirror to compare with: seed it` }
  if (x.facts.flatSize < 0) return { kind: 'refuse', code: 'E_CHAIN_MISMATCH', message: `the flat image of disk ${req.name} is missing: nothing to compare with, seed it` }
  if (req.capacity < rec.capacity) return { kind: 'refuse', code: 'E_CHAIN_MISMATCH', message: `capacity of ${req.name} shrank from ${rec.capacity} to ${req.capacity}: seed it` }
  return undefined
}

/**
 * Whether the mirror under an interrupted resync changed since the resync
 * started (descriptor CID, or a flat smaller than at the start: the apply
 * only grows it). Records without a start (older state) count as changed.
 */
export function resyncStartChanged(inf: InflightDisk, facts: MirrorFacts): boolean {
  const from = inf.resyncFrom
  if (from === undefined) return true
  return facts.cid !== from.cid || facts.flatSize < Math.min(from.flatSize, inf.capacity)
}
