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

// session is a control session with the peer host (a handover, a
// reverse replication), opened up to the welcome.
type session struct {
	c    *wire.Conn
	pc   *wire.ProgressConn
	nc   *tls.Conn
	stop func() bool // ends the context's hold on the connection
}

// openSession dials addr, authenticates with tc and says hello; the
// connection is cut if ctx ends before close.
func openSession(ctx context.Context, addr string, tc *tls.Config, timeout time.Duration, codec wire.Codec) (*session, error) {
	if timeout <= 0 {
		timeout = time.Minute
	}
	raw, err := (&net.Dialer{Timeout: 30 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &session{pc: wire.NewProgressConn(raw, timeout)}
	s.nc = tls.Client(s.pc, tc)
	s.c = wire.NewConn(s.nc)
	s.stop = context.AfterFunc(ctx, func() { raw.Close() })
	fail := func(err error) (*session, error) {
		s.close()
		return nil, err
	}
	if err := s.nc.HandshakeContext(ctx); err != nil {
		return fail(err)
	}
	s.c.WriteFrame(wire.MsgHello, wire.Hello{Version: wire.Version, Codecs: wire.AllCodecs, Prefer: codec}.Encode())
	if err := s.c.Flush(); err != nil {
		return fail(err)
	}
	body, err := wire.Expect(s.c, wire.MsgWelcome)
	if err != nil {
		return fail(err)
	}
	w, err := wire.DecodeWelcome(body)
	if err != nil {
		return fail(err)
	}
	s.c.SetCodec(w.Codec)
	return s, nil
}

// ask sends one message and waits (ten times the timeout: the peer
// syncs, moves files, starts serving) for the answer of type want.
func (s *session) ask(t wire.MsgType, body []byte, want wire.MsgType) ([]byte, error) {
	s.c.WriteFrame(t, body)
	if err := s.c.Flush(); err != nil {
		return nil, err
	}
	s.pc.Scale.Store(10)
	return wire.Expect(s.c, want)
}

func (s *session) close() {
	s.stop()
	s.c.Close()
	s.nc.Close()
}

// Promote asks the replica at addr to take a VM over (a planned
// failover's last step; see wire.Promote). A *wire.RemoteError is the
// replica's refusal; any other error leaves the outcome unknown (the
// replica may have promoted the VM and lost the answer on the way): ask
// again, a Promote is idempotent. On success, adopted must be called
// once this side's image is the replica copy (ok) or that failed: it
// tells the replica so and closes the session.
func Promote(ctx context.Context, addr string, tc *tls.Config, req wire.Promote, timeout time.Duration) (_ wire.Promoted, adopted func(ok bool), err error) {
	s, err := openSession(ctx, addr, tc, timeout, wire.CodecNone)
	if err != nil {
		return wire.Promoted{}, nil, err
	}
	body, err := s.ask(wire.MsgPromote, req.Encode(), wire.MsgPromoted)
	var p wire.Promoted
	if err == nil {
		p, err = wire.DecodePromoted(body, req.VM)
	}
	if err != nil {
		s.close()
		return wire.Promoted{}, nil, err
	}
	// The session outlives this call (until adopted): not ctx's.
	s.stop()
	return p, func(ok bool) {
		if ok {
			s.c.WriteFrame(wire.MsgAdopted, nil)
			s.c.Flush()
		}
		s.close()
	}, nil
}

// AskReverse asks the host at addr, the old primary of a VM this host
// runs after an unplanned failover, to keep the VM's replica (see
// wire.Reverse). A *wire.RemoteError is its refusal; any other error
// leaves the outcome unknown: ask again, a Reverse is idempotent.
func AskReverse(ctx context.Context, addr string, tc *tls.Config, req wire.Reverse, timeout time.Duration) (wire.Reversed, error) {
	s, err := openSession(ctx, addr, tc, timeout, wire.CodecNone)
	if err != nil {
		return wire.Reversed{}, err
	}
	defer s.close()
	body, err := s.ask(wire.MsgReverse, req.Encode(), wire.MsgReversed)
	if err != nil {
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
	s, err := openSession(ctx, addr, tc, timeout, wire.CodecZstd)
	if err != nil {
		return sent, err
	}
	defer s.close()
	c := s.c
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
	if err := mark(max(next, chunks)); err != nil {
		return sent, err
	}
	if _, err := s.ask(wire.MsgResyncDone, wire.EncodeResyncDone(0, sent.Chunks), wire.MsgAck); err != nil {
		return sent, err
	}
	sent.WireBytes = c.Sent()
	return sent, nil
}
