/**
 * peerRefusalDetail (SPEC §5.1, protocol v9): the refusal text the receiver
 * logs, told to the agent without the folder store's absolute path, bounded.
 */
import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { mkdirSync, symlinkSync } from 'node:fs'
import { join, relative, resolve } from 'node:path'
import { MAX_ERROR_TEXT_BYTES, MessageKind } from '@grainline/protocol'
import { ReceiverError } from '../src/errors.ts'
import { peerErrorMessage, peerRefusalDetail, withoutStoreFolder } from '../src/refusal-detail.ts'

t.test('the store folder: a file under it by its VM-relative path, the folder itself as "the store"', async (t) => {
  const store = '/srv/dr.store'
  const m = `mirror of a.vmdk changed since the last commit (CID missing, recorded 0a1b2c3d; its descriptor is not text in the encoding it declares (descriptor bytes are not valid utf-8 (its encoding= key) (${store}/web01/a.vmdk)))`
  t.equal(peerRefusalDetail(m, store), m.replace(`${store}/`, ''))
  t.equal(peerRefusalDetail(m, `${store}/`), m.replace(`${store}/`, ''), 'given with a trailing slash')
  t.equal(peerRefusalDetail(`store ${store}: full; ${store}//vm/x`, store), 'store the store: full; vm/x')
  t.equal(peerRefusalDetail(`${store}x/vm is another folder`, store), `${store}x/vm is another folder`, 'only that folder')
  t.equal(peerRefusalDetail(`${resolve('rel-store')}/vm/d.vmdk`, 'rel-store'), 'vm/d.vmdk', 'a relative store as resolved')
  t.equal(peerRefusalDetail('point 3 in /restore/here: release it', store), 'point 3 in /restore/here: release it', "a hold's folder stays")
  t.equal(peerRefusalDetail('/a/b', '/'), '/a/b', 'the root is no folder to strip')
})

t.test('a Ceph store (no folder): as it is; any text bounded to 2048 UTF-8 bytes with "…"', async (t) => {
  const m = 'the committed snapshot rbd/web01-a@grainline-3 of disk a.vmdk of VM web01 is gone: …'
  t.equal(peerRefusalDetail(m, undefined), m)
  const long = peerRefusalDetail('é'.repeat(5000), '/srv/store')
  t.ok(long.endsWith('…'))
  t.ok(Buffer.byteLength(long) <= 2048, `${Buffer.byteLength(long)} bytes`)
})

t.test('a store reached through a link loses its real path too; a relative one its prefix where a path starts', async (t) => {
  const dir = scratchDir(t)
  const real = join(dir, 'real-store')
  mkdirSync(real)
  const link = join(dir, 'link')
  symlinkSync(real, link)
  t.equal(withoutStoreFolder(`${link}/vm/a is outside the store (it resolves to ${real}/vm/a)`, link), 'vm/a is outside the store (it resolves to vm/a)')
  const rel = relative(process.cwd(), real)
  t.equal(withoutStoreFolder(`rename '${rel}/vm/a.seed' -> '${rel}/vm/a'`, rel), "rename 'vm/a.seed' -> 'vm/a'")
  t.equal(withoutStoreFolder(`${rel}/vm/a is a FIFO`, `./${rel}/`), 'vm/a is a FIFO', 'given as ./…/')
  t.equal(withoutStoreFolder('the store is full', 'store'), 'the store is full', 'a relative folder alone is a word')
  t.equal(withoutStoreFolder('x/store/vm', 'store'), 'x/store/vm', 'only where a path starts')
})

t.test('peerErrorMessage: the store stripped before the cut, a peerMessage told instead, E_INTERNAL says nothing', async (t) => {
  const store = '/srv/dr.store'
  t.same(peerErrorMessage(new ReceiverError('E_IO', `${store}/vm/.grainline/state.json is a FIFO`), store), {
    kind: MessageKind.Error,
    code: 'E_IO',
    message: 'vm/.grainline/state.json is a FIFO',
    fatal: true,
  })
  const long = peerErrorMessage(new ReceiverError('E_IO', `${'x'.repeat(MAX_ERROR_TEXT_BYTES - 8)} ${store}/vm/d`), store)
  t.ok(long.message.endsWith(' vm/d'), 'the path stripped first: no piece of the folder left at the cut')
  t.equal(peerErrorMessage(new ReceiverError('E_BUSY', 'VM v is being written by process 42', { peerMessage: 'VM v is busy' }), store).message, 'VM v is busy')
  t.equal(peerErrorMessage(Object.assign(new Error(`${store}/vm/x`), { code: 'E_INTERNAL' }), store).message, 'internal error')
  t.equal(peerErrorMessage(new ReceiverError('E_IO', `${store}/vm/x`), undefined).message, `${store}/vm/x`, 'a Ceph store: as it is')
})
