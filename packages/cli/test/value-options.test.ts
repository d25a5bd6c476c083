/**
 * Every option that takes a value (string, number, choices), of every
 * command, found from the command's --help: its negation (`--no-state-dir`,
 * which yargs hands over as false, the word "false" once a string) and an
 * occurrence without a value (`--to=`, a trailing `--to`, `--to` before
 * another flag, blanks) exit 2 naming the flag and what it takes, before
 * anything runs; boolean options keep their `--no-` form.
 */
import t from 'tap'
import { readdir } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import yargs from 'yargs'
import { runNode, scratchDir } from '@grainline/test-utils'
import type { CliCommand } from '../src/command.ts'
import { COMMANDS } from '../src/main.ts'
import { runMain } from './helpers.ts'
import { declaredFlags, refuseValuelessOptions, valueOptions, valuelessOptionError } from '../src/value-options.ts'

const bin = resolve(dirname(fileURLToPath(import.meta.url)), '../src/bin.js')

/** One option of a command's help: its names as listed (`-o`, `--output`) and the text of its entry. */
interface HelpOption {
  readonly names: string[]
  readonly text: string
}

/** The options the --help of `name` lists (the Options section; positionals are not options). */
const helps = new Map<string, Promise<HelpOption[]>>()
function helpOptions(name: string): Promise<HelpOption[]> {
  const h = helps.get(name) ?? readHelpOptions(name)
  helps.set(name, h)
  return h
}

async function readHelpOptions(name: string): Promise<HelpOption[]> {
  const r = await runNode(bin, [name, '--help'])
  if (r.code !== 0) throw new Error(`${name} --help: exit ${r.code}: ${r.stderr}`)
  const section = r.stdout.split('\nOptions:\n')[1] ?? ''
  const out: Array<{ names: string[]; lines: string[] }> = []
  for (const line of section.split('\n')) {
    if (line.trim() === '') break
    // an entry starts at the flag column (`  -o, --output`, `      --to`, `  --to`); its wrapped lines are indented past it
    const m = /^ {2}(?:-\w, | {4})?(--[\w-]+(?:, --[\w-]+)*)/.exec(line)
    if (m !== null) out.push({ names: [...(/^ {2}(-\w), /.exec(line)?.slice(1) ?? []), ...(m[1] as string).split(', ')], lines: [line] })
    else out.at(-1)?.lines.push(line)
  }
  return out.map((o) => ({ names: o.names, text: o.lines.join(' ').replace(/\s+/g, ' ') }))
}

/** The parsed arguments of `argv` through `command`'s builder as main.ts wraps it (guarded), without running it. */
function parseGuarded(command: CliCommand, argv: readonly string[]): Record<string, unknown> {
  return yargs([...argv])
    .strict()
    .command(command.command, command.describe, (y) => refuseValuelessOptions(command.builder(y), argv))
    .fail((msg, err) => {
      throw err ?? new Error(msg)
    })
    .parseSync() as Record<string, unknown>
}

const run = runMain

// the positionals and demanded options a command needs beside the flag under test (so that, but for the flag, it would parse)
const beside: Record<string, string[]> = {
  info: ['x.vmdk'],
  map: ['x.vmdk'],
  mirror: ['failover', '--store', '/nonexistent/s', '--vm', 'x'],
  restore: ['--store', '/nonexistent/s', '--vm', 'x', '--point', '1', '--to', '/nonexistent/t'],
  points: ['--store', '/nonexistent/s', '--vm', 'x'],
  status: ['--store', '/nonexistent/s'],
}

t.test('every value-taking option of every command refuses --no-FLAG and an empty value: exit 2 (status: UNKNOWN, exit 3) naming the flag and what it takes, nothing created', async (t) => {
  // the commands run in an empty folder: a value that got through ("false", "") would make something there
  const cwd = scratchDir(t)
  const before = process.cwd()
  process.chdir(cwd)
  t.teardown(() => process.chdir(before))
  const found: string[] = []
  const booleans: string[] = []
  const emptyAllowed: string[] = []
  for (const c of COMMANDS) {
    const name = c.command.split(' ')[0] as string
    const options = await helpOptions(name)
    t.ok(options.length > 4, `${name} --help lists its options`)
    const fromHelp = new Set<string>()
    for (const { names, text } of options) {
      const long = names.filter((n) => n.startsWith('--'))
      if (text.includes('[boolean]')) {
        booleans.push(`${name} ${long[0]}`)
        continue
      }
      const choices = /\[choices: ((?:"[^"]*"(?:, )?)+)\]/
        .exec(text)?.[1]
        ?.match(/"[^"]*"/g)
        ?.map((q) => q.slice(1, -1))
      const number = text.includes('[number]')
      const takes = choices !== undefined ? `one of ${choices.join(', ')}` : number ? 'a number' : 'a value'
      const meta = choices !== undefined ? choices.join('|') : number ? 'NUMBER' : 'VALUE'
      const required = text.includes('[required]')
      const out = required ? '' : ', or leave the flag out'
      // a repeatable option says it in its own words (repeatable-option.ts, repeatable-options.test.ts): the flag and the kind of message
      const repeatable = text.includes('repeat the flag')
      for (const n of long) fromHelp.add(n.slice(2))
      const documentsEmpty = long.some((n) => text.includes(`${n}= `) || text.includes(`${n}=)`))
      if (documentsEmpty) emptyAllowed.push(`${name} ${long[0]}`)
      for (const flag of names) {
        found.push(`${name} ${flag}`)
        const empty = `${flag}: no value given: write ${flag} ${meta}${out}`
        const cases: Array<[string[], string]> = []
        if (flag.startsWith('--')) {
          const bare = flag.slice(2)
          cases.push([[`--no-${bare}`], `--no-${bare}: ${flag} takes ${takes} and has nothing to turn off: ${required ? '' : 'leave the flag out, or '}give ${flag} ${meta}`])
          cases.push([[flag, '1', `--no-${bare}`], `--no-${bare}: ${flag} takes ${takes} and has nothing to turn off`])
        }
        // the documented empty value is `--flag=`; a bare flag, blanks are not it
        if (!documentsEmpty) cases.push([[`${flag}=`], empty])
        cases.push([[flag], empty], [[flag, '--log-file', 'l.json'], empty], [[flag, ' '], empty], [[`${flag}= `], empty])
        if (number) cases.push([[flag, 'ten'], `${flag} ten: not a number: write ${flag} NUMBER${out}`])
        for (const [argv, message] of cases) {
          const r = await run([name, ...(beside[name] ?? []), ...argv])
          const what = `${name} ${argv.map((a) => JSON.stringify(a)).join(' ')}`
          if (name === 'status') {
            // a monitoring plugin: its usage errors are UNKNOWN on stdout, exit 3 (status.ts failure)
            t.equal(r.code, 3, `${what}: exit 3`)
            t.ok(r.out.startsWith(`GRAINLINE UNKNOWN - ${message}`), `${what}: ${r.out}`)
            t.equal(r.err, '', `${what}: nothing on stderr`)
            continue
          }
          t.equal(r.code, 2, `${what}: exit 2`)
          if (repeatable) t.ok(r.err.startsWith(`grainline: ${message.split(':')[0]}: `), `${what}: ${r.err}`)
          else if (argv.length === 3 && argv[2]?.startsWith('--no-') === true) t.ok(r.err.startsWith(`grainline: ${message}`), `${what}: ${r.err}`)
          else t.equal(r.err, `grainline: ${message}\nRun "grainline --help" for usage.\n`, what)
          t.equal(r.out, '', `${what}: nothing on stdout`)
        }
      }
    }
    // the help and the guard (value-options.ts, from the yargs declarations) know the same value options
    const positionals = new Set([...c.command.matchAll(/[<[]([\w-]+)(?:\.\.)?[>\]]/g)].map((m) => m[1]))
    const guarded = valueOptions(c.builder(yargs([]).option('log-level', { type: 'string' }).option('log-file', { type: 'string' })))
    for (const k of new Set([...guarded.values()].map((o) => o.key))) if (!positionals.has(k)) t.ok(fromHelp.has(k), `${name}: --${k} is in the help`)
    for (const k of fromHelp) t.ok(guarded.has(k), `${name}: --${k} is guarded`)
  }
  t.same(await readdir(cwd), [], 'nothing was created in the working folder (no "false", no "")')
  for (const f of [
    'replicate --state-dir',
    'replicate --to',
    'replicate --report',
    'replicate --trivial-mb',
    'replicate --log-level',
    'replicate --log-file',
    'restore --to',
    'restore --point',
    'restore -o',
    'restore --output',
    'points --keep',
    'points --to',
    'mirror --to',
    'mirror --point',
    'receive --http-listen',
    'receive --metrics-listen',
    'receive --trivial-mb',
    'status --max-age',
    'demo --dir',
    'demo --cycles',
    'info --output',
  ])
    t.ok(found.includes(f), `${f} was tried`)
  t.ok(found.length > 100, `${found.length} flags tried`)
  t.same(emptyAllowed, ['receive --display-suffix'], 'the one option whose help documents an empty value')
  t.ok(booleans.includes('mirror --connect-nics') && booleans.includes('replicate --resync'), 'booleans are told apart')
})

t.test('boolean options keep their --no- form; an empty value is taken where the help says what it means', async (t) => {
  let tried = 0
  for (const c of COMMANDS) {
    const name = c.command.split(' ')[0] as string
    for (const { names, text } of await helpOptions(name)) {
      const flag = names.find((n) => n.startsWith('--')) as string
      if (!text.includes('[boolean]') || flag === '--help' || flag === '--version') continue
      const args = parseGuarded(c, [name, ...(beside[name] ?? []), `--no-${flag.slice(2)}`])
      t.equal(args[flag.slice(2)], false, `${name} --no-${flag.slice(2)}: false`)
      tried++
    }
  }
  t.ok(tried >= 10, `${tried} boolean options negated`)
  const receive = COMMANDS.find((c) => c.command === 'receive') as CliCommand
  t.equal(parseGuarded(receive, ['receive', '--display-suffix=', '--store', '/s'])['display-suffix'], '', '--display-suffix= is no suffix')
  t.throws(
    () => parseGuarded(receive, ['receive', '--store', '/s', '--display-suffix']),
    { name: 'UsageError', message: /^--display-suffix: no value given/ },
    'a trailing --display-suffix is not the documented form',
  )
  t.throws(() => parseGuarded(receive, ['receive', '--no-display-suffix']), { name: 'UsageError', message: /^--no-display-suffix: --display-suffix takes a value and has nothing to turn off/ })
  t.throws(() => parseGuarded(receive, ['receive', '--display-suffix= ']), { name: 'UsageError', message: /^--display-suffix: no value given/ }, 'blanks are no documented empty value')
})

t.test('the words are read as yargs reads them', async (t) => {
  const restore = COMMANDS.find((c) => c.command === 'restore') as CliCommand
  const options = valueOptions(restore.builder(yargs([])))
  const error = (...words: string[]): string | undefined => valuelessOptionError(words, options)?.message
  t.equal(error('restore', '--to', '-5'), undefined, 'a negative number is a value')
  t.equal(error('restore', '--point', '-3'), undefined, 'a negative number is a number (the command refuses it: not a cycle)')
  t.equal(error('restore', '--to', 'x', '--', '--no-to', '--to='), undefined, 'after -- every word is a positional')
  t.equal(error('restore', '--to', '--', 'x'), '--to: no value given: write --to VALUE', '-- is no value of a long flag')
  t.equal(error('restore', '--to=--no-to'), undefined, 'a value given with = may be anything')
  t.equal(error('restore', '--vm', 'x', '--to', 'false'), undefined, '--to false is the folder "false", as written')
  t.equal(error('restore', '--toDir', 'x'), undefined, 'an unknown flag is left to the strict check')
  // a value that starts with "-" (a folder named -weird): yargs reads it as flags; the message says how to give it
  t.equal(error('restore', '--to', '-weird', '--vm', 'x'), '--to: no value given (-weird is read as a flag): write --to VALUE; a value that starts with "-" is given as --to=-weird')
  t.equal(error('restore', '--to=-weird', '--vm', 'x'), undefined, 'given with =: taken')
  t.equal(error('restore', '-o', '-x'), '-o: no value given (-x is read as a flag): write -o human|json, or leave the flag out; a value that starts with "-" is given as -o=-x')
  t.equal(error('restore', '--to', '--vm', 'x'), '--to: no value given: write --to VALUE', 'a value option next: no value was meant')
  t.equal(valuelessOptionError(['restore', '--to', '--help'], options, declaredFlags(restore.builder(yargs([]))))?.message, '--to: no value given: write --to VALUE', "yargs' --help next")
  const receive = COMMANDS.find((c) => c.command === 'receive') as CliCommand
  const ry = receive.builder(yargs([]))
  const [ro, known] = [valueOptions(ry), declaredFlags(ry)]
  t.equal(
    valuelessOptionError(['receive', '--store', '--insecure'], ro, known)?.message,
    '--store: no value given: write --store VALUE, or leave the flag out',
    'a declared boolean next: no value was meant',
  )
  t.equal(valuelessOptionError(['receive', '--store', '--no-insecure'], ro, known)?.message, '--store: no value given: write --store VALUE, or leave the flag out', 'a negated boolean next')
  t.match(
    (await runMain(['restore', '--vm', 'web01', '--point', '4', '--to', '-weird'])).err,
    /^grainline: --to: no value given \(-weird is read as a flag\): .* given as --to=-weird\n/,
    'through main: the hint',
  )
  t.equal(error('restore', '-o', '-'), undefined, 'a short flag takes "-" as its value (yargs-parser), the choices check refuses it')
  t.equal(error('restore', '--no-to=x'), '--no-to: --to takes a value and has nothing to turn off: give --to VALUE')
  t.equal(error('restore', '--no-point'), '--no-point: --point takes a number and has nothing to turn off: give --point NUMBER', 'a number option negated (yargs: 0)')
  t.equal(error('restore', '--point='), '--point: no value given: write --point NUMBER', 'an empty number (yargs: 0)')
  t.equal(error('restore', '--point', '0x10'), undefined, 'a number as yargs reads one')
  t.equal(error('restore', '--no-output'), '--no-output: --output takes one of human, json and has nothing to turn off: leave the flag out, or give --output human|json')
  // yargs' camel-case forms answer too
  t.equal(error('restore', '--s3Endpoint='), '--s3Endpoint: no value given: write --s3Endpoint VALUE, or leave the flag out')
})
