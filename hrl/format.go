package hrl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Part of the format; do not change.
const (
	Version       = 1
	HeaderSize    = 32 // segment header
	RecHeaderSize = 32 // record header
	// MaxPayload bounds a record's payload; larger writes are split.
	MaxPayload = 32 << 20
	magic      = "VREPHRL\n"
	suffix     = ".hrl"
	freeSuffix = ".free" // a dropped segment file kept for reuse
)

// Type is a record type. Part of the format; do not change.
type Type uint8

// Record types.
const (
	TypeWrite  Type = 1
	TypeTrim   Type = 2
	TypeZero   Type = 3
	TypeMarker Type = 4
	TypeSync   Type = 5
)

// Record flags. Part of the format; do not change.
const (
	FlagFUA    = 1 << 0 // on TypeWrite
	FlagNoHole = 1 << 0 // on TypeZero
)

func (t Type) String() string {
	switch t {
	case TypeWrite:
		return "write"
	case TypeTrim:
		return "trim"
	case TypeZero:
		return "zero"
	case TypeMarker:
		return "marker"
	case TypeSync:
		return "sync"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt is wrapped by every *CorruptionError.
var ErrCorrupt = errors.New("hrl: corrupt change log")

// ErrClosed is returned by calls on a closed log.
var ErrClosed = errors.New("hrl: log closed")

// CorruptionError locates damage in a log: the disk needs a resync.
type CorruptionError struct {
	Segment string // file name
	Offset  int64  // file offset of the bad header or record
	Reason  string
}

func (e *CorruptionError) Error() string {
	return fmt.Sprintf("hrl: corrupt change log: %s at offset %d: %s", e.Segment, e.Offset, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptionError) Unwrap() error { return ErrCorrupt }

// IsCorruption reports whether err says a log is damaged.
func IsCorruption(err error) bool { return errors.Is(err, ErrCorrupt) }

// Record is one decoded record. Payload aliases a read buffer: it is valid
// only inside the callback that received it.
type Record struct {
	Type    Type
	Flags   uint8
	Span    uint32
	LSN     uint64
	Offset  uint64
	Payload []byte
}

func segmentName(first uint64) string { return fmt.Sprintf("%016x%s", first, suffix) }

func encodeSegmentHeader(first uint64) []byte {
	h := make([]byte, HeaderSize)
	copy(h, magic)
	binary.LittleEndian.PutUint16(h[8:], Version)
	binary.LittleEndian.PutUint64(h[16:], first)
	binary.LittleEndian.PutUint32(h[28:], crc32.Checksum(h[:28], castagnoli))
	return h
}

// decodeSegmentHeader checks a segment header and returns its first LSN.
func decodeSegmentHeader(h []byte) (uint64, error) {
	if len(h) < HeaderSize {
		return 0, errors.New("short segment header")
	}
	if string(h[:8]) != magic {
		return 0, errors.New("bad magic: not a vrep change log segment")
	}
	if v := binary.LittleEndian.Uint16(h[8:]); v != Version {
		return 0, fmt.Errorf("unsupported version %d (this build reads %d)", v, Version)
	}
	if binary.LittleEndian.Uint32(h[28:]) != crc32.Checksum(h[:28], castagnoli) {
		return 0, errors.New("segment header checksum mismatch")
	}
	return binary.LittleEndian.Uint64(h[16:]), nil
}

// putRecHeader fills h (RecHeaderSize bytes) and its checksum, given the
// CRC32C of the payload.
func putRecHeader(h []byte, payloadCRC uint32, n uint32, t Type, flags uint8, span uint32, lsn, off uint64) {
	binary.LittleEndian.PutUint32(h[4:], n)
	h[8] = byte(t)
	h[9] = flags
	h[10], h[11] = 0, 0
	binary.LittleEndian.PutUint32(h[12:], span)
	binary.LittleEndian.PutUint64(h[16:], lsn)
	binary.LittleEndian.PutUint64(h[24:], off)
	binary.LittleEndian.PutUint32(h[0:], crc32.Update(payloadCRC, castagnoli, h[4:RecHeaderSize]))
}

// parseRecHeader decodes a record header without checking its CRC.
func parseRecHeader(h []byte) (crc uint32, r Record, n uint32) {
	crc = binary.LittleEndian.Uint32(h[0:])
	n = binary.LittleEndian.Uint32(h[4:])
	r = Record{
		Type:   Type(h[8]),
		Flags:  h[9],
		Span:   binary.LittleEndian.Uint32(h[12:]),
		LSN:    binary.LittleEndian.Uint64(h[16:]),
		Offset: binary.LittleEndian.Uint64(h[24:]),
	}
	return crc, r, n
}

// checkRecord validates a decoded record's checksum and shape.
func checkRecord(h, payload []byte) (Record, error) {
	crc, r, n := parseRecHeader(h)
	if int(n) != len(payload) {
		return r, errors.New("length mismatch")
	}
	if crc32.Update(crc32.Checksum(payload, castagnoli), castagnoli, h[4:RecHeaderSize]) != crc {
		return r, errors.New("record checksum mismatch")
	}
	if h[10] != 0 || h[11] != 0 {
		return r, errors.New("reserved bytes set")
	}
	switch r.Type {
	case TypeWrite:
		if r.Span != n || n == 0 {
			return r, errors.New("write span differs from its length")
		}
	case TypeTrim, TypeZero:
		if n != 0 || r.Span == 0 {
			return r, fmt.Errorf("%v record with a payload or no span", r.Type)
		}
	case TypeMarker:
		if r.Span != 0 {
			return r, errors.New("marker with a span")
		}
		if _, err := DecodeMarker(payload); err != nil {
			return r, err
		}
	case TypeSync:
		if n != 0 || r.Span != 0 {
			return r, errors.New("sync record with a payload")
		}
	default:
		return r, fmt.Errorf("unknown record type %d", h[8])
	}
	if r.Offset+uint64(r.Span) < r.Offset {
		return r, errors.New("range overflows")
	}
	r.Payload = payload
	return r, nil
}

// Marker kinds. Part of the format; do not change.
const (
	KindCrash uint8 = 1
	KindApp   uint8 = 2
)

// KindName is the operator's word for a point kind.
func KindName(k uint8) string {
	if k == KindApp {
		return "app-consistent"
	}
	return "crash-consistent"
}

// Marker is the payload of a marker record: a recovery point.
type Marker struct {
	ID    uint64
	Time  int64 // Unix nanoseconds
	Kind  uint8 // KindCrash or KindApp
	Group string
}

// MaxGroupName bounds a consistency group's name.
const MaxGroupName = 255

// Encode returns the marker's payload.
func (m Marker) Encode() ([]byte, error) {
	if len(m.Group) > MaxGroupName {
		return nil, fmt.Errorf("hrl: group name longer than %d bytes", MaxGroupName)
	}
	if m.Kind != KindCrash && m.Kind != KindApp {
		return nil, fmt.Errorf("hrl: unknown point kind %d", m.Kind)
	}
	b := make([]byte, 18+len(m.Group))
	binary.LittleEndian.PutUint64(b, m.ID)
	binary.LittleEndian.PutUint64(b[8:], uint64(m.Time))
	b[16] = m.Kind
	b[17] = byte(len(m.Group))
	copy(b[18:], m.Group)
	return b, nil
}

// DecodeMarker decodes a marker payload.
func DecodeMarker(b []byte) (Marker, error) {
	if len(b) < 18 || len(b) != 18+int(b[17]) {
		return Marker{}, errors.New("hrl: malformed marker payload")
	}
	m := Marker{
		ID:    binary.LittleEndian.Uint64(b),
		Time:  int64(binary.LittleEndian.Uint64(b[8:])),
		Kind:  b[16],
		Group: string(b[18:]),
	}
	if m.Kind != KindCrash && m.Kind != KindApp {
		return Marker{}, fmt.Errorf("hrl: unknown point kind %d", m.Kind)
	}
	return m, nil
}

// AppendRecord appends r, framed and checksummed as in a segment, to dst:
// the form records travel in to the replica, which verifies each one.
func AppendRecord(dst []byte, r Record) []byte {
	at := len(dst)
	dst = append(dst, make([]byte, RecHeaderSize)...)
	dst = append(dst, r.Payload...)
	span := r.Span
	if r.Type == TypeWrite {
		span = uint32(len(r.Payload))
	}
	putRecHeader(dst[at:at+RecHeaderSize], crc32.Checksum(r.Payload, castagnoli), uint32(len(r.Payload)), r.Type, r.Flags, span, r.LSN, r.Offset)
	return dst
}

// DecodeRecord decodes and verifies the record at the start of b and
// returns it with its encoded length. The payload aliases b.
func DecodeRecord(b []byte) (Record, int, error) {
	if len(b) < RecHeaderSize {
		return Record{}, 0, errors.New("hrl: short record")
	}
	_, _, n := parseRecHeader(b)
	if n > MaxPayload || int(n) > len(b)-RecHeaderSize {
		return Record{}, 0, errors.New("hrl: record runs past its buffer")
	}
	r, err := checkRecord(b[:RecHeaderSize], b[RecHeaderSize:RecHeaderSize+int(n)])
	if err != nil {
		return Record{}, 0, fmt.Errorf("hrl: %w", err)
	}
	return r, RecHeaderSize + int(n), nil
}
