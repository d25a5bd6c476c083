import { join } from 'node:path'
import { longestTempName } from './fs-util.ts'
import { pointExtentName, pointFileName, pointFlatName } from './increment.ts'

/** Hidden folder inside each VM mirror holding grainline's own state. */
export const STATE_DIR = '.grainline'
/** The VM state file inside {@link STATE_DIR}. */
export const STATE_FILE = 'state.json'
const INCOMING = 'incoming'
/** Folder (inside {@link STATE_DIR}) holding the restore points' increments, base points and configurations. */
export const POINTS_DIR = 'points'
/**
 * The folders grainline makes inside {@link STATE_DIR}, and lists and deletes
 * in: each must be a real folder of its own (store-fs.ts checkVmDir), never a
 * link to another VM's (whose files a sweep would take for orphans).
 */
export const STATE_SUBDIRS: readonly string[] = [INCOMING, POINTS_DIR]

/** The file stem of a disk name: "web01_1.vmdk" → "web01_1". */
export function diskStem(name: string): string {
  return name.replace(/\.vmdk$/i, '')
}

/**
 * Every file name the store generates for a disk stem, by folder: in the VM
 * folder its descriptor, flat and seed; in `.grainline` its journal, spare
 * and undo journal. Two disks of a VM may share none of them, ignoring case
 * (`a.vmdk`'s flat is `a-flat.vmdk`, which is also disk `a-flat`'s descriptor).
 */
export function generatedNames(stem: string): { readonly mirror: readonly string[]; readonly state: readonly string[] } {
  return {
    mirror: [`${stem}.vmdk`, `${stem}-flat.vmdk`, `${stem}-flat.vmdk.seed`],
    state: [`${stem}.journal`, `${stem}.journal.spare`, `${stem}.journal.undo`, `${stem}.blockmap`, `${stem}.map`],
  }
}

/**
 * Every file name the folder store may ever derive from a disk stem, each at
 * its longest: {@link generatedNames}, the restore point files of the disk
 * (`<stem>.p<cycle>.vmdk` and its extents, increment.ts; the largest cycle
 * the protocol allows, 2^53 − 1) and the temporary names of the files
 * written by replacement (fs-util.ts writeFileAtomic: the descriptors, the
 * kept block map). A disk name is accepted only when all of them fit in a
 * file name (receiver-rules.ts checkDiskName).
 */
export function derivedNames(stem: string): string[] {
  const { mirror, state } = generatedNames(stem)
  const point = pointFileName(stem, Number.MAX_SAFE_INTEGER)
  const points = [point, pointExtentName(point), pointFlatName(point), `${pointFlatName(point)}.copying`]
  const replaced = [`${stem}.vmdk`, `${stem}.map`, point].map(longestTempName)
  return [...mirror, ...state, ...points, ...replaced]
}

/**
 * Where every file of one VM mirror lives (the store layout of the README):
 *
 *   STORE/<vm>/<stem>.vmdk, <stem>-flat.vmdk, <stem>-flat.vmdk.seed, <vm>.vmx, …
 *   STORE/<vm>/.grainline/state.json, <stem>.journal[.spare|.undo], <stem>.blockmap, <stem>.map, incoming/, points/, lock,
 *     history.json (cycle-history.ts), errors.json (session-errors.ts)
 *
 * Pure: builds paths, touches nothing.
 */
export class VmPaths {
  /** the store folder */
  readonly store: string
  /** the mirror folder `STORE/<vm>` */
  readonly dir: string
  /** `STORE/<vm>/.grainline` */
  readonly gdir: string
  /** `STORE/<vm>/.grainline/state.json` */
  readonly state: string
  /** staged configuration files of the cycle in flight */
  readonly incoming: string
  constructor(storeDir: string, vm: string) {
    this.store = storeDir
    this.dir = join(storeDir, vm)
    this.gdir = join(this.dir, STATE_DIR)
    this.state = join(this.gdir, STATE_FILE)
    this.incoming = join(this.gdir, INCOMING)
  }

  /** the mirror descriptor */
  descriptor(stem: string): string {
    return join(this.dir, `${stem}.vmdk`)
  }
  /** the flat image */
  flat(stem: string): string {
    return join(this.dir, `${stem}-flat.vmdk`)
  }
  /** a seed in progress, renamed over the flat at commit */
  seed(stem: string): string {
    return join(this.dir, `${stem}-flat.vmdk.seed`)
  }
  /** undo journal and resume point of the cycle in flight */
  journal(stem: string): string {
    return join(this.gdir, `${stem}.journal`)
  }
  /** a finished journal kept for reuse by the next cycle of the disk */
  spare(stem: string): string {
    return join(this.gdir, `${stem}.journal.spare`)
  }
  /** the mirror's block map of a resync in flight (SPEC §5.9) */
  blockMap(stem: string): string {
    return join(this.gdir, `${stem}.blockmap`)
  }
  /** the block map kept with the committed mirror between cycles (kept-map.ts) */
  keptMap(stem: string): string {
    return join(this.gdir, `${stem}.map`)
  }
  /** held by the process writing the VM (its pid, boot id and start time inside) */
  get lock(): string {
    return join(this.gdir, 'lock')
  }
  /** the journal while a rollback undoes it */
  undoing(stem: string): string {
    return join(this.gdir, `${stem}.journal.undo`)
  }
}
