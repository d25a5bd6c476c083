/**
 * peerRefusalDetail (SPEC §5.1, protocol v9): the refusal text the receiver
 * logs, told to the agent without the folder store's absolute path, bounded.
 */
import t from 'tap'
import { resolve } from 'node:path'
import { peerRefusalDetail } from '../src/refusal-detail.ts'

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
