import { createReceiver, resolveReceiverInit } from '@grainline/receiver'
import type { Logger } from 'pino'
import type { CliContext, GlobalArgs } from '../command.ts'
import { ExitCode } from '../exit-codes.ts'
import { loggerFor } from '../logger-args.ts'

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
  /** serve metrics, the dashboard and its API on HOST:PORT */
  readonly httpListen?: string
  /** old name of `httpListen` */
  readonly metricsListen?: string
  /** Ceph store client settings (`--store ceph:POOL`) */
  readonly cephConf?: string
  readonly cephId?: string
  readonly keyring?: string
  readonly logger: Logger
  /** called once listening (tests, the demo) */
  readonly onListening?: (addr: { host: string; port: number }) => void
}

/** Run a receiver until SIGTERM/SIGINT; resolves once closed. */
export async function runReceiver(opts: ReceiveCommandOptions): Promise<void> {
  const init = await resolveReceiverInit({
    ...(opts.config !== undefined ? { config: opts.config } : {}),
    ...(opts.listen !== undefined ? { listen: opts.listen } : {}),
    ...(opts.store !== undefined ? { store: opts.store } : {}),
    ...(opts.tokens !== undefined ? { tokens: opts.tokens } : {}),
    ...(opts.tlsCert !== undefined ? { tlsCert: opts.tlsCert } : {}),
    ...(opts.tlsKey !== undefined ? { tlsKey: opts.tlsKey } : {}),
    ...(opts.displaySuffix !== undefined ? { displaySuffix: opts.displaySuffix } : {}),
    ...(opts.trivialMb !== undefined ? { trivialMiB: opts.trivialMb } : {}),
    ...(opts.httpListen !== undefined ? { httpListen: opts.httpListen } : {}),
    ...(opts.metricsListen !== undefined ? { metricsListen: opts.metricsListen } : {}),
    ...(opts.cephConf !== undefined ? { cephConf: opts.cephConf } : {}),
    ...(opts.cephId !== undefined ? { cephId: opts.cephId } : {}),
    ...(opts.keyring !== undefined ? { cephKeyring: opts.keyring } : {}),
    insecure: opts.insecure === true,
  })
  const receiver = createReceiver({ logger: opts.logger }, init)
  const addr = await receiver.listen()
  const m = receiver.httpAddress
  opts.logger.info({ host: addr.host, port: addr.port, tls: init.tlsCert !== undefined, store: init.store, http: m }, 'receiver listening')
  process.stdout.write(JSON.stringify({ event: 'listening', host: addr.host, port: addr.port, ...(m === undefined ? {} : { httpPort: m.port, metricsPort: m.port }) }) + '\n')
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

/** `receive`'s run (loaded by commands/receive.ts only when the command runs). */
export async function runReceive(args: GlobalArgs & Record<string, unknown>, ctx: CliContext): Promise<number> {
  const str = (k: string): string | undefined => (args[k] === undefined ? undefined : String(args[k]))
  await runReceiver({
    ...(str('listen') !== undefined ? { listen: str('listen') as string } : {}),
    ...(str('store') !== undefined ? { store: str('store') as string } : {}),
    ...(str('tokens') !== undefined ? { tokens: str('tokens') as string } : {}),
    ...(str('tls-cert') !== undefined ? { tlsCert: str('tls-cert') as string } : {}),
    ...(str('tls-key') !== undefined ? { tlsKey: str('tls-key') as string } : {}),
    ...(str('config') !== undefined ? { config: str('config') as string } : {}),
    ...(str('display-suffix') !== undefined ? { displaySuffix: str('display-suffix') as string } : {}),
    ...(args['trivial-mb'] !== undefined ? { trivialMb: Number(args['trivial-mb']) } : {}),
    ...(str('http-listen') !== undefined ? { httpListen: str('http-listen') as string } : {}),
    ...(str('ceph-conf') !== undefined ? { cephConf: str('ceph-conf') as string } : {}),
    ...(str('ceph-id') !== undefined ? { cephId: str('ceph-id') as string } : {}),
    ...(str('keyring') !== undefined ? { keyring: str('keyring') as string } : {}),
    insecure: args['insecure'] === true,
    logger: loggerFor(args, ctx, 'info'),
  })
  return ExitCode.Ok
}
