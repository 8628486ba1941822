// Package wocheck is vrep's write-order checker (TESTING.md §1): a
// workload that stamps every 4 KiB block it writes so that any image
// (a disk after a crash, a recovery point, a failed-over copy) can be
// decoded, and a checker that proves the image is a prefix of the
// acknowledged writes, naming every violation.
//
// Block format (little-endian), 4096 bytes:
//
//	 0  magic   [8]byte "VREPWOCK"
//	 8  disk    uint32
//	12  run     uint32
//	16  seq     uint64  unique per write
//	24  lba     uint64  the block's own index: exposes misdirected writes
//	32  part    uint16  k of a write of n blocks
//	34  parts   uint16  n
//	36  crc     uint32  CRC32C of the block with this field zero
//	40  fill    pseudo-random bytes from (run, seq, lba)
//
// The last 12 bytes of each 512-byte sector are (seq uint64, sector
// uint32): a block whose sectors come from different writes is torn.
package wocheck

import (
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
)

// BlockSize is the unit the workload writes.
const BlockSize = 4096

const (
	magic   = "VREPWOCK"
	sector  = 512
	trailer = 12
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Stamp identifies the write that produced a block.
type Stamp struct {
	Disk, Run   uint32
	Seq, LBA    uint64
	Part, Parts uint16
}

// State is what decoding a block found.
type State int

// Block states.
const (
	Empty   State = iota // all zero: never written
	Valid                // a stamped block, intact
	Torn                 // sectors from different writes
	Corrupt              // stamped, but its checksum fails
	Foreign              // not zero and not stamped
)

func (s State) String() string {
	return [...]string{"empty", "valid", "torn", "corrupt", "foreign"}[s]
}

// Encode fills b (BlockSize bytes) with the stamped block.
func Encode(b []byte, st Stamp) {
	r := rand.New(rand.NewPCG(uint64(st.Run)<<32^st.Seq, st.LBA))
	for i := 40; i < BlockSize; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	copy(b, magic)
	binary.LittleEndian.PutUint32(b[8:], st.Disk)
	binary.LittleEndian.PutUint32(b[12:], st.Run)
	binary.LittleEndian.PutUint64(b[16:], st.Seq)
	binary.LittleEndian.PutUint64(b[24:], st.LBA)
	binary.LittleEndian.PutUint16(b[32:], st.Part)
	binary.LittleEndian.PutUint16(b[34:], st.Parts)
	for s := 0; s < BlockSize/sector; s++ {
		t := b[(s+1)*sector-trailer:]
		binary.LittleEndian.PutUint64(t, st.Seq)
		binary.LittleEndian.PutUint32(t[8:], uint32(s))
	}
	binary.LittleEndian.PutUint32(b[36:], 0)
	binary.LittleEndian.PutUint32(b[36:], crc32.Checksum(b, castagnoli))
}

// Decode reads a block's stamp and state. It never fails: any bytes are
// some state.
func Decode(b []byte) (Stamp, State) {
	if len(b) != BlockSize {
		return Stamp{}, Foreign
	}
	zero := true
	for _, c := range b {
		if c != 0 {
			zero = false
			break
		}
	}
	if zero {
		return Stamp{}, Empty
	}
	st := Stamp{
		Disk: binary.LittleEndian.Uint32(b[8:]), Run: binary.LittleEndian.Uint32(b[12:]),
		Seq: binary.LittleEndian.Uint64(b[16:]), LBA: binary.LittleEndian.Uint64(b[24:]),
		Part: binary.LittleEndian.Uint16(b[32:]), Parts: binary.LittleEndian.Uint16(b[34:]),
	}
	// Torn first: a block mixing two writes also fails its checksum.
	first := binary.LittleEndian.Uint64(b[sector-trailer:])
	for s := 0; s < BlockSize/sector; s++ {
		t := b[(s+1)*sector-trailer:]
		if binary.LittleEndian.Uint64(t) != first || binary.LittleEndian.Uint32(t[8:]) != uint32(s) {
			if string(b[:8]) == magic || binary.LittleEndian.Uint32(t[8:]) == uint32(s) {
				return st, Torn
			}
			return st, Foreign
		}
	}
	if string(b[:8]) != magic {
		return st, Foreign
	}
	want := binary.LittleEndian.Uint32(b[36:])
	c := append([]byte(nil), b...)
	binary.LittleEndian.PutUint32(c[36:], 0)
	if crc32.Checksum(c, castagnoli) != want || first != st.Seq {
		return st, Corrupt
	}
	return st, Valid
}
