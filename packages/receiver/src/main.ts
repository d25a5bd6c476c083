#!/usr/bin/env node
/**
 * Minimal runnable receiver (tests, e2e):
 *   node dist/src/main.js --listen 127.0.0.1:0 --store DIR --tokens FILE
 *        [--tls-cert FILE --tls-key FILE] [--insecure] [--config FILE]
 *        [--http-listen HOST:PORT]   (metrics, dashboard, API; alias --metrics-listen)
 *        [--store ceph:POOL --ceph-conf FILE --ceph-id ID --keyring FILE]   (Ceph store)
 *        [--exit-with-stdin]   (exit at once when stdin ends: test harnesses)
 * Prints one JSON line {"event":"listening","host":…,"port":…} on stdout when
 * ready; logs (pino JSON) go to stderr. SIGTERM/SIGINT close gracefully.
 */
import { parseArgs } from 'node:util'
import { pino } from 'pino'
import { createReceiver } from './server.ts'
import { resolveReceiverInit } from './config.ts'

async function main(): Promise<void> {
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
      'window-bytes': { type: 'string' },
      'http-listen': { type: 'string' },
      'metrics-listen': { type: 'string' },
      'log-level': { type: 'string' },
      'exit-with-stdin': { type: 'boolean' },
      'ceph-conf': { type: 'string' },
      'ceph-id': { type: 'string' },
      keyring: { type: 'string' },
    },
    strict: true,
  })
  const logger = pino({ level: values['log-level'] ?? 'info' }, pino.destination(2))
  const init = await resolveReceiverInit({
    ...(values.config !== undefined ? { config: values.config } : {}),
    ...(values.listen !== undefined ? { listen: values.listen } : {}),
    ...(values.store !== undefined ? { store: values.store } : {}),
    ...(values.tokens !== undefined ? { tokens: values.tokens } : {}),
    ...(values['tls-cert'] !== undefined ? { tlsCert: values['tls-cert'] } : {}),
    ...(values['tls-key'] !== undefined ? { tlsKey: values['tls-key'] } : {}),
    ...(values['display-suffix'] !== undefined ? { displaySuffix: values['display-suffix'] } : {}),
    ...(values['batch-bytes'] !== undefined ? { batchBytes: Number(values['batch-bytes']) } : {}),
    ...(values['window-bytes'] !== undefined ? { windowBytes: Number(values['window-bytes']) } : {}),
    ...(values['http-listen'] !== undefined ? { httpListen: values['http-listen'] } : {}),
    ...(values['metrics-listen'] !== undefined ? { metricsListen: values['metrics-listen'] } : {}),
    ...(values['ceph-conf'] !== undefined ? { cephConf: values['ceph-conf'] } : {}),
    ...(values['ceph-id'] !== undefined ? { cephId: values['ceph-id'] } : {}),
    ...(values.keyring !== undefined ? { cephKeyring: values.keyring } : {}),
    insecure: values.insecure === true,
  })
  const receiver = createReceiver({ logger }, init)
  const addr = await receiver.listen()
  const m = receiver.httpAddress
  process.stdout.write(JSON.stringify({ event: 'listening', host: addr.host, port: addr.port, ...(m === undefined ? {} : { httpPort: m.port, metricsPort: m.port }) }) + '\n')
  let closing = false
  const stop = (signal: string): void => {
    if (closing) return
    closing = true
    logger.info({ signal }, 'shutting down')
    receiver.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed')
        process.exit(1)
      },
    )
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
  const e = err as { code?: unknown; message?: unknown }
  process.stderr.write(JSON.stringify({ event: 'error', code: e.code ?? 'E_INTERNAL', message: String(e.message ?? err) }) + '\n')
  process.exit(2)
})
