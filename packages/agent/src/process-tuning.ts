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
 * little: a function reaches TurboFan after about four times as many calls
 * as by default, so only what stays hot for longer (a seed's or a resync's
 * loops) gets there.
 *
 * The knob depends on the engine. V8 11 (Node.js 20) tiers up on an
 * interrupt budget, counted in bytecode run. V8 12 (Node.js 22) and 13
 * (Node.js 24) have no `--interrupt-budget` — setting it there printed
 * "Error: unrecognized flag" on every run and changed nothing — and send a
 * function to TurboFan after an invocation count instead (Maglev, their
 * mid tier, compiles cheaply and is left as it is).
 */
import { setFlagsFromString } from 'node:v8'

/**
 * The flags {@link tuneAgentProcess} sets under the V8 version `v8Version`
 * (`process.versions.v8`). Measured with `--trace-opt
 * --no-concurrent-recompilation` on a small function called from an
 * unoptimised loop (test/process-tuning.test.ts), the call at which it is
 * marked for TurboFan:
 *
 * | engine | default | with these flags |
 * | --- | --- | --- |
 * | V8 11.3 (Node 20.20) | 2,000–4,000 | 8,000–16,000 (`--interrupt-budget=270336`, 4 × 67,584) |
 * | V8 12.4 (Node 22.23) | 2,000–4,000 | 8,000–16,000 (`--invocation-count-for-turbofan=12000`, 4 × 3,000) |
 * | V8 13.6 (Node 24.22) | 10,000–11,000 | 48,000–64,000 (`--invocation-count-for-turbofan=48000`; 12000 only moved it to 12,000–16,000) |
 */
export function agentV8Flags(v8Version: string = process.versions.v8): readonly string[] {
  const major = Number.parseInt(v8Version, 10)
  if (!(major >= 12)) return ['--interrupt-budget=270336']
  if (major === 12) return ['--invocation-count-for-turbofan=12000']
  return ['--invocation-count-for-turbofan=48000']
}

/** The flags {@link tuneAgentProcess} sets in this process ({@link agentV8Flags} of its engine). */
export const AGENT_V8_FLAGS: readonly string[] = agentV8Flags()

/**
 * Set {@link AGENT_V8_FLAGS} in this process. Call it first in a process that
 * runs replication jobs (the CLI does for `replicate`), never in a long-lived
 * one such as the receiver, whose warm-up is amortised over its lifetime.
 */
export function tuneAgentProcess(): void {
  for (const f of AGENT_V8_FLAGS) setFlagsFromString(f)
}
