/**
 * The reference of every settings file format, generated from the schemas
 * that validate them (docs/config/*.md; `scripts/gen-config-reference.mjs`
 * writes them, a test keeps them equal). A schema's fields carry their words
 * in zod's registry (`doc()` in @grainline/agent); types, choices, ranges and
 * required-ness come from the schema itself.
 */
import { z } from 'zod'
import { emailSchema, esxiSettingsSchema, jobShape, vmEntrySchema, vmOptionsSchema, webhookSchema } from '@grainline/agent'
import { receiverConfigSchema } from '@grainline/receiver'

/** One generated file. */
export interface ConfigFormat {
  /** file name under docs/config/ */
  readonly file: string
  readonly title: string
  /** paragraphs before the tables */
  readonly intro: string
  readonly sections: ReadonlyArray<{ readonly title: string; readonly intro?: string; readonly schema: z.ZodType; readonly prefix?: string }>
}

interface Meta {
  description?: string
  default?: string
  type?: string
  example?: string
  hidden?: boolean
}
type Def = { type: string; [k: string]: unknown }

const defOf = (s: z.ZodType): Def => (s as unknown as { _zod: { def: Def } })._zod.def
const metaOf = (s: z.ZodType): Meta => (z.globalRegistry.get(s) ?? {}) as Meta

/** Walk wrappers (optional, pipe, default) collecting meta, to the schema that says what the value is. */
function unwrap(s: z.ZodType): { core: z.ZodType; meta: Meta; optional: boolean } {
  let meta: Meta = {}
  let optional = false
  let cur = s
  for (let n = 0; n < 20; n++) {
    meta = { ...metaOf(cur), ...meta }
    const d = defOf(cur)
    if (d.type === 'optional' || d.type === 'default' || d.type === 'nullable') {
      optional = true
      cur = d['innerType'] as z.ZodType
      continue
    }
    if (d.type === 'pipe') {
      cur = d['in'] as z.ZodType
      continue
    }
    if (d.type === 'lazy') {
      cur = (d['getter'] as () => z.ZodType)()
      continue
    }
    break
  }
  return { core: cur, meta, optional }
}

function checksOf(d: Def): Array<{ check: string; value?: number; minimum?: number; maximum?: number; inclusive?: boolean }> {
  const checks = d['checks'] as Array<{ _zod: { def: { check: string; value?: number; minimum?: number; maximum?: number; inclusive?: boolean } } }> | undefined
  return (checks ?? []).map((c) => c._zod.def)
}

/** The type of a value in words. */
function typeText(s: z.ZodType): string {
  const { core, meta } = unwrap(s)
  if (meta.type !== undefined) return meta.type
  const d = defOf(core)
  switch (d.type) {
    case 'string':
      return d['format'] === 'url' ? 'URL' : 'string'
    case 'number': {
      const c = checksOf(d)
      const lo = c.find((x) => x.check === 'greater_than')?.value
      const hi = c.find((x) => x.check === 'less_than')?.value
      const base = d['format'] === 'safeint' ? 'integer' : 'number'
      return lo !== undefined && hi !== undefined ? `${base} ${lo}–${hi}` : lo !== undefined ? `${base} ≥ ${lo}` : base
    }
    case 'boolean':
      return 'boolean'
    case 'enum':
      return Object.values(d['entries'] as Record<string, string>)
        .map((v) => `\`"${v}"\``)
        .join(', ')
    case 'literal':
      return (d['values'] as unknown[]).map((v) => `\`${JSON.stringify(v)}\``).join(', ')
    case 'array':
      return `array of ${typeText(d['element'] as z.ZodType)}`
    case 'object':
      return 'object'
    case 'record':
      return `object of ${typeText(d['valueType'] as z.ZodType)}`
    case 'union':
      return (d['options'] as z.ZodType[]).map(typeText).join(' or ')
    default:
      return d.type
  }
}

const cell = (s: string): string => s.replace(/\|/g, '\\|').replace(/\n/g, ' ')

/** Rows `| key | type | required/default | description |` for an object schema, nested objects flattened (`email.smtp.host`). */
function rows(schema: z.ZodType, prefix: string): string[] {
  const { core } = unwrap(schema)
  const d = defOf(core)
  if (d.type !== 'object') throw new Error(`not an object schema: ${d.type}`)
  const out: string[] = []
  for (const [key, field] of Object.entries(d['shape'] as Record<string, z.ZodType>)) {
    const u = unwrap(field)
    if (u.meta.hidden === true) continue
    const path = `${prefix}${key}`
    const fd = defOf(u.core)
    const req = u.optional ? (u.meta.default !== undefined ? `default ${u.meta.default}` : 'optional') : '**required**'
    const desc = `${u.meta.description ?? ''}${u.meta.example !== undefined ? ` Example: \`${u.meta.example}\`.` : ''}`
    out.push(`| \`${path}\` | ${cell(typeText(field))} | ${cell(req)} | ${cell(desc)} |`)
    if (fd.type === 'object' && u.meta.type === undefined) out.push(...rows(u.core, `${path}.`))
    if (fd.type === 'array') {
      const el = unwrap(fd['element'] as z.ZodType).core
      if (defOf(el).type === 'object') out.push(...rows(el, `${path}[].`))
    }
  }
  return out
}

/** Render one format's reference as Markdown. */
export function renderConfigReference(f: ConfigFormat): string {
  const parts = [`# ${f.title}`, '', '<!-- generated by scripts/gen-config-reference.mjs from the schemas that validate this file; do not edit -->', '', f.intro.trim(), '']
  for (const s of f.sections) {
    parts.push(`## ${s.title}`, '')
    if (s.intro !== undefined) parts.push(s.intro.trim(), '')
    parts.push('| key | type | | meaning |', '| --- | --- | --- | --- |', ...rows(s.schema, s.prefix ?? ''), '')
  }
  return parts.join('\n')
}

const ctx = { baseDir: '/' }

/** Every settings file format grainline reads. */
export const CONFIG_FORMATS: readonly ConfigFormat[] = [
  {
    file: 'job.md',
    title: 'Job file (`grainline replicate --job FILE`)',
    intro: `
Several VMs replicated by one run. Every value is checked before the first
snapshot or connection, and every problem is reported at once, named by its
key (\`job.vms[2].certify: expected one of md5|sha1|sha256|xxh64|none\`).
Relative paths resolve against the job file's folder. Sizes (\`16M\`),
rates (\`20M\` = 20 MiB/s) and durations (\`30s\`, \`15m\`, \`2h\`; a bare
number is seconds) are written as in the command-line flags, which override
the file (docs/CLI.md).

\`\`\`json
{ "to": "wss://dr.example.net:7443", "tokenFile": "proxy-a.token", "caFile": "receiver.crt",
  "parallel": 4, "bwlimit": "20M", "defaults": { "certify": "xxh64" },
  "vms": ["/vmfs/volumes/ds1/web 01/web 01.vmx", { "vm": "db01", "driver": "esxi", "esxi": "esxi.json", "certify": "sha256" }],
  "email": { "to": "ops@example.net", "from": "grainline@example.net", "on": ["failure"],
             "smtp": { "host": "smtp.example.net", "user": "grainline", "passwordFile": "smtp.password" } },
  "webhooks": [ { "url": "https://hooks.example.net/grainline", "secretFile": "webhook.secret" } ] }
\`\`\``,
    sections: [
      { title: 'Job keys', schema: z.strictObject(jobShape(ctx)) },
      {
        title: 'Per-VM options',
        intro: 'At the top of the file (for every VM), in `defaults`, or in a `vms[]` entry; the most specific wins, and a flag wins over all.',
        schema: vmOptionsSchema(ctx),
      },
      { title: '`vms[]` entries', intro: 'A string names the VM alone; an object names it (`vm`) with per-VM options.', schema: z.strictObject({ vm: vmEntrySchema(ctx).shape.vm }), prefix: 'vms[].' },
      {
        title: 'E-mail (`email`)',
        intro:
          'An HTML and a text part per run; the subject says OK, WARNING (every VM committed, one needs a look: restore points the receiver dropped — the warnings are listed with what to do) or FAILED, and which VMs failed or warned.',
        schema: emailSchema(ctx),
        prefix: 'email.',
      },
      {
        title: 'Webhooks (`webhooks[]`)',
        intro:
          'A JSON POST of `{ event, host, software, report }`: `event` is `run.succeeded`, `run.warning` (every VM committed, one needs a look: its `report.vms[].warnings`, e.g. `W_POINTS_DROPPED`) or `run.failed`. Headers: `X-Grainline-Event` (the event), `X-Grainline-Delivery` (one id for every attempt of a delivery: drop duplicates by it) and `X-Grainline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` — check the HMAC over the raw body and refuse a `t` more than a few minutes old. Network errors, timeouts, 5xx and 429 are retried with back-off (1 s, 2 s, 4 s … at most 30 s); any other answer is final. The run\'s summary says how each delivery went: `NOT SENT webhook to URL after 5 attempts in 31.2 s: HTTP 502` (a delivery that needed a retry: `sent webhook to URL after 2 attempts in 1.0 s`); the report\'s `notifications[]` has `attempts` and `durationMs`, and so has the log line `webhook not delivered`.',
        schema: webhookSchema(ctx),
        prefix: 'webhooks[].',
      },
    ],
  },
  {
    file: 'esxi.md',
    title: 'esxi driver settings (`--esxi-config FILE`, or `esxi` in a job file)',
    intro: `
How the agent reaches one ESXi host (SSH, the host key pinned) and where it
reads its datastores. Relative paths resolve against the file's folder. See
packages/agent/docs/esxi.md for what the driver does with them.

\`\`\`json
{ "ssh": { "host": "esx01.example.net", "username": "root", "privateKeyFile": "esx01.key",
           "hostKeyFingerprint": ["SHA256:…", "SHA256:…"] },
  "datastores": { "datastore1": { "localPath": "/mnt/esx01/datastore1", "uuid": "5f1a2b3c-…" } } }
\`\`\``,
    sections: [{ title: 'Keys', schema: esxiSettingsSchema(ctx) }],
  },
  {
    file: 'receiver.md',
    title: 'Receiver config file (`grainline receive --config FILE`)',
    intro: `
The settings of a receiver at the DR site. Every value is checked at start,
every problem reported at once and named by its key
(\`receiver.json: rpo.vms["db-*"]: "soon" is not a duration …\`). Relative
paths resolve against the file's folder; command-line flags win over the
file (docs/CLI.md). Durations are written \`30s\`, \`15m\`, \`2h\` (a bare
number is seconds).

The tokens file lists the agents' tokens and the dashboard's viewers:
\`{"tokens": [{"name": "proxy-a", "token": "…", "vms": ["web-*"]},
{"name": "noc", "token": "…", "role": "viewer"}]}\` — a viewer token opens
the dashboard and its API only (a viewer's \`vms\` globs, default all, limit
what it sees); an agent's token gets 403 there, and a viewer's token is
refused on the replication port.

\`\`\`json
{ "listen": "0.0.0.0:7443", "store": "/srv/grainline", "tokens": "tokens.json",
  "tlsCert": "receiver.crt", "tlsKey": "receiver.key",
  "httpListen": "10.0.0.5:9464",
  "rpo": { "target": "24h", "vms": { "db-*": "1h" } },
  "retention": { "keep": 7, "gfs": { "daily": 7, "weekly": 4 } } }
\`\`\``,
    sections: [{ title: 'Keys', schema: receiverConfigSchema(ctx) }],
  },
]
