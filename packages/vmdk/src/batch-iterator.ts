/**
 * An async iterator over the items of an async source of batches. `for await`
 * over it costs one already-resolved promise per item, about a third of what an
 * async generator's `yield` costs (measured: 200,000 items, ~80 ms → ~25 ms) —
 * it matters for maps and change lists with hundreds of thousands of entries.
 */
export function flattenBatches<T>(source: AsyncGenerator<T[], void, undefined>): AsyncIterableIterator<T> & { return: () => Promise<IteratorResult<T, undefined>> } {
  let cur: T[] = []
  let k = 0
  let finished = false
  const done: IteratorResult<T, undefined> = { value: undefined, done: true }
  const more = async (): Promise<IteratorResult<T, undefined>> => {
    while (k >= cur.length) {
      if (finished) return done
      const n = await source.next()
      if (n.done === true) {
        finished = true
        return done
      }
      cur = n.value
      k = 0
    }
    return { value: cur[k++] as T, done: false }
  }
  return {
    [Symbol.asyncIterator]() {
      return this
    },
    async next(): Promise<IteratorResult<T, undefined>> {
      if (k < cur.length) return { value: cur[k++] as T, done: false }
      return await more()
    },
    async return(): Promise<IteratorResult<T, undefined>> {
      finished = true
      cur = []
      await source.return(undefined)
      return done
    },
  }
}
