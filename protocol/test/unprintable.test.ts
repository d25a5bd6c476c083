import t from 'tap'
import { blankUnprintable, escapeUnprintable, hasUnprintable } from '../src/index.ts'

// every character of the class, one by one: C0, DEL, C1, line/paragraph separators, bidi marks, embeddings, overrides, isolates
const UNPRINTABLE: number[] = []
for (let c = 0; c <= 0x1f; c++) UNPRINTABLE.push(c)
for (let c = 0x7f; c <= 0x9f; c++) UNPRINTABLE.push(c)
UNPRINTABLE.push(0x2028, 0x2029, 0x200e, 0x200f)
for (let c = 0x202a; c <= 0x202e; c++) UNPRINTABLE.push(c)
for (let c = 0x2066; c <= 0x2069; c++) UNPRINTABLE.push(c)

t.test('every unprintable character is found, blanked and escaped', async (t) => {
  for (const c of UNPRINTABLE) {
    const ch = String.fromCodePoint(c)
    const hex = c.toString(16).padStart(4, '0')
    t.equal(hasUnprintable(`a${ch}b`), true, `U+${hex} found`)
    t.equal(blankUnprintable(`a${ch}b`), 'a b', `U+${hex} blanked`)
    t.equal(escapeUnprintable(`a${ch}b`), `a\\u${hex}b`, `U+${hex} escaped`)
  }
})

t.test('printable text is left as it is', async (t) => {
  // the neighbours of each range, and text people write: accents, CJK, emoji, the zero-width joiner in an emoji
  const kept = ['\u0020', '\u007e', '\u00a0', '\u00e9', '\u200d', '\u2027', '\u202f', '\u2065', '\u206a', '日本', '👩‍💻', 'vm-01.vmdk']
  for (const s of kept) {
    t.equal(hasUnprintable(s), false, JSON.stringify(s))
    t.equal(blankUnprintable(s), s)
    t.equal(escapeUnprintable(s), s)
  }
})

t.test('a run is one space when blanked, every character when escaped; calls do not share regex state', async (t) => {
  const fake = 'ok\r\n\u001b[2Jhost=\u202eexe.txt'
  t.equal(blankUnprintable(fake), 'ok [2Jhost= exe.txt')
  t.equal(escapeUnprintable(fake), 'ok\\u000d\\u000a\\u001b[2Jhost=\\u202eexe.txt')
  // global regexes keep lastIndex between calls: the answers must not alternate
  for (let i = 0; i < 3; i++) t.equal(hasUnprintable('x\u0007'), true)
})
