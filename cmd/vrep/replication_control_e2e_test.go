package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/replicad"
)

// primaryStatus returns vrep status --json of the test's primary.
func primaryStatus(t *testing.T, e *env) primary.DiskStatus {
	t.Helper()
	var st primary.Status
	code, out := vrepRun(t, "status", "--state", e.state, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Disks) != 1 || st.Disks[0].Replication == nil {
		t.Fatalf("vrep status: exit %d\n%s", code, out)
	}
	return st.Disks[0]
}

// waitStatus polls the primary's status until ok holds (a minute at most).
func waitStatus(t *testing.T, e *env, what string, ok func(primary.DiskStatus) bool) primary.DiskStatus {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		d := primaryStatus(t, e)
		if ok(d) {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %+v", what, *d.Replication)
		}
	}
}

// TestReplicationControl: the replica goes away; the primary's status
// says so, with the reason, "not connected" and a lag that grows; the
// replica comes back on the same port and `vrep replication resume`
// reconnects at once, although the retry schedule would wait an hour,
// and the primary logs the resumption. `vrep replication set` changes the
// copy frequency of the running primary: status shows it, the replica is
// told, and writes then ship only at points.
func TestReplicationControl(t *testing.T) {
	need(t, "qemu-io")
	e := newEnv(t, 16<<20)
	pkiDir, addr := replicationSetup(t, e)
	repData := filepath.Join(e.dir, "replica")
	killReplica := startReplica(t, e.dir, pkiDir, addr)
	// An hour between retries: without resume this test would hang until
	// its deadline.
	d := e.start(t, replicaFlags(addr, pkiDir, "--retry-schedule", "1h")...)
	u := e.uri("vm1/disk0")
	qemuIO(t, u, "write -P 0x11 0 1M", "flush")
	waitReplicated(t, e)
	if code, out := vrepRun(t, "status", "--data", repData); code != 0 || !strings.Contains(out, "primary1 connected since") ||
		!strings.Contains(out, "continuous") {
		t.Fatalf("replica status with its primary connected: exit %d\n%s", code, out)
	}

	killReplica()
	qemuIO(t, u, "write -P 0x22 2M 1M", "flush")
	down := waitStatus(t, e, "the primary to notice", func(d primary.DiskStatus) bool {
		r := d.Replication
		return !r.Connected && r.Health == "Warning" && r.LagKnown && r.LagRecords > 0
	})
	if r := down.Replication; !strings.Contains(r.Reason, "not connected since") || !strings.Contains(r.Reason, "vrep replication resume vm1") ||
		r.NextSend.Before(time.Now().Add(50*time.Minute)) {
		t.Fatalf("replication while the replica is down: %+v", *r)
	}
	waitStatus(t, e, "the lag to grow", func(d primary.DiskStatus) bool {
		return d.Replication.LagSeconds >= down.Replication.LagSeconds+1
	})
	code, out := vrepRun(t, "status", "--state", e.state)
	if code != 0 || !strings.Contains(out, "not connected since") || !strings.Contains(out, "vm1/disk0: Warning: not connected since") {
		t.Fatalf("status table while the replica is down: exit %d\n%s", code, out)
	}
	t.Logf("the primary while the replica is down:\n%s", out)
	if m := run(t, "curl", "-s", "--unix-socket", filepath.Join(e.state, "api.sock"), "http://vrep/metrics"); !strings.Contains(m, `vrep_replication_connected{disk="vm1/disk0"} 0`) ||
		!strings.Contains(m, `vrep_replication_health{disk="vm1/disk0"} 1`) {
		t.Fatalf("metrics while the replica is down:\n%s", m)
	}

	startReplica(t, e.dir, pkiDir, addr)
	code, out = vrepRun(t, "status", "--data", repData)
	if code != 0 || !strings.Contains(out, "none connected since") || !strings.Contains(out, "primary1/vm1/disk0: Warning: ") || !strings.Contains(out, "no primary connected since") {
		t.Fatalf("replica status with no primary: exit %d\n%s", code, out)
	}
	if code, out = vrepRun(t, "replication", "resume", "vm1", "--state", e.state); code != 0 || !strings.Contains(out, "vm1/disk0: retrying now") {
		t.Fatalf("vrep replication resume: exit %d\n%s", code, out)
	}
	up := waitReplicated(t, e)
	if !up.Replication.Connected || !strings.Contains(d.stderr.String(), "vm1/disk0: replication resumed after") {
		t.Fatalf("after resume: %+v\n%s", *up.Replication, d.stderr)
	}

	// The copy frequency, changed on the running daemon.
	if code, out = vrepRun(t, "replication", "set", "vm1", "--frequency", "30s", "--state", e.state); code != 0 || !strings.Contains(out, "30s") {
		t.Fatalf("vrep replication set: exit %d\n%s", code, out)
	}
	st := waitStatus(t, e, "the new frequency", func(d primary.DiskStatus) bool {
		r := d.Replication
		return r.Frequency == "30s" && r.PointsEvery == 30 && !r.NextSend.IsZero()
	})
	if time.Until(st.Replication.NextSend) > 31*time.Second {
		t.Fatalf("next send %s is past one interval", st.Replication.NextSend)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		var rs replicad.Status
		if code, out := vrepRun(t, "status", "--data", repData, "--json"); code == 0 && json.Unmarshal([]byte(out), &rs) == nil &&
			len(rs.Disks) == 1 && rs.Disks[0].Frequency == "30s" && rs.Disks[0].PointsEvery == 30 && rs.Disks[0].Connected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica was not told the frequency: %s", out)
		}
	}
	// A write now waits for the next point, and ships with it.
	qemuIO(t, u, "write -P 0x33 4M 1M", "flush")
	lsn := primaryStatus(t, e).LastLSN
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if r := primaryStatus(t, e).Replication; r.Acked >= lsn {
			t.Fatalf("a write shipped between points at frequency 30s: %+v", *r)
		}
	}
	if code, out = vrepRun(t, "point", "create", "vm1", "--state", e.state); code != 0 {
		t.Fatalf("vrep point create: exit %d\n%s", code, out)
	}
	waitStatus(t, e, "the point to ship", func(d primary.DiskStatus) bool { return d.Replication.Acked >= lsn })
	_, out = vrepRun(t, "status", "--state", e.state)
	t.Logf("the primary at 30s:\n%s", out)

	// Bad input: one sentence, the documented exit code.
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"replication", "resume", "nope"}, exitError, "no such VM"},
		{[]string{"replication", "resume", "../x"}, exitUsage, ""},
		{[]string{"replication", "set", "vm1", "--frequency", "often"}, exitUsage, "bad copy frequency"},
		{[]string{"replication", "set", "--frequency", "5m"}, exitUsage, "a VM or --all"},
	} {
		code, out := vrepRun(t, append(c.args, "--state", e.state)...)
		if code != c.code || !strings.Contains(out, c.msg) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
			t.Errorf("vrep %s: exit %d, want %d\n%s", strings.Join(c.args, " "), code, c.code, out)
		}
	}
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
}
