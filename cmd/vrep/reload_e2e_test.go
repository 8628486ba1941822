package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/primary"
)

// TestPrimaryConfigReload: `vrep primary --config FILE` takes its settings
// from the file (the command line winning), and SIGHUP rereads it:
// replication added to the file starts on the running daemon (initial
// copy, then the log), the copy frequency changes on it, a setting that
// cannot change while running is named as waiting for the next start,
// and a broken file changes nothing.
func TestPrimaryConfigReload(t *testing.T) {
	need(t, "qemu-io", "qemu-img")
	e := newEnv(t, 16<<20)
	pkiDir, addr := replicationSetup(t, e)
	startReplica(t, e.dir, pkiDir, addr)
	file := filepath.Join(e.dir, "primary.yaml")
	write := func(freq, mergeAfter string) {
		t.Helper()
		conf := fmt.Sprintf("replica: %q\ntls_dir: %s\nname: primary1\nreplica_name: replica1\nfrequency: %s\nmerge_after: %s\n",
			addr, pkiDir, freq, mergeAfter)
		if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// No replication to begin with: the VM writes.
	os.WriteFile(file, []byte("merge_after: 64M\n"), 0o600)
	d := e.start(t, "--config", file)
	qemuIO(t, e.uri("vm1/disk0"), "write -P 0x5a 0 2M", "flush")
	if code, out := vrepRun(t, "replication", "resume", "vm1", "--state", e.state); code == 0 {
		t.Fatalf("a primary that does not replicate resumed: %s", out)
	}
	// Replication added to the file, and SIGHUP: it starts, no restart.
	write("30s", "64M")
	d.proc.Signal(syscall.SIGHUP)
	waitLog(t, d, "replication enabled on the running daemon")
	qemuIO(t, e.uri("vm1/disk0"), "write -P 0xa5 4M 1M", "flush")
	vrepRun(t, "point", "create", "vm1", "--state", e.state)
	st := waitReplicated(t, e)
	if st.Replication.Frequency != "30s" {
		t.Fatalf("replication enabled at frequency %s, want the file's 30s", st.Replication.Frequency)
	}
	replicaImg := filepath.Join(e.dir, "replica", "primary1", "vm1", "disk0", "image")
	// Through NBD: the primary's image file may lag its log.
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", replicaImg, e.uri("vm1/disk0"))

	write("5m", "128M")
	d.proc.Signal(syscall.SIGHUP)
	waitStatus(t, e, "the reloaded frequency", func(d primary.DiskStatus) bool { return d.Replication.Frequency == "5m" })
	waitLog(t, d, "setting=merge-after")

	os.WriteFile(file, []byte("frequency: [\n"), 0o600)
	d.proc.Signal(syscall.SIGHUP)
	waitLog(t, d, "config reload refused; nothing changed")
	if f := primaryStatus(t, e).Replication.Frequency; f != "5m" {
		t.Fatalf("a broken file changed the frequency to %s", f)
	}
}

// waitLog waits until the daemon's log holds s (a minute at most).
func waitLog(t *testing.T, d *daemon, s string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !strings.Contains(d.stderr.String(), s); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the daemon never logged %q:\n%s", s, d.stderr)
		}
	}
}
