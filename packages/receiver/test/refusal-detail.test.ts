/**
 * peerRefusalDetail (SPEC §5.1, protocol v9): the refusal text the receiver
 * logs, told to the agent without the folder store's absolute path, bounded.
 */
import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { mkdirSync, realpathSync, symlinkSync } from 'node:fs'
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

t.test('the store folder ends where its path ends: at the end of a sentence or any punctuation; never a longer path or a sibling', async (t) => {
  const store = '/srv/store'
  // each of these was sent with the folder in it (only white space, a quote, `),;:` or the end counted)
  t.equal(withoutStoreFolder(`cannot write to ${store}.`, store), 'cannot write to the store.', 'the end of a sentence')
  t.equal(withoutStoreFolder(`is it ${store}? no: ${store}! ${store}… ${store}.)`, store), 'is it the store? no: the store! the store… the store.)')
  t.equal(withoutStoreFolder(`[${store}] {${store}} <${store}> '${store}.' "${store}."`, store), '[the store] {the store} <the store> \'the store.\' "the store."')
  t.equal(withoutStoreFolder(`${store}*, ${store}=, ${store}(copy)`, store), 'the store*, the store=, the store(copy)', 'any character that does not continue a name')
  t.equal(withoutStoreFolder(`cannot open ${store}/. or '${store}/'`, store), "cannot open the store. or 'the store'", 'the folder written with its separator')
  // a folder whose name goes on is a sibling, one whose path goes before it another folder: both stay as they are
  for (const other of [
    `${store}2/vm/a`,
    `${store}2.`,
    `${store}.old`,
    `${store}.old/vm/a.`,
    `${store}-b!`,
    `${store}_x`,
    `${store}é/vm`,
    `/mnt${store}/vm/a`,
    `/mnt${store}.`,
    `..${store}/vm`,
    `/a/${store}/vm`,
  ])
    t.equal(withoutStoreFolder(`at ${other} now`, store), `at ${other} now`, `${other}: another folder`)
  t.equal(withoutStoreFolder(`/${store}/vm/a and ${store}.old and ${store}/vm/b.`, store), 'vm/a and /srv/store.old and vm/b.', 'the same folder written with two slashes; a sibling beside it')
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
  // given with a `..` after a link: Node's real path takes the `..` as written, the system's (fs.promises.realpath,
  // checkVmDir's) after the link — the folder holding the link's target; a message may name either
  mkdirSync(join(dir, 'far', 'away'), { recursive: true })
  symlinkSync(join(dir, 'far', 'away'), join(real, 'up'))
  const dotted = `${join(link, 'up')}/..`
  t.equal(withoutStoreFolder(`${join(realpathSync(dir), 'far')}/vm/a, ${realpathSync(dotted)}/vm/b`, dotted), 'vm/a, vm/b', "the store's real path as the system gives it")
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
