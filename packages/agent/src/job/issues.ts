/**
 * Validation problems of a settings file or of command-line flags, named the
 * way an operator finds them: `job.vms[2].certify: expected one of
 * md5|sha1|sha256|xxh64|none`, `--bwlimit: "20 MB/s" is not a size`. Every
 * problem of a file is reported at once, not only the first.
 */
import { AgentError } from '../errors.ts'

/** One problem: where (a path of keys and indexes) and what. */
export interface ConfigIssue {
  readonly path: readonly PropertyKey[]
  readonly message: string
}

/** The zod issue fields read here (kept structural so no zod type leaks into the API). */
interface ZodLikeIssue {
  readonly code: string
  readonly path: readonly PropertyKey[]
  readonly message: string
  readonly values?: readonly unknown[]
  readonly keys?: readonly string[]
  readonly expected?: string
  readonly input?: unknown
  readonly minimum?: number | bigint
  readonly maximum?: number | bigint
  readonly origin?: string
  readonly inclusive?: boolean
  readonly errors?: readonly (readonly ZodLikeIssue[])[]
}

const typeName = (v: unknown): string =>
  v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v === 'string' ? JSON.stringify(v) : typeof v === 'number' && !Number.isFinite(v) ? String(v) : typeof v
const EXPECTED: Readonly<Record<string, string>> = { int: 'a whole number', number: 'a number', string: 'a string', boolean: 'true or false', object: 'an object', array: 'an array' }

/** A path as written in a file: `vms[2].certify`; `root` first (`job`, `esxi.json`, `--flag`). */
export function formatIssuePath(root: string, path: readonly PropertyKey[]): string {
  let out = root
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`
    else if (typeof p === 'string' && /^[A-Za-z_$][\w$]*$/.test(p)) out += out === '' ? p : `.${p}`
    else out += `[${JSON.stringify(String(p))}]`
  }
  return out
}

/** Plain words for one zod issue (the schema's own messages for custom checks). */
export function issueMessage(issue: ZodLikeIssue, input?: unknown): string {
  switch (issue.code) {
    case 'invalid_value':
      return issue.values !== undefined && issue.values.length > 0
        ? `expected one of ${issue.values.map(String).join('|')}${input !== undefined ? `, got ${JSON.stringify(input)}` : ''}`
        : issue.message
    case 'invalid_type':
      return input === undefined ? 'is required' : `expected ${EXPECTED[issue.expected ?? ''] ?? issue.expected ?? 'another type'}, got ${typeName(input)}`
    case 'too_small':
      if (issue.origin === 'array') return `needs at least ${String(issue.minimum)} entr${issue.minimum === 1 ? 'y' : 'ies'}`
      if (issue.origin === 'string') return 'must not be empty'
      return `must be ${issue.inclusive === false ? 'more than' : 'at least'} ${String(issue.minimum)}`
    case 'too_big':
      if (issue.origin === 'array') return `has more than ${String(issue.maximum)} entries`
      if (issue.origin === 'string') return `is longer than ${String(issue.maximum)} characters`
      return `must be ${issue.inclusive === false ? 'less than' : 'at most'} ${String(issue.maximum)}`
    case 'invalid_union': {
      // the most specific branch: the one whose problems sit deepest (the input's own shape)
      const branches = issue.errors ?? []
      const best = branches
        .map((b) => b[0])
        .filter((b): b is ZodLikeIssue => b !== undefined)
        .find((b) => b.path.length > 0)
      if (best !== undefined) return issueMessage(best)
      const expected = branches.map((b) => b[0]?.expected).filter((e): e is string => e !== undefined)
      return expected.length > 0 ? `expected ${[...new Set(expected.map((e) => EXPECTED[e] ?? e))].join(' or ')}${input !== undefined ? `, got ${typeName(input)}` : ''}` : issue.message
    }
    default:
      return issue.message
  }
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let v = root
  for (const p of path) {
    if (v === null || typeof v !== 'object') return undefined
    v = (v as Record<PropertyKey, unknown>)[p]
  }
  return v
}

/**
 * Flatten zod issues into {@link ConfigIssue}s: an unknown key becomes one
 * issue per key at its own path; a union's most specific branch is kept.
 */
export function configIssues(issues: readonly ZodLikeIssue[], input: unknown): ConfigIssue[] {
  const out: ConfigIssue[] = []
  for (const i of issues) {
    if (i.code === 'unrecognized_keys' && i.keys !== undefined) {
      for (const k of i.keys) out.push({ path: [...i.path, k], message: 'unknown key' })
      continue
    }
    if (i.code === 'invalid_union' && i.errors !== undefined) {
      // the branch whose type the value has (its problems are about the value, not its type) says it best
      const informative = i.errors.filter((b) => !(b.length === 1 && b[0]?.code === 'invalid_type' && b[0].path.length === 0))
      if (informative.length === 1) {
        out.push(
          ...configIssues(
            (informative[0] as readonly ZodLikeIssue[]).map((x) => ({ ...x, path: [...i.path, ...x.path] })),
            input,
          ),
        )
        continue
      }
    }
    out.push({ path: i.path, message: issueMessage(i, valueAt(input, i.path)) })
  }
  return out
}

/** An AgentError carrying the issues, one per line. */
export class ConfigError extends AgentError {
  readonly issues: readonly string[]
  constructor(issues: readonly string[], opts: { cause?: unknown } = {}) {
    super('E_CONFIG', issues.length === 1 ? (issues[0] as string) : `${issues.length} problems:\n  ${issues.join('\n  ')}`, opts)
    this.issues = issues
  }
}

/**
 * Render issues under `root`: `job.vms[2].certify: expected one of …`.
 * `rename` may name an issue's place otherwise (a key given by a flag: `--certify`).
 */
export function describeIssues(root: string, issues: readonly ConfigIssue[], rename: (path: readonly PropertyKey[]) => string | undefined = () => undefined): string[] {
  return issues.map((i) => {
    const renamed = rename(i.path)
    if (renamed !== undefined) return `${renamed}: ${i.message}`
    // a key-like root (`job`, `--flag`) prefixes the path; a file name is followed by it
    if (/^(--)?[A-Za-z_$][\w$-]*$/.test(root)) return `${formatIssuePath(root, i.path)}: ${i.message}`
    return i.path.length === 0 ? `${root}: ${i.message}` : `${root}: ${formatIssuePath('', i.path)}: ${i.message}`
  })
}

/**
 * A `rename` for {@link describeIssues}: an issue whose path starts with one
 * of `names`' dotted keys (`email.smtp.host`) is named by its flag instead.
 */
export function renameByPrefix(names: Readonly<Record<string, string>>): (path: readonly PropertyKey[]) => string | undefined {
  return (path) => {
    for (let n = path.length; n > 0; n--) {
      const flag = names[path.slice(0, n).map(String).join('.')]
      if (flag !== undefined) return formatIssuePath(flag, path.slice(n))
    }
    return undefined
  }
}
