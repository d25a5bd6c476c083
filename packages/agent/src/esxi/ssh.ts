/**
 * The SSH layer of the esxi driver: one ssh2 connection per host, the host key
 * pinned by its SHA256 fingerprint (no trust on first use), commands run with
 * a timeout and an output bound, every command and its output logged at debug.
 */
import { readFile } from 'node:fs/promises'
import { Client, type ClientChannel, type SFTPWrapper } from 'ssh2'
import type { Logger } from 'pino'
import { EsxiError } from './errors.ts'
import { normalizeFingerprint, sshFingerprint } from './fingerprint.ts'

export { normalizeFingerprint, sshFingerprint }

/** How to reach one ESXi host. */
export interface EsxiSshConfig {
  /** host name or address */
  readonly host: string
  /** @default 22 */
  readonly port?: number
  /** @default "root" */
  readonly username?: string
  /** the private key (OpenSSH or PEM text); or give `privateKeyFile` */
  readonly privateKey?: string | Buffer
  /** path of the private key file, read at connect (for JSON job configs) */
  readonly privateKeyFile?: string
  /** passphrase of an encrypted private key */
  readonly passphrase?: string
  /**
   * The host key fingerprint(s) as OpenSSH prints them: `SHA256:<base64, no
   * padding>` (on the host: `ssh-keygen -lf` of each `/etc/ssh/ssh_host_*_key.pub`).
   * Which host key the server presents depends on the negotiated algorithm,
   * so list every key of the host, or the one the mismatch error names.
   * Required: a host presenting any other key is refused.
   */
  readonly hostKeyFingerprint: string | readonly string[]
  /** TCP + SSH handshake timeout. @default 20000 */
  readonly connectTimeoutMs?: number
  /** keepalive interval. @default 15000 */
  readonly keepaliveIntervalMs?: number
}

/** What a command returned. */
export interface ExecResult {
  readonly stdout: string
  readonly stderr: string
  /** exit code; null when the command died of a signal */
  readonly code: number | null
  readonly signal?: string
}

/** Options of {@link EsxiSsh.exec}. */
export interface ExecOptions {
  /** @default 60000 */
  readonly timeoutMs?: number
  readonly signal?: AbortSignal
  /** the VM the command is about, for log lines and errors */
  readonly vm?: string
  /** fail with E_OUTPUT_LIMIT beyond this many bytes of stdout + stderr. @default 8 MiB */
  readonly maxOutputBytes?: number
}

/** An SSH connection to one ESXi host. Create with {@link EsxiSsh.connect}. */
export class EsxiSsh {
  readonly host: string
  readonly #config: EsxiSshConfig
  readonly #log: Logger
  readonly #pinned: ReadonlySet<string>
  #client: Client | undefined
  /** a connection attempt in progress */
  #connecting: Promise<Client> | undefined
  /** the SFTP channel of `#client`, opened on first use */
  #sftp: { readonly client: Client; readonly channel: Promise<SFTPWrapper>; resolved?: SFTPWrapper } | undefined
  #closed = false

  private constructor(config: EsxiSshConfig, log: Logger, pinned: ReadonlySet<string>) {
    this.host = config.host
    this.#config = config
    this.#log = log
    this.#pinned = pinned
  }

  /**
   * Open the connection (the host key is checked before anything is sent).
   * @throws EsxiError E_CONFIG, E_HOST_KEY, E_SSH_AUTH, E_SSH_CONNECT, E_TIMEOUT, E_ABORTED
   */
  static async connect(config: EsxiSshConfig, components: { logger: Logger }, opts: { signal?: AbortSignal } = {}): Promise<EsxiSsh> {
    const list = typeof config.hostKeyFingerprint === 'string' ? [config.hostKeyFingerprint] : [...(config.hostKeyFingerprint ?? [])]
    if (list.length === 0) throw new EsxiError('E_CONFIG', 'esxi: hostKeyFingerprint is required (no trust on first use)', { host: config.host })
    const pinned = new Set(list.map(normalizeFingerprint))
    let key = config.privateKey
    if (key === undefined && config.privateKeyFile !== undefined) {
      try {
        key = await readFile(config.privateKeyFile)
      } catch (err) {
        throw new EsxiError('E_CONFIG', `esxi: cannot read privateKeyFile ${config.privateKeyFile}: ${(err as Error).message}`, { host: config.host, cause: err })
      }
    }
    if (key === undefined || key.length === 0) throw new EsxiError('E_CONFIG', 'esxi: no private key configured (privateKey or privateKeyFile)', { host: config.host })
    const ssh = new EsxiSsh({ ...config, privateKey: key }, components.logger.child({ esxiHost: config.host }), pinned)
    await ssh.#ensure(opts.signal)
    return ssh
  }

  /**
   * The live client, connecting (again) when there is none. Concurrent callers
   * (every outstanding SFTP read after a drop) share one connection attempt.
   */
  async #ensure(signal?: AbortSignal): Promise<Client> {
    if (this.#closed) throw new EsxiError('E_SSH_CONNECT', 'esxi: connection already closed', { host: this.host })
    if (this.#client !== undefined) return this.#client
    if (this.#connecting === undefined) {
      const p = this.#connect(signal)
      this.#connecting = p
      p.then(
        () => {
          if (this.#connecting === p) this.#connecting = undefined
        },
        () => {
          if (this.#connecting === p) this.#connecting = undefined
        },
      )
    }
    return await this.#connecting
  }

  async #connect(signal?: AbortSignal): Promise<Client> {
    signal?.throwIfAborted()
    const cfg = this.#config
    const client = new Client()
    let seen: string | undefined
    const timeoutMs = cfg.connectTimeoutMs ?? 20_000
    await new Promise<void>((resolve, reject) => {
      let settled = false
      const done = (err?: unknown): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        if (err === undefined) {
          resolve()
          return
        }
        client.removeAllListeners('ready')
        client.on('error', () => {})
        client.end()
        reject(err)
      }
      const onAbort = (): void => {
        done(new EsxiError('E_ABORTED', 'esxi: connect aborted', { host: this.host, cause: signal?.reason }))
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      const timer = setTimeout(() => {
        done(new EsxiError('E_TIMEOUT', `esxi: SSH connection not ready after ${timeoutMs} ms`, { host: this.host }))
      }, timeoutMs)
      client.once('ready', () => {
        done()
      })
      client.on('error', (err: Error & { level?: string }) => {
        if (seen !== undefined && !this.#pinned.has(seen)) {
          done(
            new EsxiError(
              'E_HOST_KEY',
              `esxi: HOST KEY MISMATCH for ${this.host}:${cfg.port ?? 22}: the host presented ${seen} but ${[...this.#pinned].join(' or ')} is pinned — refusing to connect (possible man-in-the-middle, or the host was reinstalled: check, then set hostKeyFingerprint in the esxi settings to the key the host presents)`,
              { host: this.host, cause: err },
            ),
          )
        } else if (err.level === 'client-authentication') {
          const user = cfg.username ?? 'root'
          const key = cfg.privateKeyFile === undefined ? 'the key given inline (privateKey)' : `the key of privateKeyFile ${cfg.privateKeyFile}`
          const pub = cfg.privateKeyFile === undefined ? 'its public key' : `its public key (ssh-keygen -y -f ${cfg.privateKeyFile})`
          done(
            new EsxiError(
              'E_SSH_AUTH',
              `esxi: ${this.host}:${cfg.port ?? 22} refused user ${JSON.stringify(user)} with ${key}: add ${pub} to /etc/ssh/keys-${user}/authorized_keys on the host (where ESXi keeps each user's keys), or correct username and the key in the esxi settings`,
              { host: this.host, cause: err },
            ),
          )
        } else {
          done(new EsxiError('E_SSH_CONNECT', `esxi: SSH connection to ${this.host}:${cfg.port ?? 22} failed: ${err.message}`, { host: this.host, cause: err }))
        }
      })
      client.on('close', () => {
        done(new EsxiError('E_SSH_CONNECT', `esxi: SSH connection to ${this.host}:${cfg.port ?? 22} closed during setup`, { host: this.host }))
      })
      try {
        client.connect({
          host: cfg.host,
          port: cfg.port ?? 22,
          username: cfg.username ?? 'root',
          privateKey: cfg.privateKey as string | Buffer,
          ...(cfg.passphrase === undefined ? {} : { passphrase: cfg.passphrase }),
          readyTimeout: timeoutMs,
          keepaliveInterval: cfg.keepaliveIntervalMs ?? 15_000,
          keepaliveCountMax: 4,
          hostVerifier: (key: Buffer): boolean => {
            seen = sshFingerprint(key)
            return this.#pinned.has(seen)
          },
        })
      } catch (err) {
        // ssh2 throws synchronously on an unparsable private key
        done(new EsxiError('E_CONFIG', `esxi: cannot use the configured private key: ${(err as Error).message}`, { host: this.host, cause: err }))
      }
    })
    this.#log.debug({ fingerprint: seen }, 'esxi ssh connected')
    client.on('error', (err) => {
      this.#log.warn({ err }, 'esxi ssh connection error')
    })
    client.on('close', () => {
      if (this.#client === client) this.#client = undefined
    })
    if (this.#closed) {
      // closed while connecting: nobody will close this one
      client.end()
      throw new EsxiError('E_SSH_CONNECT', 'esxi: connection closed', { host: this.host })
    }
    this.#client = client
    return client
  }

  /**
   * Run one command line (already quoted for the ESXi shell). Resolves with
   * the exit code and output whatever the code; rejects on transport errors,
   * timeout, abort or too much output.
   * @throws EsxiError E_TIMEOUT, E_ABORTED, E_OUTPUT_LIMIT, E_SSH_CONNECT
   */
  async exec(command: string, opts: ExecOptions = {}): Promise<ExecResult> {
    const timeoutMs = opts.timeoutMs ?? 60_000
    const maxOutput = opts.maxOutputBytes ?? 8 * 1024 * 1024
    const ctx = { host: this.host, command, ...(opts.vm === undefined ? {} : { vm: opts.vm }) }
    const client = await this.#ensure(opts.signal)
    const started = Date.now()
    this.#log.debug({ command, vm: opts.vm }, 'esxi command')
    const result = await new Promise<ExecResult>((resolve, reject) => {
      let channel: ClientChannel | undefined
      let settled = false
      const out: Buffer[] = []
      const err: Buffer[] = []
      let bytes = 0
      const finish = (e: EsxiError | undefined, r?: ExecResult): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        opts.signal?.removeEventListener('abort', onAbort)
        if (e !== undefined) {
          if (channel !== undefined) {
            try {
              channel.signal('KILL')
            } catch {}
            channel.close()
          }
          this.#log.debug(
            { command, vm: opts.vm, code: e.code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), ms: Date.now() - started },
            'esxi command failed',
          )
          reject(e)
        } else resolve(r as ExecResult)
      }
      const onAbort = (): void => {
        finish(new EsxiError('E_ABORTED', 'esxi: command aborted', { ...ctx, cause: opts.signal?.reason }))
      }
      if (opts.signal?.aborted === true) {
        onAbort()
        return
      }
      opts.signal?.addEventListener('abort', onAbort, { once: true })
      const timer = setTimeout(() => {
        finish(new EsxiError('E_TIMEOUT', `esxi: command did not finish within ${timeoutMs} ms`, { ...ctx, esxiMessage: Buffer.concat([...out, ...err]).toString('utf8') }))
      }, timeoutMs)
      const take =
        (list: Buffer[]) =>
        (chunk: Buffer): void => {
          bytes += chunk.length
          if (bytes > maxOutput) {
            finish(new EsxiError('E_OUTPUT_LIMIT', `esxi: command printed more than ${maxOutput} bytes`, ctx))
            return
          }
          list.push(chunk)
        }
      client.exec(command, (e, ch) => {
        if (e !== undefined && e !== null) {
          finish(new EsxiError('E_SSH_CONNECT', `esxi: cannot start command: ${e.message}`, { ...ctx, cause: e }))
          return
        }
        channel = ch
        if (settled) {
          try {
            ch.signal('KILL')
          } catch {}
          ch.close()
          return
        }
        let code: number | null = null
        let sig: string | undefined
        ch.on('data', take(out))
        ch.stderr.on('data', take(err))
        ch.on('exit', (c: number | null, s?: string) => {
          code = c
          if (s !== undefined) sig = s
        })
        ch.on('close', () => {
          finish(undefined, {
            stdout: Buffer.concat(out).toString('utf8'),
            stderr: Buffer.concat(err).toString('utf8'),
            code,
            ...(sig === undefined ? {} : { signal: sig }),
          })
        })
      })
    })
    this.#log.debug({ command, vm: opts.vm, code: result.code, signal: result.signal, stdout: result.stdout, stderr: result.stderr, ms: Date.now() - started }, 'esxi command done')
    return result
  }

  /**
   * The SFTP channel on this connection (opened on first use; after the
   * connection dropped, a new connection and channel). Reads the datastores
   * of `{ "access": "sftp" }` (sftp-files.ts). A channel that does not open
   * within `openTimeoutMs` (the host starts the subsystem, which never
   * answers) drops the connection it was opening on, and every waiter gets
   * `E_TIMEOUT`. `signal` stops a connection attempt; the wait for the
   * channel is the caller's to race with its stop.
   * @throws EsxiError E_SSH_CONNECT (the channel was refused), E_TIMEOUT, and what connecting throws
   */
  async sftp(opts: { signal?: AbortSignal; openTimeoutMs?: number } = {}): Promise<SFTPWrapper> {
    const client = await this.#ensure(opts.signal)
    let entry = this.#sftp
    if (entry === undefined || entry.client !== client) {
      const timeoutMs = opts.openTimeoutMs ?? 60_000
      let timer: NodeJS.Timeout | undefined
      const channel = new Promise<SFTPWrapper>((resolve, reject) => {
        timer = setTimeout(() => {
          reject(new EsxiError('E_TIMEOUT', `esxi: the host opened no SFTP channel within ${timeoutMs} ms (a hung sftp-server?)`, { host: this.host }))
          // the subsystem that never answered goes with its connection
          if (this.#sftp === created) this.dropConnection(undefined)
        }, timeoutMs)
        try {
          client.sftp((err, sftp) => {
            clearTimeout(timer)
            if (err !== undefined && err !== null) reject(new EsxiError('E_SSH_CONNECT', `esxi: the host refused the SFTP subsystem: ${err.message}`, { host: this.host, cause: err }))
            else resolve(sftp)
          })
        } catch (err) {
          clearTimeout(timer)
          reject(new EsxiError('E_SSH_CONNECT', `esxi: cannot open an SFTP channel: ${(err as Error).message}`, { host: this.host, cause: err }))
        }
      })
      const created: { client: Client; channel: Promise<SFTPWrapper>; resolved?: SFTPWrapper } = { client, channel }
      entry = created
      this.#sftp = created
      const forget = (): void => {
        if (this.#sftp === created) this.#sftp = undefined
      }
      channel.then((s) => {
        created.resolved = s
        s.once('close', forget)
      }, forget)
    }
    // the caller races this with its stop (sftp-files.ts): no listener per waiter on the run's signal here
    return await entry.channel
  }

  /**
   * Forget an SFTP channel that failed (a transport error): the next
   * {@link sftp} opens a new one, on a new connection when this one is gone.
   */
  invalidateSftp(channel: SFTPWrapper): void {
    if (this.#sftp?.resolved !== channel) return
    this.#sftp = undefined
    try {
      channel.end()
    } catch {}
  }

  /**
   * Drop the connection a channel that stopped answering belongs to (or,
   * `channel` undefined, the one whose channel is still opening): destroyed
   * at once, so nothing more arrives on it — no late SFTP answer, and the
   * host frees its sessions (a hung sftp-server holds one). Another caller
   * of the same channel finds it already dropped: a newer connection is
   * kept. The next {@link sftp} or {@link exec} connects anew.
   */
  dropConnection(channel: SFTPWrapper | undefined): void {
    const entry = this.#sftp
    if (channel !== undefined && entry?.resolved !== channel) return
    const client = entry?.client ?? this.#client
    this.#sftp = undefined
    if (client === undefined) return
    if (this.#client === client) this.#client = undefined
    this.#log.warn({}, 'esxi ssh connection dropped: an SFTP request got no answer in time')
    client.destroy()
  }

  /** Close the connection (safe to call twice). */
  async close(): Promise<void> {
    this.#closed = true
    const c = this.#client
    this.#client = undefined
    if (c === undefined) return
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, 2000)
      c.once('close', () => {
        clearTimeout(t)
        resolve()
      })
      c.end()
    })
  }
}
