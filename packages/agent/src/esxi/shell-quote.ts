/**
 * POSIX sh quoting for command lines run by the ESXi shell (busybox ash).
 * Every argument is single-quoted; a single quote inside becomes `'\''`.
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
