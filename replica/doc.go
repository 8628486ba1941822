// Package replica is vrep's replication, one sub-package per role, so
// that each can be read alone and the sender never links the receiver's
// index:
//
//   - wire: the protocol (frames, compression, handshake, session
//     messages); its package doc is the spec. The only thing the two
//     sides share.
//   - ship: the primary's side: the shipper that sends a tracked volume's
//     initial copy and then its change log, and retries.
//   - receive: the replica's side of a stream: authorization by
//     certificate, one stream per disk, apply, acknowledge.
//   - store: the replica's disks and history: the apply engine (image and
//     applied LSN), undo segments, the point catalog in badger, point
//     views, copy-on-write overlays and retention.
//   - health: the pure policy that judges a disk's replication health on
//     either side, from state and time.
//
// Following one write: nbd/ or fuse/ → blockdev/tracked (the change log)
// → ship.Shipper → wire frames → receive.Server → store.Disk.Apply (undo
// first, then the image) → store.Catalog → store.View at a point.
package replica
