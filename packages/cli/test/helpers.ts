/** Helpers of the CLI's tests (tap runs only `*.test.js`: this file is imported, not run). */
import { readFile, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Test } from 'tap'
import { createSampleVm, simulateGuestWrites, VmxConfig, vmxDisks, type SampleVm } from '@grainline/agent'
import { qemuRaw, runNode, scratchDir, startReceiverProcess, tlsFixture, tokenFileFixture, tokensFixture, type ReceiverProcess, type RunResult, type TlsFixture } from '@grainline/test-utils'
import { main } from '../src/main.ts'

/** The CLI's entry, as a process runs it. */
export const BIN = resolve(dirname(fileURLToPath(import.meta.url)), '../src/bin.js')
const MiB = 1024 * 1024

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

/** A receiver process on a fresh store and what `grainline replicate` needs to reach it ({@link cliSite}). */
export interface CliSite {
  readonly dir: string
  /** the receiver's store folder */
  readonly store: string
  readonly rx: ReceiverProcess
  readonly tls: TlsFixture
  /** the agent's token file */
  readonly token: string
  /** `grainline replicate VMX` to this receiver (its token, CA and a state folder in `dir`), then `extra` */
  args(vmx: string, ...extra: string[]): string[]
}

/**
 * A real receiver process on store `dir/store` of a fresh scratch folder (with `config` as its config file when
 * given), stopped at the test's end, and the agent's side of it: token file, CA and `grainline replicate` arguments.
 */
export async function cliSite(t: Test, config?: object): Promise<CliSite> {
  const dir = scratchDir(t)
  const store = join(dir, 'store')
  const args: string[] = []
  if (config !== undefined) {
    const cfg = join(dir, 'receiver.json')
    await writeFile(cfg, JSON.stringify({ store, ...config }))
    args.push('--config', cfg)
  }
  const tls = tlsFixture()
  const rx = await startReceiverProcess({ store, tokens: tokensFixture(dir).file, tls, args })
  t.teardown(() => rx.stop())
  const token = tokenFileFixture(dir)
  return { dir, store, rx, tls, token, args: (vmx, ...extra) => ['replicate', vmx, '--to', rx.url, '--token-file', token, '--ca', tls.cert, '--state-dir', join(dir, 'state'), ...extra] }
}

/** A VM replicated `cycles` times by `grainline replicate` processes to a receiver process that keeps points ({@link pointsFixture}). */
export interface PointsFixture extends CliSite {
  readonly vm: SampleVm
  /** `frozen[c]`: the source disk as cycle `c` froze it, a raw image (from 1) */
  readonly frozen: string[]
  /** one more `grainline replicate` of the VM (its result; the caller judges it) */
  replicate(): Promise<RunResult>
}

/**
 * A sample VM `name` (one 8 MiB disk, `seed`) replicated `cycles` times (the guest writing 1 MiB in 16 KiB
 * writes between cycles) to a real receiver process whose config keeps 3 points; the receiver is stopped at
 * the test's end. Each cycle's frozen source is kept as a raw image (qemu-img) to compare restores with.
 */
export async function pointsFixture(t: Test, name: string, opts: { readonly seed: number; readonly cycles: number }): Promise<PointsFixture> {
  const site = await cliSite(t, { retention: { keep: 3 } })
  const { dir } = site
  const vm = await createSampleVm(join(dir, 'src'), { name, disks: [{ sizeBytes: 8 * MiB }], seed: opts.seed })
  const replicate = async (): Promise<RunResult> => await runNode(BIN, site.args(vm.vmxPath, '--log-level', 'warn'))
  const frozen: string[] = []
  for (let c = 1; c <= opts.cycles; c++) {
    if (c > 1) await simulateGuestWrites(vm.vmxPath, { bytes: MiB, writeSize: 16 * 1024, seed: c, zeroFraction: 0.1 })
    const cfgv = VmxConfig.parse(await readFile(vm.vmxPath, 'utf8'), vm.vmxPath)
    frozen[c] = join(dir, `frozen-${c}.raw`)
    await qemuRaw(join(dirname(vm.vmxPath), vmxDisks(cfgv)[0]?.fileName ?? ''), frozen[c] as string)
    const r = await replicate()
    t.equal(r.code, 0, r.stderr)
  }
  return { ...site, vm, frozen, replicate }
}
