/**
 * Run `fn` for every item with at most `limit` calls in flight (in item order of
 * start). On the first failure no further call starts; the returned promise
 * settles only after every started call has settled (so no read is still
 * writing into a caller's buffer), and rejects with that first error.
 */
export async function forEachLimited<T>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  if (items.length === 0) return
  if (items.length === 1) {
    await fn(items[0] as T, 0)
    return
  }
  let next = 0
  let failed = false
  let first: unknown
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const i = next++
      try {
        await fn(items[i] as T, i)
      } catch (err) {
        if (!failed) {
          failed = true
          first = err
        }
      }
    }
  }
  const n = Math.max(1, Math.min(limit, items.length))
  const workers: Array<Promise<void>> = []
  for (let k = 0; k < n; k++) workers.push(worker())
  await Promise.all(workers)
  if (failed) throw first
}
