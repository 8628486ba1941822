// Package daemon holds what vrep's two daemons (primary and replica)
// share: listening on unix:PATH or tcp:ADDR, and the HTTP API on a unix
// socket.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vrep-io/vrep/internal/names"
)

// ErrLocked is returned when a state directory, an image or a socket is
// in use by another process.
var ErrLocked = errors.New("in use by another process")

// Wait returns nil when ctx ends, or the first error a server reports on
// errc (a listener that failed).
func Wait(ctx context.Context, errc <-chan error) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// Lock takes an exclusive lock on f, or says what is in use.
func Lock(f *os.File, what string) error {
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%s is %w", what, ErrLocked)
		}
		return fmt.Errorf("locking %s: %w", what, err)
	}
	return nil
}

// Listen opens unix:PATH or tcp:ADDR. A unix socket left by a dead daemon
// is replaced; one that still answers is not.
func Listen(addr string) (net.Listener, error) {
	switch {
	case strings.HasPrefix(addr, "unix:"):
		path := strings.TrimPrefix(addr, "unix:")
		if err := takeSocket(path); err != nil {
			return nil, err
		}
		return net.Listen("unix", path)
	case strings.HasPrefix(addr, "tcp:"):
		return net.Listen("tcp", strings.TrimPrefix(addr, "tcp:"))
	}
	return nil, fmt.Errorf("%w: %q must be unix:PATH or tcp:HOST:PORT", names.ErrBadName, addr)
}

func takeSocket(path string) error {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("socket %s is %w", path, ErrLocked)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// API is an HTTP API served on a unix socket (mode 0600).
type API struct {
	srv  *http.Server
	path string
}

// ServeAPI serves h on the unix socket at path ("unix:" before it is
// allowed, as in the NBD listen addresses).
func ServeAPI(path string, h http.Handler) (*API, error) {
	path = strings.TrimPrefix(path, "unix:")
	if err := takeSocket(path); err != nil {
		return nil, fmt.Errorf("API %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("API socket: %w", err)
	}
	os.Chmod(path, 0o600)
	a := &API{srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}, path: path}
	go a.srv.Serve(l)
	return a, nil
}

// Close stops the API, letting requests in progress finish for a while,
// and removes the socket.
func (a *API) Close() {
	if a == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a.srv.Shutdown(ctx)
	os.Remove(a.path)
}

// WriteJSON answers v as indented JSON.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// WriteErr answers an error as {"error": "one sentence"}.
func WriteErr(w http.ResponseWriter, code int, err error) {
	WriteJSON(w, code, map[string]string{"error": err.Error()})
}
