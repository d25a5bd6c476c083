/**
 * File helpers for the VM's own files (.vmx, .vmsd, nvram): a hostile or
 * broken datastore may put a FIFO, a device or a folder where a config file
 * belongs, or a huge file — reading one must neither hang nor exhaust memory.
 */
import { constants } from 'node:fs'
import { open, rename } from 'node:fs/promises'
import { dirname } from 'node:path'
import type { FileAccess } from '@grainline/vmdk'
import { AgentError, type AgentErrorCode } from './errors.ts'

/** Largest .vmx or .vmsd read (real ones are a few KiB). */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024

/** What a non-regular file is, for error messages. */
function kindOf(st: { isFIFO(): boolean; isDirectory(): boolean; isSocket(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean }): string {
  if (st.isFIFO()) return 'a FIFO'
  if (st.isDirectory()) return 'a folder'
  if (st.isSocket()) return 'a socket'
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device'
  return 'not a regular file'
}

/** Options of {@link readRegularFile}. */
export interface ReadRegularOptions {
  /** largest size accepted */
  readonly maxBytes: number
  /** the AgentError code of a refusal */
  readonly code: AgentErrorCode
  /** what the file is, for messages ("VM config") */
  readonly what: string
  /** a file above `maxBytes`: `'throw'` the code, or `'skip'` (resolve undefined). @default 'throw' */
  readonly tooLarge?: 'throw' | 'skip'
}

/**
 * Read a whole regular file of at most `maxBytes`. The file type is checked
 * on the opened descriptor before any read (opened non-blocking, so a FIFO
 * with no writer does not block the open), so a FIFO, device or folder is
 * refused at once with `code` instead of hanging. ENOENT passes through as is.
 */
export async function readRegularFile(path: string, opts: ReadRegularOptions & { tooLarge?: 'throw' }): Promise<Buffer>
export async function readRegularFile(path: string, opts: ReadRegularOptions): Promise<Buffer | undefined>
export async function readRegularFile(path: string, opts: ReadRegularOptions): Promise<Buffer | undefined> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK)
  try {
    const st = await fh.stat()
    if (!st.isFile()) throw new AgentError(opts.code, `${opts.what} ${path} is ${kindOf(st)}, not a regular file`)
    if (st.size > opts.maxBytes) {
      if (opts.tooLarge === 'skip') return undefined
      throw new AgentError(opts.code, `${opts.what} ${path} is ${st.size} bytes, more than the ${opts.maxBytes} allowed`)
    }
    const buf = Buffer.alloc(Math.min(opts.maxBytes + 1, st.size + 1))
    let n = 0
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n)
      if (bytesRead === 0) break
      n += bytesRead
      if (n === buf.length) {
        // the file grew while we read it
        if (n > opts.maxBytes) throw new AgentError(opts.code, `${opts.what} ${path} grew beyond the ${opts.maxBytes} bytes allowed`)
        break
      }
    }
    return buf.subarray(0, n)
  } finally {
    await fh.close()
  }
}

/**
 * {@link readRegularFile} through a `FileAccess` (a driver's datastores, local
 * or over SFTP): the type is checked by `stat` before the open and by the
 * handle's own status after it; ENOENT passes through as is.
 */
export async function readRegularFileVia(files: FileAccess, path: string, opts: ReadRegularOptions & { tooLarge?: 'throw' }): Promise<Buffer>
export async function readRegularFileVia(files: FileAccess, path: string, opts: ReadRegularOptions): Promise<Buffer | undefined>
export async function readRegularFileVia(files: FileAccess, path: string, opts: ReadRegularOptions): Promise<Buffer | undefined> {
  const words = (k: string): string => (k === 'fifo' ? 'a FIFO' : k === 'directory' ? 'a folder' : k === 'socket' ? 'a socket' : k.endsWith('device') ? 'a device' : `a ${k}`)
  const pre = await files.stat(path)
  if (pre.kind !== 'file') throw new AgentError(opts.code, `${opts.what} ${path} is ${words(pre.kind)}, not a regular file`)
  const f = await files.open(path, 'r')
  try {
    const st = f.stat
    if (st.kind !== 'file') throw new AgentError(opts.code, `${opts.what} ${path} is ${words(st.kind)}, not a regular file`)
    if (st.size > opts.maxBytes) {
      if (opts.tooLarge === 'skip') return undefined
      throw new AgentError(opts.code, `${opts.what} ${path} is ${st.size} bytes, more than the ${opts.maxBytes} allowed`)
    }
    const buf = Buffer.alloc(Math.min(opts.maxBytes + 1, st.size + 1))
    let n = 0
    for (;;) {
      const bytesRead = await f.read(buf, n, buf.length - n, n)
      if (bytesRead === 0) break
      n += bytesRead
      if (n === buf.length) {
        if (n > opts.maxBytes) throw new AgentError(opts.code, `${opts.what} ${path} grew beyond the ${opts.maxBytes} bytes allowed`)
        break
      }
    }
    return buf.subarray(0, n)
  } finally {
    await f.close()
  }
}

/** Replace a file atomically: write a temp file, fsync, rename, fsync the folder. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${Date.now()}`
  const fh = await open(tmp, 'w', 0o644)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
  await rename(tmp, path)
  const dir = await open(dirname(path), 'r')
  try {
    await dir.sync()
  } catch {
    /* some filesystems refuse fsync on a folder */
  } finally {
    await dir.close()
  }
}
