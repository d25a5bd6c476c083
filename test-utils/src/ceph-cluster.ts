/**
 * A one-node Ceph cluster on loopback for tests, from Debian's packages
 * (`ceph-mon ceph-osd ceph-common radosgw`, installed by `.ci/run`): one
 * monitor, one OSD with `osd objectstore = memstore` (no disk: its data lives
 * in the OSD's memory and is gone when it stops), `auth … = none`, pool size 1,
 * and optionally radosgw (the S3 gateway) with one user. Every daemon runs
 * under a temporary folder and is killed by `stop()` (and when the test
 * process exits). Up in a few seconds on a 2-CPU machine.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { killOnExit, lastLines, reportOnTimeout, whenExited } from './child-process.ts'
import { pollUntil } from './poll.ts'

const exec = promisify(execFile)

/** A running test cluster. */
export interface CephCluster {
  /** the `ceph.conf` clients pass with `--conf` (`rbd`, `rados`, `ceph`) */
  readonly conf: string
  /** the folder of the cluster's files and logs */
  readonly dir: string
  /** radosgw's S3 endpoint (`http://127.0.0.1:PORT`), when started with `rgw` */
  readonly s3?: { readonly endpoint: string; readonly accessKeyId: string; readonly secretAccessKey: string }
  /** run a Ceph client command against the cluster (`ceph`, `rbd`, `rados`, `radosgw-admin`) with `--conf` */
  run(cmd: CephCommand, args: readonly string[], input?: Buffer, opts?: { readonly timeoutMs?: number }): Promise<{ stdout: string; stderr: string }>
  /**
   * Write `data` at `offset` into the head of RBD image `pool/image` with
   * librbd (Python's `rbd` module, `python3-rbd`, as `/usr/bin/python3` or
   * `GRAINLINE_PYTHON`), flushed: a stray client writing behind a store's
   * back (bit rot in tests). The bytes go through stdin (no size bound of an
   * argument).
   */
  writeImage(pool: string, image: string, offset: number, data: Buffer): Promise<void>
  /** kill every daemon and remove the folder */
  stop(): Promise<void>
}

/** The librbd write of {@link CephCluster.writeImage}: the bytes on stdin. */
const WRITE_PY = `
import sys, rados, rbd
conf, pool, image, offset = sys.argv[1:5]
data = sys.stdin.buffer.read()
c = rados.Rados(conffile=conf); c.connect(timeout=20)
io = c.open_ioctx(pool)
with rbd.Image(io, image) as img:
    img.write(data, int(offset))
    img.flush()
io.close(); c.shutdown()
`

/** The Ceph client commands {@link CephCluster.run} runs. */
export type CephCommand = 'ceph' | 'rbd' | 'rados' | 'radosgw-admin'

/** A test-side Ceph client command killed at its deadline. */
export class CephCommandTimeout extends Error {
  constructor(cmd: CephCommand, args: readonly string[], timeoutMs: number, stderr: string) {
    super(`test Ceph cluster: ${cmd} ${args.join(' ')} did not end in ${timeoutMs} ms: killed${stderr === '' ? '' : `; its stderr: ${stderr.slice(-800)}`}`)
    this.name = 'CephCommandTimeout'
  }
}

const RBD_QUERIES = new Set(['info', 'ls', 'list', 'du', 'disk-usage', 'status', 'export', 'diff', 'snap ls', 'snap list', 'lock ls', 'lock list', 'image-meta get', 'image-meta list'])
const RADOS_QUERIES = new Set(['get', 'ls', 'stat', 'lock info', 'lock list', 'listomapkeys', 'listomapvals', 'getomapval', 'getxattr', 'listxattr', 'df', 'lspools'])
const CEPH_QUERY_WORDS = new Set(['ls', 'stat', 'df', 'get', 'dump', 'status', 'health', 'stats', 'detail'])

/**
 * Whether a client command only reads (so asking it again is harmless): a
 * Ceph client that hung on a healthy test cluster (an `rbd du`, 19 min in CI)
 * answered at once when asked again, so {@link CephCluster.run} kills a query
 * at its deadline and asks once more; anything that writes is killed and fails.
 */
export function cephCommandOnlyReads(cmd: CephCommand, args: readonly string[]): boolean {
  const words = args.filter((a, i) => !a.startsWith('-') && !(i > 0 && /^--?(format|pool|p|conf|connect-timeout|id|name|snap|image|namespace|object-size)$/.test(args[i - 1] ?? '')))
  if (cmd === 'rbd') return RBD_QUERIES.has(words.slice(0, 2).join(' ')) || RBD_QUERIES.has(words[0] ?? '')
  if (cmd === 'rados') return RADOS_QUERIES.has(words.slice(0, 2).join(' ')) || RADOS_QUERIES.has(words[0] ?? '')
  if (cmd === 'ceph') return words.some((w) => CEPH_QUERY_WORDS.has(w))
  return false
}

/** The ceph CLI's "problem getting command descriptions from mon." (EPERM): nothing was sent yet. */
export function isCommandDescriptionsHiccup(err: unknown): boolean {
  return err instanceof Error && err.message.includes('problem getting command descriptions')
}

/**
 * Run `file args` with `input` on stdin to its exit, its output collected:
 * killed (SIGKILL) and rejected with `onTimeout(stderr)` after `timeoutMs`,
 * rejected naming `what` when it exits non-zero; reported by
 * {@link reportOnTimeout} while it runs.
 */
function runWithDeadline(
  file: string,
  args: readonly string[],
  input: Buffer | undefined,
  timeoutMs: number,
  what: string,
  onTimeout: (stderr: string) => Error,
): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    const timer = setTimeout(() => {
      p.kill('SIGKILL')
      reject(onTimeout(stderr))
    }, timeoutMs)
    reportOnTimeout(p, () => `stderr:\n${lastLines(stderr)}`)
    p.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d
    })
    p.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d
    })
    p.stdin.on('error', () => {})
    p.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    p.on('close', (code) => {
      clearTimeout(timer)
      if (code === 0) resolve({ stdout, stderr })
      else reject(new Error(`${what} exited ${code}: ${stderr.slice(-800)}`))
    })
    p.stdin.end(input)
  })
}

/** Options of {@link startCephCluster}. */
export interface CephClusterOptions {
  /** also start radosgw with an S3 user. @default false */
  readonly rgw?: boolean
  /** pools to create (size 1). @default ['rbd'] */
  readonly pools?: readonly string[]
  /** memstore bytes of the OSD. @default 1 GiB */
  readonly osdBytes?: number
  /** also start a manager (ceph-mgr, Debian `ceph-mgr`): `ceph df` reports pools only with one; resolves once it lists every pool. @default false */
  readonly mgr?: boolean
  /** give up on a daemon that is neither up nor exited after this long (its logs in the error). @default 180000 */
  readonly startTimeoutMs?: number
  /** {@link CephCluster.run}: a command that only reads is killed after this long and asked once more. @default 90000 */
  readonly queryTimeoutMs?: number
  /** {@link CephCluster.run} and {@link CephCluster.writeImage}: any other command is killed after this long and fails. @default 300000 */
  readonly commandTimeoutMs?: number
}

async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const a = s.address()
      s.close(() => resolve(typeof a === 'object' && a !== null ? a.port : 0))
    })
  })
}

/** Whether this machine has the Ceph daemons (tests fail with a clear message when not). */
export async function haveCeph(): Promise<boolean> {
  try {
    await exec('ceph-mon', ['--version'])
    await exec('ceph-osd', ['--version'])
    return true
  } catch {
    return false
  }
}

/** Whether this machine has the Ceph manager daemon (`startCephCluster({ mgr: true })`). */
export async function haveCephMgr(): Promise<boolean> {
  try {
    await exec('ceph-mgr', ['--version'])
    return true
  } catch {
    return false
  }
}

/**
 * Start a one-node cluster (see the module comment). A daemon that dies while
 * the cluster comes up (seen once on a loaded machine: the OSD) makes one more
 * attempt on new ports, after printing why to stderr.
 */
export async function startCephCluster(opts: CephClusterOptions = {}): Promise<CephCluster> {
  if (!(await haveCeph())) throw new Error('Ceph is not installed: apt-get install ceph-mon ceph-osd ceph-common radosgw (.ci/run does)')
  try {
    return await startOnce(opts)
  } catch (err) {
    process.stderr.write(`test Ceph cluster did not come up, trying once more: ${(err as Error).message}\n`)
    return await startOnce(opts)
  }
}

async function startOnce(opts: CephClusterOptions): Promise<CephCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'grainline-ceph-'))
  for (const d of ['mon', 'osd', 'run', 'log', 'rgw']) mkdirSync(join(dir, d))
  const fsid = randomUUID()
  const monPort = await freePort()
  const rgwPort = opts.rgw === true ? await freePort() : 0
  const conf = join(dir, 'ceph.conf')
  writeFileSync(
    conf,
    [
      '[global]',
      `fsid = ${fsid}`,
      'mon initial members = a',
      `mon host = v1:127.0.0.1:${monPort}`,
      'ms bind msgr2 = false',
      'auth cluster required = none',
      'auth service required = none',
      'auth client required = none',
      'osd pool default size = 1',
      'osd pool default min size = 1',
      'osd pool default pg num = 8',
      'osd pool default pgp num = 8',
      'osd crush chooseleaf type = 0',
      // the OSD sends no mon commands while it starts (its device class and crush
      // location): on a loaded CI machine those failed with "wrong fsid" (the mon
      // saw fsid 0 from the starting OSD) and the OSD exited, twice in a row; the
      // OSD is put in the crush map from the command line instead (below)
      'osd class update on start = false',
      'osd crush update on start = false',
      'mon allow pool size one = true',
      'mon allow pool delete = true',
      'mon warn on pool no redundancy = false',
      'mon data avail warn = 1',
      'mon data avail crit = 0',
      `run dir = ${dir}/run`,
      `log file = ${dir}/log/$name.log`,
      // daemons only: with the path in [global], every rbd/rados/ceph client
      // bound the same client.admin.asok, pinged whichever client held it
      // (a blocking connect with no deadline) and logged a failed bind
      `admin socket = ${dir}/run/$name.asok`,
      `pid file = ${dir}/run/$name.pid`,
      'osd objectstore = memstore',
      `memstore device bytes = ${opts.osdBytes ?? 1024 ** 3}`,
      `osd data = ${dir}/osd`,
      `mon data = ${dir}/mon`,
      `mgr data = ${dir}/mgr`,
      'osd max object name len = 256',
      'osd max object namespace len = 64',
      '[client]',
      'admin socket = ',
      '[client.rgw.test]',
      `rgw frontends = beast endpoint=127.0.0.1:${rgwPort}`,
      `rgw data = ${dir}/rgw`,
      'rgw dns name = localhost',
      '',
    ].join('\n'),
  )
  const daemons: ChildProcess[] = []
  const runOnce = (cmd: CephCommand, args: readonly string[], input: Buffer | undefined, timeoutMs: number): Promise<{ stdout: string; stderr: string }> =>
    runWithDeadline(cmd, ['--conf', conf, ...args], input, timeoutMs, `${cmd} ${args.join(' ')}`, (stderr) => new CephCommandTimeout(cmd, args, timeoutMs, stderr))
  const run = async (cmd: CephCommand, args: readonly string[], input?: Buffer, runOpts?: { readonly timeoutMs?: number }): Promise<{ stdout: string; stderr: string }> => {
    const query = cephCommandOnlyReads(cmd, args)
    const timeoutMs = runOpts?.timeoutMs ?? (query ? (opts.queryTimeoutMs ?? 90_000) : (opts.commandTimeoutMs ?? 300_000))
    let timedOut = false
    for (let attempt = 1; ; attempt++) {
      try {
        return await runOnce(cmd, args, input, timeoutMs)
      } catch (err) {
        if (err instanceof CephCommandTimeout) {
          if (!query || timedOut) throw err
          timedOut = true
          process.stderr.write(`${err.message}; asked once more (it only reads)\n`)
          continue
        }
        // the ceph CLI asks the monitor for its command descriptions before it sends
        // anything; a monitor busy on a loaded machine answered that with EPERM
        // (CI: "osd pool application enable … problem getting command descriptions
        // from mon") — the command itself was never sent, so even a write is asked again
        if (cmd === 'ceph' && isCommandDescriptionsHiccup(err) && attempt < 5) {
          await sleep(200 * attempt)
          continue
        }
        throw err
      }
    }
  }
  const writeImage = async (pool: string, image: string, offset: number, data: Buffer): Promise<void> => {
    const what = `librbd write of ${data.length} bytes at ${offset} into ${pool}/${image}`
    const timeoutMs = opts.commandTimeoutMs ?? 300_000
    await runWithDeadline(
      process.env['GRAINLINE_PYTHON'] ?? '/usr/bin/python3',
      ['-c', WRITE_PY, conf, pool, image, String(offset)],
      data,
      timeoutMs,
      what,
      (stderr) => new Error(`${what} did not end in ${timeoutMs} ms: killed; its stderr: ${stderr.slice(-800)}`),
    )
  }
  /** a daemon in the foreground (-f), killed with the cluster */
  const daemon = (cmd: string, args: readonly string[]): void => {
    const p = killOnExit(spawn(cmd, ['--conf', conf, '-f', ...args], { stdio: 'ignore' }))
    daemons.push(p)
  }
  /** throw when a daemon died while the cluster comes up (its log is in `dir/log`) */
  const deadline = Date.now() + (opts.startTimeoutMs ?? 180_000)
  const alive = (): void => {
    if (Date.now() > deadline) {
      const logs = readdirSync(join(dir, 'log')).map(
        (f) =>
          `--- ${f}\n${readFileSync(join(dir, 'log', f), 'utf8')
            .split('\n')
            .slice(-15)
            .join('\n')}`,
      )
      throw new Error(`Ceph daemons not up after ${opts.startTimeoutMs ?? 180_000} ms; the end of the logs:\n${logs.join('\n')}`)
    }
    for (const p of daemons) {
      if (p.exitCode === null && p.signalCode === null) continue
      const logs = readdirSync(join(dir, 'log')).map(
        (f) =>
          `--- ${f}\n${readFileSync(join(dir, 'log', f), 'utf8')
            .split('\n')
            .slice(-15)
            .join('\n')}`,
      )
      throw new Error(
        `Ceph daemon ${p.spawnargs.slice(0, 1).join(' ')} ${p.spawnargs.slice(-2).join(' ')} exited (${p.exitCode ?? p.signalCode}) while starting; the end of the logs:\n${logs.join('\n')}`,
      )
    }
  }
  const stop = async (): Promise<void> => {
    for (const p of daemons.reverse()) {
      if (p.exitCode === null && p.signalCode === null) {
        p.kill('SIGKILL')
        await whenExited(p)
      }
    }
    rmSync(dir, { recursive: true, force: true })
  }
  try {
    await exec('ceph-mon', ['--conf', conf, '--mkfs', '-i', 'a', '--fsid', fsid])
    daemon('ceph-mon', ['-i', 'a'])
    const osdUuid = randomUUID()
    await pollUntil(
      async () => {
        alive()
        return (
          (await run('ceph', ['--connect-timeout', '5', 'osd', 'create', osdUuid]).then(
            () => true,
            () => false,
          )) || undefined
        )
      },
      { intervalMs: 200 },
    )
    await exec('ceph-osd', ['--conf', conf, '-i', '0', '--mkfs', '--osd-uuid', osdUuid])
    await run('ceph', ['osd', 'crush', 'add', 'osd.0', '1.0', 'root=default'])
    daemon('ceph-osd', ['-i', '0'])
    await pollUntil(
      async () => {
        alive()
        return /1 up/.test((await run('ceph', ['osd', 'stat'])).stdout) ? true : undefined
      },
      { intervalMs: 200 },
    )
    for (const pool of opts.pools ?? ['rbd']) {
      await run('ceph', ['osd', 'pool', 'create', pool, '8'])
      await run('ceph', ['osd', 'pool', 'application', 'enable', pool, 'rbd'])
    }
    if (opts.mgr === true) {
      mkdirSync(join(dir, 'mgr', 'ceph-x'), { recursive: true })
      daemon('ceph-mgr', ['-i', 'x'])
      // ceph df has figures once the manager has the OSD's statistics
      const want = opts.pools ?? ['rbd']
      await pollUntil(
        async () => {
          alive()
          // a mon still loading the manager's command descriptions answers EPERM for a moment: asked again
          const out = await run('ceph', ['df', '--format', 'json']).catch(() => undefined)
          if (out === undefined) return undefined
          const df = JSON.parse(out.stdout) as { stats?: { total_bytes?: number }; pools?: Array<{ name: string }> }
          return (df.stats?.total_bytes ?? 0) > 0 && want.every((p) => df.pools?.some((x) => x.name === p)) ? true : undefined
        },
        { intervalMs: 500 },
      )
    }
    let s3: CephCluster['s3']
    if (opts.rgw === true) {
      daemon('radosgw', ['-n', 'client.rgw.test'])
      const accessKeyId = 'GRAINLINETEST0000001'
      const secretAccessKey = 'grainline-test-secret-0000000000000000001'
      const endpoint = `http://127.0.0.1:${rgwPort}`
      await pollUntil(
        async () => {
          alive()
          return (await fetch(endpoint).then(
            (r) => r.status,
            () => 0,
          )) > 0
            ? true
            : undefined
        },
        { intervalMs: 250 },
      )
      await run('radosgw-admin', ['user', 'create', '--uid=grainline-test', '--display-name=grainline test', `--access-key=${accessKeyId}`, `--secret-key=${secretAccessKey}`])
      s3 = { endpoint, accessKeyId, secretAccessKey }
    }
    return { conf, dir, run, writeImage, stop, ...(s3 === undefined ? {} : { s3 }) }
  } catch (err) {
    await stop()
    throw err
  }
}
