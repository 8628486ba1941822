package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// heldNBD is a qemu-io process that keeps an NBD connection open, driven
// command by command on its stdin, as a running guest keeps its disk.
type heldNBD struct {
	t    *testing.T
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	done chan error
}

// holdNBD connects qemu-io to uri and returns once it has read from it.
func holdNBD(t *testing.T, uri string) *heldNBD {
	t.Helper()
	h := &heldNBD{t: t, cmd: exec.Command("qemu-io", "-f", "raw", uri), done: make(chan error, 1)}
	h.in, _ = h.cmd.StdinPipe()
	pr, pw := io.Pipe()
	h.cmd.Stdout, h.cmd.Stderr = pw, pw
	h.out = bufio.NewReader(pr)
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { err := h.cmd.Wait(); pw.CloseWithError(io.EOF); h.done <- err }()
	t.Cleanup(func() { h.cmd.Process.Kill(); h.in.Close() })
	h.prompt()
	if out := h.do("read -P 0 0 4k"); !strings.Contains(out, "read 4096/4096 bytes") {
		t.Fatalf("qemu-io did not read through the test export:\n%s", out)
	}
	return h
}

// prompt reads qemu-io's output up to its next prompt.
func (h *heldNBD) prompt() string {
	var b strings.Builder
	for !strings.HasSuffix(b.String(), "qemu-io> ") {
		c, err := h.out.ReadByte()
		if err != nil {
			break
		}
		b.WriteByte(c)
	}
	return b.String()
}

// do runs one command and returns its output.
func (h *heldNBD) do(cmd string) string {
	fmt.Fprintf(h.in, "%s\n", cmd)
	return h.prompt()
}

// quit ends qemu-io, which disconnects, and waits for it to exit.
func (h *heldNBD) quit() {
	h.in.Close()
	go io.Copy(io.Discard, h.out)
	<-h.done
}

// TestTestStopWhileHeld: vrep failover test-stop refuses, with exit code
// 4 and one sentence naming the holder, while a client holds a test disk
// (an NBD connection, or the FUSE file open), and the test keeps being
// served; once the holder lets go it stops; --force stops under a holder.
func TestTestStopWhileHeld(t *testing.T) {
	need(t, "qemu-io")
	needRoot(t)
	e := newEnv(t, 16<<20)
	pkiDir, addr := replicationSetup(t, e)
	repData := filepath.Join(e.dir, "replica")
	repFuse := filepath.Join(e.dir, "rfuse")
	repSock := filepath.Join(e.dir, "r.sock")
	startReplica(t, e.dir, pkiDir, addr, "--nbd", "unix:"+repSock, "--fuse", repFuse)
	t.Cleanup(func() { exec.Command("umount", "-l", repFuse).Run() })
	e.start(t, replicaFlags(addr, pkiDir)...)
	if code, out := vrepRun(t, "point", "create", "vm1", "--state", e.state); code != 0 {
		t.Fatalf("point create: exit %d\n%s", code, out)
	}
	waitReplicated(t, e)
	testURI := fmt.Sprintf("nbd+unix:///vm1/disk0-test?socket=%s", repSock)
	testFile := filepath.Join(repFuse, "vm1", "disk0-test.img")
	startTest := func() {
		t.Helper()
		if code, out := vrepRun(t, "failover", "test", "vm1", "--data", repData); code != 0 {
			t.Fatalf("failover test: exit %d\n%s", code, out)
		}
	}
	refused := func(want ...string) {
		t.Helper()
		code, out := vrepRun(t, "failover", "test-stop", "vm1", "--data", repData)
		if code != exitConflict || strings.Count(strings.TrimSpace(out), "\n") > 0 {
			t.Fatalf("test-stop while held: exit %d, want %d and one sentence:\n%s", code, exitConflict, out)
		}
		for _, w := range append(want, "vm1/disk0-test is in use: ", "; stop the guest or pass --force") {
			if !strings.Contains(out, w) {
				t.Fatalf("test-stop while held does not say %q:\n%s", w, out)
			}
		}
		if code, out := vrepRun(t, "status", "--data", repData); code != 0 || !strings.Contains(out, "vm1/disk0-test") {
			t.Fatalf("the refused test-stop stopped the test: exit %d\n%s", code, out)
		}
	}
	stops := func(extra ...string) {
		t.Helper()
		if code, out := vrepRun(t, append([]string{"failover", "test-stop", "vm1", "--data", repData}, extra...)...); code != 0 {
			t.Fatalf("test-stop %v: exit %d\n%s", extra, code, out)
		}
	}

	// An NBD connection holds it.
	startTest()
	q := holdNBD(t, testURI)
	refused(fmt.Sprintf("1 NBD connection (qemu-io pid %d)", q.cmd.Process.Pid))
	if out := q.do("write -P 0x5a 1M 64k"); !strings.Contains(out, "wrote 65536/65536") {
		t.Fatalf("the test export stopped serving after a refused test-stop:\n%s", out)
	}
	q.quit()
	stops()

	// An open FUSE file holds it.
	startTest()
	f, err := os.OpenFile(testFile, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	refused(fmt.Sprintf("1 open file under %s (vrep.test pid %d)", repFuse, os.Getpid()))
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x5b}, 4096), 0); err != nil {
		t.Fatalf("the test file stopped serving after a refused test-stop: %v", err)
	}
	f.Close()
	stops()

	// --force stops under both: the NBD client is disconnected, the open
	// file answers EIO.
	startTest()
	q = holdNBD(t, testURI)
	f, err = os.OpenFile(testFile, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	refused("1 NBD connection", "1 open file")
	stops("--force")
	if _, err := f.ReadAt(make([]byte, 4096), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("a read of the test file after test-stop --force: %v, want EIO", err)
	}
	if out := q.do("read 0 4k"); strings.Contains(out, "read 4096/4096") {
		t.Fatalf("the NBD client still reads after test-stop --force:\n%s", out)
	}
	if code, out := vrepRun(t, "failover", "test-stop", "vm1", "--data", repData); code != exitError || !strings.Contains(out, "no test failover") {
		t.Fatalf("the test is still running after --force: exit %d\n%s", code, out)
	}
}

// TestStopWhileFUSEHeld: SIGTERM to vrep primary while an ext4 on a loop
// device holds its FUSE file. The daemon says at once what holds the
// disk, vrep status answers while it waits and says what for, it exits
// within --stop-timeout, and the file synced before the signal is on the
// disk after a restart.
func TestStopWhileFUSEHeld(t *testing.T) {
	need(t, "mkfs.ext4", "losetup")
	needRoot(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
	const stopTimeout = 8 * time.Second
	e := newEnv(t, 64<<20)
	mnt := filepath.Join(e.dir, "fuse")
	d := e.start(t, "--fuse", mnt, "--stop-timeout", stopTimeout.String())
	dev := loop(t, filepath.Join(mnt, "vm1", "disk0.img"))
	run(t, "mkfs.ext4", "-q", dev)
	fsdir := filepath.Join(e.dir, "ext4")
	os.Mkdir(fsdir, 0o755)
	run(t, "mount", dev, fsdir)
	t.Cleanup(func() { exec.Command("umount", "-l", fsdir).Run() }) // before the losetup -d: cleanups run last first
	data := randomFile(t, filepath.Join(fsdir, "synced.bin"), 1<<20)
	run(t, "sync", "-f", filepath.Join(fsdir, "synced.bin"))

	start := time.Now()
	d.proc.Signal(syscall.SIGTERM)
	loopName := filepath.Base(dev)
	for !strings.Contains(d.stderr.String(), "held_by="+loopName) && !strings.Contains(d.stderr.String(), `held_by="`+loopName) {
		if time.Since(start) > stopTimeout {
			t.Fatalf("the daemon did not say that %s holds the disk:\n%s", loopName, d.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	code, out := vrepRun(t, "status", "--state", e.state)
	if code != 0 || !strings.Contains(out, "stopping: waiting for "+loopName) {
		t.Fatalf("vrep status while the daemon waits for %s: exit %d\n%s\n%s", loopName, code, out, d.stderr)
	}
	if !d.exitedWithin(stopTimeout + 30*time.Second) {
		t.Fatalf("vrep primary did not exit within its stop timeout (%s) and a margin:\n%s", stopTimeout, d.stderr)
	}
	t.Logf("exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	exec.Command("umount", "-l", fsdir).Run()
	exec.Command("losetup", "-d", dev).Run()

	// After a restart, the file synced before the signal is there.
	e.start(t, "--fuse", mnt)
	dev = loop(t, filepath.Join(mnt, "vm1", "disk0.img"))
	mountFS(t, dev, fsdir)
	got, err := os.ReadFile(filepath.Join(fsdir, "synced.bin"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the file synced before SIGTERM is lost or differs after a restart: %v", err)
	}
}
