/**
 * V8 tuning for a process that runs one replication job and exits (the CLI's
 * `replicate`, started by the systemd timer every cycle; issue #17).
 *
 * A fresh process compiles its hot functions with TurboFan on background
 * threads while the cycle ships: profiled on the 2-core development VM
 * (2026-12-01, `perf record -a` of a 4 GiB incremental, 644 extents), the
 * agent spent ~0.43 s of CPU per cycle in TurboFan alone — on a machine whose
 * two cores are both busy while the extents ship, time taken from the agent's
 * own work and from the receiver. Most of the agent's heavy work is native
 * (TLS, lz4, xxh64 in WebAssembly, reads, copies), so later tier-up costs
 * little: with a 4× interrupt budget a function is optimised after four
 * times as much bytecode has run in it, so only what stays hot for longer
 * (a seed's or a resync's loops) reaches TurboFan.
 */
import { setFlagsFromString } from 'node:v8'

/**
 * The flags {@link tuneAgentProcess} sets: V8 11's default interrupt budget
 * (67584) times four.
 */
export const AGENT_V8_FLAGS: readonly string[] = ['--interrupt-budget=270336']

/**
 * Set {@link AGENT_V8_FLAGS} in this process. Call it first in a process that
 * runs replication jobs (the CLI does for `replicate`), never in a long-lived
 * one such as the receiver, whose warm-up is amortised over its lifetime.
 */
export function tuneAgentProcess(): void {
  for (const f of AGENT_V8_FLAGS) setFlagsFromString(f)
}
