/**
 * `grainline status`: the mirrors of a store with their health, as a
 * monitoring plugin reports it — the summary line first (`GRAINLINE OK - …`),
 * then per VM and disk the committed cycle, its age, the checks, when the
 * whole mirror was last proven equal to its source (a clean certify, a
 * completed scrub rotation or a resync that read every block) and any
 * cycle in flight; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (a store that
 * does not exist, and every error of the check itself: a mistyped option or
 * value, an unreadable --config, a store it cannot read — a typo in a
 * monitoring command must not page as CRITICAL). `--output json` prints the same object the receiver's
 * dashboard API serves at `GET /api/v1/status` (`storeOverview` of
 * @grainline/receiver; read offline, so `live` is null and no errors).
 *
 * This module holds the flags; what the command does is in status-run.ts,
 * imported only when it runs (so `--help`, `--version` and the other
 * commands do not load its dependencies).
 */
import type { Argv } from 'yargs'
import type { CliCommand } from '../command.ts'
import { withCephOptions } from './store-flags.ts'

export const statusCommand: CliCommand = {
  command: 'status',
  describe:
    "health of the mirrors of a store (monitoring-plugin exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; the check's own errors — an option, --config, an unreadable store — are UNKNOWN on stdout)",
  builder: (y: Argv) =>
    withCephOptions(y)
      .option('store', { type: 'string', demandOption: true, describe: 'folder holding the mirrors, or ceph:POOL' })
      .option('max-age', { type: 'string', describe: 'a mirror whose last commit is older is CRITICAL (stale): 30m, 2h' })
      .option('config', { type: 'string', describe: "the receiver's config file: its RPO targets (rpo) judge each mirror's age in --output json" })
      .option('output', { alias: 'o', choices: ['human', 'json'] as const, default: 'human' as const }),
  async run(args, ctx) {
    const { runStatus } = await import('./status-run.ts')
    return await runStatus(args, ctx)
  },
  failure(message, ctx) {
    // the monitoring plugin convention: the first line of stdout says what is wrong, exit 3; a problem list on one line
    ctx.write(`GRAINLINE UNKNOWN - ${message.replace(/\s*\n\s*/g, '; ')}\n`)
    return 3
  },
}
