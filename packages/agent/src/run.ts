/**
 * The narrow entry `@grainline/agent/run`: what `grainline replicate` needs to
 * load and run a job. Unlike the index it does not load the esxi driver and
 * ssh2 (loaded when a job's VM uses that driver), nor the sample-VM and
 * failover helpers: a timer-started local-driver run pays for none of them.
 */
export { AgentError } from './errors.ts'
export { loadJob } from './job/load-job.ts'
export type { Job } from './job/load-job.ts'
export { runJob } from './job-runner.ts'
export { formatReport } from './report.ts'
export type { ReplicationReport } from './report.ts'
export { tuneAgentProcess } from './process-tuning.ts'
export { TtyProgressView } from './progress-tty.ts'
