export { startSite, runCli, replicateCli, inflightResumeSeq, expectedView, frozenView } from './fixture.ts'
export type { Site, RunReport } from './fixture.ts'
export { httpPort, promSample } from './http-fixture.ts'
