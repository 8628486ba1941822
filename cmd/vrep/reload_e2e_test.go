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
// from the file (the command line winning), and SIGHUP rereads it: the
// copy frequency changes on the running daemon, a setting that cannot
// change while running is named as waiting for the next start, and a
// broken file changes nothing.
func TestPrimaryConfigReload(t *testing.T) {
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
	write("30s", "64M")
	d := e.start(t, "--config", file)
	st := waitStatus(t, e, "the file's frequency", func(d primary.DiskStatus) bool { return d.Replication.Frequency == "30s" })
	if !st.Replication.Connected && st.Replication.Health == "Critical" {
		t.Fatalf("replication from the config file did not start: %+v", *st.Replication)
	}

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
