import t from 'tap'
import { chmodSync, mkdirSync, readFileSync, readdirSync, statSync, watch, writeFileSync } from 'node:fs'
import { once } from 'node:events'
import { join } from 'node:path'
import { writeFileAtomic, isAtomicTempName, ATOMIC_TEMP_RE } from '../src/index.ts'

t.test('replaces a file through a temp file named by ATOMIC_TEMP_RE, leaving none behind', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'vm.vmdk')
  const seen: string[] = []
  const w = watch(dir, (_ev, name) => {
    if (name !== null) seen.push(String(name))
  })
  t.teardown(() => {
    w.close()
  })
  await writeFileAtomic(p, 'one\n')
  // inotify reports in order: once the target shows up, the temp's creation has too
  while (!seen.includes('vm.vmdk')) await once(w, 'change')
  const temps = seen.filter((n) => n !== 'vm.vmdk')
  t.ok(temps.length > 0 && temps.every((n) => ATOMIC_TEMP_RE.test(n) && isAtomicTempName(n)), `temp names ${JSON.stringify([...new Set(temps)])}`)
  t.match(temps[0], /^\.vm\.vmdk\.tmp-\d+-[0-9a-f]{8}$/)
  t.notOk(/\.vmdk$/i.test(temps[0] ?? ''), 'a leftover temp never looks like a disk')
  t.equal(readFileSync(p, 'utf8'), 'one\n')
  t.equal(statSync(p).mode & 0o777, 0o644 & ~process.umask(), 'new files: 0644 (less the umask)')
  chmodSync(p, 0o600)
  await writeFileAtomic(p, Buffer.from('two\n'))
  t.equal(readFileSync(p, 'utf8'), 'two\n')
  t.equal(statSync(p).mode & 0o777, 0o600, 'a replaced file keeps its mode')
  await writeFileAtomic(p, 'three\n', { mode: 0o640 })
  t.equal(statSync(p).mode & 0o777, 0o640 & ~process.umask())
  t.same(readdirSync(dir), ['vm.vmdk'], 'no temp file left')
})

t.test('any failure removes the temp file and leaves the target as it was', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'state.json')
  writeFileSync(p, 'old')
  // fails after the temp file exists (bad data), then at the rename (target is a folder)
  await t.rejects(writeFileAtomic(p, 42 as unknown as string), { name: 'VmdkError', code: 'E_IO', file: p })
  t.same(readdirSync(dir), ['state.json'])
  t.equal(readFileSync(p, 'utf8'), 'old')
  const folder = join(dir, 'a-folder')
  mkdirSync(folder)
  await t.rejects(writeFileAtomic(folder, 'x'), { name: 'VmdkError', file: folder })
  t.same(readdirSync(dir).sort(), ['a-folder', 'state.json'])
  await t.rejects(writeFileAtomic(join(dir, 'missing', 'x.json'), 'x'), { code: 'E_NOT_FOUND' })
})

t.test('the temp-name matcher', async (t) => {
  for (const n of ['.vm.vmdk.tmp-1-0a1b2c3d', '.state.json.tmp-123456-ffffffff', '.a b.tmp-7-00000000', '/x/y/.z.tmp-1-abcdef01']) t.ok(isAtomicTempName(n), n)
  for (const n of ['vm.vmdk', 'vm.vmdk.tmp-1-0a1b2c3d', '.vm.vmdk.tmp-1-0A1B2C3D', '.vm.vmdk.tmp-x-0a1b2c3d', '.vm.vmdk.tmp-1-0a1b2c3', 'state.json.tmp-123-abcd']) t.notOk(isAtomicTempName(n), n)
})
