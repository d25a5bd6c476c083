import { basename, relative } from 'node:path'
import { ReceiverError } from './errors.ts'
import type { JournalHead } from './journal.ts'
import type { InflightDisk } from './state-file.ts'
import type { VmPaths } from './vm-paths.ts'
import { grainlineCommand, storeArg } from './operator-command.ts'

/**
 * A journal's head says which cycle of which disk it belongs to: its cycle
 * identity and number, the disk's name and mode, the capacity the cycle
 * writes up to and the flat's size before it (journal.ts), and the reverse
 * increment its grains records index. Written from the same in-flight record
 * the state file keeps (vm-mirror.ts, `Journal.create`), it must agree with it
 * whenever it is read to resume or undo a cycle: a journal left from another
 * disk or cycle, a state file edited by hand, a store restored from a backup
 * mixing files of different times would pair the journal with the wrong disk —
 * a rollback would cut the flat to another base size (or undo ranges of
 * another capacity), a resume would accept extents journaled against another
 * base. Nothing in the head is compared with the file system's facts here
 * (the mirror's CID and size are decideOpen's): only with the state's record.
 */

/** What differs between a journal's head and the state's in-flight record of its disk (empty when they agree). */
export function journalHeadDiffers(head: JournalHead, cycle: number, d: InflightDisk): string[] {
  const out: string[] = []
  const h = head as Partial<Record<keyof JournalHead, unknown>>
  const field = (what: string, got: unknown, want: unknown, unit = ''): void => {
    if (got !== want) out.push(`${what} ${show(got)}${unit} in the journal, ${show(want)}${unit} in the state`)
  }
  field('capacity', h.capacity, d.capacity, ' bytes')
  field('base size', h.baseSize, d.baseSize, ' bytes')
  field('cycle', h.cycle, cycle)
  field('cycle identity', h.cycleId, d.cycleId)
  field('disk', h.name, d.name)
  field('mode', h.mode, d.mode)
  field('reverse increment', h.increment ?? null, d.increment ?? null)
  return out
}

function show(v: unknown): string {
  if (v === null || v === undefined) return 'none'
  return typeof v === 'string' ? JSON.stringify(v) : String(v)
}

/**
 * Refuse (E_STATE) a journal whose head does not match the state's in-flight
 * record of disk `d` of cycle `cycle` of the VM of `paths`; call it before anything of
 * the journal is trusted or written. The message names the journal relative
 * to the store (`<vm>/.grainline/<stem>.journal`), both values of each field
 * that differs and the operator's remedy.
 */
export function checkJournalHead(paths: VmPaths, journalPath: string, head: JournalHead, cycle: number, d: InflightDisk): void {
  const diffs = journalHeadDiffers(head, cycle, d)
  if (diffs.length === 0) return
  const file = relative(paths.store, journalPath)
  const vm = basename(paths.dir)
  throw new ReceiverError(
    'E_STATE',
    `journal ${file} of disk ${d.name} of VM ${vm} does not belong to cycle ${cycle} in flight that the VM's state records: ${diffs.join('; ')}. ` +
      'It comes from another disk or cycle (a state file edited by hand, a folder restored from backups of different times), and its undo data and resume point describe another flat. ' +
      `Nothing was resumed or undone: cycle ${cycle} can neither resume nor roll back from this journal. Restore the VM's folder whole from one backup, ` +
      `or remove the mirror (${grainlineCommand(['mirror', 'remove', '--store', storeArg(paths.store), '--vm', vm, '--yes'])}): the next run seeds the VM anew`,
  )
}
