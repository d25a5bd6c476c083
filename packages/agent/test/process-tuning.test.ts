/**
 * tuneAgentProcess (process-tuning.ts), on whatever engine runs the tests
 * (CI runs this suite on Node.js 20 and 24):
 * - the flags it sets are ones this V8 knows (an unknown flag prints
 *   "Error: unrecognized flag" on stderr and does nothing);
 * - a function reaches TurboFan later in a tuned process: at least twice as
 *   many calls as untuned (--trace-opt in a child, compiled synchronously so
 *   the count is exact, called from a loop that is never optimised so it is
 *   not inlined away);
 * - and still gets there once it stays hot for long.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { agentV8Flags } from '../src/process-tuning.ts'

const tuning = new URL('../src/process-tuning.js', import.meta.url).href

/** A child that calls `hot` `calls` times, tuned or not: its stderr and whether `hot` was marked for TurboFan. */
function child(tuned: boolean, calls: number): { stderr: string; turbofan: boolean } {
  const script = `
    const { tuneAgentProcess } = await import(${JSON.stringify(tuning)})
    if (${tuned}) tuneAgentProcess()
    function hot(x) { return ((x * 31) ^ (x >>> 3)) + ((x << 2) | 1) }
    function drive(n) { let s = 0; for (let k = 0; k < n; k++) s = (s + hot(k)) | 0; return s }
    %NeverOptimizeFunction(drive)
    console.log(drive(${calls}))
  `
  const r = spawnSync(process.execPath, ['--allow-natives-syntax', '--no-concurrent-recompilation', '--trace-opt', '--input-type=module', '-e', script], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`)
  return { stderr: r.stderr, turbofan: r.stdout.split('\n').some((l) => /marking .*<JSFunction hot .*TURBOFAN/.test(l)) }
}

t.test('the flags are chosen by the V8 version', async (t) => {
  t.same(agentV8Flags('11.3.244.8-node.38'), ['--interrupt-budget=270336'], 'Node 20')
  t.same(agentV8Flags('12.4.254.21-node.57'), ['--invocation-count-for-turbofan=12000'], 'Node 22')
  t.same(agentV8Flags('13.6.233.17-node.40'), ['--invocation-count-for-turbofan=48000'], 'Node 24')
  t.same(agentV8Flags('14.1.0'), ['--invocation-count-for-turbofan=48000'], 'a later engine: the newest knob')
  t.same(agentV8Flags('garbage'), ['--interrupt-budget=270336'], 'an unparsable version: the oldest')
})

t.test(`tuning prints nothing on this engine (V8 ${process.versions.v8})`, async (t) => {
  const r = child(true, 10)
  t.equal(r.stderr, '', 'no "unrecognized flag" on stderr')
})

t.test(`a tuned process sends a hot function to TurboFan later (V8 ${process.versions.v8})`, async (t) => {
  // the untuned threshold, to a factor of two
  let calls = 1000
  while (!child(false, calls).turbofan) {
    calls *= 2
    if (calls > 1_000_000) throw new Error('hot never reached TurboFan untuned')
  }
  t.comment(`untuned: marked for TurboFan by ${calls} calls`)
  t.notOk(child(true, calls).turbofan, `tuned: not at ${calls} calls`)
  t.notOk(child(true, 2 * calls).turbofan, `tuned: not at ${2 * calls} calls`)
  t.ok(child(true, 16 * calls).turbofan, `tuned: marked by ${16 * calls} calls (it stays hot)`)
})
