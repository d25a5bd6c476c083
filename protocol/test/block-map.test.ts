import t from 'tap'
import { blockCount, mapBlocksPerMessage, MAX_MAP_BLOCKS } from '../src/block-map.ts'

t.test('block counts: the last block ends at the capacity', async (t) => {
  t.equal(blockCount(1 << 20, 1 << 20), 1)
  t.equal(blockCount((1 << 20) + 512, 1 << 20), 2)
  t.equal(blockCount(16 * 2 ** 40, 1 << 20), 16 * 2 ** 20, '16 TiB in 1 MiB blocks: 16 M blocks')
})

t.test('blocks per BlockMap: count × digest length + 256 fits the frame, at most 65536, at least 1', async (t) => {
  t.equal(mapBlocksPerMessage(4096, 32), 120)
  t.equal(mapBlocksPerMessage(16 * 1024, 32), 504)
  t.equal(mapBlocksPerMessage(64 * 1024 * 1024, 8), MAX_MAP_BLOCKS)
  t.equal(mapBlocksPerMessage(300, 64), 1)
})
