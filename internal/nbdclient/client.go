// Package nbdclient is a small synchronous NBD client (fixed newstyle,
// NBD_OPT_GO, simple replies), for tests and tools that drive an export
// from Go: one request at a time.
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

// Client is a connection to one export. It is safe for concurrent use;
// requests are sent one at a time.
type Client struct {
	mu     sync.Mutex
	c      net.Conn
	r      *bufio.Reader
	size   int64
	flags  uint16
	cookie uint64
}

// MaxRequest is the largest read or write sent in one request.
const MaxRequest = 32 << 20

// ErrServer wraps an error the server replied with.
var ErrServer = errors.New("nbd server error")

// Dial connects to export on network/addr ("unix", path or "tcp", host:port).
func Dial(network, addr, export string) (*Client, error) {
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	cl := &Client{c: c, r: bufio.NewReader(c)}
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

func (cl *Client) do(typ, flags uint16, off int64, length int, payload, into []byte) error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.cookie++
	h := binary.BigEndian.AppendUint32(nil, 0x25609513)
	h = binary.BigEndian.AppendUint16(h, flags)
	h = binary.BigEndian.AppendUint16(h, typ)
	h = binary.BigEndian.AppendUint64(h, cl.cookie)
	h = binary.BigEndian.AppendUint64(h, uint64(off))
	h = binary.BigEndian.AppendUint32(h, uint32(length))
	if _, err := cl.c.Write(append(h, payload...)); err != nil {
		return err
	}
	var rep [16]byte
	if _, err := io.ReadFull(cl.r, rep[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint32(rep[:]) != 0x67446698 || binary.BigEndian.Uint64(rep[8:]) != cl.cookie {
		return errors.New("nbd: bad reply")
	}
	if e := binary.BigEndian.Uint32(rep[4:]); e != 0 {
		return fmt.Errorf("%w: errno %d", ErrServer, e)
	}
	if into != nil {
		_, err := io.ReadFull(cl.r, into)
		return err
	}
	return nil
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

// Close disconnects politely.
func (cl *Client) Close() error {
	cl.mu.Lock()
	h := binary.BigEndian.AppendUint32(nil, 0x25609513)
	h = binary.BigEndian.AppendUint16(h, 0)
	h = binary.BigEndian.AppendUint16(h, 2) // DISC
	h = append(h, make([]byte, 20)...)
	cl.c.Write(h)
	cl.mu.Unlock()
	return cl.c.Close()
}
