export { repoRoot, sharedDir, receiverMain, cliBin, startReceiver, runCli, qemuRaw, qemuMap, firstDifference, startCuttingProxy } from "./harness.ts"
export type { ReceiverProcess, StartReceiverOptions, CliResult, CuttingProxy } from "./harness.ts"
