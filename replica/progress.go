package replica

import (
	"net"
	"sync/atomic"
	"time"
)

// progressConn gives up on a connection that stops moving, not on one
// that is slow: every read and every write of at most progressChunk bytes
// must complete within the timeout (times the current scale), so a
// black-holed or half-open link is detected in about one timeout while a
// thin one still carries a large frame.
type progressConn struct {
	net.Conn
	timeout time.Duration
	scale   atomic.Int64 // multiplies timeout; 0 turns the deadlines off
}

const progressChunk = 64 << 10

func newProgressConn(c net.Conn, timeout time.Duration) *progressConn {
	pc := &progressConn{Conn: c, timeout: timeout}
	pc.scale.Store(1)
	return pc
}

func (c *progressConn) deadline() time.Time {
	if s := c.scale.Load(); s > 0 {
		return time.Now().Add(time.Duration(s) * c.timeout)
	}
	return time.Time{}
}

func (c *progressConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(c.deadline())
	return c.Conn.Read(p)
}

func (c *progressConn) Write(p []byte) (int, error) {
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
