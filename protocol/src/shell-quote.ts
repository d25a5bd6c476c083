/**
 * POSIX sh quoting: for the command lines the agent runs in the ESXi shell
 * (busybox ash), and for every command grainline prints for an operator to
 * paste (`grainline points close --store … --vm 'Demo VM' --to …`): an
 * argument with anything but `A-Za-z0-9_@%+=:,./-` is single-quoted, and a
 * single quote inside becomes `'\''`.
 */

/** Quote one argument so the shell passes it through byte for byte. */
export function shQuote(arg: string): string {
  if (arg.includes('\0')) throw new TypeError('shQuote: NUL cannot be passed through a shell')
  if (arg !== '' && /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg)) return arg
  return `'${arg.replace(/'/g, `'\\''`)}'`
}

/** Join a command and its arguments into one quoted shell command line. */
export function shJoin(argv: readonly string[]): string {
  return argv.map(shQuote).join(' ')
}
