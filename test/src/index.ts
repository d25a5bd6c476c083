export { startSite, runCli, replicateCli, inflightResumeSeq } from './fixture.ts'
export type { Site, RunReport } from './fixture.ts'
