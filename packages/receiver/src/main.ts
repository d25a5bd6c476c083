#!/usr/bin/env node
/**
 * Minimal runnable receiver (tests, e2e):
 *   node dist/src/main.js --listen 127.0.0.1:0 --store DIR --tokens FILE
 *        [--tls-cert FILE --tls-key FILE] [--insecure] [--config FILE]
 *        [--exit-with-stdin]   (exit at once when stdin ends: test harnesses)
 * Prints one JSON line {"event":"listening","host":…,"port":…} on stdout when
 * ready; logs (pino JSON) go to stderr. SIGTERM/SIGINT close gracefully.
 */
import { parseArgs } from 'node:util'
import { pino } from 'pino'
import { createReceiver } from './server.ts'
import { loadReceiverConfig, parseListen } from './config.ts'
import type { ReceiverInit } from './server.ts'

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      listen: { type: 'string' },
      store: { type: 'string' },
      tokens: { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      insecure: { type: 'boolean' },
      config: { type: 'string' },
      'display-suffix': { type: 'string' },
      'batch-bytes': { type: 'string' },
      'log-level': { type: 'string' },
      'exit-with-stdin': { type: 'boolean' },
    },
    strict: true,
  })
  const logger = pino({ level: values['log-level'] ?? 'info' }, pino.destination(2))
  let init: Partial<ReceiverInit> = values.config === undefined ? {} : await loadReceiverConfig(values.config)
  const over: Record<string, unknown> = {}
  if (values.listen !== undefined) Object.assign(over, parseListen(values.listen))
  if (values.store !== undefined) over['store'] = values.store
  if (values.tokens !== undefined) over['tokensFile'] = values.tokens
  if (values['tls-cert'] !== undefined) over['tlsCert'] = values['tls-cert']
  if (values['tls-key'] !== undefined) over['tlsKey'] = values['tls-key']
  if (values.insecure === true) over['insecure'] = true
  if (values['display-suffix'] !== undefined) over['displaySuffix'] = values['display-suffix']
  if (values['batch-bytes'] !== undefined) over['batchBytes'] = Number(values['batch-bytes'])
  init = { ...init, ...over }
  if (init.store === undefined) throw new Error('--store is required')
  const receiver = createReceiver({ logger }, init as ReceiverInit)
  const addr = await receiver.listen()
  process.stdout.write(JSON.stringify({ event: 'listening', host: addr.host, port: addr.port }) + '\n')
  let closing = false
  const stop = (signal: string): void => {
    if (closing) return
    closing = true
    logger.info({ signal }, 'shutting down')
    receiver.close().then(() => process.exit(0), (err: unknown) => {
      logger.error({ err }, 'shutdown failed')
      process.exit(1)
    })
  }
  if (values['exit-with-stdin'] === true) {
    // tests: die with the parent that holds our stdin, even if it was killed.
    // No logging here: stderr may be a pipe nobody reads any more.
    const die = (): void => {
      receiver.abort()
      process.exit(3)
    }
    process.stdin.on('end', die)
    process.stdin.on('close', die)
    process.stdin.on('error', die)
    process.stdin.resume()
  }
  process.on('SIGTERM', () => stop('SIGTERM'))
  process.on('SIGINT', () => stop('SIGINT'))
}

main().catch((err: unknown) => {
  const e = err as { code?: unknown, message?: unknown }
  process.stderr.write(JSON.stringify({ event: 'error', code: e.code ?? 'E_INTERNAL', message: String(e.message ?? err) }) + '\n')
  process.exit(2)
})
