/**
 * The receiver's config file (`grainline receive --config FILE`) as one zod
 * schema: every key typed, bounded and documented here (docs/config/receiver.md
 * is generated from it by scripts/gen-config-reference.mjs), every problem
 * reported at once and named by its key (`receiver.json: rpo.vms["db-*"]: …`).
 */
import { resolve } from 'node:path'
import { z } from 'zod'
import { parseDuration } from '@grainline/protocol'
import { parseRetention, parseRetentionLimits } from './retention.ts'

/** What the generated reference says about a field (same fields as the agent's `doc`). */
export interface FieldDoc {
  readonly description: string
  readonly default?: string
  readonly type?: string
  readonly example?: string
}

/** Attach documentation to a schema (zod's global registry, read by the reference generator). */
export function doc<T extends z.ZodType>(schema: T, d: FieldDoc): T {
  return schema.meta({ ...d }) as T
}

/** Split "HOST:PORT" / "[v6]:PORT" / "PORT"; undefined when malformed. */
export function splitListen(listen: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(listen) ?? /^()()(\d{1,5})$/.exec(listen)
  const port = Number(m?.[3])
  if (m === null || !Number.isInteger(port) || port > 65535) return undefined
  return { host: m[1] || m[2] || '127.0.0.1', port }
}

const listenField = (description: string, d?: string) =>
  doc(
    z.string().transform((v, ctx) => {
      const a = splitListen(v)
      if (a === undefined) {
        ctx.addIssue({ code: 'custom', message: `${JSON.stringify(v)} is not HOST:PORT` })
        return z.NEVER
      }
      return a
    }),
    { description, type: '"HOST:PORT"', ...(d === undefined ? {} : { example: d }) },
  )

const durationMs = (what: string) =>
  z.union([z.string(), z.number()]).transform((v, ctx) => {
    try {
      const ms = parseDuration(v, what)
      if (ms <= 0) throw new Error('must be more than 0')
      return ms
    } catch {
      ctx.addIssue({ code: 'custom', message: `${JSON.stringify(v)} is not a duration above 0 (e.g. 15m, 1h, 24h; a bare number is seconds)` })
      return z.NEVER
    }
  })

/** A field read by one of retention.ts's parsers, which prefix their messages with the key (dropped: zod names the path). */
function parsedBy<T>(parse: (json: unknown, where: string) => T, key: string) {
  return z.unknown().transform((v, ctx) => {
    try {
      return parse(v, key)
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message.replace(`${key}: `, '') })
      return z.NEVER
    }
  })
}

const retentionField = parsedBy(parseRetention, 'retention')
const retentionLimitsField = parsedBy(parseRetentionLimits, 'retentionLimits')

const count = (description: string, d: string) => doc(z.int().min(0).optional(), { description, default: d })

/** Default RPO target of a VM without an entry in `rpo.vms`: 24 hours. */
export const DEFAULT_RPO_TARGET_MS = 24 * 3600 * 1000

/** The `rpo` section: recovery point objectives, per VM-name glob. */
export const rpoSchema = z.strictObject({
  target: doc(durationMs('rpo.target').optional(), {
    description: "A mirror's age (time since its last commit) is ok up to 75 % of its target, warning above that, critical above the target (the objective is missed) or when never committed.",
    type: 'duration',
    default: '"24h"',
  }),
  vms: doc(z.record(z.string().min(1), durationMs('rpo.vms')).optional(), {
    description: 'Targets by VM-name glob (`*`, `?`); the first matching glob wins over `target`.',
    type: 'object of duration',
    example: '{ "db-*": "1h" }',
  }),
})

/** Receiver config file keys, paths resolved against `baseDir` (the file's folder). */
export function receiverConfigSchema(ctx: { readonly baseDir: string }) {
  const path = (description: string, example?: string) =>
    doc(
      z
        .string()
        .min(1)
        .transform((v) => resolve(ctx.baseDir, v)),
      { description, type: 'path', ...(example === undefined ? {} : { example }) },
    )
  return z.strictObject({
    store: doc(
      z
        .string()
        .min(1)
        .transform((v) => (v.startsWith('ceph:') ? v : resolve(ctx.baseDir, v))),
      {
        description: 'The mirror store: a folder (created if missing), or `ceph:POOL` for RBD images in a Ceph pool (docs/CEPH.md). Required here or as `--store` (the flag wins).',
        type: 'path',
        example: '"/srv/grainline"',
      },
    ).optional(),
    cephConf: path('`ceph.conf` of the Ceph store (`--store ceph:POOL`).', '"/etc/ceph/ceph.conf"').optional(),
    cephId: doc(z.string().min(1).optional(), { description: 'Ceph client id (`client.ID`) of the Ceph store.', default: 'the Ceph client default (admin)' }),
    cephKeyring: path('Keyring of the Ceph client id.').optional(),
    cephLeaseSeconds: count('Lease of a VM lock on the Ceph store, seconds: a receiver whose host died frees its VMs after this long.', '30'),
    tokens: path('Tokens file: agents\' tokens (`{"tokens":[{name, token, vms}]}`) and dashboard viewers (`"role": "viewer"`). Required here or as `--tokens`.', '"tokens.json"').optional(),
    tokensFile: path('Same as `tokens`.').optional(),
    listen: listenField('Replication address (WebSocket, TLS with `tlsCert`/`tlsKey`).', '"0.0.0.0:7443"').optional(),
    host: doc(z.string().min(1).optional(), { description: 'Replication host, when `listen` is not given.', default: '"127.0.0.1"' }),
    port: doc(z.int().min(0).max(65535).optional(), { description: 'Replication port, when `listen` is not given (0: any free port).', default: '0' }),
    tlsCert: path('PEM certificate; with `tlsKey` the receiver speaks wss:// and its HTTP listener https://.').optional(),
    tlsKey: path('PEM private key of `tlsCert`.').optional(),
    insecure: doc(z.boolean().optional(), { description: 'Allow plain ws:// on a non-loopback address.', default: 'false' }),
    trivialMiB: count('Largest prefix (MiB) a trivial check may ask to digest.', '1024'),
    displaySuffix: doc(z.string().optional(), { description: "Appended to the mirror's displayName.", default: '" (grainline mirror)"' }),
    httpListen: listenField(
      'Serve the HTTP listener here: Prometheus metrics (`GET /metrics`), the dashboard (`/`) and its JSON API (`/api/v1/…`, viewer token). Off when absent. https:// when the receiver has a certificate.',
      '"127.0.0.1:9464"',
    ).optional(),
    metricsListen: listenField('Old name of `httpListen` (kept working).').optional(),
    metricsAuth: doc(z.enum(['open', 'viewer']).optional(), {
      description:
        '`GET /metrics` without a token (`open`, for scrapers on a trusted network) or only with a viewer token (`viewer`: Prometheus `authorization: {credentials_file: …}` sends it as Bearer; a session cookie works too). The metrics name every VM and its sizes.',
      default: '"open"',
    }),
    rpo: doc(rpoSchema.optional(), { description: 'Recovery point objectives shown on the dashboard and in its API.' }),
    retention: doc(retentionField.optional(), {
      description: 'Restore points every VM keeps: `{keep, maxAge, maxBytes, gfs}` with `gfs` as `"hourly=24,daily=7,weekly=4,monthly=12"` (any subset) (docs/POINTS.md).',
      type: 'retention policy',
      default: 'no points',
    }),
    retentionVms: doc(z.record(z.string().min(1), retentionField).optional(), {
      description: 'Retention by VM-name glob; the first matching glob wins over `retention`.',
      type: 'object of retention policy',
    }),
    retentionLimits: doc(retentionLimitsField.optional(), {
      description:
        "What a job's retention request (`replicate --retention`, SPEC §5.5) may ask: `{minKeep, maxKeep, maxAge, maxBytes}`. A request replaces the VM's policy with `keep` raised to `minKeep` and every rule lowered to its ceiling; only VMs that keep points honour requests.",
      type: 'retention limits',
      default: 'requests ignored',
      example: '{ "minKeep": 3, "maxKeep": 48, "maxAge": "90d", "maxBytes": "500G" }',
    }),
    maxConnections: count('Concurrent replication sessions; more get HTTP 503 before the upgrade.', '64'),
    maxSockets: count('TCP sockets at once on the replication port, counted before TLS.', '256'),
    maxExtentBytes: count('Largest extent payload accepted, bytes.', '16777216'),
    windowBytes: count('Unacknowledged bytes an agent may have in flight.', '67108864'),
    batchBytes: count('Payload bytes per durable batch (journal, write, fsync, ack).', '33554432'),
    batchIdleMs: count('Wait this long for more extents before flushing a partial batch, ms.', '5'),
    abandonAfterMs: doc(z.int().min(0).optional(), { description: 'At start-up, roll back interrupted cycles older than this (ms) instead of keeping them for resume.', default: 'keep' }),
    handshakeTimeoutMs: count('A TLS handshake must finish within this many ms.', '10000'),
    upgradeTimeoutMs: count('The WebSocket upgrade request must arrive within this many ms.', '10000'),
    helloTimeoutMs: count('Hello must arrive within this many ms of the upgrade.', '10000'),
    idleTimeoutMs: count(
      'A session that receives nothing for this long, not even a ping, is ended (E_TIMEOUT); agents ping when they have sent nothing for half their keepAlive (30 s by default): keep it above that.',
      '300000',
    ),
    lockWaitMs: count('How long a new session waits for a VM held by a closing one, ms.', '5000'),
    pingIntervalMs: count('Ping interval; a connection that misses a pong and has sent nothing since the last ping is terminated, ms.', '30000'),
  })
}

/** The parsed config file. */
export type ReceiverConfigFile = z.output<ReturnType<typeof receiverConfigSchema>>

/** One issue as `key: message` (`rpo.vms["db-*"]: "x" is not a duration …`; unknown keys named). */
export function configIssueText(issue: { readonly code: string; readonly path: readonly PropertyKey[]; readonly message: string; readonly keys?: readonly string[] }): string {
  let key = ''
  for (const p of issue.path) {
    if (typeof p === 'number') key += `[${p}]`
    else if (typeof p === 'string' && /^[A-Za-z_$][\w$]*$/.test(p)) key += key === '' ? p : `.${p}`
    else key += `[${JSON.stringify(String(p))}]`
  }
  if (issue.code === 'unrecognized_keys') return (issue.keys ?? []).map((k) => `${key === '' ? '' : `${key}.`}${k}: unknown setting`).join('; ')
  return `${key === '' ? '(file)' : key}: ${issue.message}`
}
