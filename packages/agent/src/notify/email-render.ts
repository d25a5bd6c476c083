/**
 * The report e-mail of a run, as HTML and as text: per VM and disk the cycle,
 * its kind, the bytes covered and sent, the time, the checks and any error.
 * Two layouts, as XSIBackup sends them: `trivial` (size and a digest of the
 * start of each disk) and `certified` (the full digest's algorithm and
 * value per disk). Pure: no I/O.
 */
import { formatBytes, formatDuration } from '@grainline/protocol'
import { runOutcome, runWarnings, type DiskReport, type ReplicationReport, type VmReport } from '../report.ts'

/** A rendered e-mail. */
export interface RenderedEmail {
  readonly subject: string
  readonly text: string
  readonly html: string
  /** the layout used */
  readonly layout: 'trivial' | 'certified'
}

/** Options of {@link renderReportEmail}. */
export interface RenderEmailOptions {
  /** @default 'auto': certified when any disk was certified */
  readonly layout?: 'auto' | 'trivial' | 'certified'
  /** the proxy's name in the subject and header */
  readonly hostname: string
  /** @default '[grainline]' */
  readonly subjectPrefix?: string
}

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string)

function trivialCell(d: DiskReport): string {
  if (d.trivial === undefined) return '-'
  return `${d.trivial.ok ? 'ok' : 'MISMATCH'} (${formatBytes(d.trivial.prefixBytes)}, ${d.trivial.algorithm})`
}

function certifyCell(d: DiskReport): string {
  if (d.certify === undefined) return 'not certified'
  return `${d.certify.ok ? 'ok' : 'MISMATCH'} ${d.certify.algorithm}`
}

function diskResult(d: DiskReport): string {
  if (d.error !== undefined) return `FAILED ${d.error.code}`
  return d.ok ? 'ok' : 'FAILED'
}

/** The rows of a layout: one per disk (a VM that failed before its disks were known gets one row). */
function rows(report: ReplicationReport, layout: 'trivial' | 'certified'): string[][] {
  const out: string[][] = []
  for (const vm of report.vms) {
    if (vm.disks.length === 0) {
      out.push([
        vm.vm,
        '-',
        vm.cycle > 0 ? String(vm.cycle) : '-',
        '-',
        '-',
        '-',
        formatDuration(vm.durationMs),
        '-',
        ...(layout === 'certified' ? ['-'] : []),
        vm.ok ? 'ok' : `FAILED ${vm.error?.code ?? ''}`.trim(),
      ])
      continue
    }
    for (const d of vm.disks) {
      const base = [vm.vm, d.name, String(vm.cycle), d.mode === 'none' ? '-' : d.mode, formatBytes(d.dataBytes + d.zeroBytes), formatBytes(d.wireBytes), formatDuration(vm.durationMs)]
      if (layout === 'certified') out.push([...base, certifyCell(d), d.certify?.digest ?? '-', diskResult(d)])
      else out.push([...base, trivialCell(d), diskResult(d)])
    }
  }
  return out
}

function head(layout: 'trivial' | 'certified'): string[] {
  const base = ['VM', 'disk', 'cycle', 'kind', 'changed', 'sent', 'time']
  return layout === 'certified' ? [...base, 'certify', 'digest', 'result'] : [...base, 'trivial check', 'result']
}

function errorsOf(report: ReplicationReport): string[] {
  const out: string[] = []
  for (const vm of report.vms) {
    if (vm.error !== undefined) out.push(`${vm.vm}: ${vm.error.code}${vm.error.remoteCode !== undefined ? ` (${vm.error.remoteCode})` : ''}: ${vm.error.message}`)
    for (const d of vm.disks) {
      if (d.error !== undefined && d.error.message !== vm.error?.message) out.push(`${vm.vm} / ${d.name}: ${d.error.code}: ${d.error.message}`)
    }
  }
  return out
}

function textTable(h: readonly string[], r: readonly (readonly string[])[]): string {
  const widths = h.map((c, i) => Math.max(c.length, ...r.map((x) => (x[i] ?? '').length)))
  const line = (x: readonly string[]): string =>
    x
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd()
  return [line(h), line(widths.map((w) => '-'.repeat(w))), ...r.map(line)].join('\n')
}

const sum = (vms: readonly VmReport[], f: (d: DiskReport) => number): number => vms.reduce((s, v) => s + v.disks.reduce((t, d) => t + f(d), 0), 0)

/** Render the report e-mail. */
export function renderReportEmail(report: ReplicationReport, opts: RenderEmailOptions): RenderedEmail {
  const layout = opts.layout === undefined || opts.layout === 'auto' ? (report.vms.some((v) => v.disks.some((d) => d.certify !== undefined)) ? 'certified' : 'trivial') : opts.layout
  const failed = report.vms.filter((v) => !v.ok)
  const outcome = runOutcome(report)
  const warnings = runWarnings(report)
  const status = outcome === 'success' ? 'OK' : outcome === 'warning' ? 'WARNING' : report.interrupted !== undefined ? 'INTERRUPTED' : 'FAILED'
  const warned = [...new Set(warnings.map((w) => w.vm))]
  const what = report.ok
    ? `${report.vms.length} VM${report.vms.length === 1 ? '' : 's'} replicated${layout === 'certified' ? ' and certified' : ''}${
        warned.length > 0 ? `, ${warnings.length === 1 ? 'a warning' : `${warnings.length} warnings`}: ${warned.slice(0, 3).join(', ')}${warned.length > 3 ? ', …' : ''}` : ''
      }`
    : `${failed.length} of ${report.vms.length} VM${report.vms.length === 1 ? '' : 's'} failed${
        failed.length > 0
          ? `: ${failed
              .slice(0, 3)
              .map((v) => `${v.vm} ${v.error?.code ?? ''}`.trim())
              .join(', ')}${failed.length > 3 ? ', …' : ''}`
          : ''
      }`
  const subject = `${opts.subjectPrefix ?? '[grainline]'} ${status}: ${what} (${opts.hostname})`
  const took = Date.parse(report.finishedAt) - Date.parse(report.startedAt)
  const summary = [
    `Result: ${status}${report.interrupted !== undefined ? ` (${report.interrupted})` : ''}`,
    `Proxy: ${opts.hostname}`,
    `Started: ${report.startedAt}, took ${formatDuration(Number.isFinite(took) ? took : 0)}`,
    `VMs: ${report.vms.length - failed.length} ok, ${failed.length} failed${warned.length > 0 ? `, ${warned.length} with warnings` : ''}`,
    `Changed: ${formatBytes(sum(report.vms, (d) => d.dataBytes))} data, ${formatBytes(sum(report.vms, (d) => d.zeroBytes))} zero, ${formatBytes(sum(report.vms, (d) => d.wireBytes))} on the wire`,
    `Checks: ${layout === 'certified' ? 'certified (full digest of the frozen source and the mirror)' : 'trivial (size and a digest of the start of each disk)'}`,
  ]
  const h = head(layout)
  const r = rows(report, layout)
  const errors = errorsOf(report)
  const warn = warnings.map((w) => `${w.vm}: ${w.warning.code}: ${w.warning.message}`)
  const text = [
    `grainline replication report — ${status}`,
    '',
    ...summary,
    '',
    textTable(h, r),
    '',
    ...(warn.length > 0 ? ['Warnings:', ...warn.map((e) => `  ${e}`), ''] : []),
    ...(errors.length > 0 ? ['Errors:', ...errors.map((e) => `  ${e}`), ''] : []),
  ].join('\n')
  const color = { success: '#1a7f37', warning: '#9a6700', failure: '#cf222e' }[outcome]
  const th = 'style="text-align:left;padding:4px 8px;border-bottom:1px solid #999;background:#f0f0f0"'
  const td = 'style="padding:4px 8px;border-bottom:1px solid #ddd;font-family:monospace"'
  const html = [
    '<!doctype html><html><body style="font-family:sans-serif;font-size:14px">',
    `<h2 style="color:${color};margin:0 0 8px">grainline replication report — ${esc(status)}</h2>`,
    `<p>${summary.map(esc).join('<br>')}</p>`,
    `<table style="border-collapse:collapse" data-layout="${layout}"><thead><tr>${h.map((c) => `<th ${th}>${esc(c)}</th>`).join('')}</tr></thead><tbody>`,
    ...r.map((row) => `<tr>${row.map((c, i) => `<td ${td}${i === row.length - 1 && c !== 'ok' ? ' class="failed"' : ''}>${esc(c)}</td>`).join('')}</tr>`),
    '</tbody></table>',
    ...(warn.length > 0 ? ['<h3>Warnings</h3><ul>', ...warn.map((e) => `<li class="warning">${esc(e)}</li>`), '</ul>'] : []),
    ...(errors.length > 0 ? ['<h3>Errors</h3><ul>', ...errors.map((e) => `<li>${esc(e)}</li>`), '</ul>'] : []),
    '</body></html>',
  ].join('\n')
  return { subject, text, html, layout }
}
