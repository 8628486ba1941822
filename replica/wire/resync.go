package wire

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/zeebo/xxh3"
	"golang.org/x/sync/errgroup"

	"github.com/vrep-io/vrep/internal/procs"
)

// Resync and verify (since version 3; ResyncResume, ResyncDurable and
// the held target of ResyncFrom since version 4). A resync brings a replica that
// fell out of step (log overflow, a corrupt log, planted damage) back in
// line by comparing checksums of fixed-size chunks and sending only the
// chunks that differ; a verify compares the same way and sends nothing.
// Both run on an open disk stream, after DiskState and Settings, instead
// of (or before) records. Bodies, little-endian:
//
//	ResyncStart   kind uint8 (1 resync, 2 verify), hash uint8 (1 xxh3-128),
//	              reserved uint16 (zero), chunk size uint32, chunk count
//	              uint64 (must be the disk size divided by the chunk size,
//	              rounded up), target LSN uint64 (resync: the LSN the
//	              primary's frozen image stands for; verify: the replica
//	              point to hash, 0 for the image)        primary → replica
//	ResyncFrom    next chunk uint64, held target uint64: the replica's
//	              durable progress, every chunk before next equal to the
//	              primary's disk at the held target (0, 0: none)
//	                                                     replica → primary
//	ResyncResume  from chunk uint64: where the comparison starts. The
//	              primary resumes at next when the held target is its
//	              target, or when it knows which chunks changed between
//	              the two (its log, or the dirty regions of an overflowed
//	              log): those below next are then sent first, whole,
//	              without comparing; else it starts at 0
//	                                                     primary → replica
//	ResyncHashes  first chunk uint64, then 16-byte sums of consecutive
//	              chunks (at most MaxHashBatch); batches follow each other
//	              without waiting, first = the previous batch's end
//	                                                     replica → primary
//	ResyncChunk   chunk index uint64, the chunk's bytes (chunk size, the
//	              last one shorter); only chunks whose sums differ (and
//	              the changed chunks a resume sends first), in increasing
//	              order                                  primary → replica
//	ResyncMark    next chunk uint64: every chunk before it has been
//	              compared and the differing ones sent. Sent at the end
//	              of each hash batch and after every MarkBytes of chunks
//	                                                     primary → replica
//	ResyncDurable next chunk uint64: the chunks before this mark are
//	              durable in the image, and so is the progress. The
//	              replica makes a mark durable once DurableBytes of
//	              chunks wait for it (or a second has passed); the
//	              primary sends no more than WindowBytes of chunks past
//	              the last durable mark, so a replica that dies costs at
//	              most that much sent again       replica → primary
//	ResyncDone    target LSN uint64, chunks sent uint64; the replica
//	              answers Ack(target) once the image is the primary's
//	              disk at target and durable (verify: Ack 0)
//	                                                     primary → replica
//
// The replica hashes ahead of the primary, so the hashes of one batch
// travel while the primary hashes and sends the chunks of the one before:
// never one round trip per chunk. A resync chunk is written to the image
// through the history path: its old content is saved first, so every
// point from before the resync stays readable during and after it. The
// records after the target LSN then follow as usual.
//
// Hash: xxh3-128 (github.com/zeebo/xxh3), the 16 bytes of Hash128 in big-
// endian order. Chosen by BenchmarkChunkHash (hash_bench_test.go) on one
// core of the build host (AMD EPYC, shared): xxh3-128 hashed 64 KiB to
// 1 MiB chunks at 16–33 GB/s, BLAKE3 (github.com/zeebo/blake3) at
// 1.3–2.2 GB/s, below the 2 GB/s per core a resync should not fall
// under, and ten times the cost for a guarantee the stream already has:
// the link is authenticated (mutual TLS) and every frame checksummed, so
// the hash only needs to tell accidental differences apart (2^-128 per
// chunk pair), not to resist a forger.
//
// Chunk size: 64 KiB (ChunkSize). Hashing speed hardly depends on it; what
// does is the bytes sent for scattered small differences (a 4 KiB write
// costs one chunk: 1 MiB chunks send 16 times as much as 64 KiB ones) and
// the hash traffic (16 bytes per chunk: 0.024% of the disk at 64 KiB).
const (
	MsgResyncStart  MsgType = 13
	MsgResyncFrom   MsgType = 14
	MsgResyncHashes MsgType = 15
	MsgResyncChunk  MsgType = 16
	MsgResyncMark   MsgType = 17
	MsgResyncDone   MsgType = 18
	// 24, not 19: the numbers after 18 were taken by other messages
	// written at the same time.
	MsgResyncResume  MsgType = 24
	MsgResyncDurable MsgType = 25
)

// Resync kinds and hashes. Part of the format; do not change.
const (
	KindResync uint8 = 1
	KindVerify uint8 = 2
	HashXXH3   uint8 = 1
)

const (
	// ChunkSize is the resync chunk size this build uses.
	ChunkSize = 64 << 10
	// MaxChunkSize bounds the chunk size a peer may ask for.
	MaxChunkSize = 4 << 20
	// MaxHashBatch bounds the sums in one ResyncHashes message.
	MaxHashBatch = 4096
	// SumSize is the size of one chunk sum.
	SumSize = 16
	// MarkBytes is how many bytes of chunks the primary sends between
	// two marks at most.
	MarkBytes = 2 << 20
	// DurableBytes is how many bytes of written chunks make the replica
	// make its next mark durable.
	DurableBytes = 2 << 20
	// WindowBytes bounds the chunk bytes the primary sends past the last
	// mark the replica said durable: what a replica that dies makes the
	// primary send again. Four marks: the replica syncs one while the
	// next ones travel.
	WindowBytes = 8 << 20
)

// Sum is a chunk checksum.
type Sum [SumSize]byte

// ErrResync is wrapped by errors about a resync exchange that does not
// add up: a hash list that does not match the disk or arrives out of
// order, a chunk out of place.
var ErrResync = errors.New("replica: bad resync exchange")

// ResyncStart opens a resync or a verify.
type ResyncStart struct {
	Kind      uint8
	Hash      uint8
	ChunkSize uint32
	Chunks    uint64
	Target    uint64
}

// Encode returns the message body.
func (m ResyncStart) Encode() []byte {
	b := []byte{m.Kind, m.Hash, 0, 0}
	b = binary.LittleEndian.AppendUint32(b, m.ChunkSize)
	b = binary.LittleEndian.AppendUint64(b, m.Chunks)
	return binary.LittleEndian.AppendUint64(b, m.Target)
}

// Chunks returns how many chunks of chunk bytes cover size bytes.
func Chunks(size int64, chunk int) uint64 {
	return uint64((size + int64(chunk) - 1) / int64(chunk))
}

// DecodeResyncStart decodes and checks a ResyncStart against the disk's
// size.
func DecodeResyncStart(b []byte, size int64) (ResyncStart, error) {
	if len(b) != 24 || b[2]|b[3] != 0 {
		return ResyncStart{}, fmt.Errorf("%w: resync start of %d bytes", ErrFrame, len(b))
	}
	m := ResyncStart{Kind: b[0], Hash: b[1], ChunkSize: binary.LittleEndian.Uint32(b[4:]),
		Chunks: binary.LittleEndian.Uint64(b[8:]), Target: binary.LittleEndian.Uint64(b[16:])}
	switch {
	case m.Kind != KindResync && m.Kind != KindVerify:
		return m, fmt.Errorf("%w: unknown resync kind %d", ErrResync, m.Kind)
	case m.Hash != HashXXH3:
		return m, fmt.Errorf("%w: unknown chunk hash %d", ErrResync, m.Hash)
	case m.ChunkSize < 4096 || m.ChunkSize > MaxChunkSize || m.ChunkSize%4096 != 0:
		return m, fmt.Errorf("%w: chunk size %d (4 KiB multiples up to %d)", ErrResync, m.ChunkSize, MaxChunkSize)
	case m.Chunks != Chunks(size, int(m.ChunkSize)):
		return m, fmt.Errorf("%w: %d chunks of %d bytes do not cover a disk of %d bytes", ErrResync, m.Chunks, m.ChunkSize, size)
	}
	return m, nil
}

// EncodeHashes returns a ResyncHashes body.
func EncodeHashes(first uint64, sums []Sum) []byte {
	b := binary.LittleEndian.AppendUint64(make([]byte, 0, 8+SumSize*len(sums)), first)
	for _, s := range sums {
		b = append(b, s[:]...)
	}
	return b
}

// DecodeHashes decodes a ResyncHashes body; it must start at want and end
// at most at chunks. The sums alias b.
func DecodeHashes(b []byte, want, chunks uint64) ([]Sum, error) {
	if len(b) < 8+SumSize || (len(b)-8)%SumSize != 0 || (len(b)-8)/SumSize > MaxHashBatch {
		return nil, fmt.Errorf("%w: hash batch of %d bytes", ErrResync, len(b))
	}
	first := binary.LittleEndian.Uint64(b)
	n := uint64(len(b)-8) / SumSize
	if first != want {
		return nil, fmt.Errorf("%w: hashes from chunk %d arrived out of order, chunk %d expected", ErrResync, first, want)
	}
	if first+n > chunks || first+n < first {
		return nil, fmt.Errorf("%w: hashes of chunks %d..%d for a disk of %d chunks", ErrResync, first, first+n-1, chunks)
	}
	sums := make([]Sum, n)
	for i := range sums {
		copy(sums[i][:], b[8+i*SumSize:])
	}
	return sums, nil
}

// EncodeChunk returns a ResyncChunk body.
func EncodeChunk(dst []byte, index uint64, data []byte) []byte {
	return append(binary.LittleEndian.AppendUint64(dst[:0], index), data...)
}

// DecodeChunk decodes a ResyncChunk body; data aliases b.
func DecodeChunk(b []byte) (index uint64, data []byte, err error) {
	if len(b) < 9 {
		return 0, nil, fmt.Errorf("%w: short resync chunk", ErrFrame)
	}
	return binary.LittleEndian.Uint64(b), b[8:], nil
}

// EncodeResyncFrom returns a ResyncFrom body.
func EncodeResyncFrom(next, held uint64) []byte {
	return binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, next), held)
}

// DecodeResyncFrom decodes a ResyncFrom body and checks it against the
// chunk count.
func DecodeResyncFrom(b []byte, chunks uint64) (next, held uint64, err error) {
	if len(b) != 16 {
		return 0, 0, fmt.Errorf("%w: resync from of %d bytes", ErrFrame, len(b))
	}
	next, held = binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:])
	if next > chunks {
		return 0, 0, fmt.Errorf("%w: the replica resumes at chunk %d of %d", ErrResync, next, chunks)
	}
	return next, held, nil
}

// EncodeResyncDone returns a ResyncDone body.
func EncodeResyncDone(target, sent uint64) []byte {
	return binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, target), sent)
}

// DecodeResyncDone decodes a ResyncDone body.
func DecodeResyncDone(b []byte) (target, sent uint64, err error) {
	if len(b) != 16 {
		return 0, 0, fmt.Errorf("%w: resync done of %d bytes", ErrFrame, len(b))
	}
	return binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:]), nil
}

// SumChunk returns the sum of one chunk.
func SumChunk(data []byte) Sum {
	return xxh3.Hash128(data).Bytes()
}

// hashTask is how many chunks one worker reads at once (at 64 KiB, 1 MiB
// reads).
const hashTask = 16

var hashBufs sync.Pool

// HashChunks returns the sums of chunks first..first+n-1 of the size-byte
// device r, read and hashed on workers goroutines (0: one per core).
func HashChunks(ctx context.Context, r io.ReaderAt, size int64, chunk int, first, n uint64, workers int) ([]Sum, error) {
	if workers <= 0 {
		workers = procs.CPUs()
	}
	sums := make([]Sum, n)
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for t := uint64(0); t < n; t += hashTask {
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			k := min(hashTask, n-t)
			off := int64(first+t) * int64(chunk)
			end := min(off+int64(k)*int64(chunk), size)
			var buf []byte
			if p, ok := hashBufs.Get().(*[]byte); ok && len(*p) >= hashTask*chunk {
				buf = *p
			} else {
				buf = make([]byte, hashTask*chunk)
			}
			defer hashBufs.Put(&buf)
			data := buf[:end-off]
			if m, err := r.ReadAt(data, off); m != len(data) {
				if err == nil {
					err = io.ErrUnexpectedEOF
				}
				return fmt.Errorf("replica: reading chunks at %d for their checksums: %w", off, err)
			}
			for i := uint64(0); i < k; i++ {
				lo := int64(i) * int64(chunk)
				sums[t+i] = SumChunk(data[lo:min(lo+int64(chunk), int64(len(data)))])
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return sums, nil
}
