// Package nbdclient is a small NBD client (fixed newstyle, NBD_OPT_GO,
// simple replies), for tests and tools that drive an export from Go.
//
// Requests are pipelined: any number of goroutines may call ReadAt,
// WriteAt and Sync at once, each call's requests go out as soon as the
// socket is free, and replies, which the server may send in any order,
// are matched to their requests by handle. A reply whose handle matches
// no request in flight breaks the protocol: the connection is closed and
// every call in flight fails with ErrProtocol.
package nbdclient

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Client is a connection to one export. It is safe for concurrent use.
type Client struct {
	c     net.Conn
	r     *bufio.Reader
	size  int64
	flags uint16

	wmu sync.Mutex // serializes requests on the socket

	mu       sync.Mutex
	cookie   uint64
	inflight map[uint64]*call
	err      error // set once the connection failed; fails every later call
	reading  bool  // the reply reader runs
}

// call is one request waiting for its reply.
type call struct {
	into []byte // read payload destination
	done chan error
}

// MaxRequest is the largest read or write sent in one request.
const MaxRequest = 32 << 20

var (
	// ErrServer wraps an error the server replied with.
	ErrServer = errors.New("nbd server error")
	// ErrProtocol wraps a reply the client cannot match to a request.
	ErrProtocol = errors.New("nbdclient: protocol error")
	// ErrClosed is returned by calls on a closed client.
	ErrClosed = errors.New("nbdclient: connection closed")
)

// Dial connects to export on network/addr ("unix", path or "tcp", host:port).
func Dial(network, addr, export string) (*Client, error) {
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	cl, err := DialConn(c, export)
	if err != nil {
		c.Close()
		return nil, err
	}
	return cl, nil
}

// DialConn runs the handshake for export over an established connection
// (tests wrap the connection to inject faults). The client owns c from
// then on, and closes it if the handshake fails.
func DialConn(c net.Conn, export string) (*Client, error) {
	cl := &Client{c: c, r: bufio.NewReader(c), inflight: map[uint64]*call{}}
	if err := cl.handshake(export); err != nil {
		c.Close()
		return nil, err
	}
	return cl, nil
}

func (cl *Client) handshake(export string) error {
	cl.c.SetDeadline(time.Now().Add(30 * time.Second))
	defer cl.c.SetDeadline(time.Time{})
	var hello [18]byte
	if _, err := io.ReadFull(cl.r, hello[:]); err != nil {
		return fmt.Errorf("nbd handshake: %w", err)
	}
	if string(hello[:8]) != "NBDMAGIC" || string(hello[8:16]) != "IHAVEOPT" {
		return errors.New("nbd handshake: not a newstyle NBD server")
	}
	msg := binary.BigEndian.AppendUint32(nil, 1|2) // FIXED_NEWSTYLE | NO_ZEROES
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint16(data, 0)
	msg = append(msg, "IHAVEOPT"...)
	msg = binary.BigEndian.AppendUint32(msg, 7) // NBD_OPT_GO
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(data)))
	if _, err := cl.c.Write(append(msg, data...)); err != nil {
		return err
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(cl.r, h[:]); err != nil {
			return fmt.Errorf("nbd handshake: %w", err)
		}
		typ := binary.BigEndian.Uint32(h[12:])
		n := binary.BigEndian.Uint32(h[16:])
		if n > 1<<20 {
			return errors.New("nbd handshake: oversized option reply")
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(cl.r, p); err != nil {
			return err
		}
		switch {
		case typ == 1: // ACK
			return nil
		case typ == 3 && len(p) >= 12 && binary.BigEndian.Uint16(p) == 0: // INFO_EXPORT
			cl.size = int64(binary.BigEndian.Uint64(p[2:]))
			cl.flags = binary.BigEndian.Uint16(p[10:])
		case typ&(1<<31) != 0:
			return fmt.Errorf("nbd handshake: export %q refused: %s", export, p)
		}
	}
}

// Size is the export's size.
func (cl *Client) Size() int64 { return cl.size }

// do sends one request and waits for its reply.
func (cl *Client) do(typ, flags uint16, off int64, length int, payload, into []byte) error {
	cl.mu.Lock()
	if cl.err != nil {
		cl.mu.Unlock()
		return cl.err
	}
	cl.cookie++
	cookie := cl.cookie
	ca := &call{into: into, done: make(chan error, 1)}
	cl.inflight[cookie] = ca
	if !cl.reading {
		cl.reading = true
		go cl.readReplies()
	}
	cl.mu.Unlock()

	h := make([]byte, 0, 28+len(payload))
	h = binary.BigEndian.AppendUint32(h, 0x25609513)
	h = binary.BigEndian.AppendUint16(h, flags)
	h = binary.BigEndian.AppendUint16(h, typ)
	h = binary.BigEndian.AppendUint64(h, cookie)
	h = binary.BigEndian.AppendUint64(h, uint64(off))
	h = binary.BigEndian.AppendUint32(h, uint32(length))
	cl.wmu.Lock()
	_, err := cl.c.Write(append(h, payload...))
	cl.wmu.Unlock()
	if err != nil {
		cl.fail(fmt.Errorf("nbdclient: sending a request: %w", err))
	}
	return <-ca.done
}

// readReplies reads replies until the connection fails, handing each to
// the call with its handle.
func (cl *Client) readReplies() {
	for {
		var rep [16]byte
		if _, err := io.ReadFull(cl.r, rep[:]); err != nil {
			cl.fail(fmt.Errorf("nbdclient: reading a reply: %w", err))
			return
		}
		if binary.BigEndian.Uint32(rep[:]) != 0x67446698 {
			cl.fail(fmt.Errorf("%w: bad reply magic %#x", ErrProtocol, binary.BigEndian.Uint32(rep[:])))
			return
		}
		cookie := binary.BigEndian.Uint64(rep[8:])
		cl.mu.Lock()
		ca := cl.inflight[cookie]
		delete(cl.inflight, cookie)
		cl.mu.Unlock()
		if ca == nil {
			cl.fail(fmt.Errorf("%w: reply for handle %d, which no request in flight has", ErrProtocol, cookie))
			return
		}
		if e := binary.BigEndian.Uint32(rep[4:]); e != 0 {
			ca.done <- fmt.Errorf("%w: errno %d", ErrServer, e)
			continue
		}
		if ca.into != nil {
			if _, err := io.ReadFull(cl.r, ca.into); err != nil {
				err = fmt.Errorf("nbdclient: reading a reply: %w", err)
				ca.done <- err
				cl.fail(err)
				return
			}
		}
		ca.done <- nil
	}
}

// fail closes the connection and fails every call in flight with err.
func (cl *Client) fail(err error) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.err == nil {
		cl.err = err
		cl.c.Close()
	}
	for cookie, ca := range cl.inflight {
		ca.done <- cl.err
		delete(cl.inflight, cookie)
	}
}

// ReadAt reads len(p) bytes at off.
func (cl *Client) ReadAt(p []byte, off int64) (int, error) {
	for done := 0; done < len(p); {
		n := min(len(p)-done, MaxRequest)
		if err := cl.do(0, 0, off+int64(done), n, nil, p[done:done+n]); err != nil {
			return done, err
		}
		done += n
	}
	return len(p), nil
}

// WriteAt writes p at off.
func (cl *Client) WriteAt(p []byte, off int64) (int, error) {
	for done := 0; done < len(p); {
		n := min(len(p)-done, MaxRequest)
		if err := cl.do(1, 0, off+int64(done), n, p[done:done+n], nil); err != nil {
			return done, err
		}
		done += n
	}
	return len(p), nil
}

// Sync sends NBD_CMD_FLUSH.
func (cl *Client) Sync() error { return cl.do(3, 0, 0, 0, nil, nil) }

// Close disconnects politely; calls still in flight fail with ErrClosed.
func (cl *Client) Close() error {
	h := binary.BigEndian.AppendUint32(nil, 0x25609513)
	h = binary.BigEndian.AppendUint16(h, 0)
	h = binary.BigEndian.AppendUint16(h, 2) // DISC
	h = append(h, make([]byte, 20)...)
	cl.wmu.Lock()
	cl.c.Write(h)
	cl.wmu.Unlock()
	cl.fail(ErrClosed)
	return nil
}
