package wire

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// Bad resync input is refused with ErrResync (or ErrFrame), never applied.
func TestResyncMessagesRefuseBadInput(t *testing.T) {
	const size = 1<<20 + 4096 // 17 chunks of 64 KiB, the last one short
	good := ResyncStart{Kind: KindResync, Hash: HashXXH3, ChunkSize: ChunkSize, Chunks: 17, Target: 9}
	if m, err := DecodeResyncStart(good.Encode(), size); err != nil || m != good {
		t.Fatalf("round trip: %+v, %v", m, err)
	}
	for name, m := range map[string]ResyncStart{
		"chunk count not matching the disk": {Kind: KindResync, Hash: HashXXH3, ChunkSize: ChunkSize, Chunks: 16},
		"unknown kind":                      {Kind: 9, Hash: HashXXH3, ChunkSize: ChunkSize, Chunks: 17},
		"unknown hash":                      {Kind: KindResync, Hash: 2, ChunkSize: ChunkSize, Chunks: 17},
		"chunk size not 4 KiB aligned":      {Kind: KindResync, Hash: HashXXH3, ChunkSize: 5000, Chunks: 210},
		"chunk size too large":              {Kind: KindResync, Hash: HashXXH3, ChunkSize: 8 << 20, Chunks: 1},
	} {
		if _, err := DecodeResyncStart(m.Encode(), size); !errors.Is(err, ErrResync) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := DecodeResyncStart(good.Encode()[:20], size); !errors.Is(err, ErrFrame) {
		t.Errorf("short start: %v", err)
	}
	sums := []Sum{SumChunk([]byte("a")), SumChunk([]byte("b"))}
	body := EncodeHashes(4, sums)
	if got, err := DecodeHashes(body, 4, 17); err != nil || len(got) != 2 || got[1] != sums[1] {
		t.Fatalf("hashes round trip: %v", err)
	}
	for name, c := range map[string]struct {
		body       []byte
		want, last uint64
	}{
		"out of order":        {body, 6, 17},
		"past the disk's end": {EncodeHashes(16, sums), 16, 17},
		"torn sum":            {body[:len(body)-1], 4, 17},
		"no sums":             {EncodeHashes(4, nil), 4, 17},
	} {
		if _, err := DecodeHashes(c.body, c.want, c.last); !errors.Is(err, ErrResync) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestHashChunks(t *testing.T) {
	data := make([]byte, 3*ChunkSize+100)
	for i := range data {
		data[i] = byte(i * 7)
	}
	r := bytes.NewReader(data)
	all, err := HashChunks(context.Background(), r, int64(len(data)), ChunkSize, 0, 4, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		lo := i * ChunkSize
		if all[i] != SumChunk(data[lo:min(lo+ChunkSize, len(data))]) {
			t.Fatalf("chunk %d sum differs from a serial hash", i)
		}
	}
	part, err := HashChunks(context.Background(), r, int64(len(data)), ChunkSize, 2, 2, 0)
	if err != nil || part[0] != all[2] || part[1] != all[3] {
		t.Fatalf("a range starting at chunk 2: %v", err)
	}
}

func FuzzDecodeResync(f *testing.F) {
	f.Add(ResyncStart{Kind: KindResync, Hash: HashXXH3, ChunkSize: ChunkSize, Chunks: 16, Target: 1}.Encode())
	f.Add(EncodeHashes(0, []Sum{{1}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		DecodeResyncStart(b, 1<<20)
		DecodeHashes(b, 0, 16)
		DecodeChunk(b)
		DecodeResyncDone(b)
		DecodeDiskStateFlags(b)
	})
}
