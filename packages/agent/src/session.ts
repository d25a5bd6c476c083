/**
 * Opening a session with the receiver for one VM cycle (SPEC §3–4): connect
 * (TLS, bearer token), Hello → Welcome (negotiated digest, compression,
 * limits), VmOpen → VmState (the mirror's committed and in-flight cycles and
 * its generation).
 */
import {
  maxMessageBytesFor,
  PROTOCOL_VERSIONS,
  type CompressionAlgorithm,
  type DigestAlgorithm,
  type PointsDroppedMessage,
  type VmFile,
  type VmProgressMessage,
  type VmStateMessage,
  type WelcomeMessage,
} from '@grainline/protocol'
import type { ConnectOptions } from './connection.ts'
import type { VmHandle } from './driver.ts'
import { ReceiverClient, refusalError } from './receiver-client.ts'
import { AGENT_SOFTWARE } from './version.ts'
import { vmxHardwareVersion } from './vmx.ts'

/** One connection after Hello and VmOpen. */
export interface Session {
  readonly client: ReceiverClient
  readonly welcome: WelcomeMessage
  readonly state: VmStateMessage
  /**
   * the PointsDropped the receiver sent before the VmState (SPEC §4.2, v7):
   * the VmOpen's cycle is its last commit, whose Committed this agent did not
   * hear, and that commit dropped every restore point of the VM
   */
  readonly pointsDropped?: PointsDroppedMessage
}

/** A connection after Hello → Welcome, before VmOpen. */
export interface Greeting {
  readonly client: ReceiverClient
  readonly welcome: WelcomeMessage
}

/** What a connection announces in its Hello. */
export interface GreetOptions {
  readonly connect: ConnectOptions
  readonly digests: readonly DigestAlgorithm[]
  readonly compressions: readonly CompressionAlgorithm[]
  readonly maxExtentBytes: number
  readonly windowBytes: number
  /** called with every client opened (the cycle closes them all at the end) */
  readonly onClient: (c: ReceiverClient) => void
}

/** What a session announces. */
export interface SessionOptions extends GreetOptions {
  readonly vm: VmHandle
  /** the VM's config files shipped with the mirror */
  readonly files: readonly VmFile[]
  /** the mirror's name of every disk */
  readonly disks: readonly string[]
}

/**
 * Connect and say Hello: needs nothing of the VM, so a cycle starts it while
 * it reads the VM's files (`cycle.ts`). A refusal is thrown as `E_REMOTE`, a
 * lost connection as `ConnectionLost` (retryable); the client is dropped on
 * any failure.
 */
export async function greet(opts: GreetOptions): Promise<Greeting> {
  const client = await ReceiverClient.connect(opts.connect)
  opts.onClient(client)
  try {
    const welcome = await client.hello({
      versions: [...PROTOCOL_VERSIONS],
      software: AGENT_SOFTWARE,
      digests: [...opts.digests],
      compressions: [...opts.compressions],
      limits: { maxMessageBytes: maxMessageBytesFor(opts.maxExtentBytes), maxExtentBytes: opts.maxExtentBytes, windowBytes: opts.windowBytes },
    })
    if (!welcome.ok) throw refusalError('Hello', welcome.refusal)
    return { client, welcome: welcome.value }
  } catch (err) {
    client.terminate()
    throw err
  }
}

/** VmOpen for cycle `cycleNo` on a greeted connection (dropped on any failure, like {@link greet}). */
export async function openVmOn(greeting: Greeting, opts: Pick<SessionOptions, 'vm' | 'files' | 'disks'>, cycleNo: number, onProgress?: (p: VmProgressMessage) => void): Promise<Session> {
  const { client, welcome } = greeting
  try {
    const vm = opts.vm
    let pointsDropped: PointsDroppedMessage | undefined
    const state = await client.vmOpen(
      {
        vm: vm.name,
        cycle: cycleNo,
        compat: { hwVersion: vmxHardwareVersion(vm.config), datastoreType: vm.datastoreType, guestOS: vm.config.get('guestOS') ?? '' },
        files: [...opts.files],
        disks: [...opts.disks],
      },
      onProgress,
      (p) => {
        pointsDropped = p
      },
    )
    if (!state.ok) throw refusalError(`VmOpen of ${vm.name}`, state.refusal)
    return { client, welcome, state: state.value, ...(pointsDropped === undefined ? {} : { pointsDropped }) }
  } catch (err) {
    client.terminate()
    throw err
  }
}
