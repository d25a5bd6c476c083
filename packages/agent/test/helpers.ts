/** Test helpers: a real receiver process over TLS, a cutting TCP proxy, the qemu-img oracle. */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { createServer, connect, type Server, type Socket } from 'node:net'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { Writable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { pino, type Logger } from 'pino'
import { killOnExit, tlsFixture } from '@grainline/test-utils'

const exec = promisify(execFile)
export const MiB = 1024 * 1024
export const TOKEN = 'agent-test-token-0123456789abcdef'
/** A dashboard viewer's token of the same receiver (read-only: refused on the replication port). */
export const VIEWER_TOKEN = 'viewer-test-token-0123456789abcdef'
export const RECEIVER_MAIN = process.env['GRAINLINE_RECEIVER_MAIN'] ?? fileURLToPath(new URL('../../../receiver/dist/src/main.js', import.meta.url))
export const haveReceiver = existsSync(RECEIVER_MAIN)

/** A pino logger collecting JSON lines (logs are asserted through a sink). */
export function memoryLogger(level = 'info'): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l !== '') lines.push(JSON.parse(l) as Record<string, unknown>)
      cb()
    },
  })
  return { logger: pino({ level }, sink), lines }
}

export interface ReceiverEnv {
  store: string
  ca: Buffer
  url: string
  port: number
  proc: ChildProcess
  logs: string[]
  stop(): Promise<void>
  /** SIGKILL (no graceful shutdown) */
  kill9(): Promise<void>
  restart(): Promise<void>
}

/** Start the real receiver process with TLS and a token that may replicate every VM. */
export async function startReceiver(dir: string, opts: { port?: number } = {}): Promise<ReceiverEnv> {
  mkdirSync(dir, { recursive: true })
  const store = join(dir, 'store')
  mkdirSync(store, { recursive: true })
  const { key, cert } = tlsFixture()
  const tokens = join(dir, 'tokens.json')
  writeFileSync(
    tokens,
    JSON.stringify({
      tokens: [
        { name: 'agent-test', token: TOKEN, vms: ['*'] },
        { name: 'noc', token: VIEWER_TOKEN, role: 'viewer' },
      ],
    }),
  )
  const env: ReceiverEnv = {
    store,
    ca: readFileSync(cert),
    url: '',
    port: 0,
    proc: undefined as unknown as ChildProcess,
    logs: [],
    async stop() {
      if (env.proc.exitCode !== null || env.proc.signalCode !== null) return
      const exited = once(env.proc, 'exit')
      env.proc.kill('SIGTERM')
      await exited
    },
    async kill9() {
      if (env.proc.exitCode !== null || env.proc.signalCode !== null) return
      const exited = once(env.proc, 'exit')
      env.proc.kill('SIGKILL')
      await exited
    },
    async restart() {
      await env.stop()
      await launch(env.port)
    },
  }
  const launch = async (port: number): Promise<void> => {
    // one exit hook for every receiver of the process (test-utils), not one per launch
    const proc = killOnExit(
      spawn(process.execPath, [RECEIVER_MAIN, '--listen', `127.0.0.1:${port}`, '--store', store, '--tokens', tokens, '--tls-cert', cert, '--tls-key', key, '--exit-with-stdin'], {
        stdio: ['pipe', 'pipe', 'pipe'],
      }),
    )
    env.proc = proc
    createInterface({ input: proc.stderr! }).on('line', (l) => {
      env.logs.push(l)
    })
    env.port = await new Promise<number>((resolve, reject) => {
      // generous for a loaded machine; a receiver that starts too late is killed, never left to hold the test process open
      const timer = setTimeout(() => {
        proc.kill('SIGKILL')
        reject(new Error(`receiver did not start within 60 s: ${env.logs.slice(-5).join('\n')}`))
      }, 60_000)
      createInterface({ input: proc.stdout! }).on('line', (line) => {
        try {
          const ev = JSON.parse(line) as { event?: string; port?: number }
          if (ev.event === 'listening' && typeof ev.port === 'number') {
            clearTimeout(timer)
            resolve(ev.port)
          }
        } catch {
          /* not JSON */
        }
      })
      proc.once('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`receiver exited ${code}: ${env.logs.slice(-5).join('\n')}`))
      })
    })
    env.url = `wss://127.0.0.1:${env.port}`
  }
  await launch(opts.port ?? 0)
  return env
}

/** `qemu-img convert -O raw`: the independent oracle of a chain's content. */
export async function qemuRaw(vmdk: string, out: string): Promise<void> {
  await exec('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', vmdk, out], { maxBuffer: 1 << 20 })
}

/** `qemu-img map --output=json` of a file. */
export async function qemuMap(vmdk: string): Promise<Array<{ start: number; length: number; depth: number; present: boolean; zero: boolean; data: boolean }>> {
  const { stdout } = await exec('qemu-img', ['map', '-f', 'vmdk', '--output=json', vmdk], { maxBuffer: 64 << 20 })
  return JSON.parse(stdout) as Array<{ start: number; length: number; depth: number; present: boolean; zero: boolean; data: boolean }>
}

/** First differing offset of two files, or -1 when equal (sizes included). */
export { firstDifference } from '@grainline/test-utils'

/** A TCP proxy that cuts each connection after a byte budget (client → server). */
export interface CuttingProxy {
  readonly port: number
  /** budget of the NEXT connections, one per connection; empty = never cut */
  budgets: number[]
  cuts: number
  cutAll(): void
  close(): Promise<void>
}

export async function startCuttingProxy(targetPort: () => number): Promise<CuttingProxy> {
  const sockets = new Set<Socket>()
  const proxy: CuttingProxy = {
    port: 0,
    budgets: [],
    cuts: 0,
    cutAll() {
      for (const s of sockets) s.destroy()
    },
    async close() {
      proxy.cutAll()
      server.close()
      await once(server, 'close').catch(() => {})
    },
  }
  const server: Server = createServer((client) => {
    const budget = proxy.budgets.shift()
    const upstream = connect(targetPort(), '127.0.0.1')
    sockets.add(client)
    sockets.add(upstream)
    let sent = 0
    const cut = (): void => {
      client.destroy()
      upstream.destroy()
    }
    client.on('data', (d: Buffer) => {
      if (budget !== undefined && sent + d.length >= budget) {
        upstream.write(d.subarray(0, Math.max(0, budget - sent)))
        proxy.cuts++
        cut()
        return
      }
      sent += d.length
      if (!upstream.write(d)) client.pause()
    })
    upstream.on('drain', () => client.resume())
    upstream.on('data', (d: Buffer) => {
      if (!client.write(d)) upstream.pause()
    })
    client.on('drain', () => upstream.resume())
    for (const s of [client, upstream]) {
      s.on('error', cut)
      s.on('close', () => {
        sockets.delete(s)
        cut()
      })
    }
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  ;(proxy as { port: number }).port = (server.address() as { port: number }).port
  return proxy
}

/**
 * A private scratch folder under the OS temp dir, removed at teardown. Unlike
 * t.testdir() its name is unique per run, so two runs of the suite at once
 * (teammates share this machine) cannot delete each other's files.
 */
export function scratch(t: { teardown: (fn: () => unknown) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'grainline-agent-test-'))
  t.teardown(() => {
    rmSync(dir, { recursive: true, force: true })
  })
  return dir
}
