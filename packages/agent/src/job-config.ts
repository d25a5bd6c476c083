/**
 * `loadJobConfig(file)`: a job file as one `ReplicateInit` per VM — the
 * file's VMs after complete validation (job/load-job.ts). Kept for callers
 * that run the VMs themselves; `loadJob` also gives the job-level settings.
 */
import { loadJob, type VmJob } from './job/load-job.ts'

/**
 * Read and validate a job file into one init per VM (tokens read from their files).
 * @throws ConfigError (AgentError `E_CONFIG`) listing every problem
 */
export async function loadJobConfig(file: string): Promise<VmJob[]> {
  return [...(await loadJob({ file })).vms]
}
