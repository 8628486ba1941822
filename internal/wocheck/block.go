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
//
// # The serial rule
//
// With one write in flight at a time (CheckSerial, CheckPoint), an image
// must be the image before the run plus exactly the writes up to some K,
// in order, where K includes every write acknowledged before the last
// completed flush was submitted (or before the point was asked for).
//
// # The concurrent rule
//
// CheckConcurrent and CheckConcurrentPoint check the images of a workload
// that keeps many writes in flight (WriteConcurrent: a queue depth, over
// one or more connections), which the device may complete in any order;
// Check and CheckAt pick the rule by the history's depth.
//
// Every write w of the history has a submit time sub(w), taken before its
// request is sent, and, if it was acknowledged, an ack time ack(w), taken
// after its reply arrived. Both are read on the workload's side, so the
// device received w after sub(w) and had completed it before ack(w).
//
// Order. w precedes v (w ≺ v) when w was acknowledged before v was
// submitted: ack(w) < sub(v). The device then had w complete before it
// ever saw v, so where they overlap v must win. Two writes neither of
// which precedes the other were in flight together; where they overlap
// either may win, block by block: every outcome is legal.
//
// Required writes. An image must hold, block by block, every required
// write or a write that may have landed after it (one that does not
// precede it). A write is required when
//
//   - it is durable: acknowledged before a completed flush was submitted
//     (crash images), or acknowledged before the point was asked for
//     (points);
//   - it precedes a write present in the image: let K be the present
//     write submitted last (the highest seq present); every write
//     acknowledged before sub(K) must be in, since the device completed
//     it before K existed. Writes in flight with K may be missing;
//   - it is present: a write found in one block must be whole in every
//     block it covered (or overwritten there by a write it does not
//     precede): no partial multi-block writes.
//
// The check. Every block must decode to one of: the block before the run
// (when no required write covers it), or a valid stamp of this run whose
// seq is a write of the history that covered that block (else: unknown
// seq, misdirected) and that no required write covering the block
// supersedes, that is x with no required r over the block such that
// x ≺ r (else: stale, a write was dropped or reordered; or, when the
// block still holds its old content: dropped, or acknowledged write lost
// when r was durable). A torn, corrupt or foreign block that was not so
// before is a violation. For a point taken at time T, no block may hold a
// write submitted after T.
//
// With one write in flight at a time every write precedes the next, the
// order is total, and the rule is the serial one of CheckSerial (the
// tests check that both agree on serial histories).
//
// The self-test (nbd_test.go) runs the workload at queue depth 32
// through the real NBD server over devices that acknowledge a write
// before its group commit is written, apply two writes in swapped order,
// or over a connection whose replies carry another request's handle:
// each is caught, at the points its flushes take or in its crash image.
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
