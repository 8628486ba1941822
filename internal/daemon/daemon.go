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
	"path/filepath"
	"strings"
	"sync"
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
	done chan struct{} // closed when Serve has returned
}

// ServeAPI serves h on the unix socket at path ("unix:" before it is
// allowed, as in the NBD listen addresses).
func ServeAPI(path string, h http.Handler) (*API, error) {
	path = strings.TrimPrefix(path, "unix:")
	if err := takeSocket(path); err != nil {
		return nil, fmt.Errorf("API %w", err)
	}
	l, err := listenPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("API socket: %w", err)
	}
	a := &API{srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}, path: path}
	a.done = make(chan struct{})
	go func() {
		defer close(a.done)
		a.srv.Serve(l)
	}()
	return a, nil
}

// testHookListened, when set, runs after the socket is bound and before
// it is published at its path.
var testHookListened func(path string)

// listenPrivate binds a unix socket that is never reachable with a mode
// wider than 0600: file permissions are the API's only access control, so
// the socket is bound inside a fresh 0700 directory, chmodded, and only
// then renamed to its path (a connect finds a socket by its inode, so the
// listener keeps working under the new name).
func listenPrivate(path string) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".api-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	l, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, err
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	if testHookListened != nil {
		testHookListened(path)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
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
	<-a.done
	if a.path != "" {
		os.Remove(a.path)
	}
}

// RoleHeader names the role of the daemon that answers an API request
// ("primary" or "replica"), so that a command sent to the wrong daemon
// can say so in the operator's words instead of "404 Not Found".
const RoleHeader = "Vrep-Role"

// WithRole sets RoleHeader on every answer of h.
func WithRole(role string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(RoleHeader, role)
		h.ServeHTTP(w, r)
	})
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

// Servers runs a daemon's accept loops and owns their ends: the first
// error any of them returns is reported on Err, and Wait joins them all
// (call it after closing their listeners). Safe for concurrent use.
type Servers struct {
	wg   sync.WaitGroup
	once sync.Once
	errc chan error
}

func (s *Servers) init() { s.once.Do(func() { s.errc = make(chan error, 1) }) }

// Go runs serve on its own goroutine. A non-nil error is kept if it is
// the first; later ones are dropped (the daemon stops on the first).
func (s *Servers) Go(serve func() error) {
	s.init()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := serve(); err != nil {
			select {
			case s.errc <- err:
			default:
			}
		}
	}()
}

// Err reports the first error a server returned.
func (s *Servers) Err() <-chan error {
	s.init()
	return s.errc
}

// Wait returns once every server started by Go has returned.
func (s *Servers) Wait() { s.wg.Wait() }
