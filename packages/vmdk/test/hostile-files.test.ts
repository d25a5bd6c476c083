import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, realpathSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { createServer } from 'node:net'
import { once } from 'node:events'
import { join } from 'node:path'
import { openChain, describeChain, openWriter, openLayer, createFlatDisk, createDelta, consolidate, confineFileAccess, DEFAULT_OUTSIDE_ROOT_REMEDY, localFileAccess } from '../src/index.ts'
import { chainDigest, collect } from './helpers.ts'

const MiB = 1024 * 1024

// A FIFO opened for reading blocks until a writer appears: a reader that opens one
// hangs for ever (and pins a thread-pool thread). These tests would then run into
// this timeout instead of finishing in well under a second.
t.setTimeout(120_000)

/** Every entry point a consumer uses must refuse `path`'s chain with `code`, naming `file`. */
async function refuses(t: Test, top: string, file: string, code = 'E_NOT_REGULAR'): Promise<void> {
  const want = { name: 'VmdkError', code, file }
  await t.rejects(openChain(top), want, 'openChain')
  await t.rejects(describeChain(top), want, 'describeChain (grainline info)')
  await t.rejects(openWriter(top), want, 'openWriter')
  await t.rejects(
    (async () => {
      const c = await openChain(top)
      try {
        await collect(c.map())
      } finally {
        await c.close()
      }
    })(),
    want,
    'map',
  )
  await t.rejects(
    (async () => {
      const c = await openChain(top)
      try {
        await c.read(0, 4096)
      } finally {
        await c.close()
      }
    })(),
    want,
    'read',
  )
}

/** base (flat) ← delta (SEsparse), 4 MiB, a little data in each. */
async function chain(dir: string): Promise<{ base: string; top: string }> {
  const base = join(dir, 'vm.vmdk')
  const top = join(dir, 'vm-000001.vmdk')
  await createFlatDisk(base, 4 * MiB)
  let w = await openWriter(base)
  await w.write(0, Buffer.alloc(8192, 1))
  await w.close()
  await createDelta(base, top, { format: 'sesparse' })
  w = await openWriter(top)
  await w.write(4096, Buffer.alloc(4096, 2))
  await w.close()
  return { base, top }
}

function fifo(path: string): void {
  rmSync(path, { force: true })
  execFileSync('mkfifo', [path])
}

t.test('a FIFO as the disk, a parent descriptor or an extent file is refused before it is opened', async (t) => {
  const dir = t.testdir()
  const { base, top } = await chain(dir)
  const baseText = readFileSync(base)
  const extent = join(dir, 'vm-000001-sesparse.vmdk')
  const extentBytes = readFileSync(extent)

  const lone = join(dir, 'lone.vmdk')
  fifo(lone)
  await refuses(t, lone, lone)
  await t.rejects(openLayer(lone), { code: 'E_NOT_REGULAR', message: /disk is a FIFO/ })

  fifo(base)
  await refuses(t, top, base)
  await t.rejects(openChain(top), { message: /parent descriptor is a FIFO/ })
  writeFileSync(join(dir, 'vm.vmdk.new'), baseText)
  renameSync(join(dir, 'vm.vmdk.new'), base)

  fifo(extent)
  await refuses(t, top, extent)
  await t.rejects(openChain(top), { message: /extent file is a FIFO/ })
  writeFileSync(join(dir, 'x.new'), extentBytes)
  renameSync(join(dir, 'x.new'), extent)

  const c = await openChain(top)
  t.equal(c.layers.length, 2, 'the repaired chain opens again')
  await c.close()
})

t.test('a socket, a directory or a device as an extent is refused too', async (t) => {
  const dir = t.testdir()
  const { base } = await chain(dir)
  const text = readFileSync(base, 'utf8')
  const flat = join(dir, 'vm-flat.vmdk')
  const point = async (target: string, kind: RegExp): Promise<void> => {
    writeFileSync(base, text.replace('"vm-flat.vmdk"', JSON.stringify(target)))
    await refuses(t, base, target)
    await t.rejects(openChain(base), { message: kind })
  }
  mkdirSync(join(dir, 'adir'))
  await point(join(dir, 'adir'), /extent file is a directory/)
  await point('/dev/null', /extent file is a character device/)
  await point('/dev/zero', /extent file is a character device/)
  // unix socket paths are limited to 107 bytes: a short folder of its own
  const sockDir = mkdtempSync(join(tmpdir(), 'gl-'))
  t.teardown(() => {
    rmSync(sockDir, { recursive: true, force: true })
  })
  const sock = join(sockDir, 'vm.sock')
  const server = createServer()
  server.listen(sock)
  await once(server, 'listening')
  t.teardown(() => {
    server.close()
  })
  await point(sock, /extent file is a socket/)
  writeFileSync(base, text)
  t.equal(
    (
      await openChain(base).then(async (c) => {
        const d = await chainDigest(c)
        await c.close()
        return d
      })
    ).length,
    64,
    'the real flat file reads',
  )
  t.ok(readFileSync(flat).length > 0)
})

t.test('symbolic links in a chain are followed (ESXi datastores use them); loops through them are caught', async (t) => {
  const dir = t.testdir()
  const { top } = await chain(dir)
  const want = await openChain(top).then(async (c) => {
    const d = await chainDigest(c)
    await c.close()
    return d
  })
  // the chain reached through a linked folder (like /vmfs/volumes/<name> → <uuid>), the top
  // named through a linked file; relative names resolve against the folder of the path as
  // named (as QEMU does), not against the link's target
  mkdirSync(join(dir, 'real'))
  for (const f of ['vm.vmdk', 'vm-flat.vmdk', 'vm-000001.vmdk', 'vm-000001-sesparse.vmdk']) renameSync(join(dir, f), join(dir, 'real', f))
  symlinkSync(join(dir, 'real'), join(dir, 'datastore1'))
  symlinkSync('vm-000001.vmdk', join(dir, 'real', 'link-to-top.vmdk'))
  const c = await openChain(join(dir, 'datastore1', 'link-to-top.vmdk'))
  t.equal(await chainDigest(c), want, 'same content through the links')
  t.equal(c.layers[1]?.path, join(dir, 'datastore1', 'vm.vmdk'), 'paths as named, links not resolved')
  await c.close()
  // a parent hint that leads back to the child through a link
  const loop = join(dir, 'real', 'loop.vmdk')
  writeFileSync(loop, readFileSync(join(dir, 'real', 'vm-000001.vmdk'), 'utf8').replace('parentFileNameHint="vm.vmdk"', 'parentFileNameHint="loop-link.vmdk"'))
  symlinkSync('loop.vmdk', join(dir, 'real', 'loop-link.vmdk'))
  await t.rejects(openChain(loop), { code: 'E_CHAIN_LOOP' })
})

t.test('consolidate skips a FIFO among the descriptors it re-points', async (t) => {
  const dir = t.testdir()
  const { base, top } = await chain(dir)
  const want = await openChain(top).then(async (c) => {
    const d = await chainDigest(c)
    await c.close()
    return d
  })
  fifo(join(dir, 'stray.vmdk'))
  const r = await consolidate(top)
  t.equal(r.parentPath, base)
  const c = await openChain(base)
  t.equal(await chainDigest(c), want)
  await c.close()
})

t.test('with roots, a descriptor cannot make the reader ship a file off its datastore: "..", absolute names and links out are refused', async (t) => {
  const dir = t.testdir()
  // the proxy's own file, 4 MiB so that it would serve as the whole extent
  const secret = join(dir, 'secret.txt')
  writeFileSync(secret, Buffer.alloc(4 * MiB, 'TOKEN=supersecret\n'))
  const ds = join(dir, 'ds')
  mkdirSync(join(ds, 'vm'), { recursive: true })
  const { top } = await chain(join(ds, 'vm'))
  const desc = join(ds, 'vm', 'vm.vmdk')
  const good = readFileSync(desc, 'utf8')
  t.match(good, /RW 8192 VMFS "vm-flat.vmdk"/)
  const roots = [ds]
  const refused = async (what: string, file: string): Promise<void> => {
    const want = { name: 'VmdkError', code: 'E_OUTSIDE_ROOT', file, message: /outside the folders this VM's files may be read from/ }
    await t.rejects(openChain(top, { roots }), want, `${what}: openChain`)
    await t.rejects(describeChain(top, { roots }), want, `${what}: describeChain`)
  }
  for (const name of ['../../secret.txt', secret]) {
    writeFileSync(desc, good.replace('"vm-flat.vmdk"', JSON.stringify(name)))
    await refused(`extent ${name}`, desc)
  }
  // an absolute datastore path is mapped, then checked: ".." cannot climb out of the mapped root
  writeFileSync(desc, good.replace('"vm-flat.vmdk"', '"/vmfs/volumes/ds1/../../secret.txt"'))
  await t.rejects(openChain(top, { roots, pathMap: { '/vmfs/volumes/ds1': ds } }), { code: 'E_OUTSIDE_ROOT', file: desc })
  // a link inside the datastore that leads out (an NFS datastore holds what its writers put there)
  writeFileSync(desc, good)
  renameSync(join(ds, 'vm', 'vm-flat.vmdk'), join(ds, 'vm', 'real-flat.vmdk'))
  symlinkSync(secret, join(ds, 'vm', 'vm-flat.vmdk'))
  await refused('extent linked out', desc)
  rmSync(join(ds, 'vm', 'vm-flat.vmdk'))
  renameSync(join(ds, 'vm', 'real-flat.vmdk'), join(ds, 'vm', 'vm-flat.vmdk'))
  // a parent hint that climbs out to a valid disk elsewhere on the proxy: the child is named
  mkdirSync(join(dir, 'outside'))
  await createFlatDisk(join(dir, 'outside', 'vm.vmdk'), 4 * MiB)
  const child = readFileSync(top, 'utf8')
  const cid = /^CID=(\w+)/m.exec(readFileSync(join(dir, 'outside', 'vm.vmdk'), 'utf8'))?.[1] ?? ''
  writeFileSync(top, child.replace('parentFileNameHint="vm.vmdk"', 'parentFileNameHint="../../outside/vm.vmdk"').replace(/^parentCID=\w+/m, `parentCID=${cid}`))
  await refused('parent out of the root', top)
  writeFileSync(top, child)
  // the disk named itself must lie inside
  await t.rejects(openChain(join(dir, 'outside', 'vm.vmdk'), { roots }), { code: 'E_OUTSIDE_ROOT', file: join(dir, 'outside', 'vm.vmdk') })
  // the untouched chain opens
  const c = await openChain(top, { roots })
  t.equal(c.layers.length, 2)
  await c.close()
  // the message ends with what to do: by default about roots in general (vmdk knows no datastore settings), or the caller's
  writeFileSync(desc, good.replace('"vm-flat.vmdk"', JSON.stringify(secret)))
  const generic = /is refused; fix the reference, or add the folder the file is on to the roots \(/
  await t.rejects(openChain(top, { roots }), { code: 'E_OUTSIDE_ROOT', message: generic }, 'default remedy')
  t.equal(DEFAULT_OUTSIDE_ROOT_REMEDY, 'fix the reference, or add the folder the file is on to the roots')
  const remedy = 'add its datastore with --datastore-root DIR'
  for (const open of [openChain, describeChain]) {
    const err = (await open(top, { roots, rootsRemedy: remedy }).then(
      () => undefined,
      (e: unknown) => e,
    )) as Error | undefined
    t.match(err, { code: 'E_OUTSIDE_ROOT', file: desc, message: /^extent .*secret\.txt.* is refused; add its datastore with --datastore-root DIR \(/ }, `${open.name}: the caller's remedy`)
    t.notMatch(err?.message, /map the datastore|to the roots/, `${open.name}: no other remedy`)
  }
  await t.rejects(openChain(top, { roots, rootsRemedy: '' }), { code: 'E_OUTSIDE_ROOT', message: /is refused \(/ }, "'': no remedy (the caller's message says it)")
  writeFileSync(desc, good)
  writeFileSync(top, child.replace('parentFileNameHint="vm.vmdk"', 'parentFileNameHint="../../outside/vm.vmdk"').replace(/^parentCID=\w+/m, `parentCID=${cid}`))
  await t.rejects(
    openChain(top, { roots, rootsRemedy: remedy }),
    { code: 'E_OUTSIDE_ROOT', file: top, message: /^parent .* is refused; add its datastore with --datastore-root DIR \(/ },
    'a parent: the remedy too',
  )
  writeFileSync(top, child)
  await t.rejects(openLayer(join(dir, 'outside', 'vm.vmdk'), { roots, rootsRemedy: remedy }), { code: 'E_OUTSIDE_ROOT', message: /is refused; add its datastore/ }, 'openLayer')
  const files = confineFileAccess(localFileAccess, roots, { remedy })
  await t.rejects(files.open(secret, 'r'), { code: 'E_OUTSIDE_ROOT', file: secret, message: /is refused; add its datastore with --datastore-root DIR \(/ }, 'confineFileAccess')
})

t.test('with roots, legitimate chains still open: a linked clone in another VM folder, a mapped absolute parent, roots named through links', async (t) => {
  const dir = t.testdir()
  const ds = join(dir, 'ds')
  mkdirSync(join(ds, 'base'), { recursive: true })
  mkdirSync(join(ds, 'clone'))
  const { base } = await chain(join(ds, 'base'))
  const want = await openChain(base).then(async (c) => {
    const d = await chainDigest(c)
    await c.close()
    return d
  })
  // a linked clone: its delta in its own folder, the parent hint "../base/vm.vmdk"
  const clone = join(ds, 'clone', 'clone.vmdk')
  await createDelta(base, clone, { format: 'sesparse' })
  t.match(readFileSync(clone, 'utf8'), /parentFileNameHint="\.\.\/base\/vm\.vmdk"/)
  let c = await openChain(clone, { roots: [ds] })
  t.equal(await chainDigest(c), want, 'relative parent in another VM folder of the datastore')
  await c.close()
  // the datastore named through a link (/vmfs/volumes/<name> → <uuid>), the parent by its absolute datastore path
  symlinkSync(ds, join(dir, 'ds-name'))
  writeFileSync(clone, readFileSync(clone, 'utf8').replace('"../base/vm.vmdk"', '"/vmfs/volumes/ds-name/base/vm.vmdk"'))
  c = await openChain(join(dir, 'ds-name', 'clone', 'clone.vmdk'), { roots: [join(dir, 'ds-name')], pathMap: { '/vmfs/volumes/ds-name': join(dir, 'ds-name') } })
  t.equal(await chainDigest(c), want, 'absolute parent through the path map, root named through a link')
  await c.close()
  // a missing parent inside the roots is still reported as missing
  writeFileSync(clone, readFileSync(clone, 'utf8').replace('"/vmfs/volumes/ds-name/base/vm.vmdk"', '"../base/gone.vmdk"'))
  await t.rejects(openChain(clone, { roots: [ds] }), { code: 'E_CHAIN_MISSING', file: clone })
})

t.test('with realRoots (pinned by the caller), a root named through a link re-pointed later moves nothing; the names stay as given', async (t) => {
  const dir = t.testdir()
  const ds = join(dir, 'ds')
  mkdirSync(join(ds, 'base'), { recursive: true })
  await chain(join(ds, 'base'))
  // the caller's alias of the datastore, and a look-alike folder it will be re-pointed at
  const alias = join(dir, 'ds-alias')
  symlinkSync(ds, alias)
  const other = join(dir, 'other')
  mkdirSync(other)
  execFileSync('cp', ['-r', join(ds, 'base'), other])
  const named = join(alias, 'base', 'vm.vmdk')
  const pinned = { roots: [alias], realRoots: [realpathSync(ds)] }
  const c = await openChain(named, pinned)
  t.equal(c.layers[0]?.path, named, 'the chain keeps the name it was opened by')
  await c.close()
  rmSync(alias)
  symlinkSync(other, alias)
  const moved = { code: 'E_OUTSIDE_ROOT', message: new RegExp(`resolves to ${realpathSync(other)}/base/vm\\.vmdk \\(through a symbolic link\\)`) }
  await t.rejects(openChain(named, pinned), moved, 'openChain: refused, not read from the new target')
  await t.rejects(openLayer(named, pinned), moved, 'openLayer')
  await t.rejects(confineFileAccess(localFileAccess, [alias], { realRoots: pinned.realRoots }).stat(named), moved, 'confineFileAccess')
  // without realRoots the root is resolved where the name leads now (the default, for callers that do not pin)
  await t.resolves(
    openChain(named, { roots: [alias] }).then(async (c) => await c.close()),
    'unpinned: the root follows the link',
  )
})
