/**
 * The value lists of the job's enumerated options, without their schemas
 * (zod) or anything else: the CLI's flags offer them as choices
 * (`@grainline/agent/choices`) without loading the agent.
 */
import { DigestAlgorithms } from '@grainline/protocol/messages'

/** `certify` values: a digest algorithm, or `none`. */
export const CertifyChoices = [...[...DigestAlgorithms].sort(), 'none'] as const
/** Delta formats of the local driver's snapshots. */
export const DeltaFormats = ['sesparse', 'vmfssparse', 'hosted'] as const
/** Hypervisor drivers. */
export const DriverNames = ['local', 'esxi'] as const

/** When a notification is sent: after a clean run, a run that committed with a warning (report.ts runOutcome), a failed run. */
export const NotifyOutcomes = ['success', 'warning', 'failure'] as const
/** E-mail layouts: per run kind (as XSIBackup sends one for trivial-check runs and one for certified runs). */
export const EmailLayouts = ['auto', 'trivial', 'certified'] as const
/** How the SMTP connection is protected. */
export const SmtpTlsModes = ['starttls', 'implicit', 'none'] as const
