/**
 * The esxi driver settings (an `esxi.json` given with `--esxi-config`, or the
 * `esxi` object of a job file): one schema, validated before any connection,
 * and the source of docs/config/esxi.md.
 *
 * Extension point: the esxi driver's own settings are added here as one
 * entry each (`datastoreEntrySchema` for per-datastore keys,
 * `esxiSettingsShape` for host-level keys), and `EsxiDriverInit` follows.
 */
import { z } from 'zod'
import { normalizeFingerprint } from '../esxi/fingerprint.ts'
import type { EsxiDriverInit } from '../esxi/esxi-driver.ts'
import { doc, durationField, existingDirField, privateKeyFileField, type SchemaContext } from './fields.ts'

const fingerprint = z.string().transform((v, ctx) => {
  try {
    return normalizeFingerprint(v)
  } catch {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(v)} is not an SSH host key fingerprint (SHA256:<43 base64 characters>, as ssh-keygen -lf prints it)` })
    return z.NEVER
  }
})

/** How the proxy reaches one ESXi host over SSH. */
export function sshSettingsSchema(ctx: SchemaContext) {
  return z.strictObject({
    host: doc(z.string().min(1), { description: 'ESXi host name or address.', example: '"esx01.example.net"' }),
    port: doc(z.int().min(1).max(65535).optional(), { description: 'SSH port.', default: '22' }),
    username: doc(z.string().min(1).optional(), { description: 'SSH user.', default: '"root"' }),
    privateKeyFile: doc(privateKeyFileField(ctx), {
      description: 'Private key the proxy logs in with (OpenSSH or PEM; relative to the settings file). Checked readable before anything runs.',
      type: 'path',
    }),
    passphrase: doc(z.string().optional(), { description: 'Passphrase of an encrypted private key.' }),
    hostKeyFingerprint: doc(z.union([fingerprint, z.array(fingerprint).min(1)]), {
      description:
        "The host's key fingerprint(s), `SHA256:…` as `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` prints them on the host; list every key of the host. No trust on first use: a host presenting another key is refused.",
      type: 'string or array of strings',
    }),
    connectTimeout: doc(durationField({ min: 1000 }).optional(), { description: 'TCP + SSH handshake timeout.', default: '20s', type: 'duration' }),
    keepaliveInterval: doc(durationField({ min: 1000 }).optional(), { description: 'SSH keepalive interval.', default: '15s', type: 'duration' }),
  })
}

/** One datastore: where the proxy reads it. */
export function datastoreEntrySchema(ctx: SchemaContext) {
  return z.strictObject({
    localPath: doc(existingDirField(ctx), {
      description: "Absolute folder where the datastore is mounted on the proxy (NFS, read-only is enough). Must exist and hold none of the agent's own files (see `datastores`).",
      type: 'path',
    }),
    uuid: doc(z.string().min(1).optional(), { description: 'The volume UUID (`/vmfs/volumes/<uuid>/…` paths resolve through it).' }),
  })
}

/** One datastore read on the host over the SSH connection (no mount on the proxy). */
export function sftpDatastoreSchema() {
  return z.strictObject({
    access: doc(z.literal('sftp'), { description: "Read this datastore over SFTP on the host's SSH connection (local or SAN VMFS, which the proxy cannot mount)." }),
    uuid: doc(z.string().min(1).optional(), { description: 'The volume UUID (`/vmfs/volumes/<uuid>/…` paths resolve through it).' }),
    hostPath: doc(z.string().startsWith('/').optional(), { description: "The datastore's folder on the host.", default: '"/vmfs/volumes/<name>"' }),
  })
}

/** The host-level keys of the esxi settings (an object shape, so keys can be added one per line). */
export function esxiSettingsShape(ctx: SchemaContext) {
  return {
    ssh: doc(sshSettingsSchema(ctx), { description: 'How to reach the host.' }),
    datastores: doc(z.record(z.string().min(1), z.union([existingDirField(ctx), datastoreEntrySchema(ctx), sftpDatastoreSchema()])), {
      description:
        'Datastore name → how the proxy reads it: its mount (a path, or `{ "localPath", "uuid" }`), or `{ "access": "sftp" }` (on the host over SSH). One VM may mix both. A mount is read through the proxy\'s file system: one that contains one of the agent\'s own files — the job file, token, CA, SSH key, this settings file, notification secrets, the state dir; by name or real path — is refused (E_CONFIG) at job load and when the VM starts, since a .vmx could name that file as a disk and ship it; so is one that is the state dir or lies inside it (its cycle records, snapshot lists and locks). Each mount is pinned at job load: its real path resolved once, so a symbolic link re-pointed during the run moves nothing.',
      type: 'object: name → path, { localPath, uuid } or { access: "sftp", uuid, hostPath }',
      example: '{ "datastore1": { "localPath": "/mnt/esx01/datastore1", "uuid": "5f1a2b3c-…" }, "san-vmfs": { "access": "sftp" } }',
    }),
    sftpConcurrency: doc(z.int().min(1).max(64).optional(), { description: 'SFTP read requests in flight per read (datastores with `"access": "sftp"`).', default: '16' }),
    sftpTimeout: doc(durationField({ min: 1000, max: 3_600_000 }).optional(), {
      description:
        'How long one SFTP request may go unanswered (an sftp-server stuck on its datastore while SSH stays alive): the SSH connection is then dropped and the request retried on a new one, up to 8 times, before the read fails with E_IO naming the file. 1s to 1h.',
      default: '60s',
      type: 'duration',
    }),
    datastoreType: doc(z.string().min(1).optional(), { description: "Datastore type recorded for the mirror's compatibility check.", default: '"vmfs"' }),
    vimCmd: doc(z.string().min(1).optional(), { description: 'The vim-cmd program on the host.', default: '"vim-cmd"' }),
    commandTimeout: doc(durationField({ min: 1000 }).optional(), { description: 'Timeout of quick commands (getallvms, snapshot.get).', default: '60s', type: 'duration' }),
    snapshotTimeout: doc(durationField({ min: 1000 }).optional(), { description: 'Timeout of snapshot.create and snapshot.remove (a remove merges data).', default: '30m', type: 'duration' }),
    verifyTimeout: doc(durationField({ min: 1000 }).optional(), {
      description: 'How long to wait for the result of a snapshot operation to show in snapshot.get and on the mount.',
      default: '60s',
      type: 'duration',
    }),
    pollInterval: doc(durationField({ min: 10 }).optional(), { description: 'Poll interval while verifying.', default: '500ms', type: 'duration' }),
    independentDisks: doc(z.enum(['skip', 'refuse']).optional(), {
      description: 'Disks ESXi takes no snapshot of (independent disks, physical RDMs): `skip` them with a warning in the report, or `refuse` the VM (E_UNSUPPORTED_DISK) before any snapshot.',
      default: '"skip"',
    }),
    consolidate: doc(z.boolean().optional(), {
      description: 'When ESXi reports that the disks need consolidation, run `vim-cmd vmsvc/snapshot.consolidate` and verify the chain instead of failing with E_CONSOLIDATION_NEEDED.',
      default: 'false',
    }),
    quiesce: doc(z.boolean().optional(), { description: 'Ask VMware Tools to quiesce the guest file systems.', default: 'false' }),
    description: doc(z.string().optional(), { description: 'Snapshot description.', default: '"grainline replication snapshot"' }),
  }
}

/** The esxi settings: `{ ssh, datastores, … }`. */
export function esxiSettingsSchema(ctx: SchemaContext) {
  return z.strictObject(esxiSettingsShape(ctx))
}

/** Validated esxi settings. */
export type EsxiSettings = z.output<ReturnType<typeof esxiSettingsSchema>>

/** Drop the keys whose value is undefined (settings → init objects). */
export function definedOnly<T extends Record<string, unknown>>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T
}

/** The esxi driver's init from validated settings (durations in ms). */
export function toEsxiDriverInit(s: EsxiSettings): EsxiDriverInit {
  const ssh = s.ssh
  return definedOnly({
    ssh: definedOnly({
      host: ssh.host,
      port: ssh.port,
      username: ssh.username,
      privateKeyFile: ssh.privateKeyFile,
      passphrase: ssh.passphrase,
      hostKeyFingerprint: ssh.hostKeyFingerprint,
      connectTimeoutMs: ssh.connectTimeout,
      keepaliveIntervalMs: ssh.keepaliveInterval,
    }),
    datastores: s.datastores,
    sftp: s.sftpConcurrency === undefined && s.sftpTimeout === undefined ? undefined : definedOnly({ concurrency: s.sftpConcurrency, requestTimeoutMs: s.sftpTimeout }),
    datastoreType: s.datastoreType,
    vimCmd: s.vimCmd,
    commandTimeoutMs: s.commandTimeout,
    snapshotTimeoutMs: s.snapshotTimeout,
    verifyTimeoutMs: s.verifyTimeout,
    pollIntervalMs: s.pollInterval,
    independentDisks: s.independentDisks,
    consolidate: s.consolidate,
    quiesce: s.quiesce,
    description: s.description,
  })
}
