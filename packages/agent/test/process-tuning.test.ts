/**
 * tuneAgentProcess (process-tuning.ts): a function that V8 would send to
 * TurboFan after a few thousand calls is not yet marked for optimisation
 * after as many calls in a tuned process (--trace-opt in a child process).
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'

const tuning = new URL('../src/process-tuning.js', import.meta.url).href

/** How often `hot` was marked for optimisation in a child that calls it `calls` times, tuned or not. */
function markings(tuned: boolean, calls: number): number {
  const script = `
    const { tuneAgentProcess } = await import(${JSON.stringify(tuning)})
    if (${tuned}) tuneAgentProcess()
    function hot(x) { return ((x * 31) ^ (x >>> 3)) + ((x << 2) | 1) }
    let s = 0
    for (let k = 0; k < ${calls}; k++) s = (s + hot(k)) | 0
    console.log(s)
  `
  const r = spawnSync(process.execPath, ['--trace-opt', '--input-type=module', '-e', script], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`)
  return r.stdout.split('\n').filter((l) => /marking .*<JSFunction hot /.test(l)).length
}

t.test('a tuned process sends a hot function to TurboFan later', async (t) => {
  // 8000 calls: about twice what V8's default budget needs, half what four times the budget needs
  t.ok(markings(false, 8000) >= 1, 'untuned: marked for optimisation')
  t.equal(markings(true, 8000), 0, 'tuned: not yet')
  t.ok(markings(true, 64000) >= 1, 'tuned: still optimised once it stays hot')
})
