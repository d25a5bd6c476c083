/**
 * What reads a store's health offline (`grainline status`), as a narrow
 * entry point (`@grainline/receiver/store-status`): the same functions as
 * the package's index, without the server, the metrics (prom-client) or the
 * S3 archive (the AWS SDK) that the index also loads.
 */
export { loadReceiverConfig } from './config.ts'
export { storeOverview } from './store-overview.ts'
export type { StoreOverview } from './store-overview.ts'
export { HealthStates } from './store-health.ts'
export type { StoreHealth } from './store-health.ts'
export type { DiskStatus, VmStatus } from './store-admin.ts'
export { isCephStore, parseCephStore } from './store/ceph/ceph-store.ts'
export { cephStoreReader } from './store/ceph/ceph-overview.ts'
export type { CephTarget } from './store/ceph/rbd-cli.ts'
