/**
 * An operator action on a VM whose cycle is in flight (interrupted: the action holds the VM's lock) is refused
 * E_BUSY with the rollback's command ready to paste — the VM's name quoted, the store absolute — and that command's
 * words are what the rollback takes.
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join, relative } from 'node:path'
import { memoryLogger } from './helpers.ts'
import { inflightCycle, stateOf } from './journal-fixture.ts'
import { openPoint } from '../src/holds.ts'
import { restorePoint } from '../src/points-admin.ts'
import { rollbackMirror } from '../src/index.ts'

t.test('points open and restore during an interrupted cycle: E_BUSY naming the rollback, which then clears the way', async (t) => {
  const vm = 'vm 01'
  const { env } = await inflightCycle(t, vm, 2)
  const log = memoryLogger().logger
  // the store given relative, as an operator may: the printed command names it absolute
  const rel = relative(process.cwd(), env.store)
  const refusal = (doing: string): RegExp =>
    new RegExp(
      `^VM vm 01 has cycle 2 in flight, interrupted \\(no receiver session is applying it now\\): let the agent's next run resume and commit it, or roll it back \\((grainline mirror rollback .*)\\), before ${doing}$`,
    )
  const open = await openPoint(rel, vm, 1, join(env.dir, 'open-1'), { logger: log, kind: 'open' }).then(
    () => undefined,
    (e: unknown) => e as Error & { code?: string },
  )
  t.equal(open?.code, 'E_BUSY')
  t.match(open?.message ?? '', refusal('opening a point'))
  t.notOk(existsSync(join(env.dir, 'open-1')) && stateOf(env.store, vm).holds?.length, 'nothing held')
  const restore = await restorePoint(rel, vm, 1, join(env.dir, 'restored'), { logger: log }).then(
    () => undefined,
    (e: unknown) => e as Error & { code?: string },
  )
  t.equal(restore?.code, 'E_BUSY')
  const m = refusal('restoring').exec(restore?.message ?? '')
  t.ok(m, restore?.message ?? 'no refusal')
  // the printed command, as /bin/sh splits it: the words the CLI gets
  const words = execFileSync('/bin/sh', ['-c', `set -- ${(m?.[1] ?? '').replace(/^grainline /, '')}; printf '%s\\n' "$@"`], { encoding: 'utf8' })
    .trimEnd()
    .split('\n')
  t.same(words, ['mirror', 'rollback', '--store', env.store, '--vm', vm], 'absolute store, the VM name one word')
  t.match(await rollbackMirror(env.store, vm), { vm, committedCycle: 1, rolledBack: true }, 'the rollback it names')
  t.equal(stateOf(env.store, vm).inflight, null, 'no cycle in flight')
  t.match(await restorePoint(env.store, vm, 1, join(env.dir, 'restored'), { logger: log }), { vm, cycle: 1 }, 'the restore goes through now')
})
