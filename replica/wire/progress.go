package wire

import (
	"net"
	"sync/atomic"
	"time"
)

// ProgressConn is the transport under a stream, on both sides. It gives up on a connection that stops moving, not on one
// that is slow: every read and every write of at most progressChunk bytes
// must complete within the timeout (times the current scale), so a
// black-holed or half-open link is detected in about one timeout while a
// thin one still carries a large frame.
type ProgressConn struct {
	net.Conn
	timeout time.Duration
	// Scale multiplies the timeout; 0 turns the deadlines off.
	Scale atomic.Int64
}

const progressChunk = 64 << 10

// NewProgressConn wraps c with a progress timeout.
func NewProgressConn(c net.Conn, timeout time.Duration) *ProgressConn {
	pc := &ProgressConn{Conn: c, timeout: timeout}
	pc.Scale.Store(1)
	return pc
}

func (c *ProgressConn) deadline() time.Time {
	if s := c.Scale.Load(); s > 0 {
		return time.Now().Add(time.Duration(s) * c.timeout)
	}
	return time.Time{}
}

func (c *ProgressConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(c.deadline())
	return c.Conn.Read(p)
}

func (c *ProgressConn) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n := min(len(p)-done, progressChunk)
		c.Conn.SetWriteDeadline(c.deadline())
		w, err := c.Conn.Write(p[done : done+n])
		done += w
		if err != nil {
			return done, err
		}
	}
	return done, nil
}
