/**
 * A resync's map of a sparse mirror (resync-map.ts): the mirror's holes
 * (SEEK_DATA, through @grainline/vmdk data-ranges) get the zero block's digest
 * without a read, and the map sent equals the digests of a full read. Where
 * the holes cannot be asked for (no helper here), every block is read, the map
 * is the same, and the receiver says so once in its log.
 */
import { execFileSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { initDigests } from '@grainline/protocol'
import { seekHelper } from '@grainline/vmdk'
import { Agent, TOKEN, makeEnv, runCycle, seedPlan, startReceiver, type LogLine } from './helpers.ts'
import { ALG, BS, NAME, SIZE, VM, flat, mapOf, resyncCycle } from './resync-helpers.ts'

const sealed = (lines: LogLine[]): LogLine | undefined => lines.filter((l) => l.msg === 'disk sealed').at(-1)

t.test('holes of the mirror are not read; the map is a full read; without SEEK_DATA every block is read and it is logged', async (t) => {
  await initDigests()
  const env = makeEnv(scratchDir(t))
  const rx = await startReceiver(env)
  t.teardown(() => rx.receiver.close())
  // data in blocks 3, 4 and 20 (a short piece), zeros elsewhere
  let img = Buffer.alloc(SIZE)
  img.fill(0x5a, 3 * BS, 5 * BS)
  img.fill(0xa5, 20 * BS + 10, 20 * BS + 300)
  const a = await Agent.connect(rx.url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, VM, 1, [seedPlan(0, NAME, img, '01'.repeat(8))], { alg: ALG })
  a.close()
  await a.whenClosed()
  // whatever the seed wrote for the zero blocks, make them holes (the same bytes: zeros)
  execFileSync('fallocate', ['--punch-hole', '--offset', '0', '--length', String(3 * BS), flat(env)])
  execFileSync('fallocate', ['--punch-hole', '--offset', String(5 * BS), '--length', String(15 * BS), flat(env)])
  execFileSync('fallocate', ['--punch-hole', '--offset', String(21 * BS), '--length', String(SIZE - 21 * BS), flat(env)])
  t.ok(readFileSync(flat(env)).equals(img), 'holes punched: the mirror still reads as the image')

  // the source writes block 10; the map is the mirror's, with only its 3 data blocks read
  img = Buffer.from(img)
  img.fill(0x11, 10 * BS, 11 * BS)
  const mirror = readFileSync(flat(env))
  let r = await resyncCycle(env, rx.url, 2, img)
  t.same(r.map, mapOf(mirror), 'the map equals the digests of a full read')
  t.same(r.sent, [10], 'only the differing block travels')
  t.match(sealed(rx.logs.lines), { mapMirrorBytes: 3 * BS, mapHoleBytes: SIZE - 3 * BS }, 'only the data blocks are read')
  t.ok(readFileSync(flat(env)).equals(img), 'mirror equals the source')

  // no SEEK_DATA here: the mirror (modified behind the receiver's back, so no kept map) is read whole
  const saved = seekHelper.command
  seekHelper.command = join(env.store, 'no-python3-here')
  t.teardown(() => {
    seekHelper.command = saved
    seekHelper.missing = false
  })
  const desc = join(env.store, VM, 'vm-r.vmdk')
  writeFileSync(desc, readFileSync(desc, 'utf8').replace(/^CID=.*$/m, 'CID=0badc0de'))
  img = Buffer.from(img)
  img.fill(0x22, 30 * BS, 31 * BS)
  const before = readFileSync(flat(env))
  r = await resyncCycle(env, rx.url, 3, img)
  t.same(r.map, mapOf(before), 'fallback: the same map')
  t.same(r.sent, [30])
  t.match(sealed(rx.logs.lines), { mapMirrorBytes: SIZE, mapHoleBytes: 0 }, 'fallback: every block read')
  t.equal(rx.logs.lines.filter((l) => /the holes of the mirror cannot be found here/.test(String(l.msg))).length, 1, 'fallback: said once')
  t.ok(readFileSync(flat(env)).equals(img), 'mirror equals the source')
})
