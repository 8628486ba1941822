package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/waitfor"
)

// notifySocket listens where a daemon's sd_notify messages go, as systemd
// would for a Type=notify unit.
func notifySocket(t *testing.T, dir string) (*net.UnixConn, string) {
	path := filepath.Join(dir, "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, path
}

// nextNotify returns the next message, waiting as long as the test's
// patience (the daemon is the one that must speak).
func nextNotify(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(waitfor.Patience))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no sd_notify message: %v", err)
	}
	return string(buf[:n])
}

// checkNotify: READY=1 comes first, once the API answers; then WATCHDOG=1
// at half the watchdog interval; then STOPPING=1 at SIGTERM.
func checkNotify(t *testing.T, c *net.UnixConn, apiSock string, proc *os.Process) {
	t.Helper()
	if m := nextNotify(t, c); m != "READY=1" {
		t.Fatalf("first message %q, want READY=1", m)
	}
	// Ready means serving: the API answers now, without a retry.
	if out := run(t, "curl", "-sf", "--unix-socket", apiSock, "http://vrep/v1/status"); !strings.Contains(out, "disks") {
		t.Fatalf("status right after READY=1: %s", out)
	}
	start := time.Now()
	for range 3 {
		if m := nextNotify(t, c); m != "WATCHDOG=1" {
			t.Fatalf("message %q, want WATCHDOG=1", m)
		}
	}
	t.Logf("three WATCHDOG=1 in %v (WatchdogSec 400ms)", time.Since(start))
	proc.Signal(syscall.SIGTERM)
	for {
		m := nextNotify(t, c)
		if m == "STOPPING=1" {
			return
		}
		if m != "WATCHDOG=1" {
			t.Fatalf("message %q while stopping", m)
		}
	}
}

// TestSystemdNotify runs both daemons as a Type=notify unit would, with
// NOTIFY_SOCKET and WATCHDOG_USEC set.
func TestSystemdNotify(t *testing.T) {
	need(t, "curl")
	wd := []string{"WATCHDOG_USEC=400000"}
	t.Run("replica", func(t *testing.T) {
		dir := t.TempDir()
		e := &env{dir: dir}
		pkiDir, addr := replicationSetup(t, e)
		c, sock := notifySocket(t, dir)
		cmd := exec.Command(vrepBin, "replica", "--data", filepath.Join(dir, "replica"), "--listen", addr,
			"--tls-dir", pkiDir, "--name", "replica1", "--allow", "primary1")
		cmd.Env = append(append(os.Environ(), wd...), "NOTIFY_SOCKET="+sock)
		cmd.Stderr = daemonLog(t, &syncBuffer{})
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		checkNotify(t, c, filepath.Join(dir, "replica", "api.sock"), cmd.Process)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("replica exit after SIGTERM: %v", err)
		}
	})
	t.Run("primary", func(t *testing.T) {
		e := newEnv(t, 4<<20)
		c, sock := notifySocket(t, e.dir)
		e.daemonEnv = append(wd, "NOTIFY_SOCKET="+sock)
		d := e.start(t)
		checkNotify(t, c, filepath.Join(e.state, "api.sock"), d.proc)
	})
}
