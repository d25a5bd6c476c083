/**
 * Children that die with the receiver: a helper spawned for store work (a
 * base point's `cp`) must not outlive a receiver that is killed, else it
 * goes on reading and writing the store under a receiver that restarted
 * and redid the work — minutes of I/O and a file's worth of space held by
 * an unlinked inode. Linux's parent-death signal does it: `setpriv
 * --pdeathsig KILL` (util-linux) sets it, then runs the command. Where
 * setpriv is missing or too old to know the option, the command runs as
 * before (checked once per process, at the receiver's start-up, which
 * warns then).
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process'

let setprivWorks: boolean | undefined

/** Whether `setpriv --pdeathsig KILL` runs here (once per process). */
export function pdeathsigAvailable(): boolean {
  if (setprivWorks === undefined) {
    const r = spawnSync('setpriv', ['--pdeathsig', 'KILL', '--', 'true'], { stdio: 'ignore', timeout: 10_000 })
    setprivWorks = r.error === undefined && r.status === 0
  }
  return setprivWorks
}

/**
 * `spawn(cmd, args, opts)`, the child killed (SIGKILL) when the receiver
 * dies, however it dies; its stdio, descriptors passed included, are the
 * same (setpriv execs the command in place).
 */
export function spawnTied(cmd: string, args: readonly string[], opts: SpawnOptions): ChildProcess {
  return pdeathsigAvailable() ? spawn('setpriv', ['--pdeathsig', 'KILL', '--', cmd, ...args], opts) : spawn(cmd, args, opts)
}
