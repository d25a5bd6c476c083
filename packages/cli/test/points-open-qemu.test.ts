/**
 * `grainline points open --format vmfssparse` gives children QEMU writes
 * correctly (real receiver and CLI processes, QEMU's own qemu-io and
 * qemu-img). QEMU never allocates a COWD grain table (block/vmdk.c
 * get_cluster_offset answers "unallocated" for a grain-directory entry of 0,
 * and vmdk_pwritev then writes the data at offset 0 of the extent, over its
 * header, and reports success): a child laid out as ESXi lays out a new redo
 * log (no grain tables) was destroyed by its first write. The open lays out
 * every grain table up front; QEMU then allocates grains and updates them.
 */
import t from 'tap'
import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { qemuRaw, runNode } from '@grainline/test-utils'
import { pointsFixture } from './helpers.ts'

const exec = promisify(execFile)
const bin = resolve(dirname(fileURLToPath(import.meta.url)), '../src/bin.js')
const MiB = 1024 * 1024

/** Run a QEMU tool; its exit code and output (never throws). */
async function qemu(tool: string, args: string[]): Promise<{ code: number; out: string }> {
  return await exec(tool, args).then(
    (r) => ({ code: 0, out: r.stdout + r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }),
  )
}

t.test('points open --format vmfssparse: QEMU writes the child, qemu-img check passes, the writes read back over the point', async (t) => {
  const { dir, store, rx, frozen } = await pointsFixture(t, 'q01', { seed: 5, cycles: 2 })
  await rx.stop()

  const open = await runNode(bin, ['points', 'open', '--store', store, '--vm', 'q01', '--point', '1', '--format', 'vmfssparse', '--to', join(dir, 'open'), '--output', 'json'])
  t.equal(open.code, 0, open.stderr)
  const child = (JSON.parse(open.stdout) as { disks: string[] }).disks[0] as string
  t.equal((await qemu('qemu-img', ['check', '-f', 'vmdk', child])).code, 0, 'qemu-img check: the fresh child')

  // a sector-unaligned write, a run across grain tables (2 MiB each), one in the last table
  const writes: Array<[number, number, number]> = [
    [0xcd, 0, 256 * 1024],
    [0x5a, 512 * 1024 + 3000, 5000],
    [0x3c, 2 * MiB - 4096, 8192],
    [0x77, 7 * MiB, 64 * 1024],
  ]
  const w = await qemu('qemu-io', ['-f', 'vmdk', ...writes.flatMap(([p, o, n]) => ['-c', `write -P ${p} ${o} ${n}`]), child])
  t.equal(w.code, 0, w.out)
  t.notMatch(w.out, /error|fail/i, 'qemu-io wrote without an error')
  const check = await qemu('qemu-img', ['check', '-f', 'vmdk', child])
  t.equal(check.code, 0, `qemu-img check after QEMU wrote: ${check.out}`)
  t.match(check.out, /No errors were found/)

  // read back in a new QEMU process (the old child lost its header: "Image not in VMDK format")
  const raw = join(dir, 'child.raw')
  await qemuRaw(child, raw)
  const want = await readFile(frozen[1] as string)
  for (const [p, o, n] of writes) want.fill(p, o, o + n)
  const got = await readFile(raw)
  t.equal(got.length, want.length)
  t.ok(got.equals(want), 'the child reads as point 1 with the writes over it')
  const r = await qemu('qemu-io', ['-f', 'vmdk', '-r', ...writes.flatMap(([p, o, n]) => ['-c', `read -P ${p} ${o} ${n}`]), child])
  t.equal(r.code, 0, r.out)
  t.notMatch(r.out, /fail/i, 'qemu-io reads every pattern back')

  const close = await runNode(bin, ['points', 'close', '--store', store, '--vm', 'q01', '--to', join(dir, 'open')])
  t.equal(close.code, 0, close.stderr)
})
