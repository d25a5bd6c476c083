import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { createServer, connect, type Server, type Socket } from 'node:net'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { once } from 'node:events'
import { createInterface } from 'node:readline'

const exec = promisify(execFile)
const here = dirname(fileURLToPath(import.meta.url))
/** Repository root (this file lives in test/dist/src). */
export const repoRoot = resolve(here, '../../..')
/** The read-only shared folder beside the repository. */
export const sharedDir = resolve(repoRoot, '../shared')
/** The runnable receiver entry. */
export const receiverMain = join(repoRoot, 'packages/receiver/dist/src/main.js')
/** The grainline CLI entry. */
export const cliBin = join(repoRoot, 'packages/cli/dist/src/bin.js')

const live = new Set<ChildProcess>()
process.on('exit', () => { for (const p of live) p.kill('SIGKILL') })

/** A receiver child process. */
export interface ReceiverProcess {
  readonly port: number
  readonly url: string
  readonly proc: ChildProcess
  readonly logs: string[]
  /** SIGTERM and wait for exit */
  stop(): Promise<number | null>
  /** SIGKILL and wait for exit */
  kill9(): Promise<void>
}

/** Options to start a receiver process. */
export interface StartReceiverOptions {
  readonly store: string
  readonly tokens: string
  readonly tls?: { cert: string, key: string }
  readonly port?: number
  readonly extraArgs?: readonly string[]
  readonly env?: Record<string, string>
}

/** Start `packages/receiver/dist/src/main.js` and wait for its `listening` line. */
export async function startReceiver (opts: StartReceiverOptions): Promise<ReceiverProcess> {
  const args = [receiverMain, '--listen', `127.0.0.1:${opts.port ?? 0}`, '--store', opts.store, '--tokens', opts.tokens]
  if (opts.tls !== undefined) args.push('--tls-cert', opts.tls.cert, '--tls-key', opts.tls.key)
  // the receiver exits when our end of its stdin closes: no orphan survives a
  // test process killed by a tap timeout (the 'exit' handler below never runs then)
  args.push('--exit-with-stdin', ...(opts.extraArgs ?? []))
  const proc = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } })
  live.add(proc)
  const logs: string[] = []
  const exited = once(proc, 'exit') as Promise<[number | null, string | null]>
  exited.then(() => live.delete(proc), () => {})
  createInterface({ input: proc.stderr! }).on('line', (l) => { logs.push(l) })
  const port = await new Promise<number>((res, rej) => {
    const rl = createInterface({ input: proc.stdout! })
    const timer = setTimeout(() => { rej(new Error(`receiver did not start: ${logs.slice(-5).join('\n')}`)) }, 20_000)
    rl.on('line', (line) => {
      logs.push(line)
      try {
        const ev = JSON.parse(line) as { event?: string, port?: number }
        if (ev.event === 'listening' && typeof ev.port === 'number') { clearTimeout(timer); res(ev.port) }
      } catch { /* a log line */ }
    })
    exited.then(([code]) => { clearTimeout(timer); rej(new Error(`receiver exited with ${code}: ${logs.slice(-10).join('\n')}`)) }, () => {})
  })
  return {
    port,
    url: `${opts.tls !== undefined ? 'wss' : 'ws'}://127.0.0.1:${port}`,
    proc,
    logs,
    async stop () {
      if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode
      proc.kill('SIGTERM')
      const [code] = await exited
      return code
    },
    async kill9 () {
      if (proc.exitCode !== null || proc.signalCode !== null) return
      proc.kill('SIGKILL')
      await exited
    },
  }
}

/** Result of a CLI run. */
export interface CliResult { code: number | null, stdout: string, stderr: string }

/** Run the grainline CLI as a child process. */
export async function runCli (args: readonly string[], opts: { env?: Record<string, string>, timeoutMs?: number, onSpawn?: (p: ChildProcess) => void } = {}): Promise<CliResult> {
  const proc = spawn(process.execPath, [cliBin, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } })
  live.add(proc)
  opts.onSpawn?.(proc)
  let stdout = ''
  let stderr = ''
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => { stdout += d })
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => { stderr += d })
  const timer = setTimeout(() => proc.kill('SIGKILL'), opts.timeoutMs ?? 300_000)
  const [code] = await once(proc, 'exit') as [number | null]
  clearTimeout(timer)
  live.delete(proc)
  // let the pipes drain
  await new Promise((r) => setImmediate(r))
  return { code, stdout, stderr }
}

/** `qemu-img convert -O raw` of a VMDK (the independent oracle). */
export async function qemuRaw (vmdk: string, out: string): Promise<void> {
  await exec('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', vmdk, out], { maxBuffer: 1 << 20 })
}

/** `qemu-img map --output=json`. */
export async function qemuMap (vmdk: string): Promise<unknown[]> {
  const { stdout } = await exec('qemu-img', ['map', '-f', 'vmdk', '--output=json', vmdk], { maxBuffer: 64 << 20 })
  return JSON.parse(stdout) as unknown[]
}

/** Compare two files byte for byte; returns the first differing offset or -1. */
export async function firstDifference (a: string, b: string): Promise<number> {
  const [sa, sb] = await Promise.all([stat(a), stat(b)])
  const chunk = 4 << 20
  const ra = createReadStream(a, { highWaterMark: chunk })[Symbol.asyncIterator]()
  const rb = createReadStream(b, { highWaterMark: chunk })[Symbol.asyncIterator]()
  let bufA: Buffer = Buffer.alloc(0)
  let bufB: Buffer = Buffer.alloc(0)
  let pos = 0
  for (;;) {
    if (bufA.length === 0) { const n = await ra.next(); bufA = n.done === true ? Buffer.alloc(0) : n.value as Buffer }
    if (bufB.length === 0) { const n = await rb.next(); bufB = n.done === true ? Buffer.alloc(0) : n.value as Buffer }
    if (bufA.length === 0 || bufB.length === 0) break
    const n = Math.min(bufA.length, bufB.length)
    if (Buffer.compare(bufA.subarray(0, n), bufB.subarray(0, n)) !== 0) {
      for (let i = 0; i < n; i++) if (bufA[i] !== bufB[i]) return pos + i
    }
    pos += n
    bufA = bufA.subarray(n)
    bufB = bufB.subarray(n)
  }
  return sa.size === sb.size ? -1 : Math.min(sa.size, sb.size)
}

/** A TCP proxy on loopback that can cut every connection after a byte budget. */
export interface CuttingProxy {
  readonly port: number
  /** bytes forwarded client → server in total */
  readonly forwarded: () => number
  /** cut all current connections now */
  cutAll(): void
  /** cut each connection once it forwarded this many bytes upstream (undefined = never) */
  cutAfter: number | undefined
  /** per-connection budgets: connection k is cut after plan[k] bytes (overrides cutAfter while it lasts) */
  plan: (number | undefined)[]
  /** connections accepted so far */
  readonly connections: () => number
  /** connections cut by a budget so far */
  readonly cuts: () => number
  close(): Promise<void>
}

/** Start a cutting proxy in front of `targetPort`. */
export async function startCuttingProxy (targetPort: number): Promise<CuttingProxy> {
  const sockets = new Set<Socket>()
  let total = 0
  let conns = 0
  let cuts = 0
  const proxy: CuttingProxy = {
    port: 0,
    plan: [],
    connections: () => conns,
    cuts: () => cuts,
    forwarded: () => total,
    cutAll () { for (const s of sockets) s.destroy() },
    cutAfter: undefined,
    async close () { proxy.cutAll(); server.close(); await once(server, 'close').catch(() => {}) },
  }
  const server: Server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1')
    sockets.add(client); sockets.add(upstream)
    let sent = 0
    const index = conns++
    const budget = index < proxy.plan.length ? proxy.plan[index] : proxy.cutAfter
    const cut = (): void => { client.destroy(); upstream.destroy() }
    client.on('data', (d: Buffer) => {
      sent += d.length
      total += d.length
      if (budget !== undefined && sent >= budget) { cuts++; cut(); return }
      if (!upstream.write(d)) client.pause()
    })
    upstream.on('drain', () => client.resume())
    upstream.on('data', (d: Buffer) => { if (!client.write(d)) upstream.pause() })
    client.on('drain', () => upstream.resume())
    for (const s of [client, upstream]) {
      s.on('error', cut)
      s.on('close', () => { sockets.delete(s); cut() })
    }
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  ;(proxy as { port: number }).port = (server.address() as { port: number }).port
  return proxy
}
