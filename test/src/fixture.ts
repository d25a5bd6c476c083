import { mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateSelfSignedTls, generateToken, writeTokensFile, writeTokenFile } from 'grainline'
import { startReceiver, runCli, type ReceiverProcess, type CliResult } from './harness.ts'

/** A receiver process with TLS and a tokens file, plus an agent token file. */
export interface Site {
  readonly dir: string
  readonly store: string
  readonly cert: string
  readonly key: string
  readonly tokens: string
  readonly token: string
  readonly tokenFile: string
  receiver: ReceiverProcess
  /** restart the receiver on the same port after a stop/kill */
  restart(): Promise<ReceiverProcess>
}

/** Set up TLS, tokens (one token for `vms` globs) and start a receiver. */
export async function startSite (dir: string, vms: string[] = ['*'], extra: { name: string, vms: string[] }[] = []): Promise<Site & { extraTokens: Record<string, string> }> {
  await mkdir(dir, { recursive: true })
  const tls = await generateSelfSignedTls(join(dir, 'tls'))
  const token = generateToken()
  const extraTokens: Record<string, string> = {}
  const entries = [{ name: 'proxy-a', token, vms }]
  for (const e of extra) { extraTokens[e.name] = generateToken(); entries.push({ name: e.name, token: extraTokens[e.name] as string, vms: e.vms }) }
  const tokens = await writeTokensFile(join(dir, 'tokens.json'), entries)
  const tokenFile = await writeTokenFile(join(dir, 'agent.token'), token)
  const store = join(dir, 'store')
  const receiver = await startReceiver({ store, tokens, tls: { cert: tls.cert, key: tls.key } })
  const site = {
    dir, store, cert: tls.cert, key: tls.key, tokens, token, tokenFile, receiver, extraTokens,
    async restart () {
      site.receiver = await startReceiver({ store, tokens, tls: { cert: tls.cert, key: tls.key }, port: site.receiver.port })
      return site.receiver
    },
  }
  return site
}

/** The JSON report of a `grainline replicate` run. */
export interface RunReport {
  ok: boolean
  vms: { vm: string, ok: boolean, cycle: number, reusedSnapshot?: boolean, error?: { code: string, message: string }, disks: { name: string, ok: boolean, mode: string, dataBytes: number, zeroBytes: number, wireBytes: number, resumedFrom: number[], fallbackReason?: string, trivial?: { ok: boolean }, certify?: { ok: boolean }, error?: { code: string } }[] }[]
}

/** Run `grainline replicate` as a real agent process against a site. */
export async function replicateCli (site: Site, vmx: string, args: string[] = [], opts: { port?: number, onSpawn?: (p: import('node:child_process').ChildProcess) => void } = {}): Promise<CliResult & { report: RunReport | undefined }> {
  const reportFile = join(site.dir, `report-${Date.now()}-${Math.random().toString(36).slice(2)}.json`)
  // the agent's record per VM stays with the site (never the machine's /var/lib/grainline), unless the test names one
  const stateDir = args.includes('--state-dir') ? [] : ['--state-dir', join(site.dir, 'agent-state')]
  const r = await runCli(['replicate', vmx, '--to', `wss://127.0.0.1:${opts.port ?? site.receiver.port}`, '--token-file', site.tokenFile,
    '--ca', site.cert, '--report', reportFile, '--log-level', 'warn', ...stateDir, ...args], { ...(opts.onSpawn !== undefined ? { onSpawn: opts.onSpawn } : {}) })
  let report: RunReport | undefined
  try { report = JSON.parse(await readFile(reportFile, 'utf8')) as RunReport } catch { report = undefined }
  return { ...r, report }
}

const scratchDirs: string[] = []
let cleanupRegistered = false

/**
 * A scratch folder outside the repository, removed when the whole test file
 * ends (after every subtest stopped its processes — tap's per-test testdir is
 * removed before later teardowns run, while a receiver may still write).
 */
export async function scratchDir (t: { teardown: (fn: () => unknown) => void }, root: { teardown: (fn: () => unknown) => void }): Promise<string> {
  const { mkdtemp, rm } = await import('node:fs/promises')
  const { tmpdir } = await import('node:os')
  const dir = await mkdtemp(join(tmpdir(), 'grainline-e2e-'))
  scratchDirs.push(dir)
  if (!cleanupRegistered) {
    cleanupRegistered = true
    root.teardown(async () => { for (const d of scratchDirs) await rm(d, { recursive: true, force: true }) })
  }
  void t
  return dir
}
