import t from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { bearerToken, createTokenTable, globMatch, mayAccess, parseTokens } from '../src/auth.ts'
import { mirrorVmx, baseDiskName } from '../src/mirror-vmx.ts'
import { descriptorCid, mirrorDescriptor } from '../src/mirror-descriptor.ts'
import { VmMirror } from '../src/vm-mirror.ts'
import { createReceiver, loadReceiverConfig, parseListen, storeStatus, rollbackMirror, recoverStore } from '../src/index.ts'

t.test('tokens and globs', async (t) => {
  const entries = parseTokens({ tokens: [{ name: 'a', token: 'x'.repeat(20), vms: ['web-*', 'db0?'] }] })
  const table = createTokenTable(entries)
  t.equal(table.lookup('x'.repeat(20))?.name, 'a')
  t.equal(table.lookup('x'.repeat(19)), undefined)
  t.equal(table.lookup(''), undefined)
  t.ok(globMatch('web-*', 'web-01'))
  t.notOk(globMatch('web-*', 'db01'))
  t.ok(globMatch('db0?', 'db01'))
  t.notOk(globMatch('db0?', 'db011'))
  t.notOk(globMatch('a.b', 'axb'), 'dots are literal')
  t.ok(mayAccess(entries[0] as never, 'web-x'))
  t.equal(bearerToken('Bearer abc'), 'abc')
  t.equal(bearerToken('bearer  abc '), 'abc')
  t.equal(bearerToken('Basic abc'), undefined)
  t.equal(bearerToken(undefined), undefined)
  t.throws(() => parseTokens({ tokens: [{ name: 'a', token: 'short', vms: [] }] }), { code: 'E_CONFIG' })
  t.throws(() => parseTokens({}), { code: 'E_CONFIG' })
  t.throws(() => parseTokens({ tokens: [{ name: '', token: 'x'.repeat(20), vms: ['a'] }] }), { code: 'E_CONFIG' })
  // per-token limits: maxSessions, quota (a size or bytes); unknown keys refused
  t.match(parseTokens({ tokens: [{ name: 'q', token: 'x'.repeat(20), vms: ['a'], maxSessions: 2, quota: '1.5G' }] })[0], { maxSessions: 2, quota: 1.5 * 1024 ** 3 })
  t.match(parseTokens({ tokens: [{ name: 'q', token: 'x'.repeat(20), vms: ['a'], quota: 4096 }] })[0], { quota: 4096 }, 'what writeTokensFile writes reads back')
  t.throws(() => parseTokens({ tokens: [{ name: 'q', token: 'x'.repeat(20), vms: ['a'], quota: 'lots' }] }), { code: 'E_CONFIG' })
  t.throws(() => parseTokens({ tokens: [{ name: 'q', token: 'x'.repeat(20), vms: ['a'], maxSessions: 0 }] }), { code: 'E_CONFIG' })
  t.match(parseTokens({ tokens: [{ name: 'q', token: 'x'.repeat(20), vms: ['a'], maxVms: 20 }] })[0], { maxVms: 20 })
  for (const maxVms of [0, -1, 1.5, '20', null])
    t.throws(
      () => parseTokens({ tokens: [{ name: 'q', token: 'x'.repeat(20), vms: ['a'], maxVms }] }),
      { code: 'E_CONFIG', message: /maxVms must be a positive integer/ },
      `maxVms ${JSON.stringify(maxVms)}`,
    )
  t.throws(() => parseTokens({ tokens: [{ name: 'q', token: 'x'.repeat(20), vms: ['a'], maxsessions: 2 }] }), { code: 'E_CONFIG' }, 'a misspelt key is not ignored')
})

t.test('mirror .vmx rewrite', async (t) => {
  const src = 'displayName = "web01"\nscsi0:0.fileName = "web01-000003.vmdk"\nscsi0:1.fileName = "/vmfs/volumes/ds2/web01/web01_1-000001.vmdk"\nide1:0.fileName = "/iso/x.iso"\nnvram = "web01.nvram"\n'
  const diskMap = new Map([
    ['web01.vmdk', 'web01.vmdk'],
    ['web01_1.vmdk', 'web01_1.vmdk'],
  ])
  const { text: out, dropped } = mirrorVmx(src, { suffix: ' (DR)', diskMap })
  t.match(out, /displayName = "web01 \(DR\)"/)
  t.match(out, /scsi0:0.fileName = "web01.vmdk"/)
  t.match(out, /scsi0:1.fileName = "web01_1.vmdk"/, 'a mirrored disk anywhere on the source points at its mirror')
  t.notMatch(out, /x\.iso/, 'a CD-ROM image outside the mirror is dropped')
  t.match(out, /ide1:0.startConnected = "FALSE"/)
  t.match(out, /nvram = "web01.nvram"/, 'a file of the VM (in its folder) is kept')
  t.same(dropped, [{ key: 'ide1:0.fileName', value: '/iso/x.iso', action: 'disconnected' }])
  t.same(mirrorVmx(out, { suffix: ' (DR)', diskMap }), { text: out, dropped: [], attached: ['web01.vmdk', 'web01_1.vmdk'] }, 'idempotent')
  t.equal(baseDiskName('a\\b\\c-000012.vmdk'), 'c.vmdk')
  t.match(mirrorVmx('guestOS = "x"\n', { suffix: ' (DR)', diskMap: new Map() }).text, /displayName = "\(DR\)"/)
})

t.test('descriptor', async (t) => {
  const d = mirrorDescriptor({ cid: '0000abcd', capacity: 1 << 20, flatFile: 'x-flat.vmdk', ddb: { 'ddb.uuid': '60 00', adapterType: 'pvscsi', 'ddb.longContentID': 'zz' } })
  t.equal(descriptorCid(d), '0000abcd')
  t.match(d, /RW 2048 VMFS "x-flat.vmdk"/)
  t.match(d, /ddb.adapterType = "pvscsi"/)
  t.notMatch(d, /longContentID/)
  t.equal(descriptorCid('CID=abcd\nversion=1\ncreateType="vmfs"\n'), '0000abcd', 'QEMU-style short CID normalised')
  t.equal(descriptorCid('not a descriptor at all'), undefined)
  // SPEC §6 DDB keys may hold ':' and '-'; the descriptor keeps them
  const e = mirrorDescriptor({ cid: '0000abcd', capacity: 1 << 20, flatFile: 'x-flat.vmdk', ddb: { 'ddb.toolsInstallType': '4', 'ddb.a:b-c': 'v' } })
  t.match(e, /ddb.a:b-c = "v"/)
  t.equal(descriptorCid(e), '0000abcd')
})

t.test('config and set-up errors', async (t) => {
  const dir = scratchDir(t)
  t.same(parseListen('0.0.0.0:7443'), { host: '0.0.0.0', port: 7443 })
  t.same(parseListen('[::1]:1'), { host: '::1', port: 1 })
  t.same(parseListen('7443'), { host: '127.0.0.1', port: 7443 })
  t.throws(() => parseListen('x:99999'), { code: 'E_CONFIG' })
  const cfg = join(dir, 'r.json')
  writeFileSync(cfg, JSON.stringify({ listen: '127.0.0.1:0', store: 'mirrors', tokens: 'tokens.json', trivialMiB: 8, displaySuffix: ' (DR)' }))
  const init = await loadReceiverConfig(cfg)
  t.equal(init.store, join(dir, 'mirrors'))
  t.equal(init.tokensFile, join(dir, 'tokens.json'))
  t.equal(init.trivialMiB, 8)
  writeFileSync(cfg, JSON.stringify({ store: 'm', bogus: 1 }))
  await t.rejects(loadReceiverConfig(cfg), { code: 'E_CONFIG' })
  await t.rejects(loadReceiverConfig(join(dir, 'missing.json')), { code: 'E_CONFIG' })
  const logger = pino({ level: 'silent' })
  t.throws(() => createReceiver({ logger }, { host: '0.0.0.0', store: dir, tokens: [] }), { code: 'E_CONFIG' }, 'non-loopback without TLS refused')
  t.throws(() => createReceiver({ logger }, { host: '127.0.0.1', store: dir }), { code: 'E_CONFIG' }, 'no tokens refused')
  t.throws(() => createReceiver({ logger }, { store: dir, tokens: [], tlsCert: 'c' }), { code: 'E_CONFIG' }, 'cert without key')
  for (const bad of [Number.NaN, 0, -1, 1.5, 2 ** 31]) {
    t.throws(() => createReceiver({ logger }, { host: '127.0.0.1', store: dir, tokens: [], windowBytes: bad }), { code: 'E_CONFIG', message: /--window-bytes/ }, `window ${bad} refused`)
    t.throws(() => createReceiver({ logger }, { host: '127.0.0.1', store: dir, tokens: [], batchBytes: bad }), { code: 'E_CONFIG', message: /--batch-bytes/ }, `batch ${bad} refused`)
  }
  for (const bad of [Number.NaN, -1, 1.5, 2 ** 21]) {
    t.throws(() => createReceiver({ logger }, { host: '127.0.0.1', store: dir, tokens: [], trivialMiB: bad }), { code: 'E_CONFIG', message: /--trivial-mb/ }, `trivial ${bad} refused`)
  }
  t.doesNotThrow(() => createReceiver({ logger }, { host: '127.0.0.1', store: dir, tokens: [], trivialMiB: 0 }), 'trivialMiB 0 (no trivial prefix) accepted')
  const r = createReceiver({ logger }, { host: '0.0.0.0', store: dir, tokens: [], insecure: true })
  await t.rejects(r.listen(), { code: 'E_CONFIG' }, 'an empty token list is refused at listen')
  writeFileSync(join(dir, 'bad-tokens.json'), '{')
  await t.rejects(createReceiver({ logger }, { store: dir, tokensFile: join(dir, 'bad-tokens.json') }).listen(), { code: 'E_CONFIG' })
  t.same(await storeStatus(join(dir, 'nope')), { store: join(dir, 'nope'), vms: [] })
  await t.rejects(rollbackMirror(dir, 'nope'), { code: 'E_NOT_FOUND' })
  t.same(await recoverStore(join(dir, 'nope'), logger), [])
})

t.test('start-up recovery leaves the temporary files of a VM another process holds', async (t) => {
  const dir = scratchDir(t)
  const logger = pino({ level: 'silent' })
  const vm = 'held-vm'
  const gdir = join(dir, vm, '.grainline')
  mkdirSync(gdir, { recursive: true })
  writeFileSync(join(gdir, 'state.json'), JSON.stringify({ format: 1, vm, committedCycle: 0, disks: {}, inflight: null, pending: null }))
  // another process (a prune, a second receiver) holds the VM and is writing state.json atomically
  const held = await VmMirror.acquire(dir, vm, logger, { create: false })
  const temp = join(gdir, 'state.json.tmp-4242-0123abcd')
  writeFileSync(temp, '{"half":')
  const busy = await recoverStore(dir, logger)
  t.equal(busy[0]?.action, 'failed', 'the VM is busy')
  t.ok(existsSync(temp), "the holder's temporary file is left alone")
  held.release()
  const done = await recoverStore(dir, logger)
  t.equal(done[0]?.action, 'none')
  t.notOk(existsSync(temp), 'removed once the VM is free')
})
