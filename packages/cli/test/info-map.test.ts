import t from 'tap'
import { join, dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { qemuImg, qemuIo, qemuMap, runNode, type QemuMapEntry, type RunResult } from '@grainline/test-utils'

const bin = resolve(dirname(fileURLToPath(import.meta.url)), '../src/bin.js')
const grainline = (args: string[]): Promise<RunResult> => runNode(bin, args)

/** our rows cut to the fields qemu 7.2 prints, as qemuMap cuts qemu's */
const strip = (rows: QemuMapEntry[]): QemuMapEntry[] =>
  rows.map(({ start, length, depth, present, zero, data, offset }) => ({ start, length, depth, present, zero, data, ...(offset !== undefined ? { offset } : {}) }))

t.test('map --output json equals qemu-img map on a qemu-made chain', async (t) => {
  const dir = t.testdir()
  const base = join(dir, 'base.vmdk')
  const top = join(dir, 'top name.vmdk')
  await qemuImg(['create', '-q', '-f', 'vmdk', base, '64M'])
  await qemuIo(base, ['write -P 0x11 0 3M', 'write -P 0x22 40M 1M'])
  await qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'zeroed_grain=on', '-b', 'base.vmdk', '-F', 'vmdk', top])
  await qemuIo(top, ['write -P 0x33 1M 128k', 'write -z 40M 64k', 'write -P 0x44 63M 64k'])
  const ours = await grainline(['map', '--output', 'json', top])
  t.equal(ours.code, 0, ours.stderr)
  t.same(strip(JSON.parse(ours.stdout) as QemuMapEntry[]), await qemuMap(top), 'same entries, file offsets included')
})

t.test('info prints the chain as JSON and as text', async (t) => {
  const dir = t.testdir()
  const base = join(dir, 'base.vmdk')
  const top = join(dir, 'top.vmdk')
  await qemuImg(['create', '-q', '-f', 'vmdk', base, '8M'])
  await qemuImg(['create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', top])
  const json = await grainline(['info', '--output', 'json', top])
  t.equal(json.code, 0, json.stderr)
  const info = JSON.parse(json.stdout) as { capacity: number; layers: { createType: string; cid: string; parentCid: string }[] }
  t.equal(info.capacity, 8 * 1024 * 1024)
  t.equal(info.layers.length, 2)
  t.equal(info.layers[0]?.parentCid, info.layers[1]?.cid, 'child parentCID is the base CID')
  const human = await grainline(['info', top])
  t.equal(human.code, 0)
  t.match(human.stdout, /depth 1/)
})

t.test('a broken chain is a typed error naming the files, exit 1', async (t) => {
  const dir = t.testdir()
  await qemuImg(['create', '-q', '-f', 'vmdk', join(dir, 'base.vmdk'), '8M'])
  await qemuImg(['create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', join(dir, 'top.vmdk')])
  // changing the base's content changes its CID: the child's parentCID no longer matches
  await qemuIo(join(dir, 'base.vmdk'), ['write -P 1 0 4k'])
  const r = await grainline(['info', join(dir, 'top.vmdk')])
  t.equal(r.code, 1)
  t.match(r.stderr, /E_CHAIN_CID/)
  t.match(r.stderr, /base\.vmdk/)
})

t.test('usage errors exit 2', async (t) => {
  const r = await grainline(['no-such-command'])
  t.equal(r.code, 2)
})
