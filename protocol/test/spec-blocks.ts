/** The generated blocks of SPEC.md and the README (grammar, error table). */
import { ProtocolErrorCodes } from '../src/errors.ts'
import { describeGrammar } from '../src/schema.ts'

export function errorTable(): string {
  const rows = Object.entries(ProtocolErrorCodes).map(([code, e]) => `| \`${code}\` | ${e.closeCode} | ${e.fatal ? 'yes' : 'no'} | ${e.meaning} |`)
  return ['| code | close code | fatal | meaning |', '| --- | --- | --- | --- |', ...rows].join('\n')
}

export const blocks: Record<string, () => string> = {
  grammar: () => '```\n' + describeGrammar() + '\n```',
  errors: errorTable,
}

/** Replace every `<!-- name:begin -->…<!-- name:end -->` block of `text` with the generated one. */
export function fillBlocks(text: string): string {
  let out = text
  for (const [name, make] of Object.entries(blocks)) {
    const re = new RegExp(`<!-- ${name}:begin -->[\\s\\S]*?<!-- ${name}:end -->`)
    out = out.replace(re, `<!-- ${name}:begin -->\n${make()}\n<!-- ${name}:end -->`)
  }
  return out
}
