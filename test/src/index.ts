export { startSite, runCli, replicateCli, inflightResumeSeq, expectedView } from './fixture.ts'
export type { Site, RunReport } from './fixture.ts'
