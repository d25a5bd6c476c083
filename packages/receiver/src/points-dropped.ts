/**
 * The PointsDropped message of a commit (SPEC §5.5, protocol version 6):
 * built from the record the commit wrote in the VM's state
 * (state-file.ts `pointsDropped`), so that the agent hears exactly what
 * `grainline status`, the dashboard and `/metrics` say.
 */
import { MessageKind, truncateUtf8, type PointsDroppedMessage } from '@grainline/protocol'
import { pointsDroppedOf } from './state-file.ts'

/** Longest `reason` of a PointsDropped, UTF-8 bytes (SPEC §6). */
const MAX_REASON_BYTES = 1024

/**
 * The PointsDropped to send for the commit of `cycle` of `vm`, or undefined
 * when that commit dropped no point (no record, or the record of an older
 * commit). `state` is the VM's state as the commit wrote it.
 */
export function pointsDroppedNotice(vm: string, cycle: number, state: { readonly pointsDropped?: unknown }): PointsDroppedMessage | undefined {
  const r = pointsDroppedOf(state)
  if (r === undefined || r.cycle !== cycle) return undefined
  // points are older cycles than the one committed (SPEC §5.5: oldest ≤ newest < cycle)
  const cycles = r.cycles.filter((c) => c >= 0 && c < cycle)
  if (cycles.length === 0) return undefined
  let oldest = cycles[0] as number
  let newest = oldest
  for (const c of cycles) {
    if (c < oldest) oldest = c
    if (c > newest) newest = c
  }
  // distinct integers between oldest and newest: never more than the range holds (pointsDroppedOf checked them)
  return { kind: MessageKind.PointsDropped, vm, cycle, count: new Set(cycles).size, oldest, newest, broken: r.broken, reason: truncateUtf8(r.why, MAX_REASON_BYTES) }
}
