package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/vrep-io/vrep/internal/names"
)

// Messages of a disk stream, after the handshake (one disk per
// connection). Bodies, little-endian:
//
//	OpenDisk   disk name (uint16 length, bytes), size uint64
//	DiskState  applied LSN uint64, flags uint8 (bit 0: initial copy
//	           complete; bit 1, since version 3: a resync is under way, the
//	           image is not the disk at any LSN until it completes)
//	BaseChunk  offset uint64, data (the rest of the body)
//	BaseDone   LSN uint64: the image sent is the disk at this LSN
//	Records    see the package doc
//	RecordsRange  from uint64, through uint64, then a Records body whose
//	           LSNs increase within from..through but may skip: records a
//	           later record of the same interval overwrote entirely (never
//	           across a marker) were coalesced away; applying it makes the
//	           applied LSN through
//	Ack        LSN uint64 durable on the replica
//	Keepalive  empty; sent by an idle primary (every minute by default),
//	           not answered
//	Settings   copy interval uint64, point interval uint64, in
//	           nanoseconds (copy interval 0: continuous); sent by the
//	           primary right after DiskState and again whenever they
//	           change, not answered; the replica judges how old its newest
//	           point may be by them (since version 2)
//	Error      code uint16, message (the rest); the sender then closes
const MsgBaseDone MsgType = 9

// MsgSettings tells the replica the stream's copy frequency. Part of the
// format; do not change.
const MsgSettings MsgType = 12

// maxInterval bounds an announced interval: a week is far past any copy
// frequency or point interval.
const maxInterval = 7 * 24 * time.Hour

func EncodeSettings(interval, pointsEvery time.Duration) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(interval))
	return binary.LittleEndian.AppendUint64(b, uint64(pointsEvery))
}

func DecodeSettings(b []byte) (interval, pointsEvery time.Duration, err error) {
	if len(b) != 16 {
		return 0, 0, fmt.Errorf("%w: settings of %d bytes", ErrFrame, len(b))
	}
	interval = time.Duration(binary.LittleEndian.Uint64(b))
	pointsEvery = time.Duration(binary.LittleEndian.Uint64(b[8:]))
	if interval < 0 || interval > maxInterval || pointsEvery < 0 || pointsEvery > maxInterval {
		return 0, 0, fmt.Errorf("%w: settings %d, %d out of range", ErrFrame, interval, pointsEvery)
	}
	return interval, pointsEvery, nil
}

// Error codes: what the primary does next. Part of the format.
const (
	CodeRetry        uint16 = 1 // recoverable: busy, low on space; back off and retry
	CodeUnauthorized uint16 = 2 // the primary's name is not allowed (or not to this disk)
	CodeBadRequest   uint16 = 3 // a malformed or out-of-order message
	CodeResync       uint16 = 4 // broken chain or a changed disk: the disk needs a resync
	// CodeSuperseded: the disk's VM failed over to the replica, which
	// serves it now (a higher generation of the VM's relationship). The
	// primary's copy is superseded: it must stop taking writes (fence)
	// and never retry; the message names the VM, the generation and when.
	CodeSuperseded uint16 = 5
)

// RemoteError is an Error message from the peer.
type RemoteError struct {
	Code uint16
	Msg  string
}

func (e *RemoteError) Error() string { return "replica says: " + e.Msg }

// Recoverable reports whether retrying may help.
func (e *RemoteError) Recoverable() bool { return e.Code == CodeRetry }

func EncodeError(code uint16, msg string) []byte {
	return append(binary.LittleEndian.AppendUint16(nil, code), msg...)
}

func DecodeError(b []byte) error {
	if len(b) < 2 {
		return fmt.Errorf("%w: short error message", ErrFrame)
	}
	return &RemoteError{Code: binary.LittleEndian.Uint16(b), Msg: string(b[2:])}
}

func EncodeOpenDisk(disk string, size int64) []byte {
	b := binary.LittleEndian.AppendUint16(nil, uint16(len(disk)))
	b = append(b, disk...)
	return binary.LittleEndian.AppendUint64(b, uint64(size))
}

func DecodeOpenDisk(b []byte) (string, int64, error) {
	if len(b) < 2 {
		return "", 0, fmt.Errorf("%w: short open", ErrFrame)
	}
	n := int(binary.LittleEndian.Uint16(b))
	if len(b) != 2+n+8 {
		return "", 0, fmt.Errorf("%w: bad open", ErrFrame)
	}
	disk := string(b[2 : 2+n])
	if _, _, err := names.Disk(disk); err != nil {
		return "", 0, err
	}
	size := int64(binary.LittleEndian.Uint64(b[2+n:]))
	if size <= 0 || size > 1<<50 {
		return "", 0, fmt.Errorf("%w: disk size %d", ErrFrame, size)
	}
	return disk, size, nil
}

func EncodeU64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func DecodeU64(b []byte) (uint64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("%w: want 8 bytes, got %d", ErrFrame, len(b))
	}
	return binary.LittleEndian.Uint64(b), nil
}

func EncodeDiskState(applied uint64, seeded bool) []byte {
	return EncodeDiskStateFlags(applied, seeded, false)
}

// EncodeDiskStateFlags is EncodeDiskState with the resync flag.
func EncodeDiskStateFlags(applied uint64, seeded, resyncing bool) []byte {
	b := binary.LittleEndian.AppendUint64(nil, applied)
	var f byte
	if seeded {
		f |= 1
	}
	if resyncing {
		f |= 2
	}
	return append(b, f)
}

func DecodeDiskState(b []byte) (uint64, bool, error) {
	applied, seeded, _, err := DecodeDiskStateFlags(b)
	return applied, seeded, err
}

// DecodeDiskStateFlags is DecodeDiskState with the resync flag.
func DecodeDiskStateFlags(b []byte) (applied uint64, seeded, resyncing bool, err error) {
	if len(b) != 9 || b[8] > 3 {
		return 0, false, false, fmt.Errorf("%w: bad disk state", ErrFrame)
	}
	return binary.LittleEndian.Uint64(b), b[8]&1 != 0, b[8]&2 != 0, nil
}

// Expect reads the next frame, turning an Error message into an error.
func Expect(c *Conn, want MsgType) ([]byte, error) {
	t, body, err := c.ReadFrame()
	if err != nil {
		return nil, err
	}
	if t == MsgError {
		return nil, DecodeError(body)
	}
	if t != want {
		return nil, fmt.Errorf("%w: got message %d, want %d", ErrFrame, t, want)
	}
	return body, nil
}

// ErrBrokenChain is returned for records that do not follow the applied
// LSN: records are missing, and the disk needs a resync (CodeResync).
var ErrBrokenChain = errors.New("replica: broken LSN chain")

var ErrUnauthorized = errors.New("replica: primary not authorized")
