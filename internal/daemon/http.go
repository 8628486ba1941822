package daemon

import (
	"crypto/tls"
	"errors"
	"fmt"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
)

// ErrNotLoopback is returned for a --http address that other hosts could
// reach when no TLS settings were given: the status page and metrics are
// served in plain HTTP only on the loopback interface, and anywhere else
// only with mutual TLS.
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
	return fmt.Errorf("%w: --http %s would be reachable from other hosts, and the status page is served there only "+
		"with mutual TLS: give --tls-dir and --name (the certificates replication uses), or a loopback address such as 127.0.0.1:9847", ErrNotLoopback, addr)
}

// CheckHTTP says whether addr can be served: any loopback address, and
// any other address when tc (mutual TLS) is given. A malformed address is
// refused either way.
func CheckHTTP(addr string, tc *tls.Config) error {
	err := CheckLoopback(addr)
	if err == nil || tc == nil {
		return err
	}
	if _, _, serr := net.SplitHostPort(addr); serr != nil {
		return err
	}
	return nil
}

// HTTPTLS is the TLS configuration of a --http address other hosts can
// reach: the daemon's certificate (tc's, from the deployment's CA), and a
// client certificate that the same CA signed required from every client.
// A scraper without a certificate, or with one of another CA, fails the
// handshake and reaches nothing.
func HTTPTLS(tc *tls.Config) *tls.Config {
	c := tc.Clone()
	c.ClientAuth = tls.RequireAndVerifyClientCert
	if c.ClientCAs == nil {
		c.ClientCAs = c.RootCAs
	}
	c.NextProtos = []string{"h2", "http/1.1"}
	return c
}

// ServeHTTP serves h over TCP on addr: in plain HTTP on a loopback
// address, and with mutual TLS (HTTPTLS of tc) on any other, which
// needs tc. Refused handshakes are logged to log. Close it like the API.
func ServeHTTP(addr string, h http.Handler, tc *tls.Config, log *slog.Logger) (*API, error) {
	if err := CheckHTTP(addr, tc); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--http: %w", err)
	}
	if CheckLoopback(addr) != nil {
		l = tls.NewListener(l, HTTPTLS(tc))
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	if log != nil {
		srv.ErrorLog = stdlog.New(errorLog{log}, "", 0)
	}
	a := &API{srv: srv, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		a.srv.Serve(l)
	}()
	return a, nil
}

// errorLog turns net/http's server log lines into the daemon's records. A
// refused handshake, which net/http words as "http: TLS handshake error
// from ADDR: ERR", becomes "status page: TLS handshake refused" with its
// remote and error, which the events log records as a refused connection.
type errorLog struct{ log *slog.Logger }

func (e errorLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if rest, ok := strings.CutPrefix(line, "http: TLS handshake error from "); ok {
		remote, err, _ := strings.Cut(rest, ": ")
		e.log.Warn("status page: TLS handshake refused", "remote", remote, "err", err)
		return len(p), nil
	}
	e.log.Warn("status page: " + strings.TrimPrefix(line, "http: "))
	return len(p), nil
}
