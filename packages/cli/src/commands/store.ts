import { storeStatus, rollbackMirror } from '@grainline/receiver'
import type { Logger } from 'pino'
import { formatBytes, table } from '../util.ts'

/** `grainline status`: per VM and disk, the committed cycle, checks, in-flight work. */
export async function statusCommand(opts: { store: string; output: 'json' | 'human'; write: (s: string) => void }): Promise<void> {
  const st = await storeStatus(opts.store)
  if (opts.output === 'json') {
    opts.write(JSON.stringify(st, null, 2) + '\n')
    return
  }
  if (st.vms.length === 0) {
    opts.write(`no mirrors in ${opts.store}\n`)
    return
  }
  const rows: string[][] = []
  for (const vm of st.vms) {
    for (const d of vm.disks) {
      rows.push([
        vm.vm,
        d.name,
        String(d.committedCycle),
        d.committedAt ?? '-',
        formatBytes(d.capacity),
        d.trivial === null ? '-' : d.trivial.ok ? 'ok' : 'MISMATCH',
        d.certify === null ? '-' : `${d.certify.ok ? 'ok' : 'MISMATCH'}`,
        d.inflight !== null ? `cycle ${d.inflight.cycle} (${d.inflight.mode}, seq ${d.inflight.resumeSeq})` : '-',
        d.diverged !== null ? `DIVERGED (${d.diverged.reason}; next cycle seeds)` : d.modified ? 'MODIFIED' : vm.needsRecovery ? 'needs recovery' : 'ok',
      ])
    }
    if (vm.error !== undefined) rows.push([vm.vm, '-', '-', '-', '-', '-', '-', '-', `error: ${vm.error}`])
  }
  opts.write(table(['vm', 'disk', 'cycle', 'committed at', 'size', 'trivial', 'certify', 'in flight', 'state'], rows) + '\n')
  for (const vm of st.vms) {
    if (vm.vmxDropped.length === 0) continue
    opts.write(`${vm.vm}: ${vm.vmxDropped.length} .vmx reference(s) out of the mirror dropped or neutralised:\n`)
    for (const d of vm.vmxDropped) opts.write(`  ${d.key} = ${JSON.stringify(d.value)} (${d.action})\n`)
  }
}

/** `grainline mirror rollback`: discard an interrupted cycle; the mirror returns to its last commit. */
export async function rollbackCommand(opts: { store: string; vm: string; logger: Logger; write: (s: string) => void }): Promise<void> {
  const r = await rollbackMirror(opts.store, opts.vm, opts.logger)
  opts.write(r.rolledBack ? `${r.vm}: interrupted cycle rolled back; mirror at committed cycle ${r.committedCycle}\n` : `${r.vm}: nothing in flight; mirror at committed cycle ${r.committedCycle}\n`)
}
