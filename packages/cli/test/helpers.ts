/** Helpers of the CLI's tests (tap runs only `*.test.js`: this file is imported, not run). */
import { main } from '../src/main.ts'

/** What `main(argv)` returned and wrote: its exit code, stdout and stderr (the CliContext's write and error). */
export async function runMain(argv: readonly string[]): Promise<{ code: number; out: string; err: string }> {
  let out = ''
  let err = ''
  const code = await main(argv, {
    write: (s) => {
      out += s
    },
    error: (s) => {
      err += s
    },
    stderr: process.stderr,
  })
  return { code, out, err }
}
