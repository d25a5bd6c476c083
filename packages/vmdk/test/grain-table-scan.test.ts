import t from 'tap'
import { ENTRY_HI, ENTRY_HITS, ENTRY_LO, nonZeroEntries, scanStats } from '../src/grain-table.ts'

/** the reference: every entry read one by one */
function naive(buf: Buffer, offset: number, bytes: number, entryBytes: 4 | 8): number[] {
  const out: number[] = []
  for (let k = 0; k < bytes; k += entryBytes) {
    let nz = false
    for (let i = 0; i < entryBytes; i++) if (buf[offset + k + i] !== 0) nz = true
    if (nz) out.push(k / entryBytes)
  }
  return out
}

function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

t.test('nonZeroEntries finds exactly the non-zero entries, aligned or not, 4- and 8-byte entries', async (t) => {
  const rand = prng(7)
  // offsets 0 and 8 take the Int32Array path; 1, 2, 3 and 5 the byte-wise fallback
  for (const entryBytes of [4, 8] as const) {
    for (const lead of [0, 1, 2, 3, 5, 8]) {
      // 512 / 1536 / 2560 / 3584: a last 4 KiB block that ends inside a 1 KiB quarter (KDMV tables of other sizes)
      for (const tableBytes of entryBytes === 8 ? [1536, 2048, 3584, 16384, 32768] : [512, 1536, 2048, 2560, 16384]) {
        const buf = Buffer.alloc(lead + tableBytes + 16)
        const filled = 1 + Math.floor(rand() * 40)
        for (let k = 0; k < filled; k++) {
          // any single byte of an entry, including only the top byte of an 8-byte entry
          buf[lead + Math.floor(rand() * tableBytes)] = 1 + Math.floor(rand() * 255)
        }
        // bytes just outside the table never count
        buf[lead + tableBytes] = 0xff
        if (lead > 0) buf[lead - 1] = 0xff
        const n = nonZeroEntries(buf, lead, tableBytes, entryBytes)
        const hits = naive(buf, lead, tableBytes, entryBytes)
        t.same(Array.from(ENTRY_HITS.subarray(0, n)), hits, `${entryBytes}-byte entries, offset ${lead}, ${tableBytes} bytes`)
        // the decoders take each entry's words from ENTRY_LO / ENTRY_HI: the same as reading them from the buffer
        const at = (j: number, half: number): number => buf.readUInt32LE(lead + j * entryBytes + 4 * half)
        t.same(
          Array.from(ENTRY_LO.subarray(0, n)),
          hits.map((j) => at(j, 0)),
          `${entryBytes}-byte entries, offset ${lead}: low words`,
        )
        t.same(
          Array.from(ENTRY_HI.subarray(0, n)),
          hits.map((j) => (entryBytes === 8 ? at(j, 1) : 0)),
          `${entryBytes}-byte entries, offset ${lead}: high words`,
        )
      }
    }
  }
})

t.test('nonZeroEntries: the first and last entry, a full table, an empty one, a view into a larger buffer', async (t) => {
  const buf = Buffer.alloc(32768)
  t.equal(nonZeroEntries(buf, 0, 32768, 8), 0, 'all zero')
  buf[0] = 1
  buf[32767] = 0x80 // only the sign bit of the last 8-byte entry: -0 as a double, still non-zero
  t.equal(nonZeroEntries(buf, 0, 32768, 8), 2)
  t.same([ENTRY_HITS[0], ENTRY_HITS[1]], [0, 4095])
  t.same([ENTRY_LO[0], ENTRY_HI[0], ENTRY_LO[1], ENTRY_HI[1]], [1, 0, 0, 0x80000000], 'the words of both, the sign bit unsigned')
  buf.fill(0xff)
  t.equal(nonZeroEntries(buf, 0, 32768, 8), 4096, 'every entry')
  t.equal(ENTRY_LO[4095], 0xffffffff, 'an all-ones word unsigned')
  t.equal(nonZeroEntries(buf, 0, 16384, 4), 4096, 'every 4-byte entry')
  // a subarray whose byteOffset is not a multiple of 4 in its ArrayBuffer
  const big = Buffer.alloc(40000)
  const sub = big.subarray(3, 3 + 32768)
  sub[8 * 100 + 7] = 0x30
  t.equal(nonZeroEntries(sub, 0, 32768, 8), 1)
  t.equal(ENTRY_HITS[0], 100)
  t.throws(() => nonZeroEntries(Buffer.alloc(65536), 0, 65536, 8), RangeError, 'more entries than a table can have')
})

t.test('nonZeroEntries walks only the 256-byte pieces that hold a non-zero entry', async (t) => {
  // a guest's 64 KiB write is 16 adjacent 8-byte entries (128 bytes): one piece of a 4 KiB block, not all 512 entries
  const buf = Buffer.alloc(32768)
  for (let j = 1000; j < 1016; j++) buf.writeUInt32LE(j + 1, 8 * j)
  buf[8 * 4095 + 7] = 1
  const before = scanStats.subBlocksWalked
  t.equal(nonZeroEntries(buf, 0, 32768, 8), 17)
  t.same(Array.from(ENTRY_HITS.subarray(0, 17)), [...Array.from({ length: 16 }, (_, k) => 1000 + k), 4095])
  // entries 1000-1015 sit in bytes 8000-8127: piece 31; entry 4095 in the last piece
  t.equal(scanStats.subBlocksWalked - before, 2, 'two pieces walked')
  // an entry that straddles no piece boundary but ends one piece and begins the next
  buf.fill(0)
  buf[255] = 1
  buf[256] = 1
  const at = scanStats.subBlocksWalked
  t.equal(nonZeroEntries(buf, 0, 32768, 8), 2)
  t.same([ENTRY_HITS[0], ENTRY_HITS[1]], [31, 32])
  t.equal(scanStats.subBlocksWalked - at, 2)
  // a zero 1 KiB quarter is skipped whole; an entry in a block's last, partial quarter is still found
  const odd = Buffer.alloc(1536)
  odd.writeUInt32LE(9, 4 * 383)
  const q = scanStats.subBlocksWalked
  t.equal(nonZeroEntries(odd, 0, 1536, 4), 1)
  t.same([ENTRY_HITS[0], ENTRY_LO[0], ENTRY_HI[0]], [383, 9, 0])
  t.equal(scanStats.subBlocksWalked - q, 1, 'only the piece holding it walked')
})
