// The other helpers, each against the real thing: qemu-img/qemu-io on a
// qemu-made disk, a pino logger's real output, the shared-folder lookup.
import t from 'tap'
import { writeFileSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import {
  firstDifference,
  memoryLogger,
  patternBytes,
  pollUntil,
  prng,
  qemuCompare,
  qemuImg,
  qemuInfo,
  qemuIo,
  qemuMap,
  qemuRaw,
  scratchDir,
  sharedDir,
  sharedSample,
  tokenFileFixture,
  tokensFixture,
  TEST_TOKEN,
  logMatcher,
  runNode,
  cliBin,
  packageFile,
} from '../src/index.ts'

const MiB = 1 << 20

t.test('qemu oracles on a hosted-sparse chain', async (t) => {
  const dir = scratchDir(t)
  const base = join(dir, 'base.vmdk')
  const top = join(dir, 'top.vmdk')
  await qemuImg(['create', '-q', '-f', 'vmdk', base, '4M'])
  await qemuIo(base, ['write -P 0x11 0 64k'])
  await qemuImg(['create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', top])
  await qemuIo(top, ['write -P 0x22 1M 64k', 'write -z 0 4k'])
  const map = await qemuMap(top)
  t.match(map[0], { start: 0, depth: 0, data: true }, 'the zero write allocated the first grain of the top')
  t.ok(
    map.every((e) => Object.keys(e).every((k) => ['start', 'length', 'depth', 'present', 'zero', 'data', 'offset'].includes(k))),
    'only the qemu 7.2 fields',
  )
  t.ok(
    map.some((e) => e.start === MiB && e.depth === 0 && e.data),
    'the write into the top is at depth 0',
  )
  const info = await qemuInfo(top, { backingChain: true })
  t.equal(info.length, 2, 'one object per layer')
  t.equal(info[0]?.['virtual-size'], 4 * MiB)
  const raw = join(dir, 'top.raw')
  await qemuRaw(top, raw)
  const want = Buffer.alloc(4 * MiB)
  want.fill(0x11, 4096, 65536)
  want.fill(0x22, MiB, MiB + 65536)
  const expected = join(dir, 'expected.raw')
  writeFileSync(expected, want)
  t.equal(await firstDifference(raw, expected), -1, 'convert: the chain as written')
  t.same(await qemuCompare(top, expected), { identical: true, message: 'Images are identical.' })
  want[MiB + 5] = 0
  writeFileSync(expected, want)
  t.equal(await firstDifference(raw, expected), MiB + 5, 'the first differing byte')
  const diff = await qemuCompare(top, expected)
  t.equal(diff.identical, false)
  t.match(diff.message, /mismatch/i)
  await t.rejects(qemuCompare(join(dir, 'missing.vmdk'), expected), 'an error is not a difference')
  writeFileSync(expected, want.subarray(0, MiB))
  t.equal(await firstDifference(raw, expected), MiB, 'a shorter file differs at its length')
})

t.test('qemuRaw with a path map: absolute ESXi parent hints resolve to local folders', async (t) => {
  const dir = scratchDir(t)
  await qemuImg(['create', '-q', '-f', 'vmdk', join(dir, 'base.vmdk'), '1M'])
  await qemuIo(join(dir, 'base.vmdk'), ['write -P 0x33 0 4k'])
  await qemuImg(['create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', join(dir, 'top.vmdk')])
  // point the child's hint at a datastore path, as ESXi writes it
  const top = readFileSync(join(dir, 'top.vmdk'))
  const at = top.indexOf('parentFileNameHint="base.vmdk"')
  t.ok(at > 0)
  // the embedded descriptor has spare room after its text: the file keeps its size
  writeFileSync(
    join(dir, 'top.vmdk'),
    Buffer.concat([top.subarray(0, at), Buffer.from('parentFileNameHint="/vmfs/volumes/ds1/base.vmdk"'), top.subarray(at + 'parentFileNameHint="base.vmdk"'.length)]).subarray(0, top.length),
  )
  const out = join(dir, 'out.raw')
  await t.rejects(qemuRaw(join(dir, 'top.vmdk'), out), 'qemu alone cannot find /vmfs/volumes/ds1')
  await qemuRaw(join(dir, 'top.vmdk'), out, { pathMap: { '/vmfs/volumes/ds1': dir } })
  t.equal(readFileSync(out)[0], 0x33, 'the parent was read through the map')
})

t.test('memory logger: lines, children, matching, waiting', async (t) => {
  const log = memoryLogger({ level: 'info' })
  log.logger.debug('not recorded')
  log.logger.child({ vm: 'web01' }).info({ disk: 'a.vmdk', seq: 3 }, 'extent written')
  t.equal(log.lines.length, 1)
  t.match(log.find('extent written'), { vm: 'web01', disk: 'a.vmdk', seq: 3, level: 30 })
  t.ok(log.find({ vm: 'web01', seq: 3 }))
  t.equal(log.find({ seq: 4 }), undefined)
  t.ok(log.find(/written$/))
  t.equal(log.filter((l) => l['level'] === 30).length, 1)
  t.match(log.text(), /"msg":"extent written"/)
  const later = log.waitFor({ msg: 'committed', cycle: 2 })
  log.logger.info({ cycle: 1 }, 'committed')
  log.logger.warn({ cycle: 2 }, 'committed')
  t.match(await later, { cycle: 2, level: 40 })
  t.match(await log.waitFor('extent written'), { seq: 3 }, 'a line already written resolves at once')
  t.equal(logMatcher({ a: [1, 2] })({ a: [1, 2] }), true, 'deep equality of fields')
})

t.test('shared folder: GRAINLINE_SHARED_DIR, and an absent sample said plainly', async (t) => {
  const saved = process.env['GRAINLINE_SHARED_DIR']
  t.teardown(() => {
    if (saved === undefined) delete process.env['GRAINLINE_SHARED_DIR']
    else process.env['GRAINLINE_SHARED_DIR'] = saved
  })
  const dir = scratchDir(t)
  process.env['GRAINLINE_SHARED_DIR'] = dir
  t.equal(sharedDir(), dir)
  const comments: unknown[] = []
  t.equal(sharedSample('x/y.vmdk', { comment: (...a: unknown[]) => comments.push(...a) }), undefined)
  t.match(String(comments[0]), /shared sample x\/y\.vmdk is absent .*GRAINLINE_SHARED_DIR/)
  const { mkdirSync } = await import('node:fs')
  mkdirSync(join(dir, 'samples', 'x'), { recursive: true })
  writeFileSync(join(dir, 'samples', 'x', 'y.vmdk'), '')
  t.equal(sharedSample('x/y.vmdk'), join(dir, 'samples', 'x', 'y.vmdk'))
  delete process.env['GRAINLINE_SHARED_DIR']
  t.match(sharedDir(), /\/shared$/, 'default: ../shared beside the repository')
})

t.test('token fixtures, deterministic data, polling', async (t) => {
  const dir = scratchDir(t)
  const tokens = tokensFixture(dir)
  t.same(JSON.parse(readFileSync(tokens.file, 'utf8')), { tokens: [{ name: 'test-agent', token: TEST_TOKEN, vms: ['*'] }] })
  t.equal(readFileSync(tokenFileFixture(dir), 'utf8'), TEST_TOKEN + '\n')
  t.same(patternBytes(10, 5), patternBytes(10, 5))
  t.notSame(patternBytes(16, 5), patternBytes(16, 6))
  t.equal(patternBytes(7, 1).length, 7)
  const r = prng(1)
  const a = [r(), r()]
  t.same(a, [
    prng(1)(),
    (() => {
      const q = prng(1)
      q()
      return q()
    })(),
  ])
  let n = 0
  t.equal(await pollUntil(() => (++n >= 3 ? n : undefined), { intervalMs: 1 }), 3)
  await t.rejects(
    pollUntil(() => undefined, { signal: AbortSignal.abort(new Error('stop')) }),
    /stop/,
  )
})

t.test('runNode collects output and status; package entries resolve by name', async (t) => {
  const dir = scratchDir(t)
  const script = join(dir, 'echo.mjs')
  // plain writes: under lerna FORCE_COLOR is set and console.error would colour a boolean
  writeFileSync(
    script,
    "process.stdout.write(process.argv.slice(2).join(' ') + '\\n'); process.stderr.write((process.env.X ?? 'unset') + ' ' + String(process.env.HOME === undefined) + '\\n'); process.exitCode = 3\n",
  )
  let spawned = 0
  const r = await runNode(script, ['a', 'b'], { env: { X: 'yes', HOME: undefined }, cwd: dir, onSpawn: () => spawned++ })
  t.same(r, { code: 3, signal: null, stdout: 'a b\n', stderr: 'yes true\n' })
  t.equal(spawned, 1)
  t.match(cliBin(), /packages\/cli\/dist\/src\/bin\.js$/)
  t.throws(() => packageFile('@grainline/no-such-package', 'x.js'), /cannot resolve package @grainline\/no-such-package/)
  t.throws(() => packageFile('@grainline/receiver', 'no-such-file.js'), /does not exist: build first/)
})

t.test('runNode timeoutMs: a hung child is ended (SIGTERM, then SIGKILL), its output kept', async (t) => {
  const dir = scratchDir(t)
  const hang = join(dir, 'hang.mjs')
  writeFileSync(hang, "process.stderr.write('started\\n'); setInterval(() => {}, 1000)\n")
  // 5 s: the child has surely started (and printed) by then, even on a loaded machine
  const r = await runNode(hang, [], { timeoutMs: 5000 })
  t.same(r, { code: null, signal: 'SIGTERM', stdout: '', stderr: 'started\n', timedOut: true })
  // a child that ignores SIGTERM is killed 10 s later
  const stubborn = join(dir, 'stubborn.mjs')
  writeFileSync(stubborn, "process.on('SIGTERM', () => {}); process.stderr.write('started\\n'); setInterval(() => {}, 1000)\n")
  const r2 = await runNode(stubborn, [], { timeoutMs: 5000 })
  t.equal(r2.signal, 'SIGKILL')
  t.equal(r2.timedOut, true)
  // a child that ends in time: no timedOut field
  const quick = join(dir, 'quick.mjs')
  writeFileSync(quick, "process.stdout.write('done\\n')\n")
  t.same(await runNode(quick, [], { timeoutMs: 60_000 }), { code: 0, signal: null, stdout: 'done\n', stderr: '' })
})
