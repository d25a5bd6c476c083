import { closeSync, openSync, readSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import type { FileAccess, FileKind, FileStat, RandomAccessFile } from '../src/index.ts'

const CHUNK = 64 * 1024
const ZERO = Buffer.alloc(CHUNK)

/** One read as the transport saw it. */
export interface ReadRecord {
  path: string
  position: number
  length: number
}

/**
 * A FileAccess over files held in memory under made-up paths (nothing on the
 * local disk answers them), standing in for a remote transport such as SFTP:
 * every call yields to the event loop a few times before it answers, so reads
 * issued together really are in flight together, and every call is counted.
 */
export class MemoryFileAccess implements FileAccess {
  /** file contents kept sparse: size and the non-zero 64 KiB chunks */
  readonly files = new Map<string, { size: number; chunks: Map<number, Buffer> }>()
  /** paths that stat as something other than a regular file */
  readonly kinds = new Map<string, FileKind>()
  readonly maxReadBytes: number
  readonly concurrency: number
  readonly calls = { stat: 0, open: 0, read: 0, close: 0 }
  readonly reads: ReadRecord[] = []
  readonly opened: string[] = []
  /** reads in flight now, and the most at once, per path */
  readonly inFlight = new Map<string, number>()
  readonly maxInFlight = new Map<string, number>()
  /** fail the n-th read (1-based) with EIO */
  failReadAt = 0
  readonly #turns: number

  constructor(opts: { maxReadBytes?: number; concurrency?: number; turns?: number } = {}) {
    this.maxReadBytes = opts.maxReadBytes ?? 256 * 1024
    this.concurrency = opts.concurrency ?? 8
    this.#turns = opts.turns ?? 3
  }

  /** Load every file of a local folder under `prefix` (e.g. '/mem/vm'), keeping only non-zero chunks. */
  loadFolder(dir: string, prefix: string): void {
    for (const name of readdirSync(dir)) {
      const p = join(dir, name)
      const st = statSync(p)
      const chunks = new Map<number, Buffer>()
      if (st.blocks > 0) {
        const fd = openSync(p, 'r')
        try {
          const b = Buffer.alloc(CHUNK)
          for (let k = 0; k * CHUNK < st.size; k++) {
            const n = readSync(fd, b, 0, CHUNK, k * CHUNK)
            if (!b.subarray(0, n).equals(ZERO.subarray(0, n))) chunks.set(k, Buffer.from(b.subarray(0, n)))
          }
        } finally {
          closeSync(fd)
        }
      }
      this.files.set(join(prefix, name), { size: st.size, chunks })
    }
  }

  async #latency(): Promise<void> {
    for (let i = 0; i < this.#turns; i++) await new Promise((resolve) => setImmediate(resolve))
  }

  #stat(path: string): FileStat {
    const kind = this.kinds.get(path)
    if (kind !== undefined) return { kind, size: 0 }
    const f = this.files.get(path)
    if (f === undefined) throw Object.assign(new Error(`no such file: ${path}`), { code: 'ENOENT' })
    return { kind: 'file', size: f.size }
  }

  async stat(path: string): Promise<FileStat> {
    this.calls.stat++
    await this.#latency()
    return this.#stat(path)
  }

  async open(path: string, mode: 'r' | 'r+'): Promise<RandomAccessFile> {
    this.calls.open++
    await this.#latency()
    if (mode !== 'r') throw Object.assign(new Error('read-only transport'), { code: 'EROFS' })
    const st = this.#stat(path)
    this.opened.push(path)
    const chunks = this.files.get(path)?.chunks ?? new Map<number, Buffer>()
    return {
      stat: st,
      read: async (buf: Uint8Array, bufOffset: number, length: number, position: number): Promise<number> => {
        this.calls.read++
        const nth = this.calls.read
        this.reads.push({ path, position, length })
        const now = (this.inFlight.get(path) ?? 0) + 1
        this.inFlight.set(path, now)
        this.maxInFlight.set(path, Math.max(now, this.maxInFlight.get(path) ?? 0))
        try {
          await this.#latency()
          if (nth === this.failReadAt) throw Object.assign(new Error('injected I/O error'), { code: 'EIO' })
          if (length > this.maxReadBytes) throw new Error(`read of ${length} bytes exceeds maxReadBytes ${this.maxReadBytes}`)
          const n = Math.max(0, Math.min(length, st.size - position))
          for (let done = 0; done < n; ) {
            const k = Math.floor((position + done) / CHUNK)
            const within = position + done - k * CHUNK
            const len = Math.min(n - done, CHUNK - within)
            const c = chunks.get(k)
            if (c === undefined) buf.fill(0, bufOffset + done, bufOffset + done + len)
            else buf.set(c.subarray(within, within + len), bufOffset + done)
            done += len
          }
          return n
        } finally {
          this.inFlight.set(path, (this.inFlight.get(path) ?? 1) - 1)
        }
      },
      close: async (): Promise<void> => {
        this.calls.close++
      },
    }
  }

  /** Reads of one file within [from, to) of it: count and bytes. */
  readsIn(path: string, from = 0, to = Infinity): { count: number; bytes: number } {
    let count = 0
    let bytes = 0
    for (const r of this.reads) {
      if (r.path !== path || r.position < from || r.position >= to) continue
      count++
      bytes += r.length
    }
    return { count, bytes }
  }

  resetCounters(): void {
    this.reads.length = 0
    this.calls.read = 0
    this.maxInFlight.clear()
  }
}
