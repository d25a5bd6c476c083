/**
 * The job file of `grainline replicate --job FILE`: several VMs replicated by
 * one run. Per-VM options (vm-options-schema.ts) may stand at the top (for
 * every VM), in `defaults` and in each `vms[]` entry (the most specific
 * wins); `parallel`, `bwlimit`, `email` and `webhooks` belong to the job.
 * Relative paths resolve against the file's folder.
 */
import { z } from 'zod'
import { doc, pathField, bandwidthField, type SchemaContext } from './fields.ts'
import { emailSchema, webhookSchema } from './notify-schema.ts'
import { jobOnlyKeys, vmOptionsShape } from './vm-options-schema.ts'

/** Most VMs one job may name (a bound, not a target). */
export const MAX_JOB_VMS = 10_000

/** One `vms[]` entry: the VM, and options for it alone. */
export function vmEntrySchema(ctx: SchemaContext) {
  return z.strictObject({
    vm: doc(z.string().min(1), { description: 'The VM: a `.vmx` path (local driver; relative to the job file) or a VM name or id (esxi driver).', example: '"web 01"' }),
    ...vmOptionsShape(ctx),
    ...jobOnlyKeys,
  })
}

/** The job-level keys (one per line; the job runner reads them). */
export function jobShape(ctx: SchemaContext) {
  return {
    vms: doc(
      z
        .array(z.union([z.string().min(1), vmEntrySchema(ctx)]))
        .min(1)
        .max(MAX_JOB_VMS),
      {
        description:
          'The VMs, in the order they start: `{ "vm": …, …options }`, or just the VM as a string. Each VM once: the same `.vmx` reached twice (any spelling, a link), two `.vmx` whose folders share a name replicated to the same receiver (it keeps mirrors by that name: one mirror for both), or an esxi VM named twice on one host (the same name, or the same id) are refused before anything starts. One esxi VM named by its name and by its id is known to be one only once the host is asked: it is replicated once and its second entry fails `E_BUSY`, saying so, when the two run at the same time; with `parallel` 1 it runs one cycle per entry. Name each esxi VM one way.',
        type: 'array of objects or strings',
      },
    ),
    defaults: doc(z.strictObject({ ...vmOptionsShape(ctx), ...jobOnlyKeys }).optional(), { description: "Per-VM options for every VM (a VM's own entry wins)." }),
    parallel: doc(z.int().min(1).max(64).optional(), { description: 'VMs replicated at the same time. Snapshot operations are still one at a time per ESXi host.', default: '2' }),
    bwlimit: doc(bandwidthField().optional(), {
      description:
        'Bandwidth limit of the whole job in bytes/s, shared by all its streams (`20M`; `0` or `off` = unlimited), or a timetable of `[Day-]HH:MM,RATE` entries in the proxy\'s local time: `"08:00,512k 18:00,off"` (every day), `"Mon-08:00,2M Fri-18:00,off"` (weekly); the latest entry at or before now is in force.',
      default: 'unlimited',
      type: 'rate or timetable',
      example: '"08:00,512k 18:00,30M 23:00,off"',
    }),
    report: doc(pathField(ctx).optional(), { description: 'Write the JSON report of the run here (as `--report`).', type: 'path' }),
    email: doc(emailSchema(ctx).optional(), { description: 'E-mail the report (HTML + text) after the run.' }),
    webhooks: doc(z.array(webhookSchema(ctx)).max(16).optional(), { description: 'POST the report (JSON, HMAC-signed) after the run.' }),
  }
}

/** The whole job file. */
export function jobFileSchema(ctx: SchemaContext) {
  return z.strictObject({ ...vmOptionsShape(ctx), ...jobShape(ctx) })
}

/** A validated job file. */
export type JobFile = z.output<ReturnType<typeof jobFileSchema>>
