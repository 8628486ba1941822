// Package hrl is the change log of one protected disk: every write, trim,
// write-zeroes and recovery-point marker, in the order the disk saw them,
// in segment files. It is vrep's .hrl file.
//
// # Format (version 1)
//
// All integers are little-endian. Every constant below is part of the
// format; do not change it without bumping Version.
//
// A log is a directory of segment files named by the LSN of their first
// record, as 16 lower-case hex digits: 0000000000000001.hrl. Each starts
// with a 32-byte header:
//
//	 0  magic     [8]byte  "VREPHRL\n"
//	 8  version   uint16   1
//	10  reserved  [6]byte  zero
//	16  first     uint64   LSN of the segment's first record
//	24  reserved  uint32   zero
//	28  crc       uint32   CRC32C (Castagnoli) of bytes 0..27
//
// Records follow back to back, unpadded; each is a 32-byte header and a
// payload:
//
//	 0  crc       uint32   CRC32C of the payload, then of header bytes 4..31
//	 4  length    uint32   payload bytes (at most MaxPayload)
//	 8  type      uint8    1 write, 2 trim, 3 zero, 4 marker, 5 sync
//	 9  flags     uint8    write: bit 0 FUA; zero: bit 0 NO_HOLE
//	10  reserved  uint16   zero
//	12  span      uint32   disk bytes covered (write: = length; trim, zero:
//	                       the range; marker, sync: 0)
//	16  lsn       uint64   log sequence number
//	24  offset    uint64   write, trim, zero: disk offset; sync: the segment
//	                       file offset that was durable when it was written;
//	                       marker: 0
//
// The CRC covers the payload first so that the bulk of a record is
// checksummed before the writer takes its ordering lock. The LSN inside
// the checksum makes stale bytes of a reused file fail the check.
//
// Write, trim, zero and marker records carry consecutive LSNs: a
// segment's first record has the LSN in its header, every later one the
// previous plus one, and a segment's first LSN is the previous segment's
// last plus one. A sync record repeats the LSN before it (first-1 when it
// opens a segment) and is not shipped: it records that an fsync of the
// segment up to its offset completed.
//
// A marker's payload (see Marker) is:
//
//	 0  id        uint64   point id, the same on every disk of the group
//	 8  time      int64    Unix nanoseconds
//	16  kind      uint8    1 crash-consistent, 2 app-consistent
//	17  glen      uint8    length of the group name
//	18  group     [glen]byte
//
// # Recovery
//
// At Open every segment is read, in LSN order, and its records checked
// (frame, CRC, shape, sequence) until the first bad spot: a bad header or
// record (short, zeroed, failing its CRC, out of sequence) or a gap between
// segments. The log's good records end there. What follows is a torn tail
// (Torn), cut off: the segment is truncated at the spot (removed whole if
// the spot is its header or a gap before it), and every later segment is
// removed. It is corruption instead, reported as a *CorruptionError
// (IsCorruption) and never skipped, when a valid sync record after the
// spot, in its segment or a later one, says the bad bytes had been made
// durable. Sync records are
// what let recovery tell a tail that a crash left short, with holes or
// with a reused file's old bytes, from damage to data that was already
// durable. An I/O error while reading is neither: Open fails with it and
// cuts nothing.
//
// Check judges a log by the same reader and the same rule without
// changing it: a torn tail is reported with the bytes Open would cut, and
// corruption exactly where Open would report it.
//
// # Reused files
//
// With Options.Recycle a dropped segment file is renamed to FIRST.free
// and later renamed to a new segment's name and written over from byte 0,
// so a new segment writes over allocated, cached pages (several times
// cheaper than filling a new file). Past a reused segment's last record
// the file holds what its earlier use left. Those bytes are never taken
// for records or for damage:
//
//   - a record left by the earlier use has an LSN below the segment's
//     first, so it fails the sequence check, like a torn record;
//   - zeros (a spare's, below, or the padding after a batch: every batch
//     written over a reused file is followed by zeros to the end of its
//     page, so that the write never reads an uncached page from the disk
//     first) read as a zeroed record header: the end of the good records,
//     never a sync record;
//   - a sealed segment ends at its last good record when the next segment
//     starts right after it (its header's first LSN is that record's LSN
//     plus one): a record torn inside it would leave a gap instead;
//   - a sync record counts only when its LSN is at least the segment's
//     first minus one: an old one cannot vouch for the new segment's bytes;
//   - Close cuts the active segment at its end, so a cleanly closed log
//     passes Check as it is.
//
// A flush-bound log (synced 16 times in a row within its active segment,
// with less than 1 MiB written between syncs: a guest flushing after each
// small write) that keeps no dropped file prepares a spare: spare.free,
// SegmentSize bytes of zeros written and made durable by a goroutine of
// its own, kept like a dropped file, so that its segments, too, write over
// written blocks (on ext4 a flush after appends into a new file or into
// reserved blocks commits the journal; after overwrites it does not: 4 KiB
// writes each followed by fdatasync went from 6.1k to 9.0k a second, the
// 99th percentile fdatasync from 207 to 164 µs). Once the spare is ready,
// the next append that would write, with a sync record after it, past the
// blocks its segment's file had written (a new file has none; a reused
// one, the whole pages of its earlier use) seals the segment early and
// goes on in the spare. A log written in bulk, or sealed often with little
// in it, makes none: zeros would cost it a segment's worth of writes for
// little gain. The writer never waits for a spare: without a kept file it
// creates a new one.
//
// A new log (no segment, no kept file) that recycles files starts over
// zeros as well: Open writes 8 MiB of them (a segment at most), durably,
// as a short spare, and the first segment is written over it. A guest that
// flushes from its first write on would otherwise commit the journal at
// each flush until the log has seen it is flush-bound and filled a spare
// (a quarter of a second here: with the zeros, a new log took 2.3 times as
// many QD1 4 KiB writes each flushed in its first 300 ms;
// bench/flushtrace). A log written in bulk pays for the 8 MiB once.
//
// A spare left by a crash, whole or not, is a kept file like any other.
// A spare that cannot be written (a full disk) is removed and logged,
// and the log goes on with new files until it is opened again.
//
// A segment file that is not reused reserves SegmentSize bytes of disk
// past its end when it is created (fallocate KEEP_SIZE), so appends need
// no block allocation; its size stays that of what was written, and the
// reservation not used is given back when it is sealed or closed.
package hrl
