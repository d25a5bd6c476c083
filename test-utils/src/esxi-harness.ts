/**
 * The agent's fake ESXi host over SSH (a real sshd on loopback with a
 * `vim-cmd` stand-in and a datastore folder: packages/agent
 * test/esxi-harness.ts), for the CLI's and the cross-package tests that
 * register a failed-over VM there. Loaded from the agent's built tests.
 */
import { pathToFileURL } from 'node:url'
import { packageFile } from './package-files.ts'

/** A running fake ESXi host (what these tests use of it). */
export interface EsxiHarness {
  port: number
  user: string
  hostKeyFingerprint: string
  userKey: string
  datastore: string
  readState(): Promise<{ vms: Array<{ id: string; name: string; vmx: string }> }>
  writeState(s: { datastores: Record<string, { path: string; uuid: string }>; vms: Array<{ id: string; name: string; vmx: string }> }): Promise<void>
  stop(): Promise<void>
}

/** Start the agent's fake ESXi host (`startSshHarness` of `@grainline/agent`'s dist/test/esxi-harness.js). */
export async function startEsxiHarness(): Promise<EsxiHarness> {
  const path = packageFile('@grainline/agent', '../test/esxi-harness.js')
  const { startSshHarness } = (await import(pathToFileURL(path).href)) as { startSshHarness: () => Promise<EsxiHarness> }
  return await startSshHarness()
}
