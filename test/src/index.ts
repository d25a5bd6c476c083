export { repoRoot, sharedDir, receiverMain, cliBin, startReceiver, runCli, qemuRaw, qemuMap, firstDifference, startCuttingProxy } from './harness.ts'
export type { ReceiverProcess, StartReceiverOptions, CliResult, CuttingProxy } from './harness.ts'
export { startSite, replicateCli, scratchDir } from './fixture.ts'
export type { Site, RunReport } from './fixture.ts'
