/** Comparing the retention a job asked of the receiver with what it applied (SPEC §5.5). */
import type { RetentionSpec } from '@grainline/protocol'

const RULES = ['keep', 'maxAgeSeconds', 'maxBytes', 'hourly', 'daily', 'weekly', 'monthly'] as const

/** Each rule the receiver applied differently, as `keep 100 → 48` (0 = the rule left out). Pure. */
export function retentionDifferences(requested: RetentionSpec, applied: RetentionSpec): string[] {
  return RULES.filter((r) => requested[r] !== applied[r]).map((r) => `${r} ${requested[r]} → ${applied[r]}`)
}
