/**
 * The options of one VM's cycle as a settings file writes them: at the top of
 * a job file (for every VM), in its `defaults`, in each `vms[]` entry, and —
 * under the names of `grainline replicate`'s flags — on the command line.
 *
 * Extension point: a new per-VM option is one entry of `vmOptionsShape`
 * (with its `doc`), one field of `ReplicateInit`, and one flag in the CLI's
 * `commands/replicate-options.ts`.
 */
import { z } from 'zod'
import { CompressionAlgorithms, DigestAlgorithms } from '@grainline/protocol'
import { absoluteDirField, certificateFileField, doc, durationField, pathField, secretFileField, sizeField, type SchemaContext } from './fields.ts'
import { esxiSettingsSchema } from './esxi-settings-schema.ts'
import { loadSettingsFile } from './settings-file.ts'
import { retentionField } from './retention-field.ts'

import { CertifyChoices, DeltaFormats, DriverNames } from './choices.ts'

export { CertifyChoices, DeltaFormats, DriverNames } from './choices.ts'

/**
 * `esxi`: the settings object, or the path of a JSON file holding it
 * (relative to the file naming it); read from a file, the settings keep its
 * path (`settingsFile`: one of the agent's own files, which no datastore root
 * may contain).
 */
function esxiField(ctx: SchemaContext) {
  return z.union([
    pathField(ctx).transform(async (file, c) => {
      const r = await loadSettingsFile(file, esxiSettingsSchema)
      if (!r.ok) {
        for (const m of r.problems) c.addIssue({ code: 'custom', message: m })
        return z.NEVER
      }
      return { ...r.value, settingsFile: file }
    }),
    esxiSettingsSchema(ctx),
  ])
}

/** Most folders `datastoreRoots` may list (a bound, not a target). */
export const MAX_DATASTORE_ROOTS = 256

/** The per-VM keys (an object shape: one line per option). */
export function vmOptionsShape(ctx: SchemaContext) {
  return {
    to: doc(z.string().min(1).optional(), {
      description:
        "Receiver URL, `wss://HOST:PORT` (`ws://` only to a loopback host, or with `insecurePlaintext`). The port is required: the one of the receiver's `listen` (7443 in these docs); `:443` when it really is there.",
      example: '"wss://dr.example.net:7443"',
    }),
    tokenFile: doc(secretFileField(ctx).optional(), { description: 'File holding the bearer token (its first non-empty line), read before anything runs.', type: 'path' }),
    token: doc(z.string().min(1).optional(), { description: 'The bearer token itself (prefer `tokenFile`: a job file is often readable by more people than a 0600 token file).' }),
    caFile: doc(certificateFileField(ctx).optional(), { description: "PEM CA certificate (or the receiver's self-signed certificate) trusted for `wss://`.", type: 'path', default: 'the system CAs' }),
    insecureTls: doc(z.boolean().optional(), { description: 'Skip TLS certificate verification (tests only).', default: 'false' }),
    insecurePlaintext: doc(z.boolean().optional(), { description: 'Allow a plain `ws://` URL to a non-loopback host: the token travels in clear.', default: 'false' }),
    driver: doc(z.enum(DriverNames).optional(), { description: 'Hypervisor driver: `local` (a VM folder grainline snapshots itself) or `esxi` (vim-cmd over SSH).', default: '"local"' }),
    esxi: doc(esxiField(ctx).optional(), { description: 'esxi driver settings (see [esxi.md](esxi.md)), or the path of a JSON file holding them.', type: 'object or path' }),
    deltaFormat: doc(z.enum(DeltaFormats).optional(), { description: 'local driver: delta format of new snapshots.', default: '"sesparse"' }),
    datastoreRoots: doc(z.union([absoluteDirField().transform((p) => [p]), z.array(absoluteDirField()).min(1).max(MAX_DATASTORE_ROOTS)]).optional(), {
      description:
        "local driver: more folders the VM's files may be read from: its other datastores (a VM whose .vmx names a disk on a second datastore, an NFS mount on a Linux proxy). Absolute paths of existing folders, pinned when the job is loaded: each one's real path is resolved then, and a file is read only when its real path lies below one of those (a symbolic link re-pointed during the run moves nothing). The folder that holds the VM's folder is readable too and these add to it (when it holds one of the agent's own files, e.g. the state dir or job file beside the VM folders, only the VM's own folder is; a VM whose own folder holds one, is the state dir or lies inside it is refused when it starts, E_CONFIG); a disk, extent, parent or nvram outside all of them is refused (E_VMX, E_OUTSIDE_ROOT). A root that holds one of the agent's own files (the job file, token, CA, esxi key and settings, notification secrets, the state dir), or is the state dir or lies inside it, is refused at job load and when the VM starts (E_CONFIG), by name or real path: a .vmx could name such a file as a disk and ship it. Like every per-VM option, a VM's own list replaces the job's. Not for the esxi driver (it reads the datastores of `esxi.datastores`): on a VM entry of an esxi VM, or where no VM of the job uses the local driver (`--driver esxi`), refused; at the top level or in `defaults` of a job that also has local VMs, theirs only.",
      default: "the folder that holds the VM's folder",
      type: 'path or array of paths',
      example: '["/vmfs/volumes/ds2", "/mnt/nfs/ds3"]',
    }),
    certify: doc(z.enum(CertifyChoices).optional(), { description: 'Full digest of the frozen source and the mirror after commit.', default: '"none"' }),
    trivialMiB: doc(
      z
        .int()
        .min(0)
        .max(1024 * 1024)
        .optional(),
      { description: 'MiB of the disk prefix compared after every cycle (0 = off).', default: '16' },
    ),
    compress: doc(z.enum(CompressionAlgorithms).optional(), { description: 'Preferred compression (skipped per extent when it saves < 10 %).', default: '"lz4"' }),
    digests: doc(z.array(z.enum(DigestAlgorithms)).min(1).optional(), { description: 'Extent digests offered, preferred first.', default: '["xxh64", "sha256"]' }),
    verify: doc(z.enum(['none', 'changed']).optional(), {
      description:
        'After the commit, compare the digests of every block the cycle wrote (source: the frozen view; mirror: read back). A mismatch marks the disk diverged; the next cycle resyncs exactly the differing blocks.',
      default: '"none"',
    }),
    scrub: doc(z.int().min(0).max(1_000_000).optional(), {
      description:
        'Also compare 1/N of every disk with the mirror each cycle, in rotation, so the whole mirror is proven every N cycles (0 = off). A mismatch marks the disk diverged; the next cycle resyncs it.',
      default: '0',
    }),
    resync: doc(z.boolean().optional(), {
      description:
        'Resync every disk whose mirror exists by comparing block digests (only differing blocks travel), even when an incremental would be safe. A resync is chosen on its own whenever an incremental is not safe.',
      default: 'false',
    }),
    retention: doc(retentionField().optional(), {
      description:
        "Restore points the receiver keeps of this VM: this job's request, applied by the receiver within the limits its operator allows (its `retentionLimits`; it may raise `keep` to a floor and lower every rule to a ceiling, and ignores requests when it allows none). The run report shows what it applied.",
      type: 'object or string',
      example: '{"keep": 14, "maxAge": "30d", "gfs": "daily=7,weekly=4"} or "keep=14,maxAge=30d,daily=7"',
      default: "the receiver's policy",
    }),
    consolidateExisting: doc(z.boolean().optional(), { description: 'Remove snapshots grainline did not make first instead of refusing the VM.', default: 'false' }),
    independentDisks: doc(z.enum(['skip', 'refuse']).optional(), {
      description: 'esxi driver: what to do with independent disks and physical RDMs (ESXi snapshots neither): skip them with a warning in the report, or refuse the VM. Overrides the esxi settings.',
      default: '"skip"',
    }),
    consolidate: doc(z.boolean().optional(), {
      description: 'esxi driver: when ESXi reports that the disks need consolidation, run `vim-cmd vmsvc/snapshot.consolidate` and verify the chain. Overrides the esxi settings.',
      default: 'false',
    }),
    stateDir: doc(pathField(ctx).optional(), {
      description: "Folder of the agent's record per VM (last commit's generation and snapshot).",
      type: 'path',
      default: '/var/lib/grainline as root, else $XDG_STATE_HOME/grainline',
    }),
    giveUp: doc(durationField({ min: 0, max: 7 * 86_400_000 }).optional(), {
      description: 'Give up after the receiver stayed unreachable, or acknowledged nothing new, this long; the snapshot chain is left for the next run.',
      default: '10m',
      type: 'duration',
    }),
    maxBackoff: doc(durationField({ min: 100, max: 3_600_000 }).optional(), { description: 'Largest reconnect back-off.', default: '30s', type: 'duration' }),
    keepAlive: doc(durationField({ min: 0, max: 3_600_000 }).optional(), {
      description:
        "The longest the agent stays silent on a connection: it pings the receiver when it has sent nothing for half of this, so that the receiver's idle timeout and NAT or firewall idle timeouts on the path never end a session while the agent is busy (a certify's digest of a large disk). Keep it below the receiver's `idleTimeoutMs` and the path's shortest idle timeout; 0 turns the pings off.",
      default: '30s',
      type: 'duration',
    }),
    windowBytes: doc(sizeField({ min: 1024 * 1024, max: 1024 ** 3 }).optional(), {
      description: "Unacknowledged payload in flight (the receiver's limit also applies).",
      default: '64M',
      type: 'size',
    }),
    maxExtentBytes: doc(sizeField({ min: 4096, max: 16 * 1024 * 1024, multipleOf: 512 }).optional(), { description: 'Largest data extent.', default: '1M', type: 'size' }),
  }
}

/** `bwlimit` is the job's: refused in `defaults` and `vms[]` with a message saying where it goes. */
export const jobOnlyKeys = {
  bwlimit: z
    .unknown()
    .optional()
    .superRefine((v, c) => {
      if (v !== undefined) c.addIssue({ code: 'custom', message: "bwlimit is the job's total over all its streams: set it at the top of the job file (or --bwlimit)" })
    })
    .meta({ hidden: true }),
  parallel: z
    .unknown()
    .optional()
    .superRefine((v, c) => {
      if (v !== undefined) c.addIssue({ code: 'custom', message: "parallel is the job's: set it at the top of the job file (or --parallel)" })
    })
    .meta({ hidden: true }),
}

/** The per-VM options as one object (every key optional). */
export function vmOptionsSchema(ctx: SchemaContext) {
  return z.strictObject(vmOptionsShape(ctx))
}

/** Validated per-VM options. */
export type VmOptions = z.output<ReturnType<typeof vmOptionsSchema>>
