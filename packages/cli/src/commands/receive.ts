import { createReceiver, loadReceiverConfig, parseListen, type ReceiverInit } from '@grainline/receiver'
import type { Logger } from 'pino'

/** Options of `grainline receive` (flags override the config file). */
export interface ReceiveCommandOptions {
  readonly listen?: string
  readonly store?: string
  readonly tokens?: string
  readonly tlsCert?: string
  readonly tlsKey?: string
  readonly insecure?: boolean
  readonly config?: string
  readonly displaySuffix?: string
  readonly trivialMb?: number
  readonly logger: Logger
  /** called once listening (tests, the demo) */
  readonly onListening?: (addr: { host: string, port: number }) => void
}

/** Run a receiver until SIGTERM/SIGINT; resolves once closed. */
export async function receiveCommand (opts: ReceiveCommandOptions): Promise<void> {
  let init: Partial<ReceiverInit> = opts.config === undefined ? {} : await loadReceiverConfig(opts.config)
  const over: Partial<Record<keyof ReceiverInit, unknown>> = {}
  if (opts.listen !== undefined) Object.assign(over, parseListen(opts.listen))
  if (opts.store !== undefined) over.store = opts.store
  if (opts.tokens !== undefined) over.tokensFile = opts.tokens
  if (opts.tlsCert !== undefined) over.tlsCert = opts.tlsCert
  if (opts.tlsKey !== undefined) over.tlsKey = opts.tlsKey
  if (opts.insecure === true) over.insecure = true
  if (opts.displaySuffix !== undefined) over.displaySuffix = opts.displaySuffix
  if (opts.trivialMb !== undefined) over.trivialMiB = opts.trivialMb
  init = { ...init, ...over } as Partial<ReceiverInit>
  if (init.store === undefined) throw new Error('--store (or "store" in --config) is required')
  if (init.tokensFile === undefined && init.tokens === undefined) throw new Error('--tokens (or "tokens" in --config) is required: the receiver never runs without authentication')
  const receiver = createReceiver({ logger: opts.logger }, init as ReceiverInit)
  const addr = await receiver.listen()
  opts.logger.info({ host: addr.host, port: addr.port, tls: init.tlsCert !== undefined, store: init.store }, 'receiver listening')
  process.stdout.write(JSON.stringify({ event: 'listening', host: addr.host, port: addr.port }) + '\n')
  opts.onListening?.(addr)
  await new Promise<void>((resolve, reject) => {
    let closing = false
    const stop = (signal: string): void => {
      if (closing) return
      closing = true
      opts.logger.info({ signal }, 'shutting down: finishing durable steps of open sessions')
      receiver.close().then(resolve, reject)
    }
    process.once('SIGTERM', () => stop('SIGTERM'))
    process.once('SIGINT', () => stop('SIGINT'))
  })
}
