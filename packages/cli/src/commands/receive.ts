import { createReceiver, resolveReceiverInit } from '@grainline/receiver'
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
  readonly onListening?: (addr: { host: string; port: number }) => void
}

/** Run a receiver until SIGTERM/SIGINT; resolves once closed. */
export async function receiveCommand(opts: ReceiveCommandOptions): Promise<void> {
  const init = await resolveReceiverInit({
    ...(opts.config !== undefined ? { config: opts.config } : {}),
    ...(opts.listen !== undefined ? { listen: opts.listen } : {}),
    ...(opts.store !== undefined ? { store: opts.store } : {}),
    ...(opts.tokens !== undefined ? { tokens: opts.tokens } : {}),
    ...(opts.tlsCert !== undefined ? { tlsCert: opts.tlsCert } : {}),
    ...(opts.tlsKey !== undefined ? { tlsKey: opts.tlsKey } : {}),
    ...(opts.displaySuffix !== undefined ? { displaySuffix: opts.displaySuffix } : {}),
    ...(opts.trivialMb !== undefined ? { trivialMiB: opts.trivialMb } : {}),
    insecure: opts.insecure === true,
  })
  const receiver = createReceiver({ logger: opts.logger }, init)
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
