/**
 * Test harness for the esxi driver: a real OpenSSH server on loopback whose
 * sessions run the vim-cmd stand-in (scripts/esxi-standin/) against a
 * datastore folder in a temp dir.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { mkdtemp, writeFile, mkdir, readFile, readdir, rm, chmod } from 'node:fs/promises'
import { appendFileSync, readFileSync, rmSync } from 'node:fs'
import { createServer, connect } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..')
export const standinDir = path.join(repoRoot, 'scripts/esxi-standin')

export interface StandinVm {
  id: string
  name: string
  vmx: string
  guest?: string
  version?: string
  annotation?: string
  deltaFormat?: 'sesparse' | 'vmfssparse'
  fail?: Record<string, string>
  hang?: Record<string, number>
  skipConsolidation?: boolean
  absoluteHints?: boolean
  quietOutput?: boolean
  applyDelayMs?: number
  applyGate?: string
  consolidationNeeded?: boolean
  noDeltaFor?: string[]
}
export interface StandinState {
  datastores: Record<string, { path: string; uuid?: string }>
  vms: StandinVm[]
}

export interface SshHarness {
  dir: string
  port: number
  user: string
  hostKeyFingerprint: string
  userKey: string
  otherKey: string
  statePath: string
  datastore: string
  readState(): Promise<StandinState>
  writeState(s: StandinState): Promise<void>
  /** SIGKILL the per-connection sshd processes (children of our sshd): every SSH connection drops */
  dropConnections(): number
  /** send `signal` to every sftp-server under our sshd (SIGSTOP: a hung datastore while SSH stays alive); the pids */
  signalSftpServers(signal: NodeJS.Signals): number[]
  /** from now on, SFTP subsystems start but never answer (`true`), or work again (`false`) */
  hangSftp(on: boolean): Promise<void>
  /** SFTP subsystems started while hanging was on */
  hungSftpStarts(): Promise<number>
  stop(): Promise<void>
}

async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const a = srv.address()
      srv.close(() => {
        resolve(typeof a === 'object' && a !== null ? a.port : 0)
      })
    })
  })
}

async function waitForPort(port: number, proc: ChildProcess, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 15_000
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`sshd exited with ${proc.exitCode}: ${stderr()}`)
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1')
      s.once('connect', () => {
        s.destroy()
        resolve(true)
      })
      s.once('error', () => {
        resolve(false)
      })
    })
    if (ok) return
    if (Date.now() > deadline) throw new Error(`sshd did not listen on ${port}: ${stderr()}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** Start sshd on a free loopback port with fresh host and user keys. */
export async function startSshHarness(): Promise<SshHarness> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'grainline-esxi-'))
  const keygen = (file: string): void => {
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', path.basename(file), '-f', path.join(dir, file)])
  }
  keygen('host_key')
  keygen('user_key')
  keygen('other_key')
  // the fingerprint as OpenSSH computes it: the independent oracle for ours
  const fp = /(SHA256:[A-Za-z0-9+/]+)/.exec(execFileSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', path.join(dir, 'host_key.pub')]).toString())?.[1]
  if (fp === undefined) throw new Error('ssh-keygen printed no fingerprint')
  await writeFile(path.join(dir, 'authorized_keys'), await readFile(path.join(dir, 'user_key.pub')))
  const datastore = path.join(dir, 'datastore1')
  await mkdir(datastore)
  const statePath = path.join(dir, 'standin-state.json')
  const state: StandinState = { datastores: { datastore1: { path: datastore, uuid: '5f1a2b3c-4d5e6f70-8192-a1b2c3d4e5f6' } }, vms: [] }
  await writeFile(statePath, JSON.stringify(state, null, 2))
  const session = path.join(dir, 'session.sh')
  // ForceCommand: every session runs the requested command line with a real
  // POSIX shell, with the stand-in first on PATH (so `vim-cmd` resolves to it)
  await writeFile(
    session,
    [
      '#!/bin/sh',
      `PATH=${JSON.stringify(standinDir)}:/usr/local/bin:/usr/bin:/bin; export PATH`,
      `ESXI_STANDIN_STATE=${JSON.stringify(statePath)}; export ESXI_STANDIN_STATE`,
      `ESXI_STANDIN_NODE=${JSON.stringify(process.execPath)}; export ESXI_STANDIN_NODE`,
      // hangSftp(true): the SFTP subsystem starts but never speaks (a host whose sftp-server hangs at once)
      `case "$SSH_ORIGINAL_COMMAND" in *sftp-server*) if [ -e ${JSON.stringify(path.join(dir, 'hang-sftp'))} ]; then echo hung >> ${JSON.stringify(path.join(dir, 'hung-sftp.log'))}; exec sleep 120; fi;; esac`,
      'exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"',
      '',
    ].join('\n'),
  )
  await chmod(session, 0o755)
  const port = await freePort()
  const cfg = path.join(dir, 'sshd_config')
  await writeFile(
    cfg,
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${path.join(dir, 'host_key')}`,
      `PidFile ${path.join(dir, 'sshd.pid')}`,
      'UsePAM no',
      'PermitRootLogin prohibit-password',
      'PubkeyAuthentication yes',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
      'StrictModes no',
      `ForceCommand ${session}`,
      // SFTP as ESXi's sshd offers it; read-only (-R): the driver must never write a source file
      'Subsystem sftp /usr/lib/openssh/sftp-server -R',
      `LogLevel ${process.env.SSHD_LOG_FILE !== undefined ? 'DEBUG' : 'ERROR'}`,
      '',
    ].join('\n'),
  )
  // sshd's privilege separation directory; creating it needs root (CI runs as
  // root); otherwise it must exist already, and sshd says so if it does not
  await mkdir('/run/sshd', { recursive: true }).catch(() => {})
  const proc = spawn('/usr/sbin/sshd', ['-D', '-e', '-f', cfg], { stdio: ['ignore', 'ignore', 'pipe'] })
  let errText = ''
  proc.stderr?.on('data', (b: Buffer) => {
    errText += b.toString()
    if (process.env.SSHD_LOG_FILE !== undefined) appendFileSync(process.env.SSHD_LOG_FILE, b)
  })
  await waitForPort(port, proc, () => errText)
  return {
    dir,
    port,
    user: os.userInfo().username,
    hostKeyFingerprint: fp,
    userKey: await readFile(path.join(dir, 'user_key'), 'utf8'),
    otherKey: await readFile(path.join(dir, 'other_key'), 'utf8'),
    statePath,
    datastore,
    readState: async () => JSON.parse(await readFile(statePath, 'utf8')) as StandinState,
    writeState: async (s) => {
      await writeFile(statePath, JSON.stringify(s, null, 2))
    },
    dropConnections: () => {
      const pids = execFileSync('ps', ['-o', 'pid=', '--ppid', String(proc.pid)])
        .toString()
        .split('\n')
        .map((l) => Number(l.trim()))
        .filter((n) => n > 0)
      for (const pid of pids) process.kill(pid, 'SIGKILL')
      return pids.length
    },
    signalSftpServers: (signal) => {
      const rows = execFileSync('ps', ['-e', '-o', 'pid=,ppid=,comm='])
        .toString()
        .split('\n')
        .map((l) => l.trim().split(/\s+/))
        .filter((r) => r.length >= 3)
        .map(([pid, ppid, comm]) => ({ pid: Number(pid), ppid: Number(ppid), comm: comm as string }))
      const ours = new Set([proc.pid as number])
      // descendants of our sshd (rows are in pid order, which parents need not precede: repeat until stable)
      for (let grew = true; grew; ) {
        grew = false
        for (const r of rows) {
          if (!ours.has(r.pid) && ours.has(r.ppid)) {
            ours.add(r.pid)
            grew = true
          }
        }
      }
      const pids = rows.filter((r) => ours.has(r.pid) && r.comm.startsWith('sftp-server')).map((r) => r.pid)
      for (const pid of pids) process.kill(pid, signal)
      return pids
    },
    hangSftp: async (on) => {
      if (on) await writeFile(path.join(dir, 'hang-sftp'), '')
      else await rm(path.join(dir, 'hang-sftp'), { force: true })
    },
    hungSftpStarts: async () => {
      const text = await readFile(path.join(dir, 'hung-sftp.log'), 'utf8').catch(() => '')
      return text.split('\n').filter((l) => l === 'hung').length
    },
    stop: async () => {
      if (proc.exitCode === null) {
        const exited = new Promise((resolve) => proc.once('exit', resolve))
        proc.kill('SIGTERM')
        await exited
      }
      await rm(dir, { recursive: true, force: true })
    },
  }
}

/**
 * `qemu-img convert -O raw` of a descriptor chain (the independent oracle).
 * Parent hints written as `/vmfs/volumes/<ds>/...` are mapped to local paths
 * and handed to qemu as explicit `backing` nodes, as a mount would.
 */
export function qemuRaw(descriptor: string, pathMap: Record<string, string>, scratchDir: string): Buffer {
  const spec = (file: string, depth: number): Record<string, unknown> => {
    if (depth > 64) throw new Error('chain too deep')
    const o: Record<string, unknown> = { driver: 'vmdk', file: { driver: 'file', filename: file } }
    const text = readFileSync(file).subarray(0, 65536).toString('latin1')
    const hint = /^parentFileNameHint="([^"]*)"/m.exec(text)?.[1]
    if (hint !== undefined && hint !== '') {
      let p = hint
      for (const [k, v] of Object.entries(pathMap)) if (hint.startsWith(k + '/')) p = v + hint.slice(k.length)
      o.backing = spec(path.resolve(path.dirname(file), p), depth + 1)
    }
    return o
  }
  const out = path.join(scratchDir, `qemu-${process.pid}-${Math.random().toString(16).slice(2)}.raw`)
  execFileSync('qemu-img', ['convert', '-O', 'raw', `json:${JSON.stringify(spec(path.resolve(descriptor), 0))}`, out])
  try {
    return readFileSync(out)
  } finally {
    rmSync(out, { force: true })
  }
}

/**
 * The mirror's flat file of a source disk (base file name `stem.vmdk`) in the
 * receiver store `<harness dir>/store`: exactly one must exist.
 */
export async function mirrorFlat(h: { readonly dir: string }, stem: string): Promise<string> {
  const found: string[] = []
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name)
      if (e.isDirectory()) await walk(p)
      else if (e.name === `${stem}-flat.vmdk`) found.push(p)
    }
  }
  await walk(path.join(h.dir, 'store'))
  if (found.length !== 1) throw new Error(`mirror of ${stem}: found ${JSON.stringify(found)}`)
  return found[0] as string
}
