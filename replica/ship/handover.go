package ship

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"

	"github.com/vrep-io/vrep/replica/wire"
)

// Promote asks the replica at addr to take a VM over (a planned
// failover's last step; see wire.Promote). A *wire.RemoteError is the
// replica's refusal; any other error leaves the outcome unknown (the
// replica may have promoted the VM and lost the answer on the way): ask
// again, a Promote is idempotent. On success, adopted must be called
// once this side's image is the replica copy (ok) or that failed: it
// tells the replica so and closes the session.
func Promote(ctx context.Context, addr string, tc *tls.Config, req wire.Promote, timeout time.Duration) (_ wire.Promoted, adopted func(ok bool), err error) {
	if timeout <= 0 {
		timeout = time.Minute
	}
	raw, err := (&net.Dialer{Timeout: 30 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return wire.Promoted{}, nil, err
	}
	pc := wire.NewProgressConn(raw, timeout)
	nc := tls.Client(pc, tc)
	c := wire.NewConn(nc)
	closeAll := func() {
		c.Close()
		nc.Close()
	}
	defer func() {
		if err != nil {
			closeAll()
		}
	}()
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	if err := nc.HandshakeContext(ctx); err != nil {
		return wire.Promoted{}, nil, err
	}
	c.WriteFrame(wire.MsgHello, wire.Hello{Version: wire.Version, Codecs: wire.AllCodecs, Prefer: wire.CodecNone}.Encode())
	if err := c.Flush(); err != nil {
		return wire.Promoted{}, nil, err
	}
	body, err := wire.Expect(c, wire.MsgWelcome)
	if err != nil {
		return wire.Promoted{}, nil, err
	}
	w, err := wire.DecodeWelcome(body)
	if err != nil {
		return wire.Promoted{}, nil, err
	}
	c.SetCodec(w.Codec)
	c.WriteFrame(wire.MsgPromote, req.Encode())
	if err := c.Flush(); err != nil {
		return wire.Promoted{}, nil, err
	}
	// The replica copies nothing to promote, but it syncs and moves
	// files and starts serving: ten times the timeout.
	pc.Scale.Store(10)
	if body, err = wire.Expect(c, wire.MsgPromoted); err != nil {
		return wire.Promoted{}, nil, err
	}
	p, err := wire.DecodePromoted(body, req.VM)
	if err != nil {
		return wire.Promoted{}, nil, err
	}
	return p, func(ok bool) {
		if ok {
			c.WriteFrame(wire.MsgAdopted, nil)
			c.Flush()
		}
		closeAll()
	}, nil
}

// AskReverse asks the host at addr, the old primary of a VM this host
// runs after an unplanned failover, to keep the VM's replica (see
// wire.Reverse). A *wire.RemoteError is its refusal; any other error
// leaves the outcome unknown: ask again, a Reverse is idempotent.
func AskReverse(ctx context.Context, addr string, tc *tls.Config, req wire.Reverse, timeout time.Duration) (wire.Reversed, error) {
	if timeout <= 0 {
		timeout = time.Minute
	}
	raw, err := (&net.Dialer{Timeout: 30 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return wire.Reversed{}, err
	}
	pc := wire.NewProgressConn(raw, timeout)
	nc := tls.Client(pc, tc)
	defer nc.Close()
	c := wire.NewConn(nc)
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	if err := nc.HandshakeContext(ctx); err != nil {
		return wire.Reversed{}, err
	}
	c.WriteFrame(wire.MsgHello, wire.Hello{Version: wire.Version, Codecs: wire.AllCodecs, Prefer: wire.CodecNone}.Encode())
	if err := c.Flush(); err != nil {
		return wire.Reversed{}, err
	}
	body, err := wire.Expect(c, wire.MsgWelcome)
	if err != nil {
		return wire.Reversed{}, err
	}
	w, err := wire.DecodeWelcome(body)
	if err != nil {
		return wire.Reversed{}, err
	}
	c.SetCodec(w.Codec)
	c.WriteFrame(wire.MsgReverse, req.Encode())
	if err := c.Flush(); err != nil {
		return wire.Reversed{}, err
	}
	// The old primary merges its log into its images and adopts them.
	pc.Scale.Store(10)
	if body, err = wire.Expect(c, wire.MsgReversed); err != nil {
		return wire.Reversed{}, err
	}
	return wire.DecodeReversed(body, req.VM)
}

// DivergedSent is what SendDiverged sent.
type DivergedSent struct {
	Chunks    uint64 // chunks sent
	Bytes     int64  // their bytes, before compression
	WireBytes int64  // frames sent, compressed, headers included
}

// SendDiverged sends the ranges ext of a disk (img, of size bytes) to the
// old primary at addr, which keeps its replica now (wire.MsgReverseData),
// in chunks of chunk bytes: the image there becomes img, at LSN 0.
func SendDiverged(ctx context.Context, addr string, tc *tls.Config, disk string, img io.ReaderAt, size int64, chunk int, ext [][2]int64, timeout time.Duration) (DivergedSent, error) {
	var sent DivergedSent
	if timeout <= 0 {
		timeout = time.Minute
	}
	raw, err := (&net.Dialer{Timeout: 30 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return sent, err
	}
	pc := wire.NewProgressConn(raw, timeout)
	nc := tls.Client(pc, tc)
	defer nc.Close()
	c := wire.NewConn(nc)
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	if err := nc.HandshakeContext(ctx); err != nil {
		return sent, err
	}
	c.WriteFrame(wire.MsgHello, wire.Hello{Version: wire.Version, Codecs: wire.AllCodecs, Prefer: wire.CodecZstd}.Encode())
	if err := c.Flush(); err != nil {
		return sent, err
	}
	body, err := wire.Expect(c, wire.MsgWelcome)
	if err != nil {
		return sent, err
	}
	w, err := wire.DecodeWelcome(body)
	if err != nil {
		return sent, err
	}
	c.SetCodec(w.Codec)
	c.WriteFrame(wire.MsgReverseData, wire.ReverseData{Disk: disk, Size: size, ChunkSize: chunk}.Encode())
	if err := c.Flush(); err != nil {
		return sent, err
	}
	if _, err := wire.Expect(c, wire.MsgAck); err != nil {
		return sent, err
	}
	chunks := wire.Chunks(size, chunk)
	buf := make([]byte, chunk)
	var next, pending, marked uint64 // next: the chunk after the last one sent
	mark := func(at uint64) error {
		if at <= marked {
			return nil
		}
		c.WriteFrame(wire.MsgResyncMark, wire.EncodeU64(at))
		pending, marked = 0, at
		return c.Flush()
	}
	for _, e := range ext {
		for i := uint64(e[0] / int64(chunk)); i < chunks && int64(i)*int64(chunk) < e[0]+e[1]; i++ {
			if i < next {
				continue // covered by the range before
			}
			off := int64(i) * int64(chunk)
			n := min(int64(chunk), size-off)
			if _, err := img.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
				return sent, err
			}
			c.WriteFrame(wire.MsgResyncChunk, wire.EncodeChunk(nil, i, buf[:n]))
			sent.Chunks++
			sent.Bytes += n
			next, pending = i+1, pending+uint64(n)
			if pending >= 4<<20 {
				if err := mark(next); err != nil {
					return sent, err
				}
			}
		}
	}
	if next < chunks {
		next = chunks
	}
	if err := mark(next); err != nil {
		return sent, err
	}
	c.WriteFrame(wire.MsgResyncDone, wire.EncodeResyncDone(0, sent.Chunks))
	if err := c.Flush(); err != nil {
		return sent, err
	}
	pc.Scale.Store(10)
	if _, err := wire.Expect(c, wire.MsgAck); err != nil {
		return sent, err
	}
	sent.WireBytes = c.Sent()
	return sent, nil
}
