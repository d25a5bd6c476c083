/**
 * A bounded per-VM history of committed cycles (`STORE/<vm>/.grainline/history.json`),
 * for the dashboard's charts: one entry appended at each commit, entries older
 * than {@link HISTORY_MAX_AGE_MS} or beyond {@link HISTORY_MAX_ENTRIES} dropped
 * at the same write. Written by the session that holds the VM's lock, after
 * the commit is durable; losing it loses charts, never data, so a failure to
 * write it is logged and the commit stands.
 */
import { join } from 'node:path'
import { writeFileAtomic } from './fs-util.ts'
import { readStoreFile, regularFileSize } from './store-fs.ts'
import type { VmPaths } from './vm-paths.ts'

/** History file name inside the VM's state folder. */
export const HISTORY_FILE = 'history.json'
/** Entries older than this are dropped: 30 days. */
export const HISTORY_MAX_AGE_MS = 30 * 24 * 3600 * 1000
/** At most this many entries are kept (a VM replicated every minute keeps its last ~33 hours). */
export const HISTORY_MAX_ENTRIES = 2000
/** A history file larger than this is not read (hostile or corrupt store): 2 MiB. */
export const HISTORY_MAX_FILE_BYTES = 2 * 1024 * 1024

/** One committed cycle. */
export interface CycleHistoryEntry {
  readonly cycle: number
  /** ISO time of the commit */
  readonly committedAt: string
  /** receiver-side duration, VmOpen to durable commit, seconds */
  readonly seconds: number
  /** bytes of the virtual disks the cycle covered with data extents (sent as payload) */
  readonly dataBytes: number
  /** bytes covered with zero extents (no payload) */
  readonly zeroBytes: number
  readonly extents: number
  /** disk modes of the cycle (`seed`, `incremental`, `resync`) */
  readonly modes: readonly string[]
}

const isEntry = (e: unknown): e is CycleHistoryEntry => {
  const o = e as Record<string, unknown> | null
  return (
    o !== null &&
    typeof o === 'object' &&
    Number.isSafeInteger(o['cycle']) &&
    typeof o['committedAt'] === 'string' &&
    Number.isFinite(Date.parse(o['committedAt'])) &&
    typeof o['seconds'] === 'number' &&
    Number.isSafeInteger(o['dataBytes']) &&
    Number.isSafeInteger(o['zeroBytes']) &&
    Number.isSafeInteger(o['extents']) &&
    Array.isArray(o['modes']) &&
    o['modes'].every((m) => typeof m === 'string')
  )
}

/** Drop what is too old or too many (pure). */
export function trimHistory(entries: readonly CycleHistoryEntry[], now: number): CycleHistoryEntry[] {
  return entries.filter((e) => now - Date.parse(e.committedAt) <= HISTORY_MAX_AGE_MS).slice(-HISTORY_MAX_ENTRIES)
}

/** Parse a history document (JSON `{ version, cycles }`), keeping only well-formed entries, trimmed; empty when unreadable (never throws). Pure. */
export function parseCycleHistory(raw: string, now = Date.now()): CycleHistoryEntry[] {
  try {
    const json = JSON.parse(raw) as { cycles?: unknown } | null
    const list = Array.isArray(json?.cycles) ? json.cycles : []
    return trimHistory(list.filter(isEntry), now)
  } catch {
    return []
  }
}

/** The history after `entry` committed: entries of later cycles (a rolled-back store) replaced, trimmed. Pure. */
export function withCycle(entries: readonly CycleHistoryEntry[], entry: CycleHistoryEntry, now = Date.now()): CycleHistoryEntry[] {
  return trimHistory([...entries.filter((e) => e.cycle < entry.cycle), entry], now)
}

/** The history document of `cycles` (what both stores keep). Pure. */
export function encodeCycleHistory(cycles: readonly CycleHistoryEntry[]): string {
  return `${JSON.stringify({ version: 1, cycles })}\n`
}

/** The VM's history, oldest first; empty when absent, too large or unreadable (never throws). */
export async function readCycleHistory(paths: VmPaths, now = Date.now()): Promise<CycleHistoryEntry[]> {
  const file = join(paths.gdir, HISTORY_FILE)
  try {
    const size = await regularFileSize(file)
    if (size === undefined || size > HISTORY_MAX_FILE_BYTES) return []
    return parseCycleHistory((await readStoreFile(file, HISTORY_MAX_FILE_BYTES)).toString('utf8'), now)
  } catch {
    return []
  }
}

/** Append one committed cycle (atomic rewrite, trimmed). */
export async function appendCycleHistory(paths: VmPaths, entry: CycleHistoryEntry, now = Date.now()): Promise<void> {
  await writeFileAtomic(join(paths.gdir, HISTORY_FILE), encodeCycleHistory(withCycle(await readCycleHistory(paths, now), entry, now)))
}
