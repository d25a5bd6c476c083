/**
 * `grainline status` over a cycle in flight whose journal cannot be read at
 * all — missing, a folder or a FIFO in its place (never opened: a FIFO
 * would block), no valid head record, unreadable (EACCES) — says so as the
 * disk's `inflight.problem`: what failed, the journal relative to the store,
 * what a resume and a rollback make of it and what to do; the rest of the
 * status stands. An in-place apply can neither resume nor roll back without
 * its journal: `refused`, CRITICAL. A seed rolls back without a journal that
 * is missing or headless (the receiver does so on its own after the failed
 * resume): WARNING. An interrupted rollback the receiver finishes on its own:
 * WARNING. What the status says is checked against what a resume, a
 * rollback and start-up recovery do with each journal.
 */
import t from 'tap'
import type { Test } from 'tap'
import { execFileSync, spawnSync } from 'node:child_process'
import { chmodSync, existsSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync, writeSync, closeSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { Agent, TOKEN, memoryLogger, runCycle, startReceiver, type DiskPlan, type Env } from './helpers.ts'
import { inflightCycle, inflightSeed, resumeFailsAt, stateOf } from './journal-fixture.ts'
import { recoverStore } from '../src/recovery.ts'
import { rollbackMirror, storeOverview, type StoreOverview } from '../src/index.ts'

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

/** How the journal is broken, and what the status says it is. */
const breaks = [
  { what: 'missing', make: (p: string) => unlinkSync(p), says: 'is missing' },
  {
    what: 'a folder',
    make: (p: string) => {
      unlinkSync(p)
      mkdirSync(p)
    },
    says: 'is a folder, not the journal file (the receiver never opens it)',
  },
  {
    what: 'a FIFO',
    make: (p: string) => {
      unlinkSync(p)
      execFileSync('mkfifo', [p])
    },
    says: 'is a FIFO, not the journal file (the receiver never opens it)',
  },
  {
    what: 'without a valid head record',
    make: (p: string) => {
      const fd = openSync(p, 'r+')
      writeSync(fd, Buffer.alloc(64), 0, 64, 0)
      closeSync(fd)
    },
    says: 'has no valid head record (truncated or overwritten)',
  },
] as const

/** The store's status, read as `grainline status --output json` reads it (`storeOverview`); one VM's entry. */
async function vmStatus(store: string, vm: string) {
  const o = await storeOverview(store)
  const v = o.vms.find((x) => x.vm === vm)
  if (v === undefined) throw new Error(`no ${vm} in the status`)
  return { o, v }
}

/** An agent resumes cycle 2 of `vm` against a new receiver: the resume fails; the receiver's log. */
async function resumeFails(t: Test, env: Env, vm: string, inc: DiskPlan): Promise<string> {
  const { receiver, url, logs } = await startReceiver(env, { recover: false })
  try {
    await resumeFailsAt(t, url, env, vm, inc)
  } finally {
    await receiver.close()
  }
  return logs.text()
}

/** The next run of cycle 2 of `vm` (`inc`) against a new receiver seeds the disk anew and commits. */
async function seedsAnew(t: Test, env: Env, vm: string, inc: DiskPlan): Promise<void> {
  const { receiver, url } = await startReceiver(env, { recover: false })
  t.teardown(() => receiver.close())
  const a = await Agent.connect(url, { token: TOKEN, ca: env.tls.ca })
  const again = await runCycle(a, vm, 2, [inc])
  a.close()
  t.ok(again.committed !== undefined, 'the next run seeds cycle 2 and commits')
}

for (const b of breaks) {
  t.test(`an in-place cycle whose journal is ${b.what}: status CRITICAL, saying so; a resume and a rollback indeed fail, nothing written`, async (t) => {
    const vm = `web-ju-${b.what.replace(/\W+/g, '')}`
    const { env, inc, img1 } = await inflightCycle(t, vm, undefined)
    const jpath = join(env.store, vm, '.grainline', 'd.journal')
    b.make(jpath)
    const flat = readFileSync(join(env.store, vm, 'd-flat.vmdk'))
    const text = `journal ${vm}/.grainline/d.journal of disk d.vmdk of VM ${vm} ${b.says}: cycle 2 can neither resume nor roll back`
    const { o, v } = await vmStatus(env.store, vm)
    t.match(v.disks[0]?.inflight, { cycle: 2, mode: 'incremental', resumeSeq: 0, refused: true }, 'no resume point; stuck')
    t.match(v.disks[0]?.inflight?.problem, text, "the disk's problem: the journal relative to the store, what failed, what it means")
    t.match(v.disks[0]?.inflight?.problem, 'every run of VM', '… that every run fails')
    t.match(v.disks[0]?.inflight?.problem, `or remove the mirror (grainline mirror remove --store ${env.store} --vm ${vm} --yes)`, '… and what to do')
    t.equal(v.health.state, 'CRITICAL', 'CRITICAL')
    t.equal(o.exitCode, 2, 'status exits 2')
    t.match(v.health.problems, [new RegExp(esc(text)), /^cycle 2 in flight/], 'in the health problems, with the cycle in flight')
    t.equal(v.committedCycle, 1, 'the rest of the status: committed cycle 1')
    t.equal(v.disks[0]?.capacity, img1.length, '… the disk')

    // the truth of it: a rollback fails, and so does the agent's resume (the receiver's own rollback after it too)
    const err = (await rollbackMirror(env.store, vm).then(
      () => undefined,
      (e: unknown) => e,
    )) as { code?: string; message?: string } | undefined
    t.ok(err !== undefined, `the rollback fails (${err?.code}: ${err?.message?.slice(0, 100)})`)
    if (b.what === 'missing' || b.what === 'without a valid head record') t.match(err, { code: 'E_STATE', message: `${text}` }, '… with the text status shows')
    const logs = await resumeFails(t, env, vm, inc)
    t.match(logs, text, 'the receiver logs why the resume failed: the text status shows')
    // its own rollback after the failed resume refuses before writing anything: said as such, not as a mirror needing recovery
    const lines = logs
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as { level: number; msg: string; why?: string })
    t.notMatch(logs, 'mirror needs recovery', 'no "mirror needs recovery": nothing was written')
    t.match(
      lines.filter((l) => l.msg.startsWith('rollback after the failed apply refused')),
      [{ level: 40, msg: 'rollback after the failed apply refused, nothing written: the cycle stays in flight', why: new RegExp(`^${esc(text)}.*Nothing was undone$`) }],
      "the receiver's rollback after it: a warning naming the refusal",
    )
    t.ok(readFileSync(join(env.store, vm, 'd-flat.vmdk')).equals(flat), 'the flat unchanged byte for byte')
    t.equal(stateOf(env.store, vm).inflight?.cycle, 2, 'cycle 2 still in flight')
  })
}

t.test('an in-place cycle whose journal cannot be read (EACCES): status CRITICAL, saying so', async (t) => {
  const vm = 'web-ju-eacces'
  const { env } = await inflightCycle(t, vm, undefined)
  const jpath = join(env.store, vm, '.grainline', 'd.journal')
  chmodSync(jpath, 0)
  const { o, v } = await statusAsOther(t, env.store, vm)
  t.match(v.disks[0]?.inflight, { cycle: 2, mode: 'incremental', resumeSeq: 0, refused: true }, 'no resume point; stuck')
  t.match(
    v.disks[0]?.inflight?.problem,
    `journal ${vm}/.grainline/d.journal of disk d.vmdk of VM ${vm} cannot be read (permission denied, EACCES): cycle 2 can neither resume nor roll back`,
    'what failed, the journal relative to the store',
  )
  t.match(v.disks[0]?.inflight?.problem, "Let the receiver's user read and write it again", '… and what to do')
  t.equal(v.health.state, 'CRITICAL', 'CRITICAL')
  t.equal(o.exitCode, 2, 'status exits 2')
  t.equal(v.committedCycle, 1, 'the rest of the status there')
})

/**
 * The status as a user the journal's mode (0) denies: as root (who reads any file), `storeOverview` in a node run
 * as nobody (setpriv), the store opened to it but for the journal; otherwise in this process.
 */
async function statusAsOther(t: Test, store: string, vm: string): Promise<{ o: StoreOverview; v: StoreOverview['vms'][number] }> {
  if (process.getuid?.() !== 0) return vmStatus(store, vm)
  const open = (p: string): void => {
    const st = statSync(p)
    if (st.isDirectory()) {
      chmodSync(p, 0o755)
      for (const e of readdirSync(p)) open(join(p, e))
    } else if (st.mode & 0o777) chmodSync(p, 0o644)
  }
  open(dirname(store))
  const entry = pathToFileURL(fileURLToPath(new URL('../src/store-overview.js', import.meta.url))).href
  const script = `import { storeOverview } from ${JSON.stringify(entry)}; process.stdout.write(JSON.stringify(await storeOverview(${JSON.stringify(store)})))`
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '--input-type=module', '-e', script], { encoding: 'utf8' })
  t.equal(r.status, 0, `the status read as nobody (${r.stderr.slice(0, 300)})`)
  const o = JSON.parse(r.stdout) as StoreOverview
  const v = o.vms.find((x) => x.vm === vm)
  if (v === undefined) throw new Error(`no ${vm} in the status`)
  return { o, v }
}

for (const b of breaks.filter((x) => x.what === 'missing' || x.what === 'without a valid head record')) {
  t.test(`a seed whose journal is ${b.what}: status WARNING — a resume fails, the receiver then discards the seed on its own, the next run seeds anew`, async (t) => {
    const vm = `web-ju-seed-${b.what.replace(/\W+/g, '')}`
    const { env, inc, img1 } = await inflightSeed(t, vm)
    b.make(join(env.store, vm, '.grainline', 'd.journal'))
    const { o, v } = await vmStatus(env.store, vm)
    t.match(v.disks[0]?.inflight, { cycle: 2, mode: 'seed', resumeSeq: 0 }, 'no resume point')
    t.equal(v.disks[0]?.inflight?.refused, undefined, 'not stuck')
    t.match(
      v.disks[0]?.inflight?.problem,
      `journal ${vm}/.grainline/d.journal of disk d.vmdk of VM ${vm} ${b.says}: a resume of cycle 2, a seed, fails on it; the receiver then rolls the cycle back on its own, which discards the seed file (the committed mirror stays as it is), and the run after seeds disk d.vmdk anew. Grainline mirror rollback --store ${env.store} --vm ${vm} rolls it back now`,
      'what happens, and how to hasten it',
    )
    t.equal(v.health.state, 'WARNING', 'WARNING')
    t.equal(o.exitCode, 1, 'status exits 1')
    // the truth of it: the resume fails, the receiver rolls the seed back, the next run seeds anew
    await resumeFails(t, env, vm, inc)
    t.match(stateOf(env.store, vm), { committedCycle: 1, inflight: null }, 'the receiver rolled the seed back: nothing in flight')
    t.notOk(existsSync(join(env.store, vm, 'd-flat.vmdk.seed')), 'the seed file is gone')
    t.ok(readFileSync(join(env.store, vm, 'd-flat.vmdk')).equals(img1), "the mirror flat is cycle 1's")
    await seedsAnew(t, env, vm, inc)
  })
}

/** Something else than the journal file in a seed's journal's place, never opened nor followed: what the status says it is. */
const oddEntries = [
  breaks[1],
  breaks[2],
  {
    what: 'a symbolic link',
    make: (p: string) => {
      unlinkSync(p)
      writeFileSync(`${p}-target`, 'not a journal')
      symlinkSync(`${p}-target`, p)
    },
    says: 'is a symbolic link, not the journal file (the receiver never opens it)',
  },
] as const

for (const b of oddEntries) {
  t.test(`a seed whose journal is ${b.what}: status WARNING; the rollback sets it aside unopened, discards the seed, the next run seeds anew`, async (t) => {
    const vm = `web-ju-seed-odd-${b.what.replace(/\W+/g, '')}`
    const { env, inc, img1 } = await inflightSeed(t, vm)
    const g = join(env.store, vm, '.grainline')
    const jpath = join(g, 'd.journal')
    b.make(jpath)
    const kind = (p: string): string => {
      const st = lstatSync(p)
      return st.isFIFO() ? 'fifo' : st.isDirectory() ? 'folder' : st.isSymbolicLink() ? 'link' : 'file'
    }
    const was = kind(jpath)
    const aside = `${vm}/d.journal.set-aside-cycle-2`
    const { o, v } = await vmStatus(env.store, vm)
    t.match(v.disks[0]?.inflight, { cycle: 2, mode: 'seed', resumeSeq: 0 }, 'no resume point')
    t.equal(v.disks[0]?.inflight?.refused, undefined, 'not stuck')
    t.match(
      v.disks[0]?.inflight?.problem,
      `journal ${vm}/.grainline/d.journal of disk d.vmdk of VM ${vm} ${b.says}: a resume of cycle 2, a seed, fails on it; the receiver then rolls the cycle back on its own, which discards the seed file, sets the journal aside unopened as ${aside} (the committed mirror stays as it is), and the run after seeds disk d.vmdk anew. Grainline mirror rollback --store ${env.store} --vm ${vm} rolls it back now`,
      'what happens to it, and how to hasten it',
    )
    t.notMatch(v.disks[0]?.inflight?.problem, 'Move it out of .grainline', 'no longer asks the operator to move it')
    t.equal(v.health.state, 'WARNING', 'WARNING')
    t.equal(o.exitCode, 1, 'status exits 1')
    // the truth of it: the rollback goes through, the journal set aside as it was (a link moved, not followed)
    const logs = memoryLogger()
    t.same(await rollbackMirror(env.store, vm, logs.logger), { vm, committedCycle: 1, rolledBack: true }, 'the rollback goes through')
    t.notOk(existsSync(join(env.store, vm, 'd-flat.vmdk.seed')), 'the seed file is gone')
    t.ok(readFileSync(join(env.store, vm, 'd-flat.vmdk')).equals(img1), "the mirror flat is cycle 1's")
    t.match(stateOf(env.store, vm), { committedCycle: 1, inflight: null }, 'nothing in flight')
    t.equal(kind(join(env.store, aside)), was, `${aside}: the ${b.what} itself, set aside`)
    t.notOk(existsSync(jpath) || existsSync(`${jpath}.spare`), 'nothing of it left in .grainline')
    if (b.what === 'a symbolic link') t.equal(readFileSync(`${jpath}-target`, 'utf8'), 'not a journal', "the link's target untouched")
    t.match(
      logs.lines.filter((l) => l['level'] === 40),
      [
        {
          journal: `${vm}/.grainline/d.journal`,
          setAside: aside,
          msg: new RegExp(`^journal ${esc(vm)}/\\.grainline/d\\.journal of seed disk d\\.vmdk of VM ${esc(vm)} \\(cycle 2\\) ${esc(b.says)}: set aside unopened as ${esc(aside)}`),
        },
      ],
      'a warning naming it and where it went',
    )
    // status names what was set aside, and what to do with it, until the operator deletes it
    const after = (await vmStatus(env.store, vm)).v
    t.equal(after.health.state, 'WARNING', 'status WARNING while the set-aside entry is there')
    t.match(after.health.problems, [`1 journal set aside by rollbacks in ${join(env.store, vm)} (d.journal.set-aside-cycle-2 (${b.what}); `], 'naming it and where')
    t.match(after.health.problems[0], /counted in the token's quota\): .*look at it .*then delete it \(rm -- ".*"\/\*\.journal\.set-aside-cycle-\*\)$/, 'what to do with it')
    rmSync(join(env.store, aside), { recursive: true })
    t.equal((await vmStatus(env.store, vm)).v.health.state, 'OK', 'deleted: status OK')
    // the next run seeds anew
    await seedsAnew(t, env, vm, inc)
  })
}

t.test("a seed whose journal is a FIFO: a resume fails, the receiver's own rollback sets it aside; a second one goes beside the first", async (t) => {
  const vm = 'web-ju-seed-fifo-twice'
  const { env, inc } = await inflightSeed(t, vm)
  const jpath = join(env.store, vm, '.grainline', 'd.journal')
  const first = join(env.store, vm, 'd.journal.set-aside-cycle-2')
  mkdirSync(first)
  unlinkSync(jpath)
  execFileSync('mkfifo', [jpath])
  const logs = await resumeFails(t, env, vm, inc)
  t.match(stateOf(env.store, vm), { committedCycle: 1, inflight: null }, 'the receiver rolled the seed back: nothing in flight')
  t.notOk(existsSync(join(env.store, vm, 'd-flat.vmdk.seed')), 'the seed file is gone')
  t.ok(lstatSync(first).isDirectory(), 'the earlier set-aside entry kept as it was')
  t.ok(lstatSync(`${first}-2`).isFIFO(), 'the FIFO set aside beside it')
  t.match(logs, `set aside unopened as ${vm}/d.journal.set-aside-cycle-2-2`, 'the log says where')
  t.notMatch(logs, 'mirror needs recovery', 'no rollback failure')
})

t.test('a seed whose journal cannot be read (EACCES): status WARNING, saying how to resume it instead', async (t) => {
  const vm = 'web-ju-seed-eacces'
  const { env } = await inflightSeed(t, vm)
  chmodSync(join(env.store, vm, '.grainline', 'd.journal'), 0)
  const { o, v } = await statusAsOther(t, env.store, vm)
  t.equal(v.disks[0]?.inflight?.refused, undefined, 'not stuck')
  t.match(
    v.disks[0]?.inflight?.problem,
    `journal ${vm}/.grainline/d.journal of disk d.vmdk of VM ${vm} cannot be read (permission denied, EACCES): a resume of cycle 2, a seed, fails on it; the receiver then rolls the cycle back on its own, which discards the seed file, sets the journal aside unopened as ${vm}/d.journal.set-aside-cycle-2`,
    'what happens to it',
  )
  t.match(v.disks[0]?.inflight?.problem, "to resume the seed instead, let the receiver's user read and write it again", '… and how to keep the seed instead')
  t.equal(v.health.state, 'WARNING', 'WARNING')
  t.equal(o.exitCode, 1, 'status exits 1')
})

t.test('a seed whose journal cannot be read (EACCES): the rollback sets it aside unopened too', async (t) => {
  const vm = 'web-ju-seed-eacces-rb'
  const { env, img1 } = await inflightSeed(t, vm)
  const jpath = join(env.store, vm, '.grainline', 'd.journal')
  chmodSync(jpath, 0)
  const aside = join(env.store, vm, 'd.journal.set-aside-cycle-2')
  t.same(await rollbackAsOther(t, env.store, vm), { vm, committedCycle: 1, rolledBack: true }, 'the rollback goes through')
  t.notOk(existsSync(join(env.store, vm, 'd-flat.vmdk.seed')), 'the seed file is gone')
  t.ok(readFileSync(join(env.store, vm, 'd-flat.vmdk')).equals(img1), "the mirror flat is cycle 1's")
  t.match(stateOf(env.store, vm), { committedCycle: 1, inflight: null }, 'nothing in flight')
  t.ok(lstatSync(aside).isFile() && (lstatSync(aside).mode & 0o777) === 0, 'the journal set aside as it was (mode 0)')
  t.notOk(existsSync(jpath), 'nothing of it left in .grainline')
})

/**
 * `rollbackMirror` as a user the journal's mode (0) denies: as root (who reads any file), in a node run as nobody
 * (setpriv), the scratch folder given to it; otherwise in this process.
 */
async function rollbackAsOther(t: Test, store: string, vm: string): Promise<unknown> {
  if (process.getuid?.() !== 0) return rollbackMirror(store, vm)
  execFileSync('chown', ['-R', '-h', '65534:65534', dirname(store)])
  const entry = pathToFileURL(fileURLToPath(new URL('../src/index.js', import.meta.url))).href
  const script = `import { rollbackMirror } from ${JSON.stringify(entry)}; process.stdout.write(JSON.stringify(await rollbackMirror(${JSON.stringify(store)}, ${JSON.stringify(vm)})))`
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '--input-type=module', '-e', script], { encoding: 'utf8' })
  t.equal(r.status, 0, `the rollback run as nobody (${r.stderr.slice(0, 300)})`)
  return JSON.parse(r.stdout) as unknown
}

t.test('start-up recovery with a journal of the cycle in flight missing: says which journal and what to do, not ENOENT', async (t) => {
  for (const kind of ['in place', 'seed'] as const) {
    const vm = kind === 'seed' ? 'web-ju-rec-seed' : 'web-ju-rec-inplace'
    const { env } = kind === 'seed' ? await inflightSeed(t, vm) : await inflightCycle(t, vm, undefined)
    unlinkSync(join(env.store, vm, '.grainline', 'd.journal'))
    const text = `journal ${vm}/.grainline/d.journal of disk d.vmdk of VM ${vm} is missing: `
    const { receiver, logs } = await startReceiver(env)
    await receiver.close()
    t.notMatch(logs.text(), 'ENOENT', `${kind}: no file system error text in the log`)
    if (kind === 'in place') {
      t.match(
        logs.lines.filter((l) => l['msg'] === 'recovery failed'),
        [{ vm, level: 50, code: 'E_STATE', err: { message: new RegExp(`^${esc(text)}cycle 2 can neither resume nor roll back.*or remove the mirror`) } }],
        `${kind}: recovery says which VM, disk and journal, what it means and what to do`,
      )
    } else {
      t.match(
        logs.lines.filter((l) => l['level'] === 40 && l['vm'] === vm),
        [{ disk: 'd.vmdk', journal: `${vm}/.grainline/d.journal`, problem: new RegExp(`^${esc(text)}a resume of cycle 2, a seed, fails on it; the receiver then rolls the cycle back on its own`) }],
        `${kind}: kept, with a warning saying what comes next`,
      )
      t.match(
        logs.lines.find((l) => l['msg'] === 'store recovery done'),
        { recovered: [{ vm, action: 'kept-for-resume', resume: { 'd.vmdk': -1 } }] },
        `${kind}: kept for the next run`,
      )
    }
    const r = (await recoverStore(env.store, memoryLogger().logger)).find((x) => x.vm === vm)
    if (kind === 'in place') t.match(r, { action: 'failed', error: new RegExp(`^${esc(text)}`) }, `${kind}: recoverStore's report says it too`)
    else t.match(r, { action: 'kept-for-resume', inflightCycle: 2 }, `${kind}: recoverStore keeps it`)
  }
})

t.test('an interrupted rollback: status WARNING, saying the receiver finishes it; start-up recovery does', async (t) => {
  const vm = 'web-ju-undoing'
  const { env, img1 } = await inflightCycle(t, vm, undefined)
  const g = join(env.store, vm, '.grainline')
  // a rollback renames the journal first (rollback.ts), then writes the old contents back: interrupted before that
  renameSync(join(g, 'd.journal'), join(g, 'd.journal.undo'))
  const { v } = await vmStatus(env.store, vm)
  t.match(v.disks[0]?.inflight, { cycle: 2, mode: 'incremental', resumeSeq: 0 }, 'no resume point')
  t.equal(v.disks[0]?.inflight?.refused, undefined, 'not stuck')
  t.match(
    v.disks[0]?.inflight?.problem,
    `a rollback of cycle 2 on disk d.vmdk of VM ${vm} was interrupted (journal ${vm}/.grainline/d.journal.undo): the cycle is not resumed; the receiver finishes the rollback at start-up, or the next run's rollback does (grainline mirror rollback --store ${env.store} --vm ${vm} does it now)`,
    'what it is and who finishes it',
  )
  t.equal(v.health.state, 'WARNING', 'WARNING')
  const r = (await recoverStore(env.store, memoryLogger().logger)).find((x) => x.vm === vm)
  t.equal(r?.action, 'rolled-back', 'start-up recovery finishes the rollback')
  t.ok(readFileSync(join(env.store, vm, 'd-flat.vmdk')).equals(img1), "the flat is cycle 1's again")
  t.equal((await vmStatus(env.store, vm)).v.health.state, 'OK', 'status OK')
})
