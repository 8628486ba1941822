// Package faultnet is a TCP proxy that injects network faults between a
// primary and a replica, for tests: a black hole, a reset after some
// bytes (mid-frame), latency with jitter, a bandwidth cap, delivery in
// 1-byte slices, a half-open connection (one direction stops), and a
// flipped bit. Faults apply to connections from the moment they are set,
// and Heal lifts them.
package faultnet

import (
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// Fault is what the proxy does to traffic; the zero value forwards it.
type Fault struct {
	// Blackhole swallows everything in both directions, closing nothing.
	Blackhole bool
	// ResetAfter closes the connection once this many bytes went from
	// client to server since the fault was set (0: never); a multiple of
	// no frame size, so the cut lands inside a frame.
	ResetAfter int64
	// Latency and Jitter delay every chunk by Latency ± Jitter.
	Latency, Jitter time.Duration
	// Bandwidth caps each direction, bytes per second (0: none).
	Bandwidth int64
	// Slice forwards in pieces of at most this many bytes (0: as read).
	Slice int
	// HalfOpen stops the server-to-client direction (acks never come
	// back) while client-to-server keeps flowing.
	HalfOpen bool
	// FlipAt flips one bit of the client-to-server byte at this offset,
	// counted from when the fault was set (0: none).
	FlipAt int64
}

// Proxy forwards connections to a target, with a fault.
type Proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	fault Fault
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
	stats Stats
	gen   int // bumped by Set: offsets count from the fault's start
}

// Stats counts what the faults did, so a test can tell a fault was hit.
type Stats struct {
	Swallowed int64 // bytes black-holed (both directions, or half-open)
	Resets    int   // connections reset mid-stream
	Flips     int   // bits flipped
	Delayed   int   // chunks delayed, throttled or sliced
}

// Stats returns the counts so far.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

func (p *Proxy) count(f func(*Stats)) {
	p.mu.Lock()
	f(&p.stats)
	p.mu.Unlock()
}

// Listen starts a proxy on a loopback port forwarding to target.
func Listen(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is where clients connect.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Set applies f to traffic from now on, on existing and new connections.
func (p *Proxy) Set(f Fault) {
	p.mu.Lock()
	p.fault = f
	p.gen++
	p.mu.Unlock()
}

// Heal lifts the fault and cuts the connections that suffered it (a
// black-holed peer never learns otherwise; the client's timeout and
// retry would, later).
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.fault = Fault{}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

// Close stops the proxy and cuts every connection.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.Heal()
	p.wg.Wait()
	return err
}

func (p *Proxy) current() (Fault, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fault, p.gen
}

func (p *Proxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.track(c, true)
		p.track(s, true)
		p.wg.Add(2)
		closeBoth := sync.OnceFunc(func() { c.Close(); s.Close(); p.track(c, false); p.track(s, false) })
		go func() { defer p.wg.Done(); p.pipe(c, s, true); closeBoth() }()
		go func() { defer p.wg.Done(); p.pipe(s, c, false); closeBoth() }()
	}
}

// pipe copies src to dst, applying the fault as it stands for each chunk.
func (p *Proxy) pipe(src, dst net.Conn, up bool) {
	buf := make([]byte, 32<<10)
	var sent int64 // since the fault of generation gen was set
	gen := -1
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for {
		n, err := src.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			f, g := p.current()
			if g != gen {
				gen, sent = g, 0
			}
			if f.Blackhole || f.HalfOpen && !up {
				p.count(func(st *Stats) { st.Swallowed += int64(len(chunk)) })
				chunk = nil
			}
			if up && f.ResetAfter > 0 && sent+int64(len(chunk)) >= f.ResetAfter {
				if k := f.ResetAfter - sent; k > 0 {
					dst.Write(chunk[:k])
				}
				p.count(func(st *Stats) { st.Resets++ })
				return
			}
			if up && f.FlipAt > 0 && sent <= f.FlipAt-1 && f.FlipAt-1 < sent+int64(len(chunk)) {
				chunk[f.FlipAt-1-sent] ^= 0x10
				p.count(func(st *Stats) { st.Flips++ })
			}
			if len(chunk) > 0 && (f.Latency > 0 || f.Bandwidth > 0 || f.Slice > 0 && len(chunk) > f.Slice) {
				p.count(func(st *Stats) { st.Delayed++ })
			}
			for len(chunk) > 0 {
				piece := chunk
				if f.Slice > 0 && len(piece) > f.Slice {
					piece = piece[:f.Slice]
				}
				if d := f.Latency; d > 0 {
					if f.Jitter > 0 {
						d += time.Duration(r.Int64N(int64(2*f.Jitter))) - f.Jitter
					}
					time.Sleep(max(d, 0))
				}
				if f.Bandwidth > 0 {
					time.Sleep(time.Duration(int64(len(piece)) * int64(time.Second) / f.Bandwidth))
				}
				if _, werr := dst.Write(piece); werr != nil {
					return
				}
				sent += int64(len(piece))
				chunk = chunk[len(piece):]
			}
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			if tc, ok := dst.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			return
		}
	}
}
