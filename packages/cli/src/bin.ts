#!/usr/bin/env node
import { main } from './main.ts'

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (err: unknown) => {
    process.stderr.write(`grainline: ${(err as Error).stack ?? String(err)}\n`)
    process.exitCode = 1
  },
)
