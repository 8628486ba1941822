// Package wire is the replication protocol between a primary and a
// replica, shared by both sides and nothing else: frames, compression,
// the handshake and the messages of a disk stream. This file is its spec.
//
// # Transport
//
// TCP with TLS 1.3 and mutual X.509 authentication (internal/pki); the
// replica authorizes a primary by the name in its certificate, never by
// anything the primary says in a frame.
//
// # Frames (version 4)
//
// Every message is one frame: a 16-byte header, then the body.
// Little-endian; every constant is part of the format.
//
//	 0  length   uint32  body bytes on the wire (at most MaxWire)
//	 4  type     uint8   the message type
//	 5  codec    uint8   0 none, 1 s2, 2 zstd: how the body is compressed
//	 6  reserved uint16  zero
//	 8  rawlen   uint32  body bytes once decompressed (at most MaxBody)
//	12  crc      uint32  CRC32C of the decompressed body
//
// The CRC covers the body as the sender built it, so a flipped bit, a bad
// decompressor or a truncation is caught before anything is applied. A
// decoder allocates at most MaxBody per frame, whatever the header claims.
//
// # Handshake
//
// The primary sends Hello (version uint16, codecs uint8 bitmask: bit 0
// none, 1 s2, 2 zstd; preferred codec uint8). The replica answers Welcome
// (version uint16, codec uint8): the primary's preferred codec when the
// replica supports it, else the best codec both support. Both then
// compress their frames with it; a frame that does not shrink is sent
// uncompressed (codec 0).
//
// # Records
//
// A Records body is: disk name (uint16 length, bytes), count uint32, then
// count change-log records in the hrl segment framing (32-byte header
// with CRC32C, payload), in LSN order. The replica verifies every record's
// own checksum, so the record checksum made when the VM wrote the block
// protects it all the way to the replica image. The session messages are
// specified in session.go, resync and verify in resync.go.
//
// A replica refuses a Hello of another version with one sentence naming
// both versions (ErrVersion): peers upgrade together.
//
// # Errors
//
// Either side may end a stream with Error (code uint16, message), then
// close. The code says what the primary does next: 1 retry with backoff;
// 2 unauthorized, 3 bad request and 4 resync stop replication for the
// operator (Critical); 5 superseded: the VM failed over to the replica,
// which refuses every stream of the VM's disks from then on (fencing),
// and the primary fences its copy: it refuses writes, so that two
// writable copies of one VM never both go on. The message names the VM,
// its new generation and the failover's time.
package wire
