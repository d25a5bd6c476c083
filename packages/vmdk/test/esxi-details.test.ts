import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import {
  openChain,
  describeChain,
  openWriter,
  createFlatDisk,
  createDelta,
  consolidate,
  parseDescriptor,
  serializeDescriptor,
  decodeDescriptor,
  encodeDescriptor,
  declaredEncoding,
  parseSeSparseVolatileHeader,
  UNKNOWN_PARENT_CID,
} from '../src/index.ts'
import { chainDigest } from './helpers.ts'

const MiB = 1024 * 1024

/** Re-encode a descriptor file we wrote (UTF-8) in `label`, declaring it. */
function reencode(path: string, label: string): Buffer {
  const text = readFileSync(path, 'utf8').replace(/^encoding=.*$/m, `encoding="${label}"`)
  const bytes = Buffer.from(new TextEncoderFor(label).encode(text))
  writeFileSync(path, bytes)
  return bytes
}

/** Test-side encoder (independent of the package's): node's TextDecoder tables, inverted per character. */
class TextEncoderFor {
  readonly #label: string
  constructor(label: string) {
    this.#label = label
  }
  encode(text: string): Uint8Array {
    const dec = new TextDecoder(this.#label, { fatal: true })
    const out: number[] = []
    for (const ch of text) {
      if (ch.charCodeAt(0) < 0x80) {
        out.push(ch.charCodeAt(0))
        continue
      }
      let found: number[] | undefined
      for (let a = 0x80; a < 0x100 && found === undefined; a++) {
        try {
          if (dec.decode(Uint8Array.of(a)) === ch) found = [a]
        } catch {}
        for (let b = 0x40; b < 0x100 && found === undefined; b++) {
          try {
            if (dec.decode(Uint8Array.of(a, b)) === ch) found = [a, b]
          } catch {}
        }
      }
      if (found === undefined) throw new Error(`${ch} not in ${this.#label}`)
      out.push(...found)
    }
    return Uint8Array.from(out)
  }
}

t.test('descriptors are decoded by their encoding= key (windows-1252 names with umlauts)', async (t) => {
  const dir = t.testdir()
  const base = join(dir, 'Grüße.vmdk')
  const top = join(dir, 'Grüße-000001.vmdk')
  await createFlatDisk(base, 4 * MiB)
  let w = await openWriter(base)
  await w.write(0, Buffer.alloc(4096, 7))
  await w.close()
  await createDelta(base, top, { format: 'sesparse' })
  w = await openWriter(top)
  await w.write(8192, Buffer.alloc(4096, 9))
  await w.close()
  const want = await openChain(top).then(async (c) => {
    const d = await chainDigest(c)
    await c.close()
    return d
  })
  const topBytes = reencode(top, 'windows-1252')
  reencode(base, 'windows-1252')
  t.ok(topBytes.includes(0xfc) && !topBytes.includes(0xc3), 'the file holds ü as the single byte 0xFC')
  t.equal(declaredEncoding(topBytes), 'windows-1252')

  const c = await openChain(top)
  t.equal(c.layers[0]?.descriptor.extents[0]?.file, 'Grüße-000001-sesparse.vmdk')
  t.equal(c.layers[0]?.parentFileNameHint, 'Grüße.vmdk')
  t.equal(c.layers[1]?.file, 'Grüße.vmdk')
  t.equal(await chainDigest(c), want, 'the chain reads as before')
  await c.close()
  const info = await describeChain(top)
  t.equal(info.layers[1]?.extents[0]?.path, join(dir, 'Grüße-flat.vmdk'))

  // the serializer round-trips: bytes → text → Descriptor → text → bytes, exactly
  const text = decodeDescriptor(topBytes)
  t.equal(serializeDescriptor(parseDescriptor(text)), text)
  t.ok(encodeDescriptor(text).equals(topBytes), 'encoded back in windows-1252 byte for byte')

  // a writer rewrites a descriptor it changes (new CID) in UTF-8 by default, the key with it
  w = await openWriter(top)
  await w.write(0, Buffer.alloc(512, 3))
  await w.close()
  const after = readFileSync(top)
  t.ok(after.includes(Buffer.from('Grüße.vmdk', 'utf8')), 'now UTF-8')
  t.equal(declaredEncoding(after), 'UTF-8')
  t.equal(
    after
      .toString('utf8')
      .replace(/^CID=.*$/m, '')
      .replace(/^encoding=.*$/m, ''),
    text.replace(/^CID=.*$/m, '').replace(/^encoding=.*$/m, ''),
    'nothing else changed',
  )
  // …or in its own encoding when asked
  reencode(top, 'windows-1252')
  w = await openWriter(top, { descriptorEncoding: 'keep' })
  await w.write(0, Buffer.alloc(512, 4))
  await w.close()
  const kept = readFileSync(top)
  t.equal(declaredEncoding(kept), 'windows-1252')
  t.ok(kept.includes(0xfc) && !kept.includes(Buffer.from('ü', 'utf8')), 'still windows-1252')
  const c2 = await openChain(top)
  t.equal((await c2.read(0, 1))[0], 4)
  await c2.close()
  // consolidate follows the same rule
  await consolidate(top, { descriptorEncoding: 'keep' })
  t.equal(declaredEncoding(readFileSync(base)), 'windows-1252', 'the parent keeps its encoding too')
  const c3 = await openChain(base)
  t.equal((await c3.read(8192, 1))[0], 9, 'merged')
  await c3.close()
})

t.test('GBK and Shift_JIS descriptors, and the embedded descriptor of a hosted disk', async (t) => {
  const dir = t.testdir()
  for (const [label, name] of [
    ['GBK', '虚拟机'],
    ['Shift_JIS', '仮想マシン'],
  ] as const) {
    const base = join(dir, `${name}.vmdk`)
    await createFlatDisk(base, MiB)
    const w = await openWriter(base)
    await w.write(100, Buffer.from('hello'))
    await w.close()
    const bytes = reencode(base, label)
    t.notOk(bytes.includes(Buffer.from(name, 'utf8')), `${label} bytes`)
    const c = await openChain(base)
    t.equal((await c.read(100, 5)).toString(), 'hello', `${label}: the extent named in ${label} opens`)
    await c.close()
    t.ok(encodeDescriptor(decodeDescriptor(bytes)).equals(bytes), `${label} round trip`)
  }
  // a monolithicSparse child whose embedded descriptor is windows-1252
  const base = join(dir, 'Café.vmdk')
  await createFlatDisk(base, MiB)
  const child = join(dir, 'Café-child.vmdk')
  await createDelta(base, child, { format: 'hosted' })
  const img = readFileSync(child)
  const area = img.subarray(512, 512 + 20 * 512)
  const text = area.subarray(0, area.indexOf(0)).toString('utf8').replace('version=1\n', 'version=1\nencoding="windows-1252"\n')
  area.fill(0)
  Buffer.from(new TextEncoderFor('windows-1252').encode(text)).copy(area)
  writeFileSync(child, img)
  const c = await openChain(child)
  t.equal(c.layers[0]?.parentFileNameHint, 'Café.vmdk')
  t.equal(c.layers.length, 2)
  await c.close()
})

t.test('unknown encodings and undecodable bytes are E_ENCODING, naming the file', async (t) => {
  const dir = t.testdir()
  const p = join(dir, 'd.vmdk')
  await createFlatDisk(p, MiB)
  const text = readFileSync(p, 'utf8')
  writeFileSync(p, text.replace('encoding="UTF-8"', 'encoding="x-klingon"'))
  await t.rejects(openChain(p), { name: 'VmdkError', code: 'E_ENCODING', file: p, message: /x-klingon/ })
  writeFileSync(p, Buffer.concat([Buffer.from(text.replace('ddb.adapterType = "lsilogic"', 'ddb.adapterType = "')), Buffer.from([0xff, 0xfe, 0x22, 0x0a])]))
  await t.rejects(openChain(p), { code: 'E_ENCODING', message: /not valid utf-8/ })
  t.throws(() => encodeDescriptor(text.replace('encoding="UTF-8"', 'encoding="windows-1252"') + '# 虚\n'), { code: 'E_ENCODING', message: /U\+865A/ })
  t.throws(() => decodeDescriptor(Buffer.from('version=1\nencoding="nope"\n')), { code: 'E_ENCODING' })
})

t.test('parentCID=fffffffe (after Storage vMotion) is accepted but reported unverified', async (t) => {
  const dir = t.testdir()
  await createFlatDisk(join(dir, 'a.vmdk'), MiB, { cid: '11111111' })
  await createDelta(join(dir, 'a.vmdk'), join(dir, 'b.vmdk'), { format: 'sesparse' })
  await createDelta(join(dir, 'b.vmdk'), join(dir, 'c.vmdk'), { format: 'vmfssparse' })
  let c = await openChain(join(dir, 'c.vmdk'))
  t.same(
    c.layers.map((l) => l.cidVerified),
    [true, true, true],
  )
  t.equal(c.cidVerified, true)
  await c.close()
  const bText = readFileSync(join(dir, 'b.vmdk'), 'utf8')
  writeFileSync(join(dir, 'b.vmdk'), bText.replace('parentCID=11111111', `parentCID=${UNKNOWN_PARENT_CID}`))
  c = await openChain(join(dir, 'c.vmdk'))
  t.same(
    c.layers.map((l) => l.cidVerified),
    [true, false, true],
    'the middle link proves nothing',
  )
  t.equal(c.cidVerified, false, 'so the chain as a whole is unverified')
  await c.close()
  const info = await describeChain(join(dir, 'c.vmdk'))
  t.equal(info.cidVerified, false)
  t.same(
    info.layers.map((l) => l.cidVerified),
    [true, false, true],
  )
  // any other mismatch is still refused
  writeFileSync(join(dir, 'b.vmdk'), bText.replace('parentCID=11111111', 'parentCID=fffffffd'))
  await t.rejects(openChain(join(dir, 'c.vmdk')), { code: 'E_CHAIN_CID' })
})

t.test('an SEsparse volatile header with non-zero padding is refused, as QEMU does', async (t) => {
  const dir = t.testdir()
  await createFlatDisk(join(dir, 'a.vmdk'), MiB)
  await createDelta(join(dir, 'a.vmdk'), join(dir, 'b.vmdk'), { format: 'sesparse' })
  const ext = join(dir, 'b-sesparse.vmdk')
  const orig = readFileSync(ext)
  t.same({ ...parseSeSparseVolatileHeader(orig.subarray(512, 1024)) }, { freeGtNumber: 0, nextTxnSeqNumber: 1n, replayJournal: 0n }, 'our writer leaves the padding zero')
  for (const at of [32, 300, 511]) {
    const b = Buffer.from(orig)
    b[512 + at] = 0x01
    writeFileSync(ext, b)
    await t.rejects(openChain(join(dir, 'b.vmdk')), { name: 'VmdkError', code: 'E_UNSUPPORTED', file: ext, message: /volatile header padding/ }, `byte ${at} of the padding`)
    t.throws(() => parseSeSparseVolatileHeader(b.subarray(512, 1024)), { code: 'E_UNSUPPORTED' })
  }
  writeFileSync(ext, orig)
  const c = await openChain(join(dir, 'b.vmdk'))
  t.equal(c.layers.length, 2)
  await c.close()
})
