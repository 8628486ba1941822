package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// ErrNotLoopback is returned for a --http address that other hosts could
// reach: the status page and metrics are served over plain TCP only on
// the loopback interface (mutual TLS for other addresses is not built
// yet).
var ErrNotLoopback = errors.New("daemon: not a loopback address")

// CheckLoopback says whether addr (HOST:PORT) is on the loopback
// interface: 127.0.0.0/8, ::1 or localhost.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: --http %q must be HOST:PORT, such as 127.0.0.1:9847", ErrNotLoopback, addr)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%w: --http %s would be reachable from other hosts, and the status page is served over TCP only "+
		"on 127.0.0.1 or ::1 (no TLS yet); give a loopback address and reach it through an SSH tunnel", ErrNotLoopback, addr)
}

// ServeHTTP serves h over TCP on a loopback addr (CheckLoopback). Close
// it like the API.
func ServeHTTP(addr string, h http.Handler) (*API, error) {
	if err := CheckLoopback(addr); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--http: %w", err)
	}
	a := &API{srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		a.srv.Serve(l)
	}()
	return a, nil
}
