package seed

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
	"time"

	"github.com/vrep-io/vrep/internal/names"
)

// Part of the format; do not change.
const (
	manifestMagic = "VRSEEDMF"
	shardMagic    = "VRSEEDSH"
	// Version is the only version written and accepted.
	Version = 1
	// HeaderSize is the size of a shard file's header.
	HeaderSize = 32
	// ManifestName is the manifest's file name in each directory.
	ManifestName = "manifest.vseed"
	// ShardExt ends each shard file's name (DISK.shard).
	ShardExt      = ".shard"
	pieceHashSize = 8
	chunkHashSize = 16
)

// Limits a manifest must respect (a decoder never allocates past them).
const (
	// MaxManifest bounds the manifest's JSON body: 256 MiB holds the
	// chunk hashes of about 16 TiB at 1 MiB chunks.
	MaxManifest = 256 << 20
	// MinChunk and MaxChunk bound the chunk size (a power of two).
	MinChunk = 64 << 10
	MaxChunk = 64 << 20
	// MaxShards bounds data plus parity shards (Reed-Solomon over GF(2^8)).
	MaxShards = 256
	// MaxDisks bounds the disks of one seed.
	MaxDisks = 256
)

var (
	// ErrManifest is wrapped by errors about a manifest that is not a
	// whole, intact manifest of this version.
	ErrManifest = errors.New("seed: bad manifest")
	// ErrDamaged is wrapped when the media are damaged beyond what the
	// parity can rebuild.
	ErrDamaged = errors.New("seed: the media are damaged beyond repair")
	// ErrNoSeed is returned when no directory given holds a finished seed.
	ErrNoSeed = errors.New("seed: no finished seed in the directories given")
	// ErrBadArgs is wrapped for arguments that cannot make a seed.
	ErrBadArgs = errors.New("seed: bad arguments")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Manifest describes a seed: what it holds and how it is coded.
type Manifest struct {
	SeedID  string    `json:"seed_id"` // 32 hex digits, random
	Created time.Time `json:"created"`
	VM      string    `json:"vm"`
	// Primary is the certificate name of the primary that exported it:
	// the replica stores the disks under that primary's root.
	Primary      string `json:"primary"`
	ChunkSize    int64  `json:"chunk_size"`
	DataShards   int    `json:"data_shards"`
	ParityShards int    `json:"parity_shards"`
	Disks        []Disk `json:"disks"`
}

// Disk is one disk of a seed.
type Disk struct {
	Name string `json:"name"` // the DISK of VM/DISK
	Size int64  `json:"size"`
	// LSN is the change-log position the seed holds the disk at: the
	// replica ships from LSN+1.
	LSN uint64 `json:"lsn"`
	// PointID and Marker are the point the seed is (its marker payload,
	// hrl.Marker), registered at LSN on import; none when Marker is empty
	// (writes came between the point and LSN).
	PointID uint64 `json:"point_id,string,omitempty"`
	Marker  []byte `json:"marker,omitempty"`
	// Zero marks the chunks not stored; Hashes has 16 bytes per stored
	// chunk.
	Zero   []byte      `json:"zero"`
	Hashes []byte      `json:"hashes"`
	Shards []ShardFile `json:"shards"`
}

// ShardFile is one shard file of a disk.
type ShardFile struct {
	Size int64  `json:"size"`
	Hash string `json:"hash"` // xxh3-128, 32 hex digits
}

// Shards is data plus parity shards.
func (m *Manifest) Shards() int { return m.DataShards + m.ParityShards }

// PieceSize is the size of a chunk's piece in each shard file.
func (m *Manifest) PieceSize() int64 {
	return (m.ChunkSize + int64(m.DataShards) - 1) / int64(m.DataShards)
}

// Chunks is the number of chunks of d.
func (m *Manifest) Chunks(d *Disk) int64 { return (d.Size + m.ChunkSize - 1) / m.ChunkSize }

// IsZero reports whether chunk c of d is all zeros (not stored).
func (d *Disk) IsZero(c int64) bool { return d.Zero[c/8]&(1<<(c%8)) != 0 }

// Stored is the number of stored chunks of d: those not marked zero
// (the zero map's padding bits past the last chunk are clear).
func (m *Manifest) Stored(d *Disk) int64 {
	n := int64(0)
	for _, b := range d.Zero {
		n += int64(8 - bits.OnesCount8(b))
	}
	return n - (int64(len(d.Zero))*8 - m.Chunks(d))
}

// ShardSize is the size of a shard file holding n pieces.
func (m *Manifest) ShardSize(n int64) int64 { return HeaderSize + n*(m.PieceSize()+pieceHashSize) }

// Disk returns the disk of that name, or nil.
func (m *Manifest) Disk(name string) *Disk {
	for i := range m.Disks {
		if m.Disks[i].Name == name {
			return &m.Disks[i]
		}
	}
	return nil
}

// Encode returns the manifest file.
func (m *Manifest) Encode() ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(body) > MaxManifest {
		return nil, fmt.Errorf("%w: the manifest would be %d bytes, more than %d", ErrBadArgs, len(body), MaxManifest)
	}
	b := make([]byte, 0, 16+len(body)+4)
	b = append(b, manifestMagic...)
	b = binary.LittleEndian.AppendUint16(b, Version)
	b = append(b, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(body)))
	b = append(b, body...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli)), nil
}

// DecodeManifest checks and decodes a manifest file. Anything but a whole,
// intact, consistent manifest is an error wrapping ErrManifest.
func DecodeManifest(b []byte) (*Manifest, error) {
	if len(b) < 20 || string(b[:8]) != manifestMagic {
		return nil, fmt.Errorf("%w: not a seed manifest", ErrManifest)
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != Version {
		return nil, fmt.Errorf("%w: version %d (this vrep reads %d)", ErrManifest, v, Version)
	}
	n := int64(binary.LittleEndian.Uint32(b[12:]))
	if n > MaxManifest || int64(len(b)) != 16+n+4 {
		return nil, fmt.Errorf("%w: truncated or oversized", ErrManifest)
	}
	if crc32.Checksum(b[:len(b)-4], castagnoli) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrManifest)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b[16 : 16+n]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrManifest, err)
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrManifest, err)
	}
	return &m, nil
}

// check says whether the manifest is consistent: every field within its
// bounds, every name safe as a path element, every table its length.
func (m *Manifest) check() error {
	if id, err := hex.DecodeString(m.SeedID); err != nil || len(id) != 16 {
		return errors.New("bad seed id")
	}
	if err := names.Part(m.VM); err != nil {
		return err
	}
	if err := names.Part(m.Primary); err != nil {
		return err
	}
	if m.ChunkSize < MinChunk || m.ChunkSize > MaxChunk || m.ChunkSize&(m.ChunkSize-1) != 0 {
		return fmt.Errorf("chunk size %d", m.ChunkSize)
	}
	if m.DataShards < 1 || m.ParityShards < 0 || m.Shards() > MaxShards {
		return fmt.Errorf("%d data and %d parity shards", m.DataShards, m.ParityShards)
	}
	if len(m.Disks) == 0 || len(m.Disks) > MaxDisks {
		return fmt.Errorf("%d disks", len(m.Disks))
	}
	seen := map[string]bool{}
	for i := range m.Disks {
		d := &m.Disks[i]
		if err := names.Part(d.Name); err != nil {
			return err
		}
		if seen[d.Name] {
			return fmt.Errorf("disk %s twice", d.Name)
		}
		seen[d.Name] = true
		if d.Size <= 0 || d.Size > 1<<60 {
			return fmt.Errorf("disk %s: size %d", d.Name, d.Size)
		}
		chunks := m.Chunks(d)
		if int64(len(d.Zero)) != (chunks+7)/8 {
			return fmt.Errorf("disk %s: zero map of %d bytes for %d chunks", d.Name, len(d.Zero), chunks)
		}
		if r := chunks % 8; r != 0 && d.Zero[len(d.Zero)-1]>>r != 0 {
			return fmt.Errorf("disk %s: zero map past the last chunk", d.Name)
		}
		stored := m.Stored(d)
		if int64(len(d.Hashes)) != stored*chunkHashSize {
			return fmt.Errorf("disk %s: %d bytes of hashes for %d stored chunks", d.Name, len(d.Hashes), stored)
		}
		if len(d.Shards) != m.Shards() {
			return fmt.Errorf("disk %s: %d shard files, not %d", d.Name, len(d.Shards), m.Shards())
		}
		for _, s := range d.Shards {
			if s.Size != m.ShardSize(stored) {
				return fmt.Errorf("disk %s: shard file of %d bytes, not %d", d.Name, s.Size, m.ShardSize(stored))
			}
			if h, err := hex.DecodeString(s.Hash); err != nil || len(h) != 16 {
				return fmt.Errorf("disk %s: bad shard hash", d.Name)
			}
		}
	}
	return nil
}

// shardHeader is a shard file's header.
type shardHeader struct {
	index, count int
	seed         [16]byte
}

func (h shardHeader) encode() []byte {
	b := make([]byte, 0, HeaderSize)
	b = append(b, shardMagic...)
	b = binary.LittleEndian.AppendUint16(b, Version)
	b = binary.LittleEndian.AppendUint16(b, uint16(h.index))
	b = binary.LittleEndian.AppendUint16(b, uint16(h.count))
	b = append(b, 0, 0)
	return append(b, h.seed[:]...)
}

func decodeShardHeader(b []byte) (shardHeader, bool) {
	if len(b) < HeaderSize || string(b[:8]) != shardMagic || binary.LittleEndian.Uint16(b[8:]) != Version {
		return shardHeader{}, false
	}
	h := shardHeader{index: int(binary.LittleEndian.Uint16(b[10:])), count: int(binary.LittleEndian.Uint16(b[12:]))}
	copy(h.seed[:], b[16:32])
	return h, h.index < h.count
}

// pieceSeed is the seed of piece j's hash in shard i: a piece read from
// the wrong place fails its check.
func pieceSeed(j int64, i int) uint64 { return uint64(j)<<16 | uint64(i) }
