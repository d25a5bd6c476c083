import { describeChain, openChain } from '@grainline/vmdk'
import { formatBytes } from '@grainline/protocol/units'
import { table } from '../util.ts'

/** Options of `grainline info` and `grainline map`. */
export interface DiskCommandOptions {
  readonly disk: string
  readonly output: 'json' | 'human'
  readonly pathMap: Record<string, string>
  readonly write: (text: string) => void
}

/** `grainline info`: createType, capacity, CIDs, extents and the whole chain. */
export async function infoCommand(opts: DiskCommandOptions): Promise<void> {
  const info = await describeChain(opts.disk, { pathMap: opts.pathMap })
  if (opts.output === 'json') {
    opts.write(JSON.stringify(info, null, 2) + '\n')
    return
  }
  opts.write(renderInfo(info as unknown as InfoView))
}

interface LayerView {
  readonly path: string
  readonly createType: string
  readonly cid: string
  readonly parentCid: string
  readonly parentFileNameHint?: string
  readonly capacity: number
  readonly grainSize?: number
  readonly allocatedBytes?: number
  readonly zeroBytes?: number
  readonly extents: readonly { access: string; sectors: number; type: string; file?: string }[]
}
interface InfoView {
  readonly capacity: number
  readonly layers: readonly LayerView[]
}

function renderInfo(info: InfoView): string {
  const out: string[] = []
  out.push(`capacity: ${info.capacity} bytes (${formatBytes(info.capacity)})`)
  out.push(`chain: ${info.layers.length} layer(s), top first`)
  info.layers.forEach((l, depth) => {
    out.push('')
    out.push(`[depth ${depth}] ${l.path}`)
    out.push(`  createType: ${l.createType}`)
    out.push(`  CID: ${l.cid}  parentCID: ${l.parentCid}${l.parentFileNameHint !== undefined ? `  parent: ${l.parentFileNameHint}` : ''}`)
    if (l.grainSize !== undefined) out.push(`  grain: ${formatBytes(l.grainSize)}`)
    if (l.allocatedBytes !== undefined) out.push(`  holds: ${formatBytes(l.allocatedBytes)} data${l.zeroBytes !== undefined ? `, ${formatBytes(l.zeroBytes)} zeroed` : ''}`)
    for (const e of l.extents) out.push(`  extent: ${e.access} ${e.sectors} ${e.type}${e.file !== undefined ? ` "${e.file}"` : ''}`)
  })
  return out.join('\n') + '\n'
}

/** `grainline map`: what each layer holds, like `qemu-img map`. JSON is streamed. */
export async function mapCommand(opts: DiskCommandOptions): Promise<void> {
  const chain = await openChain(opts.disk, { pathMap: opts.pathMap })
  try {
    if (opts.output === 'json') {
      let first = true
      opts.write('[')
      for await (const e of chain.map()) {
        opts.write(
          `${first ? '' : ',\n'}{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}${e.offset !== undefined ? `, "offset": ${e.offset}` : ''}}`,
        )
        first = false
      }
      opts.write(']\n')
      return
    }
    const rows: string[][] = []
    for await (const e of chain.map()) {
      rows.push([String(e.start), String(e.length), formatBytes(e.length), String(e.depth), e.present ? 'yes' : 'no', e.zero ? 'yes' : 'no', e.data ? 'yes' : 'no'])
    }
    opts.write(table(['start', 'length', 'size', 'depth', 'present', 'zero', 'data'], rows) + '\n')
  } finally {
    await chain.close()
  }
}
