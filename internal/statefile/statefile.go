// Package statefile is the codec of vrep's small state files (a volume's
// checkpoint and dirty bitmap, a replica disk's applied LSN): published
// atomically, checked whole on every read. Each file is
//
//	magic    8 bytes  names the file's kind
//	version  uint16   1
//	body     the kind's fields (little-endian)
//	crc      uint32   CRC32C of everything before it
//
// The magic, the version and the framing are part of every such format;
// do not change them.
package statefile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/vrep-io/vrep/internal/vfs"
)

// Version is the only version written and accepted.
const Version = 1

// ErrBad is returned for a file that is not a whole, intact file of the
// expected kind: the wrong magic or version, a wrong length, or a CRC
// mismatch.
var ErrBad = errors.New("statefile: bad state file")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Encode frames body as a state file of the given magic (8 bytes).
func Encode(magic string, body []byte) []byte {
	if len(magic) != 8 {
		panic("statefile: magic must be 8 bytes")
	}
	b := make([]byte, 0, 10+len(body)+4)
	b = append(b, magic...)
	b = binary.LittleEndian.AppendUint16(b, Version)
	b = append(b, body...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// Decode checks b and returns its body, which must be bodyLen bytes
// (any length when bodyLen < 0). The body aliases b.
func Decode(b []byte, magic string, bodyLen int) ([]byte, error) {
	if len(b) < 14 || (bodyLen >= 0 && len(b) != 14+bodyLen) || string(b[:8]) != magic ||
		binary.LittleEndian.Uint16(b[8:]) != Version ||
		crc32.Checksum(b[:len(b)-4], castagnoli) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return nil, ErrBad
	}
	return b[10 : len(b)-4], nil
}

// Write publishes a state file at path atomically (temporary file, fsync,
// rename, fsync of the directory).
func Write(fsys vfs.FS, path, magic string, body []byte) error {
	return vfs.WriteFileAtomic(fsys, path, Encode(magic, body))
}

// Read reads the state file at path. A missing file is fs.ErrNotExist
// (wrapped); a damaged one is ErrBad.
func Read(fsys vfs.FS, path, magic string, bodyLen int) ([]byte, error) {
	b, err := vfs.ReadFile(fsys, path)
	if err != nil {
		return nil, err
	}
	body, err := Decode(b, magic, bodyLen)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return body, nil
}
