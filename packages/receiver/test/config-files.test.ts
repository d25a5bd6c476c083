import t from 'tap'
import type { Test } from 'tap'
import { scratchDir } from '@grainline/test-utils'
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { MessageKind, type VmOpenMessage } from '@grainline/protocol'
import { readVmState, type VmStateFile } from '../src/state-file.ts'
import { VmPaths } from '../src/vm-paths.ts'
import { checkFileName, checkFileNames } from '../src/receiver-rules.ts'
import { Agent, MiB, TOKEN, VMX, evolve, hello, incPlan, makeEnv, pattern, runCycle, seedPlan, startChild, startReceiver, vmOpen, type Env } from './helpers.ts'

/*
 * The VM's configuration files (VmOpen.files), staged in `.grainline/incoming`
 * and installed in the mirror folder at commit (commit.ts installFiles): the
 * mirror folder holds the set of the last commit — a name an earlier commit
 * installed and a later one does not carry is removed, never any other file —
 * and no name of the receiver's own files there is accepted.
 */

t.setTimeout(10 * 60_000)

const VM = 'vm1'
const EXT = 64 * 1024
const CAP = MiB
const rangesOf = (c: number): Array<{ offset: number; length: number }> => [{ offset: (c * EXT) % CAP, length: EXT }]
const images: Buffer[] = [Buffer.alloc(0), pattern(CAP, 1)]
for (let c = 2; c <= 6; c++) images[c] = evolve(images[c - 1] as Buffer, c * 7, rangesOf(c))
const plan = (c: number, id = `${c}e`.repeat(8)) =>
  c === 1 ? seedPlan(0, 'vm1.vmdk', images[1] as Buffer, id, EXT) : incPlan(0, 'vm1.vmdk', images[c] as Buffer, c - 1, id, rangesOf(c), `vm1-00000${c - 1}.vmdk`, `vm1-00000${c}.vmdk`, EXT)

/** The VmOpen's files: the .vmx naming the cycle's disk and `extra` (name → contents). */
const filesOf = (c: number, ...extra: string[]) => [
  { name: 'source-name.vmx', data: Buffer.from(VMX(VM, [`vm1-00000${c}.vmdk`])) },
  ...extra.map((name) => ({ name, data: Buffer.from(`${name} of cycle ${c}\n`) })),
]

const dir = (env: Env): string => join(env.store, VM)
const state = (env: Env): VmStateFile => JSON.parse(readFileSync(join(dir(env), '.grainline', 'state.json'), 'utf8')) as VmStateFile
const listing = (env: Env): string[] => readdirSync(dir(env)).sort()

async function cycle(url: string, env: Env, c: number, files: ReturnType<typeof filesOf>): Promise<void> {
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const r = await runCycle(a, VM, c, [plan(c)], { files })
  a.close()
  await a.whenClosed()
  if (r.committed?.cycle !== c) throw new Error(`cycle ${c} not committed`)
}

t.test('a configuration file a later cycle no longer carries is removed from the mirror folder; nothing else is', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  await cycle(url, env, 1, filesOf(1, 'a.nvram'))
  t.same(listing(env), ['.grainline', 'a.nvram', 'vm1-flat.vmdk', 'vm1.vmdk', 'vm1.vmx'])
  t.same(state(env).configFiles, ['a.nvram', 'vm1.vmx'], 'the installed set recorded')
  // the operator's own files, and a journal a seed's rollback set aside, beside the mirror
  writeFileSync(join(dir(env), 'notes.txt'), 'operator\n')
  writeFileSync(join(dir(env), 'vm1.journal.set-aside-cycle-7'), 'set aside\n')
  mkdirSync(join(dir(env), 'b.nvram'))
  await cycle(url, env, 2, filesOf(2, 'c.nvram', 'vm1.vmxf'))
  t.same(listing(env), ['.grainline', 'b.nvram', 'c.nvram', 'notes.txt', 'vm1-flat.vmdk', 'vm1.journal.set-aside-cycle-7', 'vm1.vmdk', 'vm1.vmx', 'vm1.vmxf'], 'a.nvram removed, the others kept')
  t.same(state(env).configFiles, ['c.nvram', 'vm1.vmx', 'vm1.vmxf'])
  t.equal(state(env).pending, null)
  // the operator puts a folder where an installed file was: the folder is not the receiver's to remove
  rmSync(join(dir(env), 'c.nvram'))
  mkdirSync(join(dir(env), 'c.nvram'))
  // new names each cycle: the folder holds the last set, not the sum
  for (let c = 3; c <= 5; c++) await cycle(url, env, c, filesOf(c, `n${c}.nvram`))
  t.same(listing(env), ['.grainline', 'b.nvram', 'c.nvram', 'n5.nvram', 'notes.txt', 'vm1-flat.vmdk', 'vm1.journal.set-aside-cycle-7', 'vm1.vmdk', 'vm1.vmx'])
  t.equal(readFileSync(join(dir(env), 'n5.nvram'), 'utf8'), 'n5.nvram of cycle 5\n')
  t.equal(readFileSync(join(dir(env), 'vm1.journal.set-aside-cycle-7'), 'utf8'), 'set aside\n')
  t.ok(readFileSync(join(dir(env), 'vm1-flat.vmdk')).equals(images[5] as Buffer), 'mirror == image 5')
  // a cycle that carries no .vmx (no configuration sent, a .vmx not staged): the mirror keeps the .vmx it boots
  // from and the files beside it; what the cycle carries is added
  const vmxBefore = readFileSync(join(dir(env), 'vm1.vmx'), 'utf8')
  await cycle(url, env, 6, filesOf(6, 'z.nvram').slice(1))
  t.same(listing(env), ['.grainline', 'b.nvram', 'c.nvram', 'n5.nvram', 'notes.txt', 'vm1-flat.vmdk', 'vm1.journal.set-aside-cycle-7', 'vm1.vmdk', 'vm1.vmx', 'z.nvram'], 'nothing removed')
  t.equal(readFileSync(join(dir(env), 'vm1.vmx'), 'utf8'), vmxBefore, 'the .vmx the mirror boots from is kept')
  t.same(state(env).configFiles, ['n5.nvram', 'vm1.vmx', 'z.nvram'], 'the set: the last one and what this cycle carried')
})

t.test('a store older than the record: nothing removed at its first commit, the set recorded for the next', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  await cycle(url, env, 1, filesOf(1, 'a.nvram'))
  // as an older receiver wrote the state: no configFiles
  const { configFiles: _, ...old } = state(env)
  writeFileSync(join(dir(env), '.grainline', 'state.json'), JSON.stringify(old))
  await cycle(url, env, 2, filesOf(2, 'b.nvram'))
  t.ok(existsSync(join(dir(env), 'a.nvram')), 'a file installed before the record is not known: kept')
  t.same(state(env).configFiles, ['b.nvram', 'vm1.vmx'])
  await cycle(url, env, 3, filesOf(3, 'c.nvram'))
  t.same(
    listing(env).filter((f) => f.endsWith('.nvram')),
    ['a.nvram', 'c.nvram'],
    'b.nvram, recorded, removed',
  )
})

t.test('a state file whose configuration records name a file of the receiver or out of the VM folder is refused (E_STATE)', async (t) => {
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  await cycle(url, env, 1, filesOf(1, 'a.nvram'))
  const good = state(env)
  const paths = new VmPaths(env.store, VM)
  const bad = [
    { configFiles: ['vm1-flat.vmdk'] },
    { configFiles: ['../vm2/vm2.vmx'] },
    { configFiles: ['.grainline'] },
    { configFiles: 'a.nvram' },
    { pending: { cycle: 1, renames: [], descriptors: [], journals: [], files: false, removeFiles: ['vm1.vmdk'] } },
    { pending: { cycle: 1, renames: [], descriptors: [], journals: [], files: false, removeFiles: ['vm1.journal.set-aside-cycle-2'] } },
    { pending: { cycle: 1, renames: [], descriptors: [], journals: [], files: false, removeFiles: ['x/../../y'] } },
  ]
  for (const b of bad) {
    writeFileSync(paths.state, JSON.stringify({ ...good, ...b }))
    await t.rejects(readVmState(paths), { code: 'E_STATE', message: /VM vm1: .*(configFiles|pending\.removeFiles).*not the name of a configuration file|which is not a list/ }, JSON.stringify(b))
  }
  writeFileSync(paths.state, JSON.stringify({ ...good, pending: { cycle: 1, renames: [], descriptors: [], journals: [], files: false, removeFiles: ['old.nvram'] } }))
  t.same((await readVmState(paths))?.pending?.removeFiles, ['old.nvram'], 'a plain name is read')
})

t.test('kill -9 amid the removal or right after the commit point: the restart finishes it', async (t) => {
  for (const fault of ['commit-after-state:1', 'commit-config-removed:1', 'commit-config-removed:2']) {
    await t.test(fault, async (t: Test) => {
      const env = makeEnv(t.testdir())
      const args = ['--batch-bytes', String(EXT), '--log-level', 'warn']
      const c = await startChild(env, { args })
      await cycle(c.url, env, 1, filesOf(1, 'a.nvram', 'a.vmxf'))
      c.child.kill('SIGTERM')
      await c.exited
      const k = await startChild(env, { fault, args })
      await cycle(k.url, env, 2, filesOf(2, 'b.nvram')).catch(() => {})
      // bounded: a receiver that never reaches the fault point is stopped, and the test fails
      const e = await Promise.race([k.exited, new Promise<{ signal: 'timeout' }>((resolve) => setTimeout(() => resolve({ signal: 'timeout' }), 20_000))])
      if (e.signal === 'timeout') {
        k.child.kill('SIGKILL')
        await k.exited
      }
      t.equal(e.signal, 'SIGKILL', `killed at ${fault}`)
      t.equal(state(env).committedCycle, 2, 'killed after the commit point')
      const c2 = await startChild(env, { args })
      t.teardown(() => {
        c2.child.kill('SIGKILL')
      })
      const s = state(env)
      t.equal(s.pending, null, 'rolled forward at start-up')
      t.same(s.configFiles, ['b.nvram', 'vm1.vmx'])
      t.same(listing(env), ['.grainline', 'b.nvram', 'vm1-flat.vmdk', 'vm1.vmdk', 'vm1.vmx'])
      await cycle(c2.url, env, 3, filesOf(3, 'b.nvram'))
      t.ok(readFileSync(join(dir(env), 'vm1-flat.vmdk')).equals(images[3] as Buffer), 'mirror == image 3')
    })
  }
})

t.test("a configuration file named as one of the receiver's own files in the mirror folder is refused at VmOpen, nothing staged", async (t) => {
  for (const name of [
    'vm1.journal.set-aside-cycle-2',
    'vm1.journal.set-aside-cycle-2-3',
    'VM1.JOURNAL.SET-ASIDE-CYCLE-9',
    'vm1.vmx.tmp-123-abcdef01',
    'a.nvram.tmp-4294967295-0badc0de',
    'vm1-flat.vmdk',
    'vm1-flat.vmdk.seed',
    '.grainline',
  ]) {
    t.throws(() => checkFileName(name, VM), { code: 'E_BAD_NAME', message: /^configuration file ".+" of VM "vm1" is not allowed: it is .+ in the VM's mirror folder.*Nothing was staged/ }, name)
  }
  for (const name of ['vm1.nvram', 'vm1.vmxf', 'vm1.journal', 'data.tmp-2024.nvram', 'a.nvram.tmp-0-abcdef01']) t.doesNotThrow(() => checkFileName(name, VM), name)
  const env = makeEnv(scratchDir(t))
  const { receiver, url } = await startReceiver(env)
  t.teardown(() => receiver.close())
  await cycle(url, env, 1, filesOf(1, 'a.nvram'))
  const aside = join(dir(env), 'vm1.journal.set-aside-cycle-2')
  writeFileSync(aside, 'the journal a rollback set aside\n')
  for (const name of ['vm1.journal.set-aside-cycle-2', 'vm1.vmx.tmp-123-abcdef01']) {
    await t.test(name, async (t) => {
      const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
      a.send(hello())
      await a.expect(MessageKind.Welcome)
      const open = vmOpen(VM, 2, ['vm1-000002.vmdk']) as VmOpenMessage
      a.send({ ...open, files: [...open.files, { name, data: Buffer.from('from the agent\n') }] })
      t.same(await a.expectError(), { code: 'E_BAD_NAME', closeCode: 4400 })
      await a.whenClosed()
      t.same(readdirSync(join(dir(env), '.grainline', 'incoming')).sort(), ['a.nvram', 'source-name.vmx'], 'nothing staged')
    })
  }
  // a whole cycle carrying it: refused, not committed over the set-aside journal
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  await runCycle(a, VM, 2, [plan(2)], { files: [...filesOf(2, 'a.nvram'), { name: 'vm1.journal.set-aside-cycle-2', data: Buffer.from('from the agent\n') }] }).catch(() => {})
  a.close()
  await a.whenClosed()
  t.equal(state(env).committedCycle, 1, 'not committed')
  t.equal(readFileSync(aside, 'utf8'), 'the journal a rollback set aside\n', 'the set-aside journal untouched')
  // the agent can go on with the names of its own
  await cycle(url, env, 2, filesOf(2, 'a.nvram'))
  t.equal(readFileSync(aside, 'utf8'), 'the journal a rollback set aside\n')
})

t.test(
  'configuration file names equal ignoring case are refused at VmOpen (naming the VM and both files), nothing staged; a name a later cycle carries in another case replaces the installed one',
  async (t) => {
    const message = /^configuration files "a\.nvram" and "A\.NVRAM" of VM "vm1" differ only in case: .*case-insensitive.*Nothing was staged; keep one of them on the source/
    t.throws(() => checkFileNames(['vm1.vmx', 'a.nvram', 'A.NVRAM'], VM), { code: 'E_BAD_NAME', message })
    t.throws(() => checkFileNames(['source-name.vmx', 'SOURCE-NAME.VMX'], VM), { code: 'E_BAD_NAME', message: /"source-name\.vmx" and "SOURCE-NAME\.VMX" of VM "vm1" differ only in case/ })
    t.throws(() => checkFileNames(['a.nvram', 'a.nvram'], VM), { code: 'E_BAD_NAME', message: /"a\.nvram" and "a\.nvram" of VM "vm1" are one name sent twice/ })
    t.doesNotThrow(() => checkFileNames(['vm1.vmx', 'a.nvram', 'b.nvram', 'vm1.vmxf'], VM), 'distinct names')
    const env = makeEnv(scratchDir(t))
    const { receiver, url } = await startReceiver(env)
    t.teardown(() => receiver.close())
    await cycle(url, env, 1, filesOf(1, 'a.nvram'))
    for (const pair of [
      ['a.nvram', 'A.NVRAM'],
      ['source-name.vmx', 'Source-Name.vmx'],
    ]) {
      await t.test(pair.join(' + '), async (t) => {
        const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
        const seen: string[] = []
        a.send(hello())
        await a.expect(MessageKind.Welcome)
        const files = [...filesOf(2, 'a.nvram').filter((f) => !pair.includes(f.name)), ...pair.map((name) => ({ name, data: Buffer.from(`${name} from the agent\n`) }))]
        a.send({ ...(vmOpen(VM, 2, ['vm1-000002.vmdk']) as VmOpenMessage), files })
        // the first answer: the refusal (an older receiver answered VmState, staged the files and waited for the disks)
        const m = await a.next()
        if (m?.kind === MessageKind.Error) seen.push(m.message)
        else a.close()
        await a.whenClosed()
        t.same(a.errors, ['E_BAD_NAME'])
        t.match(
          seen[0],
          new RegExp(`configuration files "${pair[0]?.replace('.', '\\.')}" and "${pair[1]?.replace('.', '\\.')}" of VM "vm1" differ only in case`),
          'the message names the VM and both files',
        )
        t.same(readdirSync(join(dir(env), '.grainline', 'incoming')).sort(), ['a.nvram', 'source-name.vmx'], 'nothing staged')
        t.equal(readFileSync(join(dir(env), '.grainline', 'incoming', 'a.nvram'), 'utf8'), 'a.nvram of cycle 1\n', 'the staged file untouched')
      })
    }
    t.equal(state(env).committedCycle, 1, 'not committed')
    // the source renames a.nvram to A.NVRAM: the next cycle installs A.NVRAM in place of a.nvram (removed first, so
    // that a case-insensitive store, where both are one file, holds the new one); one file in the mirror folder
    await cycle(url, env, 2, filesOf(2, 'A.NVRAM'))
    t.same(listing(env), ['.grainline', 'A.NVRAM', 'vm1-flat.vmdk', 'vm1.vmdk', 'vm1.vmx'], 'the new name alone')
    t.equal(readFileSync(join(dir(env), 'A.NVRAM'), 'utf8'), 'A.NVRAM of cycle 2\n')
    t.same(state(env).configFiles, ['A.NVRAM', 'vm1.vmx'])
  },
)
