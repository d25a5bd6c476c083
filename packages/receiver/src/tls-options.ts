/**
 * TLS settings of the receiver's listeners (the replication WebSocket server and
 * the HTTP listener).
 *
 * The server's preference puts TLS_AES_128_GCM_SHA256 first: on a CPU with AES-NI
 * it is the cheapest TLS 1.3 suite per byte (Node's default order prefers
 * AES-256-GCM, ~10–30 % more CPU per byte for the bulk data; see
 * `node scripts/bench-transport.mjs --sinks`), and it is the one suite every TLS
 * 1.3 client must implement (RFC 8446 §9.1). The other TLS 1.3 suites and Node's
 * default TLS 1.2 list stay accepted; the server picks from what the client offers.
 */
import { DEFAULT_CIPHERS } from 'node:tls'

const FIRST = 'TLS_AES_128_GCM_SHA256'

/** Options spread into `https.createServer` / `tls.createServer` of the receiver. */
export const RECEIVER_TLS_OPTIONS = Object.freeze({
  ciphers: [FIRST, ...DEFAULT_CIPHERS.split(':').filter((c) => c !== FIRST)].join(':'),
  honorCipherOrder: true,
})
