package ship

import (
	"context"
	"crypto/tls"
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
