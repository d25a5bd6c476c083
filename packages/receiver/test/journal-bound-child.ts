/**
 * Child of journal-bound.test: resume an in-flight cycle of one in-place disk from its journal (DiskApply.resume,
 * as a DiskOpen's resume does), then roll it back (undoInflight), in a process whose heap the test bounds.
 * argv: store, vm, the in-flight cycle as JSON. Prints the resume point and counts as JSON, then "undone".
 */
import { DiskApply } from '../src/disk-apply.ts'
import { checkJournalHead, readResumeJournal } from '../src/journal-head.ts'
import { undoInflight } from '../src/rollback.ts'
import type { InflightCycle, InflightDisk } from '../src/state-file.ts'
import { VmPaths } from '../src/vm-paths.ts'

const [store, vm, json] = process.argv.slice(2) as [string, string, string]
const paths = new VmPaths(store, vm)
const infl = JSON.parse(json) as InflightCycle
const d = Object.values(infl.disks)[0] as InflightDisk
const jpath = paths.journal(d.stem)
const contents = await readResumeJournal(paths, jpath, infl.cycle, d, (h) => checkJournalHead(paths, jpath, h, infl.cycle, d))
const apply = await DiskApply.resume(paths, d, contents)
process.stdout.write(`${JSON.stringify({ resumeSeq: apply.nextSeq, counts: apply.counts })}\n`)
await apply.close({ flush: false })
await undoInflight(paths, infl)
process.stdout.write('undone\n')
