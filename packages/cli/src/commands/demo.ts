/**
 * `grainline demo`: its flags. What it does is in demo-run.ts, imported only
 * when the command runs, so that `--help`, `--version` and the other
 * commands do not load its dependencies.
 */
import type { Argv } from 'yargs'
import { DeltaFormats } from '@grainline/agent/choices'
import type { CliCommand } from '../command.ts'

export const demoCommand: CliCommand = {
  command: 'demo',
  describe: 'the main job on an embedded default: sample VM, local TLS receiver, seed, 3 incremental cycles with a writing guest, certify',
  builder: (y: Argv) =>
    y
      .option('dir', { type: 'string', default: 'demo-run', describe: 'working folder (recreated)' })
      .option('cycles', { type: 'number', default: 3, describe: 'incremental cycles after the seed' })
      .option('disk-size', { type: 'string', default: '2G', describe: 'size of the first disk (the second is half)' })
      .option('guest-write', { type: 'string', default: '48M', describe: 'bytes the guest writes per disk per cycle' })
      .option('delta-format', { choices: DeltaFormats, default: 'sesparse' as const }),
  async run(args, ctx) {
    const { runDemoCommand } = await import('./demo-run.ts')
    return await runDemoCommand(args, ctx)
  },
}
