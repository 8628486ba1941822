package main

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/primary"
)

// startOrRefuse runs `vrep primary` and returns its exit code and stderr
// once it exits; a daemon that starts serving instead fails the test.
func startOrRefuse(t *testing.T, sock string, args ...string) (int, string) {
	t.Helper()
	stderr := &syncBuffer{}
	cmd := exec.Command(vrepBin, append([]string{"primary"}, args...)...)
	cmd.Stderr = daemonLog(t, stderr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-exited:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return ee.ExitCode(), stderr.String()
			}
			t.Fatalf("vrep primary %q exited with %v\n%s", args, err, stderr)
		default:
		}
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			cmd.Process.Kill()
			<-exited
			t.Fatalf("vrep primary %q started serving; it should have refused\n%s", args, stderr)
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-exited
			t.Fatalf("vrep primary %q neither refused nor started\n%s", args, stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lastLine is the sentence vrep ends with, after the daemon's log lines.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestFreezeTargetsRefused: --freeze never freezes the file system that
// holds vrep's state, nor a directory where nothing is mounted (issue
// 22: that froze the host's root file system). Every file system this
// test could freeze, were the checks broken, is an ext4 it loop-mounts
// itself, never the host's.
func TestFreezeTargetsRefused(t *testing.T) {
	need(t, "mkfs.ext4", "losetup")
	needRoot(t)
	e := newEnv(t, 16<<20)
	fsImg, mnt := filepath.Join(e.dir, "fs.img"), filepath.Join(e.dir, "mnt")
	os.WriteFile(fsImg, nil, 0o600)
	os.Truncate(fsImg, 16<<20)
	run(t, "mkfs.ext4", "-q", "-F", fsImg)
	mountFS(t, fsImg, mnt, "-o", "loop")
	plain := filepath.Join(mnt, "plain")
	if err := os.Mkdir(plain, 0o755); err != nil {
		t.Fatal(err)
	}

	// The mount that holds --state: refused at start-up.
	code, out := startOrRefuse(t, e.sock, "--state", filepath.Join(mnt, "state"), "--disk", "vm1/disk0="+e.img,
		"--nbd", "unix:"+e.sock, "--freeze", "vm1="+mnt)
	if code != exitUsage || !strings.Contains(lastLine(out), "--freeze vm1="+mnt+":") || !strings.Contains(lastLine(out), "same file system as "+filepath.Join(mnt, "state")) {
		t.Fatalf("--freeze of the state's file system: exit %d\n%s", code, out)
	}
	os.RemoveAll(filepath.Join(mnt, "state"))
	// A path that does not exist: refused at start-up.
	missing := filepath.Join(e.dir, "missing")
	code, out = startOrRefuse(t, e.sock, "--state", e.state, "--disk", "vm1/disk0="+e.img,
		"--nbd", "unix:"+e.sock, "--freeze", "vm1="+missing)
	if code != exitUsage || !strings.Contains(lastLine(out), missing) {
		t.Fatalf("--freeze of a missing path: exit %d\n%s", code, out)
	}

	// A plain directory: the daemon starts (a file system on its own
	// disks can only be mounted once it serves them) and says so; an app
	// point refuses to freeze it and is crash-consistent, with the reason.
	d := e.start(t, "--freeze", "vm1="+plain, "--freeze-timeout", "30s")
	if !strings.Contains(d.stderr.String(), "nothing is mounted yet") || !strings.Contains(d.stderr.String(), plain) {
		t.Fatalf("no warning about %s at start-up:\n%s", plain, d.stderr)
	}
	var p primary.PointInfo
	code, out = vrepRun(t, "point", "create", "vm1", "--app", "--state", e.state, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &p) != nil {
		t.Fatalf("point create: exit %d\n%s", code, out)
	}
	if p.Kind != "crash-consistent" || !strings.Contains(p.Reason, "not a mount point") || !strings.Contains(p.Reason, plain) {
		t.Fatalf("app point freezing a plain directory: %+v", p)
	}
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
}
