package daemon

import (
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
)

// TestAPISocketNeverWide checks that the API socket is never reachable at
// its path with a mode wider than 0600, even with umask 0.
func TestAPISocketNeverWide(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "api.sock")
	var checked atomic.Bool
	testHookListened = func(p string) {
		checked.Store(true)
		if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("socket visible at %s with mode %v before it was made private", p, fi.Mode().Perm())
		}
	}
	defer func() { testHookListened = nil }()
	a, err := ServeAPI("unix:"+path, http.NotFoundHandler())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if !checked.Load() {
		t.Fatal("the hook never ran")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the published socket does not answer: %v", err)
	}
	c.Close()
	if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".api-*")); len(leftovers) > 0 {
		t.Fatalf("temporary directories left: %v", leftovers)
	}
	a.Close()
	a.Close() // idempotent
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}
}

// TestServersFirstErrorAndJoin checks that every server's error is taken
// (none blocks) and Wait joins them.
func TestServersFirstErrorAndJoin(t *testing.T) {
	var s Servers
	release := make(chan struct{})
	var returned atomic.Int32
	for i := 0; i < 10; i++ {
		s.Go(func() error {
			<-release
			returned.Add(1)
			return errors.New("listener failed")
		})
	}
	close(release)
	if err := <-s.Err(); err == nil {
		t.Fatal("no error reported")
	}
	s.Wait()
	if n := returned.Load(); n != 10 {
		t.Fatalf("%d servers returned, want 10", n)
	}
}
