/**
 * `grainline receive`: its flags. What it does is in receive-run.ts, imported only
 * when the command runs, so that `--help`, `--version` and the other
 * commands do not load its dependencies.
 */
import type { Argv } from 'yargs'
import type { CliCommand } from '../command.ts'

export const receiveCommand: CliCommand = {
  command: 'receive',
  describe: 'run a receiver at the DR site (mirror store, TLS, tokens)',
  builder: (y: Argv) =>
    y
      .option('listen', { type: 'string', describe: 'HOST:PORT to listen on (default 127.0.0.1:0 from the config)' })
      .option('store', { type: 'string', describe: 'folder holding the mirrors, or ceph:POOL for RBD images in a Ceph pool (docs/CEPH.md)' })
      .option('ceph-conf', { type: 'string', describe: 'ceph.conf of the Ceph store (default: the Ceph client default)' })
      .option('ceph-id', { type: 'string', describe: 'Ceph client id of the Ceph store (default: admin)' })
      .option('keyring', { type: 'string', describe: 'keyring of the Ceph client id' })
      .option('tokens', { type: 'string', describe: 'tokens file {"tokens":[{"name","token","vms":["glob"]}]}' })
      .option('tls-cert', { type: 'string', describe: 'PEM certificate (wss://)' })
      .option('tls-key', { type: 'string', describe: 'PEM private key' })
      .option('insecure', { type: 'boolean', default: false, describe: 'allow plain ws:// on a non-loopback address' })
      .option('config', { type: 'string', describe: 'JSON config file with the same settings (flags win)' })
      .option('display-suffix', { type: 'string', describe: 'appended to the mirror VM display name (default: the config\'s displaySuffix, else " (grainline mirror)"; --display-suffix= for none)' })
      .option('trivial-mb', { type: 'number', describe: 'largest prefix (MiB) a trivial check may digest' })
      .option('http-listen', {
        type: 'string',
        alias: 'metrics-listen',
        describe: 'serve the HTTP listener on HOST:PORT: Prometheus metrics (GET /metrics), the dashboard (/) and its JSON API (/api/v1, viewer tokens); https with --tls-cert; off by default',
      }),
  async run(args, ctx) {
    const { runReceive } = await import('./receive-run.ts')
    return await runReceive(args, ctx)
  },
}
