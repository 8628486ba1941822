package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/vrep-io/vrep/replica/ship"
)

// TestResyncWaitProgress: vrep resync --wait draws a progress bar when
// its output is a terminal (a pseudo-terminal made by script(1)), prints
// plain lines when it is not, and the final state as JSON with --json;
// each waits for the resync it asked for, not an older one.
func TestResyncWaitProgress(t *testing.T) {
	need(t, "qemu-io", "script")
	e := newEnv(t, 16<<20)
	pkiDir, addr := replicationSetup(t, e)
	startReplica(t, e.dir, pkiDir, addr)
	e.start(t, replicaFlags(addr, pkiDir, "--points-every", "300ms")...)
	qemuIO(t, e.uri("vm1/disk0"), "write -P 0x11 0 4M", "flush")
	waitReplicated(t, e)

	tty := run(t, "script", "-qec", vrepBin+" resync vm1 --now --wait --state "+e.state, "/dev/null")
	if !strings.Contains(tty, "resync of vm1/disk0") || !strings.Contains(tty, "100% |") || !strings.Contains(tty, "(100/100)") ||
		!strings.Contains(tty, "vm1/disk0: resync done at LSN") {
		t.Fatalf("on a terminal, no progress bar:\n%q", tty)
	}
	code, plain := vrepRun(t, "resync", "vm1", "--now", "--wait", "--state", e.state)
	if code != 0 || strings.Contains(plain, "\r") || !strings.Contains(plain, "vm1/disk0: resync running") && !strings.Contains(plain, "vm1/disk0: resync done") {
		t.Fatalf("plain lines: exit %d\n%q", code, plain)
	}
	asked := time.Now()
	code, js := vrepRun(t, "resync", "vm1", "--now", "--wait", "--json", "--state", e.state)
	var final map[string]ship.ResyncProgress
	if code != 0 || json.Unmarshal([]byte(js), &final) != nil || final["vm1/disk0"].State != "done" || final["vm1/disk0"].Sessions != 1 || final["vm1/disk0"].Finished.Before(asked) {
		t.Fatalf("--wait --json: exit %d\n%s", code, js)
	}
}
