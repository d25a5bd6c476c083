/**
 * What `grainline` loads before it does anything (#17): a command's module
 * holds its flags and imports what the command does only when it runs, so
 * `--version`, `--help` and the help of a command load yargs and the CLI's
 * own small modules, never the agent, the receiver or their dependencies
 * (ssh2, the AWS SDK, prom-client, zod, …) — every timer-started agent run
 * and every `grainline status` used to pay ~1.3 s of CPU for them.
 *
 * Each run is recorded, not timed: the CLI runs under a preload (`--import`)
 * that registers a module hook (`module.register`, Node ≥ 20.6) writing every
 * URL the ES module loader loads, and adds at exit every file of the
 * CommonJS cache (what `require` loaded, which the hook does not see).
 */
import t, { type Test } from 'tap'
import { readFileSync, realpathSync, writeFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { runNode, scratchDir } from '@grainline/test-utils'

const here = dirname(fileURLToPath(import.meta.url))
const bin = resolve(here, '../src/bin.js')

/** Packages only a command's work needs, never its flags. */
const HEAVY = ['@aws-sdk/', '@smithy/', '@opentelemetry/', 'ssh2', 'nodemailer', 'prom-client', 'pino', 'pino-pretty', 'ws', 'zod', 'msgpackr', 'lz4-napi', 'xxhash-wasm'] as const

/** The entry points of the workspace packages, as the loader sees them (symlinks resolved). */
const entry = (name: string): string => pathToFileURL(realpathSync(fileURLToPath(import.meta.resolve(name)))).href
const WORKSPACE = { agent: entry('@grainline/agent'), receiver: entry('@grainline/receiver'), vmdk: entry('@grainline/vmdk'), protocol: entry('@grainline/protocol') }

const HOOK = `import { appendFileSync } from 'node:fs'
let log
export function initialize(data) { log = data.log }
export async function load(url, context, nextLoad) {
  appendFileSync(log, url + '\\n')
  return nextLoad(url, context)
}
`
const PRELOAD = `import { createRequire, register } from 'node:module'
import { appendFileSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
const log = process.env.GRAINLINE_LOAD_LOG
register('./hook.mjs', import.meta.url, { data: { log } })
const cache = createRequire(import.meta.url).cache
process.on('exit', () => {
  appendFileSync(log, Object.keys(cache).map((f) => pathToFileURL(f).href + '\\n').join(''))
})
`

/** Run the CLI with the recorder; its exit code and every URL loaded. */
async function loaded(t: Test, args: readonly string[]): Promise<{ code: number | null; stdout: string; urls: string[] }> {
  const dir = scratchDir(t, 'grainline-lazy-')
  writeFileSync(join(dir, 'hook.mjs'), HOOK)
  writeFileSync(join(dir, 'preload.mjs'), PRELOAD)
  const log = join(dir, 'loaded.txt')
  writeFileSync(log, '')
  // after tap's own preloads (coverage), which stay
  const nodeOptions = `${process.env['NODE_OPTIONS'] ?? ''} --import=${pathToFileURL(join(dir, 'preload.mjs')).href}`.trim()
  const r = await runNode(bin, args, { env: { NODE_OPTIONS: nodeOptions, GRAINLINE_LOAD_LOG: log } })
  const urls = readFileSync(log, 'utf8')
    .split('\n')
    .filter((u) => u !== '')
  return { code: r.code, stdout: r.stdout, urls }
}

/** The heavy packages among the URLs (a package is its `node_modules/NAME/` folder). */
const heavyIn = (urls: readonly string[]): string[] => HEAVY.filter((p) => urls.some((u) => u.includes(`/node_modules/${p}${p.endsWith('/') ? '' : '/'}`)))
/** The workspace packages whose entry point (index) was loaded. */
const workspaceIn = (urls: readonly string[]): string[] => Object.entries(WORKSPACE).flatMap(([name, url]) => (urls.includes(url) ? [name] : []))

for (const args of [['--version'], ['--help'], ['replicate', '--help'], ['status', '--help']]) {
  t.test(`grainline ${args.join(' ')} loads yargs and the CLI's flags, nothing a command does`, async (t) => {
    const r = await loaded(t, args)
    t.equal(r.code, 0)
    t.not(r.stdout, '')
    // the recorder works: the CLI and yargs are in the list
    t.ok(r.urls.includes(pathToFileURL(bin).href), 'bin.js recorded')
    t.ok(
      r.urls.some((u) => u.includes('/node_modules/yargs/')),
      'yargs recorded',
    )
    t.same(heavyIn(r.urls), [], 'no heavy package loaded')
    t.same(workspaceIn(r.urls), [], 'no workspace package entry loaded')
  })
}

t.test("grainline replicate loads the agent's run entry and its dependencies, not ssh2 nor the receiver", async (t) => {
  const dir = scratchDir(t, 'grainline-lazy-job-')
  // a job file that does not exist: the job is validated (zod) and refused (usage, exit 2) before any snapshot or connection;
  // by then everything a run imports statically is loaded
  const r = await loaded(t, ['replicate', '--job', join(dir, 'missing.json')])
  t.equal(r.code, 2)
  t.ok(
    r.urls.some((u) => u.includes('/packages/agent/dist/src/run.js')),
    "the agent's narrow entry (@grainline/agent/run)",
  )
  t.same(workspaceIn(r.urls).sort(), ['protocol', 'vmdk'], "not the agent's index")
  // ssh2 and the esxi driver are imported when a VM uses that driver: a local-driver run never loads them
  t.same(
    heavyIn(r.urls).filter((p) => p === 'ssh2' || p === 'zod' || p === 'ws'),
    ['ws', 'zod'],
  )
  t.notOk(
    r.urls.some((u) => u.includes('/packages/agent/dist/src/esxi/esxi-driver.js')),
    'not the esxi driver',
  )
  t.same(
    heavyIn(r.urls).filter((p) => p === '@aws-sdk/' || p === 'prom-client'),
    [],
    'nothing of the receiver',
  )
})

t.test("grainline info and map load the VMDK reader, not the protocol's index (msgpackr, lz4, xxhash)", async (t) => {
  const disk = resolve(here, '../../../vmdk/test/fixtures/tiny-sparse.vmdk')
  for (const cmd of ['info', 'map']) {
    const r = await loaded(t, [cmd, disk])
    t.equal(r.code, 0, `${cmd} exits 0`)
    t.same(workspaceIn(r.urls), ['vmdk'], `${cmd}: the vmdk package only`)
    t.ok(
      r.urls.some((u) => u.includes('/protocol/dist/src/units.js')),
      `${cmd}: the protocol's units (@grainline/protocol/units)`,
    )
    t.same(heavyIn(r.urls), [], `${cmd}: no heavy package`)
  }
})

t.test('grainline status loads the store overview of the receiver, not the agent, the receiver server or the S3 archive', async (t) => {
  const dir = scratchDir(t, 'grainline-lazy-store-')
  const r = await loaded(t, ['status', '--store', join(dir, 'missing')])
  t.equal(r.code, 3, 'UNKNOWN: no such store')
  t.match(r.stdout, /^GRAINLINE UNKNOWN - /)
  t.ok(
    r.urls.some((u) => u.includes('/packages/receiver/dist/src/store-overview.js')),
    "the receiver's store overview",
  )
  t.notOk(workspaceIn(r.urls).includes('agent'))
  t.same(
    heavyIn(r.urls).filter((p) => p === 'ssh2' || p === 'nodemailer'),
    [],
    'nothing of the agent',
  )
  // the receiver's narrow entry (@grainline/receiver/store-status): not its server, metrics or S3 archive
  t.notOk(workspaceIn(r.urls).includes('receiver'), "not the receiver's index")
  t.same(
    heavyIn(r.urls).filter((p) => p === '@aws-sdk/' || p === '@smithy/' || p === 'prom-client' || p === 'ws'),
    [],
    'no AWS SDK, prom-client or ws',
  )
})
