package main

// End-to-end tests: the real vrep binary, driven by real NBD clients
// (qemu-io, qemu-img, nbdinfo, nbdcopy, nbdfuse, fio) and the real kernel
// (FUSE, loop devices, ext4). `make test` installs the tools; a test whose
// tool is missing fails rather than skips, unless VREP_ALLOW_SKIP is set.

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/waitfor"
)

// vrepBin is the vrep binary the tests run, built as production builds
// it: without fault points.
var vrepBin string

// binDir holds the binaries TestMain and faultBin build.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vrep-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	vrepBin = filepath.Join(dir, "vrep")
	if err := buildVrep(vrepBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// A race-enabled binary sleeps a second at exit by default; the
	// admin commands run many times.
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildVrep builds the vrep binary at out with the build tags given. The
// daemons run with the race detector, unless VREP_E2E_RACE=0 (the long
// soaks, where its 5-10x slowdown would only measure itself).
func buildVrep(out string, tags ...string) error {
	args := []string{"build"}
	if os.Getenv("VREP_E2E_RACE") != "0" {
		args = append(args, "-race")
	}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	args = append(args, "-o", out, ".")
	if b, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("building vrep (go %s): %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

var (
	faultBinOnce sync.Once
	faultBinPath string
	faultBinErr  error
)

// faultBin returns a vrep binary built with the faultpoints tag, whose
// daemons obey VREP_FAULTPOINT; it is built on first use, so that only
// the tests that arm fault points pay for a second build.
func faultBin(t *testing.T) string {
	t.Helper()
	faultBinOnce.Do(func() {
		faultBinPath = filepath.Join(binDir, "vrep-faultpoints")
		faultBinErr = buildVrep(faultBinPath, "faultpoints")
	})
	if faultBinErr != nil {
		t.Fatal(faultBinErr)
	}
	return faultBinPath
}

// daemonLog is where a daemon's stderr goes: w, and with VREP_E2E_LOG
// set, appended to that file too (for a failing soak's post-mortem).
func daemonLog(t *testing.T, w io.Writer) io.Writer {
	path := os.Getenv("VREP_E2E_LOG")
	if path == "" {
		return w
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return io.MultiWriter(w, f)
}

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("VREP_ALLOW_SKIP") != "" {
				t.Skipf("%s not installed", tool)
			}
			t.Fatalf("%s not installed (make test installs it)", tool)
		}
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices and mounts")
	}
}

// run runs a command and fails the test on a non-zero exit.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// daemon is a running `vrep primary`.
type daemon struct {
	t      *testing.T
	proc   *os.Process
	sock   string
	state  string
	fuse   string
	stderr *syncBuffer
	args   []string
	waitCh chan error
}

// syncBuffer is a bytes.Buffer safe to read while the process writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// env is one test's files: an image and a state directory.
// envInt reads a count for a longer tier of a test (make soak) from the
// environment; def when it is unset.
func envInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a count", name, s)
	}
	return n
}

type env struct {
	dir, img, state, sock string
	// bin is the vrep binary daemons start from; vrepBin when empty.
	bin string
	// daemonEnv is added to the environment of daemons started from now on.
	daemonEnv []string
}

func newEnv(t *testing.T, size int64) *env {
	// Unix socket paths must stay short: keep the directory under /tmp.
	dir, err := os.MkdirTemp("/tmp", "vrep-e2e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{dir: dir, img: filepath.Join(dir, "disk0.img"), state: filepath.Join(dir, "state"), sock: filepath.Join(dir, "nbd.sock")}
	f, err := os.Create(e.img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	return e
}

func (e *env) uri(export string) string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, e.sock)
}

func (e *env) start(t *testing.T, extra ...string) *daemon {
	t.Helper()
	args := append([]string{"primary", "--state", e.state, "--disk", "vm1/disk0=" + e.img, "--nbd", "unix:" + e.sock}, extra...)
	d := &daemon{t: t, sock: e.sock, state: e.state, stderr: &syncBuffer{}, args: args}
	for i, a := range args {
		if a == "--fuse" {
			d.fuse = args[i+1]
		}
	}
	bin := e.bin
	if bin == "" {
		bin = vrepBin
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), e.daemonEnv...)
	cmd.Stderr = daemonLog(t, d.stderr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.proc = cmd.Process
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(waitfor.Patience)
	for {
		if c, err := net.Dial("unix", e.sock); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-exited:
			if len(e.daemonEnv) > 0 {
				return d // armed with a fault point, and it struck already
			}
			t.Fatalf("vrep primary exited at start: %v\n%s", err, d.stderr)
		default:
		}
		if time.Now().After(deadline) {
			d.proc.Kill()
			t.Fatalf("vrep primary did not start:\n%s", d.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.waitCh = exited
	t.Cleanup(func() {
		d.kill()
		if d.fuse != "" {
			syscall.Unmount(d.fuse, syscall.MNT_DETACH)
		}
	})
	return d
}

// stop sends SIGTERM and returns the exit error.
func (d *daemon) stop() error {
	if d.waitCh == nil {
		return nil
	}
	d.proc.Signal(syscall.SIGTERM)
	select {
	case err := <-d.waitCh:
		d.waitCh = nil
		return err
	case <-time.After(waitfor.Patience):
		d.t.Fatalf("vrep primary did not stop on SIGTERM:\n%s", d.stderr)
		return nil
	}
}

// kill sends SIGKILL, as a crash would.
func (d *daemon) kill() {
	if d.waitCh == nil {
		return
	}
	d.proc.Kill()
	<-d.waitCh
	d.waitCh = nil
}

func randomFile(t *testing.T, path string, size int) []byte {
	b := make([]byte, size)
	rand.Read(b)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// exitedWithin reports whether the daemon exited on its own within d.
func (d *daemon) exitedWithin(timeout time.Duration) bool {
	if d.waitCh == nil {
		return true
	}
	select {
	case <-d.waitCh:
		d.waitCh = nil
		return true
	case <-time.After(timeout):
		return false
	}
}
