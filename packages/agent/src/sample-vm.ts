/**
 * Sample VMs and a guest simulator for the demo, the tests and benchmarks.
 *
 * `createSampleVm` makes a VM folder with a real .vmx and vmfs flat base
 * disks holding realistic content (compressible text-like blocks, random
 * blocks, zero regions left as holes). `simulateGuestWrites` writes into each
 * disk's RUNNING (top) delta the way a guest would: @grainline/vmdk's writer
 * for ESXi deltas, `qemu-io` for hosted sparse deltas.
 */
import { execFile } from 'node:child_process'
import { createCipheriv } from 'node:crypto'
import { mkdir, open, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import { AgentError } from './errors.ts'
import { createLocalDriver } from './local-driver.ts'
import { createFlatDisk, openChain, openWriter } from '@grainline/vmdk'

const exec = promisify(execFile)

/** A deterministic PRNG (xorshift128+ on 32-bit halves; enough for test data). */
export function prng(seed: number): () => number {
  let a = (seed >>> 0) ^ 0x9e3779b9
  let b = Math.imul(seed >>> 0, 0x85ebca6b) ^ 0xc2b2ae35
  let c = 0x27d4eb2f
  let d = 0x165667b1
  return () => {
    const t = b << 9
    let r = a * 5
    r = ((r << 7) | (r >>> 25)) * 9
    c ^= a
    d ^= b
    b ^= c
    a ^= d
    c ^= t
    d = (d << 11) | (d >>> 21)
    return (r >>> 0) / 4294967296
  }
}

const ZEROS = Buffer.alloc(1024 * 1024)

/**
 * Pseudo-random bytes at memory speed: an AES-128-CTR keystream keyed from
 * the PRNG (deterministic for a seed; a byte-wise JS PRNG made a few GiB of
 * sample disk take minutes).
 */
function fillRandom(buf: Buffer, rnd: () => number): void {
  const key = Buffer.alloc(16)
  const iv = Buffer.alloc(16)
  for (let i = 0; i < 16; i += 4) {
    key.writeUInt32LE(Math.floor(rnd() * 4294967296), i)
    iv.writeUInt32LE(Math.floor(rnd() * 4294967296), i)
  }
  const cipher = createCipheriv('aes-128-ctr', key, iv)
  for (let off = 0; off < buf.length; off += ZEROS.length) {
    const n = Math.min(ZEROS.length, buf.length - off)
    cipher.update(ZEROS.subarray(0, n)).copy(buf, off)
  }
}

const WORDS = 'the quick brown fox jumps over lazy dog kernel block sector grain delta mirror replica snapshot commit journal extent '.split(' ')
let corpus: Buffer | undefined

/** 1 MiB of word salad, built once (deterministically). */
function textCorpus(): Buffer {
  if (corpus !== undefined) return corpus
  const r = prng(0x7e47)
  const out = Buffer.alloc(1024 * 1024)
  let pos = 0
  while (pos < out.length) {
    const w = (WORDS[Math.floor(r() * WORDS.length)] as string) + (r() < 0.1 ? '\n' : ' ')
    pos += out.write(w, pos, 'latin1')
  }
  corpus = out
  return out
}

/** Text-like, compressible content: 4 KiB pieces of the corpus from random places. */
function fillText(buf: Buffer, rnd: () => number): void {
  const c = textCorpus()
  const piece = 4096
  for (let pos = 0; pos < buf.length; pos += piece) {
    const n = Math.min(piece, buf.length - pos)
    const from = Math.floor(rnd() * (c.length - piece))
    c.copy(buf, pos, from, from + n)
  }
}

/** One disk of a sample VM. */
export interface SampleDisk {
  readonly sizeBytes: number
  /**
   * content: 'realistic' (text, random and zero regions), 'random', 'zero', or
   * 'sparse' (mostly holes, about 2% realistic data: large benchmark disks). @default 'realistic'
   */
  readonly fill?: 'realistic' | 'random' | 'zero' | 'sparse'
  /** bus node. @default `scsi0:<index>` */
  readonly node?: string
  /**
   * the folder the disk's files go to, as on a second datastore (ESXi's
   * `/vmfs/volumes/ds2/<vm>/`): the .vmx names the disk by its absolute path
   * @default the VM's folder (the .vmx names it relative to it)
   */
  readonly folder?: string
}

/** Options of `createSampleVm`. */
export interface SampleVmOptions {
  /** VM name = folder name = .vmx stem (spaces allowed) */
  readonly name: string
  readonly disks: readonly SampleDisk[]
  /** PRNG seed of the content. @default 1 */
  readonly seed?: number
  readonly guestOS?: string
}

/** What `createSampleVm` made. */
export interface SampleVm {
  readonly dir: string
  readonly vmxPath: string
  /** base descriptor paths, in disk order */
  readonly disks: readonly string[]
}

/** Create `<dir>/<name>/<name>.vmx` with flat vmfs base disks. */
export async function createSampleVm(dir: string, opts: SampleVmOptions): Promise<SampleVm> {
  const vmDir = join(dir, opts.name)
  await mkdir(vmDir, { recursive: true })
  const rnd = prng(opts.seed ?? 1)
  const lines = [
    '.encoding = "UTF-8"',
    'config.version = "8"',
    'virtualHW.version = "14"',
    `displayName = "${opts.name}"`,
    `guestOS = "${opts.guestOS ?? 'otherlinux-64'}"`,
    'memSize = "1024"',
    'numvcpus = "1"',
    `nvram = "${opts.name}.nvram"`,
    'scsi0.present = "TRUE"',
    'scsi0.virtualDev = "pvscsi"',
    'ethernet0.present = "TRUE"',
    'ethernet0.virtualDev = "vmxnet3"',
    'ethernet0.networkName = "VM Network"',
  ]
  const disks: string[] = []
  const buses = new Set<string>(['scsi0'])
  for (const [i, d] of opts.disks.entries()) {
    if (!Number.isSafeInteger(d.sizeBytes) || d.sizeBytes <= 0 || d.sizeBytes % 512 !== 0) throw new AgentError('E_CONFIG', `disk ${i}: sizeBytes must be a positive multiple of 512`)
    const file = i === 0 ? `${opts.name}.vmdk` : `${opts.name}_${i}.vmdk`
    const diskDir = d.folder === undefined ? vmDir : resolve(d.folder)
    if (diskDir !== vmDir) await mkdir(diskDir, { recursive: true })
    const path = join(diskDir, file)
    await createFlatDisk(path, d.sizeBytes, {
      createType: 'vmfs',
      ddb: { 'ddb.adapterType': 'pvscsi', 'ddb.virtualHWVersion': '14', 'ddb.uuid': `60 00 C2 9${i} 00 11 22 33-44 55 66 77 88 99 aa bb` },
    })
    const flat = join(diskDir, `${opts.name}${i === 0 ? '' : `_${i}`}-flat.vmdk`)
    await fillFlat(flat, d.sizeBytes, d.fill ?? 'realistic', rnd)
    const node = d.node ?? `scsi0:${i}`
    const bus = node.split(':')[0] as string
    if (!buses.has(bus)) {
      buses.add(bus)
      lines.push(`${bus}.present = "TRUE"`)
    }
    lines.push(`${node}.present = "TRUE"`, `${node}.deviceType = "scsi-hardDisk"`, `${node}.fileName = "${diskDir === vmDir ? file : path}"`)
    disks.push(path)
  }
  const vmxPath = join(vmDir, `${opts.name}.vmx`)
  await writeFile(vmxPath, lines.join('\n') + '\n')
  await writeFile(join(vmDir, `${opts.name}.nvram`), Buffer.from('grainline sample nvram\n'))
  return { dir: vmDir, vmxPath, disks }
}

async function fillFlat(flat: string, size: number, fill: 'realistic' | 'random' | 'zero' | 'sparse', rnd: () => number): Promise<void> {
  if (fill === 'zero') return
  const fh = await open(flat, 'r+')
  try {
    const block = 256 * 1024
    const buf = Buffer.alloc(block)
    for (let off = 0; off < size; off += block) {
      const n = Math.min(block, size - off)
      const b = buf.subarray(0, n)
      if (fill === 'random') {
        fillRandom(b, rnd)
      } else {
        if (fill === 'sparse' && rnd() >= 0.02) continue
        const r = fill === 'sparse' ? 0.3 + rnd() * 0.7 : rnd()
        if (r < 0.3) continue // a zero region: left as a hole
        if (r < 0.75) fillText(b, rnd)
        else fillRandom(b, rnd)
        // sprinkle zero 4 KiB pages inside data blocks, as file systems leave them
        for (let p = 0; p < n; p += 4096) if (rnd() < 0.1) b.fill(0, p, Math.min(n, p + 4096))
      }
      await fh.write(b, 0, n, off)
    }
  } finally {
    await fh.close()
  }
}

/** Options of `simulateGuestWrites`. */
export interface GuestWriteOptions {
  /** bytes to write per disk */
  readonly bytes: number
  /** size of each write (multiple of 4096). @default 65536 */
  readonly writeSize?: number
  /** PRNG seed. @default 1 */
  readonly seed?: number
  /** fraction of writes that write zeros (discard-like). @default 0.1 */
  readonly zeroFraction?: number
  /** more folders the VM's disks may be on (the local driver's `roots`: its other datastores). @default none */
  readonly roots?: readonly string[]
}

/** One simulated write. */
export interface GuestWrite {
  readonly disk: string
  readonly offset: number
  readonly length: number
  readonly zero: boolean
}

/**
 * Write into each disk's running (top) delta as a guest would. The base (or
 * any frozen layer) is never touched; refuses a disk that has no delta.
 */
export async function simulateGuestWrites(vmxPath: string, opts: GuestWriteOptions): Promise<GuestWrite[]> {
  const driver = createLocalDriver(opts.roots === undefined ? {} : { roots: opts.roots })
  const vm = await driver.openVm(vmxPath)
  const writeSize = opts.writeSize ?? 65536
  if (writeSize <= 0 || writeSize % 4096 !== 0) throw new AgentError('E_CONFIG', 'writeSize must be a positive multiple of 4096')
  const rnd = prng(opts.seed ?? 1)
  const zeroFraction = opts.zeroFraction ?? 0.1
  const out: GuestWrite[] = []
  for (const d of vm.disks) {
    const chain = await openChain(d.path)
    const top = chain.layers[0] as { createType: string; path: string }
    const capacity = chain.capacity
    await chain.close()
    if (chain.layers.length < 2) throw new AgentError('E_SNAPSHOT', `${d.fileName} has no delta: a guest would write into the base`)
    const count = Math.ceil(opts.bytes / writeSize)
    const slots = Math.floor(capacity / writeSize)
    const writes: GuestWrite[] = []
    for (let k = 0; k < count; k++) {
      writes.push({ disk: d.path, offset: Math.floor(rnd() * slots) * writeSize, length: writeSize, zero: rnd() < zeroFraction })
    }
    if (/^monolithicSparse$|^twoGbMaxExtentSparse$/i.test(top.createType) || (await isHostedSparse(top.path))) {
      // qemu-io: patterned writes and zero writes into the hosted delta
      const cmds: string[] = []
      for (const w of writes) {
        cmds.push('-c', w.zero ? `write -z ${w.offset} ${w.length}` : `write -P ${1 + Math.floor(rnd() * 255)} ${w.offset} ${w.length}`)
      }
      for (let i = 0; i < cmds.length; i += 400) {
        await exec('qemu-io', ['-f', 'vmdk', ...cmds.slice(i, i + 400), top.path], { maxBuffer: 64 << 20 })
      }
    } else {
      const w = await openWriter(top.path)
      try {
        const buf = Buffer.alloc(writeSize)
        for (const x of writes) {
          if (x.zero) {
            await w.writeZeroes(x.offset, x.length)
            continue
          }
          if (rnd() < 0.5) fillText(buf, rnd)
          else fillRandom(buf, rnd)
          await w.write(x.offset, buf)
        }
      } finally {
        await w.close()
      }
    }
    out.push(...writes)
  }
  return out
}

async function isHostedSparse(path: string): Promise<boolean> {
  const fh = await open(path, 'r')
  try {
    const b = Buffer.alloc(4)
    await fh.read(b, 0, 4, 0)
    return b.toString('latin1') === 'KDMV'
  } finally {
    await fh.close()
  }
}
