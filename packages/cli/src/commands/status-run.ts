/**
 * `grainline status`: the mirrors of a store with their health, as a
 * monitoring plugin reports it — the summary line first (`GRAINLINE OK - …`),
 * then per VM and disk the committed cycle, its age, the checks, when the
 * whole mirror was last proven equal to its source (a clean certify, a
 * completed scrub rotation or a resync that read every block) and any
 * cycle in flight; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (a store that
 * does not exist). `--output json` prints the same object the receiver's
 * dashboard API serves at `GET /api/v1/status` (`storeOverview` of
 * @grainline/receiver; read offline, so `live` is null and no errors).
 */
import { formatBytes, parseDuration } from '@grainline/protocol/units'
// the receiver's narrow entry: no server, metrics or S3 archive (the AWS SDK) for a status check
import { HealthStates, cephStoreReader, isCephStore, loadReceiverConfig, storeOverview, type DiskStatus, type StoreHealth, type StoreOverview, type VmStatus } from '@grainline/receiver/store-status'
import { cephTargetFrom } from './ceph-options.ts'
import { UsageError } from '../exit-codes.ts'
import type { CliContext, GlobalArgs } from '../command.ts'
import { table } from '../util.ts'

function ago(s: number | null): string {
  if (s === null) return 'never'
  if (s < 120) return `${s} s ago`
  if (s < 7200) return `${Math.floor(s / 60)} min ago`
  if (s < 172_800) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min ago`
  return `${Math.floor(s / 86_400)} d ago`
}

/** When a disk was last fully proven, relative to `now` (ms): "certify at cycle 3, 2 h 05 min ago", or "never". */
function provenText(p: { kind: string; at: string; cycle: number } | null, now: number): string {
  if (p === null) return 'never'
  const at = Date.parse(p.at)
  return `${p.kind} at cycle ${p.cycle}, ${Number.isFinite(at) ? ago(Math.max(0, Math.round((now - at) / 1000))) : p.at}`
}

/** `HELD (failover point 4)` for a VM a failover or an opened point holds. */
function held(vm: { readonly holds?: ReadonlyArray<{ readonly kind: string; readonly cycle: number }> }): string | undefined {
  const h = vm.holds?.[0]
  return h === undefined ? undefined : `HELD (${h.kind} point ${h.cycle})`
}

/**
 * The disks of a VM its last committed cycle did not carry: every cycle opens
 * every disk the source's .vmx attaches (an unchanged one too), so a disk
 * whose last commit is older was removed from the VM or is skipped
 * (independent). Not a health problem: the operator removed it.
 */
function behindDisks(vm: VmStatus): DiskStatus[] {
  return vm.disks.filter((d) => d.inflight === null && d.committedCycle > 0 && d.committedCycle < vm.committedCycle)
}

/** The text of `grainline status`: summary line, then the table. */
export function renderStatus(h: StoreHealth): string {
  const now = Date.parse(h.checkedAt)
  const lines = [`${h.summary}${h.perfdata === '' ? '' : ` | ${h.perfdata}`}`]
  if (h.vms.length === 0) return lines.join('\n') + '\n'
  const rows: string[][] = []
  for (const vm of h.vms) {
    if (vm.disks.length === 0) rows.push([vm.vm, '-', '-', ago(vm.health.ageSeconds), '-', '-', '-', '-', '-', vm.health.state])
    for (const d of vm.disks) {
      rows.push([
        vm.vm,
        d.name,
        String(d.committedCycle),
        ago(vm.health.ageSeconds),
        formatBytes(d.capacity),
        d.trivial === null ? '-' : d.trivial.ok ? 'ok' : 'MISMATCH',
        d.certify === null ? '-' : `${d.certify.algorithm} ${d.certify.ok ? 'ok' : 'MISMATCH'}`,
        provenText(d.proven, now),
        d.inflight !== null ? `cycle ${d.inflight.cycle} (${d.inflight.mode}, seq ${d.inflight.resumeSeq})` : '-',
        d.diverged !== null ? 'DIVERGED' : d.modified ? 'MODIFIED' : (held(vm) ?? vm.health.state),
      ])
    }
  }
  lines.push('', table(['vm', 'disk', 'cycle', 'committed', 'size', 'trivial', 'certify', 'last proven', 'in flight', 'state'], rows))
  const notes = h.vms.filter((v) => v.health.problems.length > 0)
  if (notes.length > 0) lines.push('', ...notes.flatMap((v) => v.health.problems.map((p) => `${v.vm}: ${p}`)))
  const behind = h.vms.flatMap((v) =>
    behindDisks(v).map((d) =>
      d.removed !== undefined
        ? `${v.vm}: ${d.name} removed from the VM in cycle ${d.removed} (its .vmx no longer names it; the VM is at cycle ${v.committedCycle}): its mirror stays as of cycle ${d.committedCycle} for the restore points before cycle ${d.removed}; newer points and the mirror's cycle leave it out`
        : `${v.vm}: ${d.name} last replicated in cycle ${d.committedCycle} (the VM is at cycle ${v.committedCycle}): no longer replicated though the VM's .vmx still names it (an independent disk, a physical RDM); its mirror stays as of cycle ${d.committedCycle} and the mirror's .vmx attaches it`,
    ),
  )
  if (behind.length > 0) lines.push('', ...behind)
  for (const vm of h.vms) {
    if (vm.vmxDropped.length === 0) continue
    lines.push('', `${vm.vm}: ${vm.vmxDropped.length} .vmx reference(s) out of the mirror dropped or neutralised:`)
    for (const d of vm.vmxDropped) lines.push(`  ${d.key} = ${JSON.stringify(d.value)} (${d.action})`)
  }
  return lines.join('\n') + '\n'
}

/**
 * What a Ceph store adds under the health table: per disk its committed
 * snapshot (`POOL/IMAGE@SNAP`), per VM the bytes its images take in the pool
 * (`rbd du` used) and its restore points with their bytes.
 */
export function renderCephDetails(h: StoreOverview): string {
  const rows = h.vms.flatMap((v) =>
    v.disks.map((d) => [
      v.vm,
      d.name,
      (d as { snapshot?: string }).snapshot || '-',
      formatBytes(v.usedBytes),
      `${v.restorePoints.length} (${formatBytes(v.restorePoints.reduce((n, p) => n + p.bytes, 0))})`,
    ]),
  )
  return rows.length === 0 ? '' : `\n${table(['vm', 'disk', 'snapshot', 'used', 'points'], rows)}\n`
}

/** `status`'s run (loaded by commands/status.ts only when the command runs). */
export async function runStatus(args: GlobalArgs & Record<string, unknown>, ctx: CliContext): Promise<number> {
  let maxAgeMs: number | undefined
  if (args['max-age'] !== undefined) {
    try {
      maxAgeMs = parseDuration(String(args['max-age']), '--max-age')
    } catch (err) {
      throw new UsageError((err as Error).message)
    }
  }
  const rpo = args['config'] === undefined ? undefined : (await loadReceiverConfig(String(args['config']))).rpo
  // a Ceph pool is read through its reader: the same document, health and exit codes as a folder store
  const store = isCephStore(String(args['store'])) ? cephStoreReader(cephTargetFrom(String(args['store']), args)) : String(args['store'])
  let h: StoreOverview
  try {
    h = await storeOverview(store, { ...(maxAgeMs === undefined ? {} : { maxAgeMs }), ...(rpo === undefined ? {} : { rpo }) })
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'E_NOT_FOUND') throw err
    ctx.write(`GRAINLINE UNKNOWN - ${(err as Error).message}\n`)
    return HealthStates.UNKNOWN
  }
  ctx.write(args['output'] === 'json' ? JSON.stringify(h, null, 2) + '\n' : renderStatus(h) + (typeof store === 'string' ? '' : renderCephDetails(h)))
  return h.exitCode
}
