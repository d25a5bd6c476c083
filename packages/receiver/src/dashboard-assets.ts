/**
 * The dashboard's files (HTML, CSS, the page script), shipped in the package
 * (`packages/receiver/assets/`) and served by the receiver from memory: no
 * asset ever comes from the internet. A fixed list, read once.
 */
import { existsSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { join } from 'node:path'

/** URL path → file and content type. */
export const DASHBOARD_FILES = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/vm': { file: 'vm.html', type: 'text/html; charset=utf-8' },
  '/login': { file: 'login.html', type: 'text/html; charset=utf-8' },
  '/assets/dashboard.css': { file: 'dashboard.css', type: 'text/css; charset=utf-8' },
  '/assets/dashboard.js': { file: 'dashboard.js', type: 'text/javascript; charset=utf-8' },
} as const
export type DashboardPath = keyof typeof DASHBOARD_FILES

/** One served file. */
export interface DashboardAsset {
  readonly type: string
  readonly body: Buffer
}

/** The assets folder: beside `src/` when run from source, two levels up from `dist/src/`. */
function assetsDir(): string {
  const here = fileURLToPath(new URL('.', import.meta.url))
  for (const rel of ['../assets', '../../assets']) {
    const d = join(here, rel)
    if (existsSync(join(d, 'index.html'))) return d
  }
  return join(here, '../../assets')
}

/** Read every dashboard file. */
export async function loadDashboardAssets(): Promise<ReadonlyMap<string, DashboardAsset>> {
  const dir = assetsDir()
  const out = new Map<string, DashboardAsset>()
  for (const [path, f] of Object.entries(DASHBOARD_FILES)) out.set(path, { type: f.type, body: await readFile(join(dir, f.file)) })
  return out
}
