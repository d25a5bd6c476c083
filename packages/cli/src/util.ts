/** Parse repeated `name=path` options into a record. */
export function parsePathMap(items: readonly string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {}
  for (const item of items ?? []) {
    const eq = item.indexOf('=')
    if (eq <= 0) throw new Error(`invalid --path-map "${item}" (expected DATASTORE=LOCALPATH)`)
    out[item.slice(0, eq)] = item.slice(eq + 1)
  }
  return out
}

/** Render rows as an aligned text table. */
export function table(head: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (r: readonly string[]): string =>
    r
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd()
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n')
}
