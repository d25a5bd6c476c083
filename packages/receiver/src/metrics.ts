/**
 * Prometheus metrics of a receiver (prom-client), served by its HTTP listener
 * (`GET /metrics` on `httpListen`, off by default; http-listener.ts) so the
 * replication port never answers plain HTTP.
 *
 * Two kinds of figures:
 * - the state of every mirror, read from the store at each scrape (last
 *   commit time and age — the RPO —, committed cycle, check results,
 *   divergence, a cycle in flight, its restore points — how many, how far
 *   back, the last time they were all dropped — and holds): what an alert
 *   rule needs, true even right after a restart;
 * - what this process did since it started, counted as it happens: bytes
 *   applied, cycle durations, sessions, refused connections.
 *
 * Mirror labels come from the store (VM and disk names the receiver accepted,
 * SPEC §6), so their number is bounded by the store, not by peers; refusal
 * reasons are a fixed set.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { storeStatus, type VmStatus } from './store-admin.ts'
import { RpoStates, assessRpo, rpoTargetMs, type RpoPolicy, type StoreReader } from './store-overview.ts'
import type { RefusalReason } from './refusal-log.ts'
import { HealthStates, assessMirror } from './store-health.ts'

/** What sessions and the server report as it happens (all optional to call). */
export interface ReceiverObserver {
  /** a connection or session turned away */
  refused(reason: RefusalReason): void
  /** a session started (after authentication) for the token `peer` */
  sessionOpened(peer: string): void
  /** a disk's extents are all applied (DiskEnd) */
  diskSealed(vm: string, disk: string, counts: { readonly dataBytes: number; readonly zeroBytes: number; readonly extents: number }): void
  /** a cycle committed; `seconds` from VmOpen to the durable commit */
  cycleCommitted(vm: string, seconds: number): void
  /** a trivial check or certify ran on a committed disk */
  checked(vm: string, disk: string, check: 'trivial' | 'certify', ok: boolean): void
  /** a session opened `vm` for `cycle` (VmOpen accepted) */
  cycleOpened?(vm: string, cycle: number, peer: string): void
  /** a disk was accepted for the cycle: `totalBytes` announced, `doneBytes` already applied (a resume) */
  diskOpened?(vm: string, disk: string, mode: string, totalBytes: number, doneBytes: number): void
  /** a durable batch of the disk was acknowledged: `doneBytes` applied so far */
  diskProgress?(vm: string, disk: string, doneBytes: number): void
  /** the session that held `vm` ended (its resources released) */
  sessionEnded?(vm: string): void
  /** the session of `vm` ended with an error sent to the agent */
  sessionFailed?(vm: string, cycle: number, code: string, message: string): void
}

/** The metrics of one receiver. */
export class ReceiverMetrics implements ReceiverObserver {
  readonly registry = new Registry()
  readonly #read: () => Promise<{ vms: readonly VmStatus[] }>
  readonly #bytes: Counter<'vm' | 'disk' | 'kind'>
  readonly #cycles: Histogram<'vm'>
  readonly #sessions: Counter<'peer'>
  readonly #refused: Counter<'reason'>
  readonly #checks: Counter<'vm' | 'disk' | 'check' | 'result'>

  /**
   * @param store the mirror store read at each scrape: a folder, or a reader (the Ceph store's, store-overview.ts)
   * @param sessionsNow open sessions right now
   * @param rpo the receiver's RPO targets (`rpo` in its configuration), as the dashboard assesses them
   */
  constructor(store: string | StoreReader, sessionsNow: () => number, rpo?: RpoPolicy) {
    this.#read = typeof store === 'string' ? () => storeStatus(store) : () => store.status()
    const registers = [this.registry]
    collectDefaultMetrics({ register: this.registry, prefix: 'grainline_receiver_' })
    this.#bytes = new Counter({
      name: 'grainline_applied_bytes_total',
      help: 'Bytes of the virtual disk applied to the mirror since start, by kind (data extents, zero extents)',
      labelNames: ['vm', 'disk', 'kind'],
      registers,
    })
    this.#cycles = new Histogram({
      name: 'grainline_cycle_duration_seconds',
      help: 'Receiver-side duration of committed cycles (VmOpen to durable commit)',
      labelNames: ['vm'],
      buckets: [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600],
      registers,
    })
    this.#sessions = new Counter({ name: 'grainline_sessions_total', help: 'Sessions started since start, by token name', labelNames: ['peer'], registers })
    this.#refused = new Counter({ name: 'grainline_connections_refused_total', help: 'Connections or sessions turned away since start, by reason', labelNames: ['reason'], registers })
    this.#checks = new Counter({ name: 'grainline_checks_total', help: 'Trivial checks and certifies run since start, by result', labelNames: ['vm', 'disk', 'check', 'result'], registers })
    new Gauge({
      name: 'grainline_sessions',
      help: 'Sessions open now',
      registers,
      collect() {
        this.set(sessionsNow())
      },
    })
    this.#mirrorGauges(registers, rpo)
  }

  /** Gauges computed from the store at each scrape. */
  #mirrorGauges(registers: Registry[], rpo: RpoPolicy | undefined): void {
    const read = this.#read
    // one store read per scrape, shared by every gauge's collect() (prom-client awaits each of them)
    let pending: Promise<void> | undefined
    const collect = (): Promise<void> => {
      pending ??= fill().finally(() => {
        pending = undefined
      })
      return pending
    }
    const gauge = <L extends string>(name: string, help: string, labelNames: readonly L[]): Gauge<L> => new Gauge({ name, help, labelNames, registers, collect })
    const lastCommit = gauge('grainline_mirror_last_commit_timestamp_seconds', 'Unix time of the last committed cycle of the mirror', ['vm'])
    const age = gauge('grainline_mirror_age_seconds', 'Seconds since the last committed cycle (the recovery point age)', ['vm'])
    const cycle = gauge('grainline_mirror_committed_cycle', 'Number of the last committed cycle', ['vm'])
    const inflight = gauge('grainline_mirror_cycle_in_flight', '1 while a cycle is in flight or needs recovery', ['vm'])
    const unreadable = gauge('grainline_mirror_state_unreadable', "1 when the mirror's state could not be read", ['vm'])
    const check = gauge('grainline_disk_check_ok', 'Result of the last check of the disk (1 ok, 0 mismatch); absent when never run', ['vm', 'disk', 'check'])
    const diverged = gauge('grainline_disk_diverged', '1 when the disk is marked diverged from its source (the next cycle resyncs it)', ['vm', 'disk'])
    const modified = gauge(
      'grainline_disk_modified',
      '1 when the mirror disk changed since its last commit (booted or edited; on a Ceph store: its committed snapshot or image removed or shrunk behind the store)',
      ['vm', 'disk'],
    )
    const capacity = gauge('grainline_disk_capacity_bytes', 'Virtual size of the mirrored disk', ['vm', 'disk'])
    const points = gauge('grainline_restore_points', 'Restore points kept of the VM (not counting the mirror)', ['vm'])
    const oldestPoint = gauge('grainline_restore_point_oldest_timestamp_seconds', 'Unix time of the oldest restore point (how far back the VM can be restored); absent when it has none', ['vm'])
    const newestPoint = gauge('grainline_restore_point_newest_timestamp_seconds', 'Unix time of the newest restore point; absent when it has none', ['vm'])
    const dropped = gauge(
      'grainline_restore_points_dropped_timestamp_seconds',
      'Unix time of the last commit that dropped every restore point of the VM outside its retention (a capacity change without room, a re-seed or resync of a modified mirror, points turned off); absent when none did',
      ['vm', 'broken'],
    )
    const health = gauge(
      'grainline_mirror_health',
      "The mirror's health as grainline status reports it (0 OK, 1 WARNING, 2 CRITICAL), its age aside: grainline_mirror_rpo_state is the age against the RPO target",
      ['vm'],
    )
    const holds = gauge('grainline_mirror_holds', 'Opened points and failovers holding the mirror: while above 0, no cycle is applied (E_HELD)', ['vm'])
    const rpoTarget = gauge('grainline_mirror_rpo_target_seconds', "The VM's recovery point objective (the receiver's rpo setting, default 24 h)", ['vm'])
    const rpoState = gauge(
      'grainline_mirror_rpo_state',
      "The mirror's age against its RPO target as the dashboard shows it: 0 OK, 1 WARNING (past 80 % of the target), 2 CRITICAL (past the target, or never committed)",
      ['vm'],
    )
    const gauges: Array<{ reset(): void }> = [
      lastCommit,
      age,
      cycle,
      inflight,
      unreadable,
      check,
      diverged,
      modified,
      capacity,
      points,
      oldestPoint,
      newestPoint,
      dropped,
      holds,
      health,
      rpoTarget,
      rpoState,
    ]
    async function fill(): Promise<void> {
      const st = await read()
      for (const g of gauges) g.reset()
      const now = Date.now()
      for (const vm of st.vms) {
        const v = { vm: vm.vm }
        // a store's state file can hold anything (a hostile or damaged store): one VM that cannot be
        // read into gauges is that VM unreadable, never a failed scrape of every VM
        try {
          health.set(v, HealthStates[assessMirror(vm, { now }).state])
          if (vm.error !== undefined) {
            unreadable.set(v, 1)
            continue
          }
          unreadable.set(v, 0)
          cycle.set(v, vm.committedCycle)
          inflight.set(v, vm.needsRecovery ? 1 : 0)
          const at = vm.committedAt === null ? Number.NaN : Date.parse(vm.committedAt)
          const ageSeconds = Number.isFinite(at) ? Math.max(0, (now - at) / 1000) : null
          if (ageSeconds !== null) {
            lastCommit.set(v, at / 1000)
            age.set(v, ageSeconds)
          }
          const targetMs = rpoTargetMs(rpo, vm.vm)
          rpoTarget.set(v, targetMs / 1000)
          rpoState.set(v, RpoStates.indexOf(assessRpo(targetMs, ageSeconds === null ? null : Math.floor(ageSeconds)).state))
          points.set(v, vm.points?.length ?? 0)
          // a loop, not Math.min(...): a store's state can list any number of points
          let oldest = Number.POSITIVE_INFINITY
          let newest = Number.NEGATIVE_INFINITY
          for (const p of vm.pointsCommittedAt ?? []) {
            const t = typeof p === 'string' ? Date.parse(p) : Number.NaN
            if (!Number.isFinite(t)) continue
            oldest = Math.min(oldest, t)
            newest = Math.max(newest, t)
          }
          if (Number.isFinite(oldest)) {
            oldestPoint.set(v, oldest / 1000)
            newestPoint.set(v, newest / 1000)
          }
          const dropAt = vm.pointsDropped === undefined ? Number.NaN : Date.parse(vm.pointsDropped.at)
          if (Number.isFinite(dropAt)) dropped.set({ ...v, broken: vm.pointsDropped?.broken === true ? 'true' : 'false' }, dropAt / 1000)
          holds.set(v, vm.holds?.length ?? 0)
          // the Ceph store: a committed snapshot removed or shrunk behind the store (ceph-overview.ts damagedMirror) is a
          // mirror changed since its commit, as a missing or resized flat is on the folder store (its `modified`)
          const damaged = new Set((vm.damagedMirror ?? []).map((x) => x.disk))
          for (const d of vm.disks) {
            const l = { vm: vm.vm, disk: d.name }
            capacity.set(l, d.capacity)
            diverged.set(l, d.diverged === null ? 0 : 1)
            modified.set(l, d.modified || damaged.has(d.name) ? 1 : 0)
            if (d.trivial !== null) check.set({ ...l, check: 'trivial' }, d.trivial.ok ? 1 : 0)
            if (d.certify !== null) check.set({ ...l, check: 'certify' }, d.certify.ok ? 1 : 0)
          }
        } catch {
          // what was set before the bad field stays; the VM reads as unreadable, CRITICAL
          unreadable.set(v, 1)
          health.set(v, HealthStates.CRITICAL)
        }
      }
    }
  }

  refused(reason: RefusalReason): void {
    this.#refused.inc({ reason })
  }

  sessionOpened(peer: string): void {
    this.#sessions.inc({ peer })
  }

  diskSealed(vm: string, disk: string, counts: { readonly dataBytes: number; readonly zeroBytes: number }): void {
    this.#bytes.inc({ vm, disk, kind: 'data' }, counts.dataBytes)
    this.#bytes.inc({ vm, disk, kind: 'zero' }, counts.zeroBytes)
  }

  cycleCommitted(vm: string, seconds: number): void {
    this.#cycles.observe({ vm }, seconds)
  }

  checked(vm: string, disk: string, check: 'trivial' | 'certify', ok: boolean): void {
    this.#checks.inc({ vm, disk, check, result: ok ? 'ok' : 'mismatch' })
  }
}
