package wire

import (
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/zeebo/blake3"
	"github.com/zeebo/xxh3"
)

// BenchmarkChunkHash measures the two candidate chunk hashes on one core
// at the chunk sizes a resync may use; the choice in resync.go rests on
// its figures (run: go test -run - -bench ChunkHash -cpu 1 ./replica/wire).
func BenchmarkChunkHash(b *testing.B) {
	for _, size := range []int{64 << 10, 256 << 10, 1 << 20} {
		buf := make([]byte, size)
		rand.Read(buf)
		b.Run(fmt.Sprintf("xxh3-128/%dK", size>>10), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				_ = xxh3.Hash128(buf)
			}
		})
		b.Run(fmt.Sprintf("blake3/%dK", size>>10), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				_ = blake3.Sum256(buf)
			}
		})
	}
}
