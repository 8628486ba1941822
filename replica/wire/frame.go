package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Part of the format; do not change.
const (
	// Version 2 added the Settings message (session.go); version 3 the
	// resync and verify messages (resync.go) and the resync flag of
	// DiskState; version 4 the resync's durable marks and resume.
	Version         = 4
	FrameHeaderSize = 16
	// MaxBody bounds a decompressed body: a record batch of up to 32 MiB
	// of payload with its headers.
	MaxBody = 40 << 20
	// MaxWire bounds a body on the wire (incompressible data grows a bit).
	MaxWire = MaxBody + MaxBody/64 + 1024
)

// MsgType is a message type. Part of the format; do not change.
type MsgType uint8

// Message types.
const (
	MsgHello     MsgType = 1
	MsgWelcome   MsgType = 2
	MsgOpenDisk  MsgType = 3
	MsgDiskState MsgType = 4
	MsgRecords   MsgType = 5
	MsgBaseChunk MsgType = 6
	MsgAck       MsgType = 7
	MsgError     MsgType = 8
	// MsgRecordsRange is Records standing for an LSN range some of whose
	// records were coalesced away (interval copy frequencies).
	MsgRecordsRange MsgType = 10
	// MsgKeepalive (empty, unanswered) tells the replica an idle stream
	// is alive, so an interval copy frequency longer than the replica's
	// idle timeout keeps its connection.
	MsgKeepalive MsgType = 11
)

// Codec is a body compression. Part of the format; do not change.
type Codec uint8

// Codecs.
const (
	CodecNone Codec = 0
	CodecS2   Codec = 1
	CodecZstd Codec = 2
)

func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecS2:
		return "s2"
	case CodecZstd:
		return "zstd"
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

// ParseCodec parses "zstd", "s2" or "none".
func ParseCodec(s string) (Codec, error) {
	for _, c := range []Codec{CodecZstd, CodecS2, CodecNone} {
		if c.String() == s {
			return c, nil
		}
	}
	return 0, fmt.Errorf("replica: unknown compression %q (zstd, s2 or none)", s)
}

// ErrFrame is wrapped by every error about a malformed or damaged frame:
// the connection cannot be trusted and is dropped; the stream resumes
// from the last acknowledged LSN on a new one.
var ErrFrame = errors.New("replica: bad frame")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Conn reads and writes frames. One goroutine may read while another
// writes; neither side is safe for concurrent use by itself.
type Conn struct {
	r     *bufio.Reader
	w     *bufio.Writer
	codec Codec
	zenc  *zstd.Encoder
	zdec  *zstd.Decoder
	rbuf  []byte // wire body
	body  []byte // decompressed body, returned by ReadFrame
	wbuf  []byte
	sent  int64 // bytes of frames written, headers included
}

// Sent returns the bytes of frames written so far, headers included.
func (c *Conn) Sent() int64 { return c.sent }

// NewConn wraps a connection; frames go uncompressed until SetCodec.
func NewConn(rw io.ReadWriter) *Conn {
	return &Conn{r: bufio.NewReaderSize(rw, 256<<10), w: bufio.NewWriterSize(rw, 256<<10)}
}

// SetCodec sets the compression of frames written from now on.
func (c *Conn) SetCodec(codec Codec) error {
	switch codec {
	case CodecNone, CodecS2:
	case CodecZstd:
		if c.zenc == nil {
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
			if err != nil {
				return err
			}
			c.zenc = enc
		}
	default:
		return fmt.Errorf("replica: unknown codec %d", codec)
	}
	c.codec = codec
	return nil
}

// WriteFrame writes one message (buffered: see Flush).
func (c *Conn) WriteFrame(t MsgType, body []byte) error {
	if len(body) > MaxBody {
		return fmt.Errorf("replica: %d-byte message exceeds %d", len(body), MaxBody)
	}
	codec, wire := CodecNone, body
	switch c.codec {
	case CodecS2:
		c.wbuf = s2.Encode(c.wbuf[:cap(c.wbuf)], body)
		codec, wire = CodecS2, c.wbuf
	case CodecZstd:
		c.wbuf = c.zenc.EncodeAll(body, c.wbuf[:0])
		codec, wire = CodecZstd, c.wbuf
	}
	if len(wire) >= len(body) {
		codec, wire = CodecNone, body
	}
	var h [FrameHeaderSize]byte
	binary.LittleEndian.PutUint32(h[0:], uint32(len(wire)))
	h[4] = byte(t)
	h[5] = byte(codec)
	binary.LittleEndian.PutUint32(h[8:], uint32(len(body)))
	binary.LittleEndian.PutUint32(h[12:], crc32.Checksum(body, castagnoli))
	if _, err := c.w.Write(h[:]); err != nil {
		return err
	}
	c.sent += int64(FrameHeaderSize + len(wire))
	_, err := c.w.Write(wire)
	return err
}

// Flush sends buffered frames.
func (c *Conn) Flush() error { return c.w.Flush() }

// ReadFrame reads one message. The body is valid until the next call.
func (c *Conn) ReadFrame() (MsgType, []byte, error) {
	var h [FrameHeaderSize]byte
	if _, err := io.ReadFull(c.r, h[:]); err != nil {
		return 0, nil, err
	}
	n := binary.LittleEndian.Uint32(h[0:])
	t := MsgType(h[4])
	codec := Codec(h[5])
	raw := binary.LittleEndian.Uint32(h[8:])
	crc := binary.LittleEndian.Uint32(h[12:])
	switch {
	case h[6] != 0 || h[7] != 0:
		return 0, nil, fmt.Errorf("%w: reserved bytes set", ErrFrame)
	case n > MaxWire || raw > MaxBody:
		return 0, nil, fmt.Errorf("%w: %d bytes (%d decompressed) exceeds the limit", ErrFrame, n, raw)
	case codec == CodecNone && n != raw:
		return 0, nil, fmt.Errorf("%w: uncompressed body of %d bytes claims %d", ErrFrame, n, raw)
	}
	// Grow the buffer as bytes arrive: a header that merely claims a large
	// body costs nothing until the body comes.
	wire := c.rbuf[:0]
	for len(wire) < int(n) {
		chunk := min(int(n)-len(wire), 1<<20)
		wire = append(wire, make([]byte, chunk)...)
		if _, err := io.ReadFull(c.r, wire[len(wire)-chunk:]); err != nil {
			return 0, nil, fmt.Errorf("%w: truncated body: %v", ErrFrame, err)
		}
	}
	c.rbuf = wire
	body, err := c.decompress(codec, wire, int(raw))
	if err != nil {
		return 0, nil, err
	}
	if crc32.Checksum(body, castagnoli) != crc {
		return 0, nil, fmt.Errorf("%w: checksum mismatch", ErrFrame)
	}
	return t, body, nil
}

// decompress decodes a body into at most raw bytes.
func (c *Conn) decompress(codec Codec, wire []byte, raw int) ([]byte, error) {
	switch codec {
	case CodecNone:
		return wire, nil
	case CodecS2:
		n, err := s2.DecodedLen(wire)
		if err != nil || n != raw {
			return nil, fmt.Errorf("%w: s2 body does not decode to %d bytes", ErrFrame, raw)
		}
		if cap(c.body) < raw {
			c.body = make([]byte, raw)
		}
		out, err := s2.Decode(c.body[:raw], wire)
		if err != nil {
			return nil, fmt.Errorf("%w: s2: %v", ErrFrame, err)
		}
		return out, nil
	case CodecZstd:
		if c.zdec == nil {
			dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxBody),
				zstd.WithDecodeAllCapLimit(true), zstd.WithDecoderMaxWindow(MaxBody))
			if err != nil {
				return nil, err
			}
			c.zdec = dec
		}
		if cap(c.body) < raw {
			c.body = make([]byte, 0, raw)
		}
		// The cap limit: never more than the header promised.
		out, err := c.zdec.DecodeAll(wire, c.body[:0:raw])
		if err != nil || len(out) != raw {
			return nil, fmt.Errorf("%w: zstd body does not decode to %d bytes", ErrFrame, raw)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: unknown codec %d", ErrFrame, codec)
}

// Close releases the codecs.
func (c *Conn) Close() {
	if c.zdec != nil {
		c.zdec.Close()
		c.zdec = nil
	}
	if c.zenc != nil {
		c.zenc.Close()
		c.zenc = nil
	}
}
