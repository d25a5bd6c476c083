/**
 * The e2e site: what an operator sets up with the `grainline` package (a
 * self-signed certificate, a tokens file, an agent token file) around a real
 * receiver process, and `grainline replicate` run as a real agent process.
 */
import type { ChildProcess } from 'node:child_process'
import { mkdir, readFile } from 'node:fs/promises'
import { dirname, isAbsolute, join } from 'node:path'
import { VmxConfig, vmxDisks } from '@grainline/agent'
import { generateSelfSignedTls, generateToken, writeTokensFile, writeTokenFile } from 'grainline'
import { cliBin, qemuRaw, runNode, startReceiverProcess, type ReceiverProcess, type RunNodeOptions, type RunResult } from '@grainline/test-utils'

/** A receiver process with TLS and a tokens file, plus an agent token file. */
export interface Site {
  readonly dir: string
  readonly store: string
  readonly cert: string
  readonly key: string
  readonly tokens: string
  readonly token: string
  readonly tokenFile: string
  /** tokens of the extra entries, by name */
  readonly extraTokens: Readonly<Record<string, string>>
  receiver: ReceiverProcess
  /** start the receiver again on the same port (after a stop or a kill) */
  restart(): Promise<ReceiverProcess>
}

/**
 * Set up TLS and tokens (one token, `proxy-a`, for the `vms` globs, plus
 * `extra` entries) and start a receiver (with `receiverArgs` on its command line).
 */
export async function startSite(dir: string, vms: string[] = ['*'], extra: { name: string; vms: string[] }[] = [], receiverArgs: readonly string[] = []): Promise<Site> {
  await mkdir(dir, { recursive: true })
  const tls = await generateSelfSignedTls(join(dir, 'tls'))
  const token = generateToken()
  const extraTokens: Record<string, string> = {}
  const entries = [{ name: 'proxy-a', token, vms }]
  for (const e of extra) {
    const tok = generateToken()
    extraTokens[e.name] = tok
    entries.push({ name: e.name, token: tok, vms: e.vms })
  }
  const tokens = await writeTokensFile(join(dir, 'tokens.json'), entries)
  const tokenFile = await writeTokenFile(join(dir, 'agent.token'), token)
  const store = join(dir, 'store')
  const site: Site = {
    dir,
    store,
    cert: tls.cert,
    key: tls.key,
    tokens,
    token,
    tokenFile,
    extraTokens,
    receiver: await startReceiverProcess({ store, tokens, tls, args: receiverArgs }),
    async restart() {
      site.receiver = await site.receiver.restart()
      return site.receiver
    },
  }
  return site
}

/**
 * Offline seeding's two sites under `dir`: `local` (the receiver next to the
 * proxy, with `localArgs`) and `dr`, both stopped at the test's end.
 */
export async function startSeedSites(t: { teardown(fn: () => Promise<void>): void }, dir: string, localArgs: readonly string[] = []): Promise<{ local: Site; dr: Site }> {
  const local = await startSite(join(dir, 'local'), ['*'], [], localArgs)
  const dr = await startSite(join(dir, 'dr'))
  t.teardown(async () => {
    await local.receiver.stop()
    await dr.receiver.stop()
  })
  return { local, dr }
}

/** Run the `grainline` command as a child process. */
export async function runCli(args: readonly string[], opts: RunNodeOptions = {}): Promise<RunResult> {
  return await runNode(cliBin(), args, opts)
}

/** The JSON report of a `grainline replicate` run. */
export interface RunReport {
  ok: boolean
  vms: {
    vm: string
    ok: boolean
    cycle: number
    reconnects?: number
    reusedSnapshot?: boolean
    error?: { code: string; message: string }
    retention?: { requested: Record<string, number> | null; applied: Record<string, number> | null }
    pointsDropped?: { count: number; oldest: number; newest: number; broken: boolean; reason: string }
    warnings?: { code: string; message: string }[]
    disks: {
      name: string
      ok: boolean
      mode: string
      dataBytes: number
      zeroBytes: number
      wireBytes: number
      holesSkippedBytes?: number
      resumedFrom: number[]
      fallbackReason?: string
      resync?: { blockSize: number; blocks: number; differing: number; mapBytes: number }
      blockCheck?: { ok: boolean; blockSize: number; blocks: number; mismatched: number }
      scrub?: { ok: boolean; blockSize: number; from: number; to: number; blocks: number; mismatched: number; rotationComplete: boolean; provenAt?: string }
      trivial?: { ok: boolean }
      certify?: { ok: boolean }
      error?: { code: string }
    }[]
  }[]
}

let reports = 0

/**
 * Run `grainline replicate` as a real agent process against a site (or through
 * a proxy on `opts.port`): of `vmx`, or (`vmx` '') of the VMs of the `--job`
 * file that `args` name.
 */
export async function replicateCli(
  site: Site,
  vmx: string,
  args: string[] = [],
  opts: { port?: number; onSpawn?: (p: ChildProcess) => void; logLevel?: string; timeoutMs?: number } = {},
): Promise<RunResult & { report: RunReport | undefined }> {
  const reportFile = join(site.dir, `report-${process.pid}-${++reports}.json`)
  // the agent's record per VM stays with the site (never the machine's /var/lib/grainline), unless the test names one
  const stateDir = args.includes('--state-dir') ? [] : ['--state-dir', join(site.dir, 'agent-state')]
  const r = await runCli(
    [
      'replicate',
      ...(vmx === '' ? [] : [vmx]),
      '--to',
      `wss://127.0.0.1:${opts.port ?? site.receiver.port}`,
      '--token-file',
      site.tokenFile,
      '--ca',
      site.cert,
      '--report',
      reportFile,
      '--log-level',
      opts.logLevel ?? 'warn',
      ...stateDir,
      ...args,
    ],
    { ...(opts.onSpawn !== undefined ? { onSpawn: opts.onSpawn } : {}), ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}) },
  )
  let report: RunReport | undefined
  try {
    report = JSON.parse(await readFile(reportFile, 'utf8')) as RunReport
  } catch {
    report = undefined
  }
  return { ...r, report }
}

/** The in-flight resume point of a VM's first disk as `grainline status` prints it (0: none yet). */
export async function inflightResumeSeq(store: string, vm: string): Promise<number> {
  const r = await runCli(['status', '--store', store, '--output', 'json'])
  try {
    const st = JSON.parse(r.stdout) as { vms: { vm: string; disks: { inflight: { resumeSeq: number } | null }[] }[] }
    return st.vms.find((v) => v.vm === vm)?.disks[0]?.inflight?.resumeSeq ?? 0
  } catch {
    return 0
  }
}

/**
 * The view the next cycle will ship of a VM's first disk: `qemu-img convert`
 * of its current top (no guest writes during the cycle) into `out`.
 */
export async function expectedView(vmx: string, out: string): Promise<string> {
  const cfg = VmxConfig.parse(await readFile(vmx, 'utf8'), vmx)
  const d = vmxDisks(cfg)[0]
  if (d === undefined) throw new Error(`${vmx}: no disk`)
  await qemuRaw(isAbsolute(d.fileName) ? d.fileName : join(dirname(vmx), d.fileName), out)
  return out
}

/**
 * The views the next cycle will ship of every disk of a VM, in `.vmx` order:
 * `qemu-img convert` of each disk's current top (named relative to the .vmx's
 * folder, or absolute: a disk on another datastore) into `<out>-<i>.raw`.
 */
export async function frozenView(vmx: string, out: string): Promise<string[]> {
  const cfg = VmxConfig.parse(await readFile(vmx, 'utf8'), vmx)
  const raws: string[] = []
  for (const [i, d] of vmxDisks(cfg).entries()) {
    const raw = `${out}-${i}.raw`
    await qemuRaw(isAbsolute(d.fileName) ? d.fileName : join(dirname(vmx), d.fileName), raw)
    raws.push(raw)
  }
  return raws
}
