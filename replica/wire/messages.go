package wire

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/names"
)

// Hello opens a session (primary → replica).
type Hello struct {
	Version uint16
	Codecs  uint8 // bitmask: 1<<CodecNone | 1<<CodecS2 | 1<<CodecZstd
	Prefer  Codec
}

// Welcome answers Hello (replica → primary).
type Welcome struct {
	Version uint16
	Codec   Codec
}

// AllCodecs is the bitmask of every codec this build speaks.
const AllCodecs = 1<<CodecNone | 1<<CodecS2 | 1<<CodecZstd

// ErrVersion is returned when the peers share no protocol version.
var ErrVersion = errors.New("replica: protocol version mismatch")

// Encode returns the message body.
func (h Hello) Encode() []byte {
	b := binary.LittleEndian.AppendUint16(nil, h.Version)
	return append(b, h.Codecs, byte(h.Prefer))
}

// DecodeHello decodes a Hello body.
func DecodeHello(b []byte) (Hello, error) {
	if len(b) != 4 {
		return Hello{}, fmt.Errorf("%w: hello of %d bytes", ErrFrame, len(b))
	}
	return Hello{Version: binary.LittleEndian.Uint16(b), Codecs: b[2], Prefer: Codec(b[3])}, nil
}

// Encode returns the message body.
func (w Welcome) Encode() []byte {
	return append(binary.LittleEndian.AppendUint16(nil, w.Version), byte(w.Codec))
}

// DecodeWelcome decodes a Welcome body.
func DecodeWelcome(b []byte) (Welcome, error) {
	if len(b) != 3 || Codec(b[2]) > CodecZstd {
		return Welcome{}, fmt.Errorf("%w: bad welcome", ErrFrame)
	}
	return Welcome{Version: binary.LittleEndian.Uint16(b), Codec: Codec(b[2])}, nil
}

// Negotiate is the replica's answer to a Hello, given the codecs it
// supports: the primary's preference if shared, else the best shared one.
func Negotiate(h Hello, supported uint8) (Welcome, error) {
	if h.Version != Version {
		return Welcome{}, fmt.Errorf("%w: the primary speaks protocol version %d and this replica %d; run the same vrep release on both hosts", ErrVersion, h.Version, Version)
	}
	shared := h.Codecs & supported
	if h.Prefer <= CodecZstd && shared&(1<<h.Prefer) != 0 {
		return Welcome{Version: Version, Codec: h.Prefer}, nil
	}
	for _, c := range []Codec{CodecZstd, CodecS2, CodecNone} {
		if shared&(1<<c) != 0 {
			return Welcome{Version: Version, Codec: c}, nil
		}
	}
	return Welcome{}, errors.New("replica: no compression in common (not even none)")
}

// AppendRecords appends a Records body for disk to dst.
func AppendRecords(dst []byte, disk string, recs []hrl.Record) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(disk)))
	dst = append(dst, disk...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(recs)))
	for _, r := range recs {
		dst = hrl.AppendRecord(dst, r)
	}
	return dst
}

// DecodeRecords checks a Records body and calls fn for each record, in
// order. Every record's own checksum is verified, LSNs must be
// consecutive, and the disk name must be valid; on any error nothing after
// the bad record is delivered. Payloads alias b.
func DecodeRecords(b []byte, fn func(hrl.Record) error) (disk string, err error) {
	return decodeRecords(b, false, fn)
}

// AppendRecordsRange appends a RecordsRange body: the LSN range from
// through through that the records stand for, then a Records body.
func AppendRecordsRange(dst []byte, from, through uint64, disk string, recs []hrl.Record) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, from)
	dst = binary.LittleEndian.AppendUint64(dst, through)
	return AppendRecords(dst, disk, recs)
}

// DecodeRecordsRange checks a RecordsRange body as DecodeRecords does,
// except that LSNs may skip (coalesced records), and returns the range:
// every record's LSN lies in it, in increasing order.
func DecodeRecordsRange(b []byte, fn func(hrl.Record) error) (disk string, from, through uint64, err error) {
	if len(b) < 16 {
		return "", 0, 0, fmt.Errorf("%w: short records-range message", ErrFrame)
	}
	from, through = binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:])
	if from == 0 || through < from {
		return "", 0, 0, fmt.Errorf("%w: records range %d..%d", ErrFrame, from, through)
	}
	disk, err = decodeRecords(b[16:], true, func(r hrl.Record) error {
		if r.LSN < from || r.LSN > through {
			return fmt.Errorf("%w: record LSN %d outside its range %d..%d", ErrFrame, r.LSN, from, through)
		}
		return fn(r)
	})
	return disk, from, through, err
}

func decodeRecords(b []byte, gaps bool, fn func(hrl.Record) error) (disk string, err error) {
	if len(b) < 2 {
		return "", fmt.Errorf("%w: short records message", ErrFrame)
	}
	n := int(binary.LittleEndian.Uint16(b))
	if len(b) < 2+n+4 {
		return "", fmt.Errorf("%w: short records message", ErrFrame)
	}
	disk = string(b[2 : 2+n])
	if _, _, err := names.Disk(disk); err != nil {
		return "", fmt.Errorf("%w: %v", ErrFrame, err)
	}
	count := binary.LittleEndian.Uint32(b[2+n:])
	b = b[2+n+4:]
	if uint64(count) > uint64(len(b))/hrl.RecHeaderSize {
		return "", fmt.Errorf("%w: %d records cannot fit in %d bytes", ErrFrame, count, len(b))
	}
	var prev uint64
	for i := range count {
		r, size, err := hrl.DecodeRecord(b)
		if err != nil {
			return disk, fmt.Errorf("%w: record %d: %v", ErrFrame, i, err)
		}
		if r.Type == hrl.TypeSync {
			return disk, fmt.Errorf("%w: record %d: sync records are not shipped", ErrFrame, i)
		}
		if i > 0 && (!gaps && r.LSN != prev+1 || gaps && r.LSN <= prev) {
			return disk, fmt.Errorf("%w: record %d: LSN %d after %d", ErrFrame, i, r.LSN, prev)
		}
		prev = r.LSN
		if err := fn(r); err != nil {
			return disk, err
		}
		b = b[size:]
	}
	if len(b) != 0 {
		return disk, fmt.Errorf("%w: %d bytes after the last record", ErrFrame, len(b))
	}
	return disk, nil
}
