import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { execFileSync } from 'node:child_process'
import { mkdirSync, readFileSync, lstatSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fsyncDir, writeFileAtomicIfChanged } from '../src/fs-util.ts'

t.test('writeFileAtomicIfChanged: writes a missing or changed file, leaves an identical one in place', async (t) => {
  const dir = scratchDir(t)
  const p = join(dir, 'vm.nvram')
  t.equal(await writeFileAtomicIfChanged(p, Buffer.from('one')), true, 'missing: written')
  t.equal(readFileSync(p, 'utf8'), 'one')
  const ino = statSync(p).ino
  t.equal(await writeFileAtomicIfChanged(p, Buffer.from('one')), false, 'identical: not written')
  t.equal(statSync(p).ino, ino, 'the same file (no rename over it)')
  t.equal(await writeFileAtomicIfChanged(p, 'one'), false, 'a string of the same bytes')
  t.equal(await writeFileAtomicIfChanged(p, Buffer.from('two')), true, 'same size, other bytes: written')
  t.equal(readFileSync(p, 'utf8'), 'two')
  t.equal(await writeFileAtomicIfChanged(p, Buffer.from('three')), true, 'other size: written')
  t.equal(readFileSync(p, 'utf8'), 'three')
  t.equal(await writeFileAtomicIfChanged(p, Buffer.alloc(0)), true)
  t.equal(await writeFileAtomicIfChanged(p, Buffer.alloc(0)), false, 'an empty file too')
})

t.test('writeFileAtomicIfChanged: a link, a FIFO or a folder at the path is never followed nor blocked on', async (t) => {
  const dir = scratchDir(t)
  const outside = join(dir, 'outside')
  writeFileSync(outside, 'same')
  const link = join(dir, 'vm.vmx')
  symlinkSync(outside, link)
  // the link's target holds the very bytes: still replaced by a real file, the target untouched
  t.equal(await writeFileAtomicIfChanged(link, Buffer.from('same')), true)
  t.ok(lstatSync(link).isFile(), 'a regular file now')
  t.equal(readFileSync(outside, 'utf8'), 'same')
  const fifo = join(dir, 'vm.nvram')
  execFileSync('mkfifo', [fifo])
  t.equal(await writeFileAtomicIfChanged(fifo, Buffer.from('x')), true, 'a FIFO: replaced, no hang')
  t.ok(lstatSync(fifo).isFile())
  const folder = join(dir, 'vm.vmsd')
  mkdirSync(folder)
  await t.rejects(writeFileAtomicIfChanged(folder, Buffer.from('x')), 'a folder: the rename fails as before')
})

// A folder whose file system cannot fsync it (CIFS, some FUSE mounts) cannot be made here without mounting one:
// the same refusal (EINVAL, fsync of a file that has no fsync) comes from a character device, which is what the
// classification sees. A restore's destination tolerates it; the store never does (its crash safety rests on it).
t.test("fsyncDir: a file system's EINVAL is tolerated on a restore's destination, thrown in the store", async (t) => {
  await t.resolves(fsyncDir('/dev/null', 'destination'), 'destination: "not supported" tolerated')
  await t.rejects(fsyncDir('/dev/null'), { code: 'EINVAL' }, 'the store (the default): thrown')
  await t.rejects(fsyncDir('/dev/null', 'store'), { code: 'EINVAL' })
  const dir = scratchDir(t)
  await t.resolves(fsyncDir(dir, 'store'), 'a folder that syncs: fine either way')
  await t.resolves(fsyncDir(dir, 'destination'))
  await t.rejects(fsyncDir(join(dir, 'missing'), 'destination'), { code: 'ENOENT' }, 'any other error is thrown on a destination too')
})
