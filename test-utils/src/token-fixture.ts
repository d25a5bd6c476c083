/** Token files the receiver and the agent read. */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'

/** A token of the receiver's tokens file: who may replicate which VMs (glob patterns). */
export interface TokenEntry {
  readonly name: string
  readonly token: string
  readonly vms: readonly string[]
}

/** The default test token (long enough for any length rule; not a secret). */
export const TEST_TOKEN = 'grainline-test-token-0123456789abcdef'

/** A receiver tokens file and what it holds. */
export interface TokensFixture {
  /** path of the tokens file (`--tokens`) */
  readonly file: string
  readonly entries: readonly TokenEntry[]
}

/**
 * Write `dir/tokens.json` (mode 0600): by default one token, {@link TEST_TOKEN},
 * named `test-agent`, that may replicate every VM.
 */
export function tokensFixture(dir: string, entries: readonly TokenEntry[] = [{ name: 'test-agent', token: TEST_TOKEN, vms: ['*'] }]): TokensFixture {
  const file = join(dir, 'tokens.json')
  writeFileSync(file, JSON.stringify({ tokens: entries }, null, 2) + '\n', { mode: 0o600 })
  return { file, entries }
}

/** Write an agent's token file `dir/name` (the token and a newline, mode 0600) and return its path. */
export function tokenFileFixture(dir: string, token: string = TEST_TOKEN, name = 'agent.token'): string {
  const file = join(dir, name)
  writeFileSync(file, token + '\n', { mode: 0o600 })
  return file
}
