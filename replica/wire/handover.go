package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"

	"github.com/vrep-io/vrep/internal/names"
)

// A planned failover (since version 4) hands a VM over on a session of
// its own: after
// Welcome, instead of OpenDisk, the primary sends
//
//	Promote   JSON of Promote: the VM, its relationship's generation,
//	          each disk with its size and the LSN the primary's log ends
//	          at (every record through it acknowledged durable), and the
//	          address the new primary replicates back to
//
// and the replica answers
//
//	Promoted  JSON of Promoted: the new generation, and for each disk
//	          the LSN its new log starts after (the reverse stream ships
//	          from the next one; the old primary's image is the disk at
//	          that LSN)
//
// then, once the old primary's image is the replica copy, the primary
// sends Adopted (empty) and closes: the new primary's reverse streams may
// connect at once rather than at their next retry. An Adopted that never
// comes changes nothing but that wait.
//
// The replica's answer may also be Error (CodeSuperseded when the VM already runs elsewhere at a
// higher generation, CodeResync when a disk lacks records, CodeRetry
// when the replica cannot now, CodeBadRequest when it cannot ever). A
// Promote is idempotent: asked again for the same generation, a replica
// that promoted the VM answers the same Promoted, so a primary that lost
// the answer asks again. A replica of an earlier build answers
// CodeBadRequest for the unknown message: nothing changes.

// Handover messages. Part of the format; do not change.
const (
	MsgPromote  MsgType = 19
	MsgPromoted MsgType = 20
	MsgAdopted  MsgType = 21
	MsgReverse  MsgType = 22
	MsgReversed MsgType = 23
	// MsgReverseData opens a disk's diverged ranges, sent from the new
	// primary to the old one once it keeps the replica: JSON of
	// ReverseData; the replica answers Ack 0 (or Error); then ResyncChunk
	// frames (chunk index and data, in increasing order, only the
	// diverged chunks), ResyncMark frames (every chunk before the mark is
	// durable), and ResyncDone (target 0): the replica answers Ack 0 once
	// the image is the new primary's disk at LSN 0. Each chunk's old
	// content is kept as history, so the split-brain point stays readable.
	MsgReverseData MsgType = 26
)

// ReverseData opens the transfer of a disk's diverged ranges.
type ReverseData struct {
	Disk      string `json:"disk"`
	Size      int64  `json:"size"`
	ChunkSize int    `json:"chunk_size"`
}

// Encode returns the message body.
func (r ReverseData) Encode() []byte { b, _ := json.Marshal(r); return b }

// DecodeReverseData decodes and checks a ReverseData body.
func DecodeReverseData(b []byte) (ReverseData, error) {
	var r ReverseData
	if err := decodeStrict(b, &r); err != nil {
		return ReverseData{}, err
	}
	if _, _, err := names.Disk(r.Disk); err != nil {
		return ReverseData{}, fmt.Errorf("%w: %v", ErrFrame, err)
	}
	if r.Size <= 0 || r.Size > 1<<50 || r.ChunkSize < 512 || r.ChunkSize > MaxChunkSize || r.ChunkSize&(r.ChunkSize-1) != 0 {
		return ReverseData{}, fmt.Errorf("%w: reverse data of a %d-byte disk in %d-byte chunks", ErrFrame, r.Size, r.ChunkSize)
	}
	return r, nil
}

// Reverse replication after an unplanned failover: the host the VM
// failed over to (it runs the VM now, at a higher generation) asks the
// old primary, back, to keep the VM's replica, on a session of its own:
//
//	Reverse   JSON of Reverse: the VM, its generation on the new primary,
//	          the failover point, and each disk with its size
//	Reversed  JSON of Reversed: each disk the old primary holds now as the
//	          replica copy (LSN 0: a resync brings it to the new
//	          primary's disk, sending only what differs); its writes
//	          after the failover point are kept there as a split-brain
//	          point
//
// or Error (CodeSuperseded when the old primary runs the VM at the same
// or a higher generation and was never superseded). Idempotent as
// Promote.

// maxHandover bounds a Promote or Promoted body.
const maxHandover = 64 << 10

// HandoverDisk is a disk in Promote and Promoted.
type HandoverDisk struct {
	Disk string `json:"disk"`           // VM/DISK
	Size int64  `json:"size,omitempty"` // Promote only
	LSN  uint64 `json:"lsn"`
}

// Promote asks the replica to take the VM over.
type Promote struct {
	VM         string         `json:"vm"`
	Generation uint64         `json:"generation"` // the VM's generation on the primary
	Disks      []HandoverDisk `json:"disks"`
	// Reverse is where the new primary replicates the VM to: the old
	// primary's replication listener, host:port.
	Reverse string `json:"reverse"`
	// Point is the id of the final point, for the record.
	Point uint64 `json:"point,string,omitempty"`
}

// Promoted answers Promote.
type Promoted struct {
	Generation uint64         `json:"generation"`
	Disks      []HandoverDisk `json:"disks"`
}

// Encode returns the message body.
func (p Promote) Encode() []byte { b, _ := json.Marshal(p); return b }

// Encode returns the message body.
func (p Promoted) Encode() []byte { b, _ := json.Marshal(p); return b }

func decodeStrict(b []byte, v any) error {
	if len(b) > maxHandover {
		return fmt.Errorf("%w: handover message of %d bytes", ErrFrame, len(b))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: handover message: %v", ErrFrame, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: handover message: data after the JSON", ErrFrame)
	}
	return nil
}

// checkDisks checks a handover's disk list: each a disk of vm, once.
func checkDisks(vm string, disks []HandoverDisk, sizes bool) error {
	if len(disks) == 0 || len(disks) > 256 {
		return fmt.Errorf("%w: handover of %d disks", ErrFrame, len(disks))
	}
	seen := map[string]bool{}
	for _, d := range disks {
		v, _, err := names.Disk(d.Disk)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrFrame, err)
		}
		if v != vm {
			return fmt.Errorf("%w: disk %s is not a disk of VM %s", ErrFrame, d.Disk, vm)
		}
		if seen[d.Disk] {
			return fmt.Errorf("%w: disk %s named twice", ErrFrame, d.Disk)
		}
		seen[d.Disk] = true
		if sizes && (d.Size <= 0 || d.Size > 1<<50) {
			return fmt.Errorf("%w: disk %s of %d bytes", ErrFrame, d.Disk, d.Size)
		}
	}
	return nil
}

// DecodePromote decodes and checks a Promote body.
func DecodePromote(b []byte) (Promote, error) {
	var p Promote
	if err := decodeStrict(b, &p); err != nil {
		return Promote{}, err
	}
	if err := names.Part(p.VM); err != nil {
		return Promote{}, fmt.Errorf("%w: %v", ErrFrame, err)
	}
	if err := checkDisks(p.VM, p.Disks, true); err != nil {
		return Promote{}, err
	}
	if _, _, err := net.SplitHostPort(p.Reverse); err != nil {
		return Promote{}, fmt.Errorf("%w: reverse address %q: %v", ErrFrame, p.Reverse, err)
	}
	return p, nil
}

// DecodePromoted decodes and checks a Promoted body for the VM vm.
func DecodePromoted(b []byte, vm string) (Promoted, error) {
	var p Promoted
	if err := decodeStrict(b, &p); err != nil {
		return Promoted{}, err
	}
	if p.Generation == 0 {
		return Promoted{}, fmt.Errorf("%w: promoted at generation 0", ErrFrame)
	}
	if err := checkDisks(vm, p.Disks, false); err != nil {
		return Promoted{}, err
	}
	return p, nil
}

// Reverse asks the old primary to keep the VM's replica.
type Reverse struct {
	VM         string         `json:"vm"`
	Generation uint64         `json:"generation"`
	Point      uint64         `json:"point,string"`
	Disks      []HandoverDisk `json:"disks"`
}

// Reversed answers Reverse.
type Reversed struct {
	Disks []ReversedDisk `json:"disks"`
}

// ReversedDisk is a disk the old primary keeps the replica of, and what
// it wrote after the failover point, as far as its log can tell.
type ReversedDisk struct {
	Disk string `json:"disk"`
	LSN  uint64 `json:"lsn"` // the replica copy's LSN (0)
	// Known says whether Extents holds every range the old primary wrote
	// after the point that the new primary never applied (its log still
	// held them); if not, a checksum compare finds what diverged.
	Known bool `json:"known"`
	// Extents: offset and length, uint64 little-endian each, per range.
	Extents []byte `json:"extents,omitempty"`
}

// MaxReversedExtents bounds the ranges a Reversed answer may carry, all
// its disks together (so that it fits a frame): past it, the old primary
// says Known false and a checksum compare runs.
const MaxReversedExtents = 1 << 20

// Encode returns the message body.
func (r Reverse) Encode() []byte { b, _ := json.Marshal(r); return b }

// Encode returns the message body.
func (r Reversed) Encode() []byte { b, _ := json.Marshal(r); return b }

// DecodeReverse decodes and checks a Reverse body.
func DecodeReverse(b []byte) (Reverse, error) {
	var r Reverse
	if err := decodeStrict(b, &r); err != nil {
		return Reverse{}, err
	}
	if err := names.Part(r.VM); err != nil {
		return Reverse{}, fmt.Errorf("%w: %v", ErrFrame, err)
	}
	if r.Generation < 2 {
		return Reverse{}, fmt.Errorf("%w: reverse at generation %d (a failed-over VM is at 2 or more)", ErrFrame, r.Generation)
	}
	return r, checkDisks(r.VM, r.Disks, true)
}

// DecodeReversed decodes and checks a Reversed body for the VM vm.
func DecodeReversed(b []byte, vm string) (Reversed, error) {
	var r Reversed
	if len(b) > MaxBody {
		return Reversed{}, fmt.Errorf("%w: reversed of %d bytes", ErrFrame, len(b))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil || dec.More() {
		return Reversed{}, fmt.Errorf("%w: reversed message: %v", ErrFrame, err)
	}
	hd := make([]HandoverDisk, len(r.Disks))
	total := 0
	for i, d := range r.Disks {
		if total += len(d.Extents) / 16; total > MaxReversedExtents {
			return Reversed{}, fmt.Errorf("%w: more than %d extents", ErrFrame, MaxReversedExtents)
		}
		hd[i] = HandoverDisk{Disk: d.Disk, LSN: d.LSN}
		if len(d.Extents)%16 != 0 || len(d.Extents)/16 > MaxReversedExtents || !d.Known && len(d.Extents) > 0 {
			return Reversed{}, fmt.Errorf("%w: disk %s: %d bytes of extents", ErrFrame, d.Disk, len(d.Extents))
		}
		for _, e := range UnpackExtents(d.Extents) {
			if e[0] < 0 || e[1] <= 0 || e[0] > 1<<50 || e[1] > 1<<50 {
				return Reversed{}, fmt.Errorf("%w: disk %s: extent %d+%d", ErrFrame, d.Disk, e[0], e[1])
			}
		}
	}
	return r, checkDisks(vm, hd, false)
}

// PackExtents packs offset and length pairs for ReversedDisk.Extents.
func PackExtents(ext [][2]int64) []byte {
	b := make([]byte, 0, 16*len(ext))
	for _, e := range ext {
		b = binary.LittleEndian.AppendUint64(b, uint64(e[0]))
		b = binary.LittleEndian.AppendUint64(b, uint64(e[1]))
	}
	return b
}

// UnpackExtents unpacks what PackExtents packed (len(b) a multiple of 16).
func UnpackExtents(b []byte) [][2]int64 {
	out := make([][2]int64, 0, len(b)/16)
	for ; len(b) >= 16; b = b[16:] {
		out = append(out, [2]int64{int64(binary.LittleEndian.Uint64(b)), int64(binary.LittleEndian.Uint64(b[8:]))})
	}
	return out
}
