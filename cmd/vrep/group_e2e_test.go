package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/nbdclient"
	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/replicad"
	"github.com/vrep-io/vrep/internal/waitfor"
)

// groupRig is a primary protecting vm1..vm4 (one disk each; vm1 and vm2
// in consistency group db) replicated to a replica serving over NBD.
type groupRig struct {
	e                *env
	pkiDir, addr     string
	repData, repSock string
	repArgs          []string
	prim             *daemon
	rep              *replicaProc
	size             int64
	// written is each VM's disk as written before the last point.
	written map[string][]byte
}

var groupVMs = []string{"vm1", "vm2", "vm3", "vm4"}

func newGroupRig(t *testing.T) *groupRig {
	t.Helper()
	const size = 4 << 20
	e := newEnv(t, size)
	rg := &groupRig{e: e, size: size, written: map[string][]byte{}}
	rg.pkiDir, rg.addr = replicationSetup(t, e)
	rg.repData = filepath.Join(e.dir, "replica")
	rg.repSock = filepath.Join(e.dir, "r.sock")
	rg.repArgs = []string{"--nbd", "unix:" + rg.repSock, "--retention", "1h"}
	rg.rep = startReplicaEnv(t, vrepBin, nil, e.dir, rg.pkiDir, rg.addr, rg.repArgs...)
	args := []string{"--group", "db=vm1,vm2", "--points-every", "1h"}
	for _, vm := range groupVMs[1:] {
		img := filepath.Join(e.dir, vm+".img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Truncate(img, size)
		args = append(args, "--disk", vm+"/disk0="+img)
	}
	rg.prim = e.start(t, replicaFlags(rg.addr, rg.pkiDir, args...)...)
	for i, vm := range groupVMs {
		b := bytes.Repeat([]byte{byte(0x10 + i)}, 256<<10)
		cl, err := nbdclient.Dial("unix", e.sock, vm+"/disk0")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.WriteAt(b, int64(i)<<20); err != nil {
			t.Fatal(err)
		}
		if err := cl.Sync(); err != nil {
			t.Fatal(err)
		}
		cl.Close()
		img := make([]byte, size)
		copy(img[int64(i)<<20:], b)
		rg.written[vm] = img
	}
	for _, target := range []string{"db", "vm3", "vm4"} {
		if code, out := vrepRun(t, "point", "create", target, "--state", e.state); code != 0 {
			t.Fatalf("point of %s: %d %s", target, code, out)
		}
	}
	rg.waitReplicated(t)
	for _, vm := range groupVMs {
		waitfor.True(t, "a point of "+vm+" on the replica", func() bool { return len(rg.points(t, vm)) > 0 })
	}
	return rg
}

// waitReplicated waits until the replica acknowledged every record each
// disk had when the wait began.
func (rg *groupRig) waitReplicated(t *testing.T) {
	t.Helper()
	target := map[string]uint64{}
	waitfor.True(t, "every disk replicated", func() bool {
		var st primary.Status
		code, out := vrepRun(t, "status", "--state", rg.e.state, "--json")
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Disks) != len(groupVMs) {
			return false
		}
		for _, d := range st.Disks {
			if _, ok := target[d.Name]; !ok {
				target[d.Name] = d.LastLSN
			}
			if r := d.Replication; r == nil || r.Acked < target[d.Name] || r.Initial != 100 {
				return false
			}
		}
		return true
	})
}

func (rg *groupRig) points(t *testing.T, vm string) []replicad.VMPoint {
	t.Helper()
	return replicaPoints(t, rg.repData, vm)
}

func (rg *groupRig) status(t *testing.T) replicad.Status {
	t.Helper()
	var st replicad.Status
	code, out := vrepRun(t, "status", "--data", rg.repData, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("replica status: %d %s", code, out)
	}
	return st
}

// read reads an export of the replica whole.
func (rg *groupRig) read(t *testing.T, export string) []byte {
	t.Helper()
	cl, err := nbdclient.Dial("unix", rg.repSock, export)
	if err != nil {
		t.Fatalf("%s: %v", export, err)
	}
	defer cl.Close()
	b := make([]byte, rg.size)
	if _, err := cl.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func (rg *groupRig) vr(t *testing.T, args ...string) (int, string) {
	t.Helper()
	return vrepRun(t, append(args, "--data", rg.repData)...)
}

// TestGroupFailover: vm1 and vm2 form consistency group db; naming the
// group fails both over to their shared point. A test failover of the
// group serves both and stops both; a start refused for one VM (its test
// failover runs) fails none over; a replica killed between the two VMs'
// states comes back with neither failed over; start, cancel, start again
// and commit act on both, at one point, with the content written before
// it; names that are neither a VM nor a group are one sentence, exit 1.
func TestGroupFailover(t *testing.T) {
	rg := newGroupRig(t)
	p1, p2 := rg.points(t, "vm1"), rg.points(t, "vm2")
	shared := p1[len(p1)-1]
	if shared.Group != "db" || p2[len(p2)-1].ID != shared.ID {
		t.Fatalf("vm1 and vm2 do not share their newest point in group db: %+v / %+v", p1, p2)
	}
	rg.prim.kill() // the primary is gone

	// A test failover of the group: both VMs, one point; then both stop.
	var gi replicad.GroupInfo
	code, out := rg.vr(t, "failover", "test", "db", "--json")
	if code != 0 || json.Unmarshal([]byte(out), &gi) != nil || len(gi.Tests) != 2 || gi.Point != shared.ID {
		t.Fatalf("failover test db: %d %s", code, out)
	}
	for _, vm := range []string{"vm1", "vm2"} {
		if !bytes.Equal(rg.read(t, vm+"/disk0-test"), rg.written[vm]) {
			t.Fatalf("test failover of %s does not read as written", vm)
		}
	}
	if code, out := rg.vr(t, "failover", "test-stop", "db"); code != 0 || !strings.Contains(out, "consistency group") {
		t.Fatalf("test-stop db: %d %s", code, out)
	}
	if st := rg.status(t); len(st.Tests) != 0 {
		t.Fatalf("tests left after test-stop db: %+v", st.Tests)
	}

	// One VM cannot: none fails over.
	if code, out := rg.vr(t, "failover", "test", "vm2"); code != 0 {
		t.Fatalf("test vm2: %d %s", code, out)
	}
	code, out = rg.vr(t, "failover", "start", "db")
	if code != exitConflict || !strings.Contains(out, "vm2") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Fatalf("start db while vm2 is tested: exit %d\n%s", code, out)
	}
	if st := rg.status(t); len(st.Failovers) != 0 {
		t.Fatalf("a refused group start left failovers: %+v", st.Failovers)
	}
	rg.vr(t, "failover", "test-stop", "vm2")

	// Killed after the first VM's state: after the restart, none.
	rg.rep.kill()
	rg.rep = startReplicaEnv(t, faultBin(t), []string{"VREP_FAULTPOINT=" + faultpoint.FailoverStateSaved + ":1"},
		rg.e.dir, rg.pkiDir, rg.addr, rg.repArgs...)
	if code, out := rg.vr(t, "failover", "start", "db"); code == 0 {
		t.Fatalf("the replica armed to die answered: %s", out)
	}
	<-rg.rep.done
	rg.rep = startReplicaEnv(t, vrepBin, nil, rg.e.dir, rg.pkiDir, rg.addr, rg.repArgs...)
	if st := rg.status(t); len(st.Failovers) != 0 {
		t.Fatalf("a group failover cut short by a kill left failovers: %+v", st.Failovers)
	}
	if !strings.Contains(rg.rep.stderr.String(), "cut short by a restart") {
		t.Fatalf("the replica did not say it undid a half group failover:\n%s", rg.rep.stderr)
	}
	if pts := rg.points(t, "vm1"); len(pts) != len(p1) {
		t.Fatalf("vm1's points after the undone failover: %d, want %d", len(pts), len(p1))
	}

	// Start, cancel, start, commit: both VMs, one point.
	both := func(state string) {
		t.Helper()
		st := rg.status(t)
		if len(st.Failovers) != 2 {
			t.Fatalf("want vm1 and vm2 %s, got %+v", state, st.Failovers)
		}
		for _, f := range st.Failovers {
			if f.State != state || f.Point.ID != shared.ID {
				t.Fatalf("want %s at point %d: %+v", state, shared.ID, f)
			}
		}
	}
	if code, out := rg.vr(t, "failover", "start", "db", "--point", "latest"); code != 0 || !strings.Contains(out, "shared point") {
		t.Fatalf("start db: %d %s", code, out)
	}
	both("FailedOver")
	for _, vm := range []string{"vm1", "vm2"} {
		if !bytes.Equal(rg.read(t, vm+"/disk0"), rg.written[vm]) {
			t.Fatalf("failed-over %s does not read as written before the point", vm)
		}
	}
	if code, out := rg.vr(t, "failover", "cancel", "db"); code != 0 {
		t.Fatalf("cancel db: %d %s", code, out)
	}
	if st := rg.status(t); len(st.Failovers) != 0 {
		t.Fatalf("failovers after cancel db: %+v", st.Failovers)
	}
	if code, out := rg.vr(t, "failover", "start", "db", "--point", fmt.Sprint(shared.ID)); code != 0 {
		t.Fatalf("start db again: %d %s", code, out)
	}
	if code, out := rg.vr(t, "failover", "commit", "db"); code != 0 {
		t.Fatalf("commit db: %d %s", code, out)
	}
	both("Committed")
	if code, out := rg.vr(t, "failover", "commit", "db"); code != 0 {
		t.Fatalf("commit db again (nothing left to do): %d %s", code, out)
	}
	code, out = rg.vr(t, "failover", "start", "nosuch")
	if code != exitError || !strings.Contains(out, "no VM or consistency group") {
		t.Fatalf("start of an unknown name: exit %d\n%s", code, out)
	}
}
