/** Reading a receiver's HTTP listener in e2e tests: its port from the `listening` line, one sample of its Prometheus metrics. */

/** The HTTP port from the receiver's latest `listening` line (stdout). */
export function httpPort(lines: readonly string[]): number {
  for (const l of [...lines].reverse()) {
    try {
      const j = JSON.parse(l) as { event?: string; httpPort?: number }
      if (j.event === 'listening' && typeof j.httpPort === 'number') return j.httpPort
    } catch {}
  }
  throw new Error('no httpPort in the listening line')
}

/** One sample `name{labels} value` of a Prometheus text exposition (labels as written), undefined when absent. */
export function promSample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (m === null || m[1] !== name) continue
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]))
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3])
  }
  return undefined
}
