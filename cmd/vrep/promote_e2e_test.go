package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/nbdclient"
	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/replicad"
	"github.com/vrep-io/vrep/internal/waitfor"
	"github.com/vrep-io/vrep/internal/wocheck"
)

// foRig is a protected VM whose primary wrote a stamped workload while
// taking points every 100 ms, everything replicated, then was killed.
type foRig struct {
	e                         *env
	pkiDir, addr              string
	repData, repSock, repFuse string
	repArgs                   []string
	blocks                    int64
	before, final             wocheck.Image // the disk before and after the workload
	h                         *wocheck.History
	start, stop               time.Time
	killReplica               func()
	repDone                   <-chan struct{}
}

func newFoRig(t *testing.T, size int64, writes int, repEnv []string) *foRig {
	t.Helper()
	e := newEnv(t, size)
	rg := &foRig{e: e, blocks: size / wocheck.BlockSize}
	rg.pkiDir, rg.addr = replicationSetup(t, e)
	rg.repData = filepath.Join(e.dir, "replica")
	rg.repSock = filepath.Join(e.dir, "r.sock")
	rg.repFuse = filepath.Join(e.dir, "rfuse")
	rg.repArgs = []string{"--nbd", "unix:" + rg.repSock, "--retention", "1h"}
	if os.Geteuid() == 0 {
		rg.repArgs = append(rg.repArgs, "--fuse", rg.repFuse)
		t.Cleanup(func() { exec.Command("umount", "-l", rg.repFuse).Run() })
	}
	rg.startReplica(t, repEnv)
	d := e.start(t, replicaFlags(rg.addr, rg.pkiDir, "--points-every", "100ms")...)
	waitReplicated(t, e)
	rg.before = readBack(t, e, rg.blocks)
	cl, err := nbdclient.Dial("unix", e.sock, "vm1/disk0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w := wocheck.Workload{Disk: 1, Run: 1, Blocks: rg.blocks, Seed: 1, FlushEvery: 8}
	rg.start = time.Now()
	rg.h = w.Write(ctx, cl, writes)
	rg.stop = time.Now()
	cl.Close()
	rg.final = readBack(t, e, rg.blocks)
	if rep := wocheck.CheckSerial(rg.before, rg.final, rg.h); !rep.OK() {
		t.Fatalf("the primary's disk: %s", strings.Join(rep.Violations, "\n"))
	}
	waitReplicated(t, e)
	// A point taken after the run: the latest point is the disk as it ends.
	waitfor.True(t, "a point after the workload", func() bool {
		pts := rg.points(t)
		return len(pts) > 0 && pts[len(pts)-1].Time.After(rg.stop)
	})
	waitReplicated(t, e)
	d.kill() // the primary is gone
	return rg
}

// startReplica starts the replica; armed with a fault point (env), from
// the binary built with them.
func (rg *foRig) startReplica(t *testing.T, env []string) {
	bin := vrepBin
	if len(env) > 0 {
		bin = faultBin(t)
	}
	rp := startReplicaEnv(t, bin, env, rg.e.dir, rg.pkiDir, rg.addr, rg.repArgs...)
	rg.killReplica, rg.repDone = rp.kill, rp.done
}

// points lists the replica's points of vm1.
func (rg *foRig) points(t *testing.T) []replicad.VMPoint {
	t.Helper()
	var pts []replicad.VMPoint
	code, out := vrepRun(t, "points", "vm1", "--data", rg.repData, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &pts) != nil {
		t.Fatalf("vrep points: %d %s", code, out)
	}
	return pts
}

// digests reads every point through a test failover.
func (rg *foRig) digests(t *testing.T) map[uint64][32]byte {
	t.Helper()
	out := map[uint64][32]byte{}
	pts := rg.points(t)
	if n := len(pts); testing.Short() && n > 16 {
		// A test failover each costs a quarter second: in -short runs,
		// 16 points spread over the history, the first and the newest
		// among them (the same ones each time the history is the same).
		var some []replicad.VMPoint
		for i := range 16 {
			some = append(some, pts[i*(n-1)/15])
		}
		pts = some
	}
	for _, p := range pts {
		if code, o := vrepRun(t, "failover", "test", "vm1", "--point", strconv.FormatUint(p.ID, 10), "--data", rg.repData); code != 0 {
			t.Fatalf("failover test: %d %s", code, o)
		}
		out[p.ID] = sha256.Sum256(rg.readRaw(t, "vm1/disk0-test"))
		if code, o := vrepRun(t, "failover", "test-stop", "vm1", "--data", rg.repData); code != 0 {
			t.Fatalf("test-stop: %d %s", code, o)
		}
	}
	return out
}

func (rg *foRig) readRaw(t *testing.T, export string) []byte {
	t.Helper()
	cl, err := nbdclient.Dial("unix", rg.repSock, export)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	b := make([]byte, rg.blocks*wocheck.BlockSize)
	if _, err := cl.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// served reads the failed-over disk, decoded, over a real NBD client.
func (rg *foRig) served(t *testing.T) wocheck.Image {
	t.Helper()
	cl, err := nbdclient.Dial("unix", rg.repSock, "vm1/disk0")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	img, err := wocheck.ReadImage(cl, rg.blocks)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// writeServed runs a stamped workload on the failed-over disk and
// flushes; it returns the disk as it then reads.
func (rg *foRig) writeServed(t *testing.T, run uint32, over wocheck.Image) wocheck.Image {
	t.Helper()
	cl, err := nbdclient.Dial("unix", rg.repSock, "vm1/disk0")
	if err != nil {
		t.Fatal(err)
	}
	w := wocheck.Workload{Disk: 1, Run: run, Blocks: rg.blocks, Seed: uint64(run), FlushEvery: 8}
	h := w.Write(context.Background(), cl, 300)
	if err := cl.Sync(); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	after := rg.served(t)
	h.Ops = append(h.Ops, wocheck.Op{Flush: true, Submit: time.Now(), Ack: time.Now(), Result: wocheck.OK})
	if rep := wocheck.CheckSerial(over, after, h); !rep.OK() {
		t.Fatalf("writes to the failed-over disk: %s", strings.Join(rep.Violations, "\n"))
	}
	return after
}

func (rg *foRig) status(t *testing.T) replicad.Status {
	t.Helper()
	var st replicad.Status
	code, out := vrepRun(t, "status", "--data", rg.repData, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("replica status: %d %s", code, out)
	}
	return st
}

// TestUnplannedFailover: the primary is killed after a stamped workload
// with points; on the replica, failover start at an older point serves
// the disk exactly as the write-order checker expects at that point;
// writes to it survive a kill -9 of the replica; cancel (refused while a
// client holds the disk) brings back every point byte for byte; start
// again at latest, write, commit: the disk is the point plus the writes,
// with no points left, and survives a restart; the old primary, back,
// is fenced (NBD writes answer EPERM, status says superseded), also
// after its own restart. Bad input: one sentence, the documented code.
func TestUnplannedFailover(t *testing.T) {
	rg := newFoRig(t, 16<<20, 5000, nil)
	data := []string{"--data", rg.repData}
	vr := func(args ...string) (int, string) { return vrepRun(t, append(args, data...)...) }
	pts := rg.points(t)
	var inRun []replicad.VMPoint
	for _, p := range pts {
		if p.Time.After(rg.start) && p.Time.Before(rg.stop) {
			inRun = append(inRun, p)
		}
	}
	if len(inRun) < 2 {
		t.Fatalf("only %d points during the workload", len(inRun))
	}
	P := inRun[len(inRun)/2]
	pid := strconv.FormatUint(P.ID, 10)
	beforeDigests := rg.digests(t)
	imgPath := filepath.Join(rg.repData, "primary1", "vm1", "disk0", "image")
	imgBefore := fileDigest(t, imgPath)

	// Bad input, nothing changed.
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"failover", "start", "nope"}, exitError, "no VM"},
		{[]string{"failover", "start", "vm1", "--point", "12"}, exitError, "no point 12"},
		{[]string{"failover", "start", "vm1", "--point", "soon"}, exitUsage, "--point"},
		{[]string{"failover", "start", "../x"}, exitUsage, ""},
		{[]string{"failover", "cancel", "vm1"}, exitError, "not failed over"},
		{[]string{"failover", "commit", "vm1"}, exitError, "not failed over"},
	} {
		if code, out := vr(c.args...); code != c.code || !strings.Contains(out, c.says) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
			t.Errorf("%v: exit %d, want %d saying %q:\n%s", c.args, code, c.code, c.says, out)
		}
	}
	if code, out := vr("failover", "test", "vm1"); code != 0 {
		t.Fatalf("failover test: %d %s", code, out)
	}
	if code, out := vr("failover", "start", "vm1"); code != exitConflict || !strings.Contains(out, "vrep failover test-stop vm1") {
		t.Fatalf("a failover while a test runs: exit %d\n%s", code, out)
	}
	vr("failover", "test-stop", "vm1")

	// Start at P: served at once, and what the checker expects at P.
	var fi replicad.FailoverInfo
	code, out := vr("failover", "start", "vm1", "--point", pid, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &fi) != nil || fi.State != "FailedOver" || fi.Point.ID != P.ID ||
		!reflect.DeepEqual(fi.Exports, []string{"vm1/disk0"}) || fi.Generation != 2 {
		t.Fatalf("failover start: exit %d\n%s", code, out)
	}
	if len(fi.Files) == 1 {
		if _, err := os.Stat(fi.Files[0]); err != nil {
			t.Fatalf("the FUSE file of the failed-over disk: %v", err)
		}
	}
	atP := rg.served(t)
	if rep := wocheck.CheckAt(rg.before, atP, rg.h, P.Time); !rep.OK() {
		t.Fatalf("the failed-over disk at point %d: %s", P.ID, strings.Join(rep.Violations, "\n"))
	}
	if code, out := vr("failover", "start", "vm1"); code != exitConflict || !strings.Contains(out, "already in progress") {
		t.Fatalf("a second failover: exit %d\n%s", code, out)
	}
	if code, out := vr("failover", "test", "vm1"); code != exitConflict {
		t.Fatalf("a test failover while failed over: exit %d\n%s", code, out)
	}
	if code, out := vr("status"); code != 0 || !strings.Contains(out, "Failed over to point "+pid) || !strings.Contains(out, "waiting for commit or cancel") {
		t.Fatalf("status while failed over: %d\n%s", code, out)
	}
	written := rg.writeServed(t, 2, atP)

	// kill -9 of the replica: the failed-over disk keeps its writes.
	rg.killReplica()
	rg.startReplica(t, nil)
	if got := rg.served(t); !reflect.DeepEqual(got, written) {
		t.Fatal("after a kill -9 of the replica the failed-over disk lost flushed writes")
	}

	// Cancel: refused while held, then every point as before.
	held, err := nbdclient.Dial("unix", rg.repSock, "vm1/disk0")
	if err != nil {
		t.Fatal(err)
	}
	if code, out := vr("failover", "cancel", "vm1"); code != exitConflict || !strings.Contains(out, "in use") {
		t.Fatalf("cancel while a client holds the disk: exit %d\n%s", code, out)
	}
	held.Close()
	if code, out := vr("failover", "cancel", "vm1"); code != 0 {
		t.Fatalf("cancel: exit %d\n%s", code, out)
	}
	if got := fileDigest(t, imgPath); got != imgBefore {
		t.Fatal("the replica image changed across failover and cancel")
	}
	if after := rg.digests(t); !reflect.DeepEqual(after, beforeDigests) {
		t.Fatalf("the points differ after the cancel: %d before, %d after", len(beforeDigests), len(after))
	}

	// Start again at latest, write, commit.
	if code, out := vr("failover", "start", "vm1", "--point", "latest", "--json"); code != 0 || json.Unmarshal([]byte(out), &fi) != nil || fi.Generation != 3 {
		t.Fatalf("failover start latest: exit %d\n%s", code, out)
	}
	latest := rg.served(t)
	if !reflect.DeepEqual(latest, rg.final) {
		t.Fatal("the latest point is not the primary's disk as it ended")
	}
	written = rg.writeServed(t, 3, latest)
	if code, out := vr("failover", "commit", "vm1", "--json"); code != 0 || json.Unmarshal([]byte(out), &fi) != nil || fi.State != "Committed" {
		t.Fatalf("commit: exit %d\n%s", code, out)
	}
	if got := rg.served(t); !reflect.DeepEqual(got, written) {
		t.Fatal("after the commit the disk is not the point plus the writes")
	}
	if n := len(rg.points(t)); n != 0 {
		t.Fatalf("%d points left after the commit", n)
	}
	if code, out := vr("failover", "cancel", "vm1"); code != exitConflict {
		t.Fatalf("cancel after commit: exit %d\n%s", code, out)
	}
	if code, out := vr("failover", "start", "vm1"); code != exitConflict || !strings.Contains(out, "committed") {
		t.Fatalf("start after commit: exit %d\n%s", code, out)
	}
	written = rg.writeServed(t, 4, written)
	rg.killReplica()
	rg.startReplica(t, nil)
	if got := rg.served(t); !reflect.DeepEqual(got, written) {
		t.Fatal("after a restart the committed disk lost flushed writes")
	}
	if code, out := vr("status"); code != 0 || !strings.Contains(out, "Committed at") || !strings.Contains(out, "serving vm1/disk0") {
		t.Fatalf("status after the commit: %d\n%s", code, out)
	}

	// The old primary comes back: superseded, fenced.
	d := rg.e.start(t, replicaFlags(rg.addr, rg.pkiDir)...)
	st := waitPrimaryHealth(t, rg.e, "superseded")
	if !strings.Contains(st.Health, "failed over to replica1") || !strings.Contains(st.Health, "no longer takes writes") {
		t.Fatalf("primary health: %q", st.Health)
	}
	checkFenced(t, rg.e)
	d.kill()
	rg.e.start(t, replicaFlags(rg.addr, rg.pkiDir)...)
	checkFenced(t, rg.e) // at once: the fence is persisted
}

// waitPrimaryHealth polls the primary's status until its disk's health
// contains what.
func waitPrimaryHealth(t *testing.T, e *env, what string) primary.DiskStatus {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var st primary.Status
		code, out := vrepRun(t, "status", "--state", e.state, "--json")
		if code == 0 && json.Unmarshal([]byte(out), &st) == nil && len(st.Disks) == 1 && strings.Contains(st.Disks[0].Health, what) {
			return st.Disks[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("primary health never said %q: %s", what, out)
		}
	}
}

// checkFenced: an NBD write to the primary is refused with EPERM; reads
// work.
func checkFenced(t *testing.T, e *env) {
	t.Helper()
	cl, err := nbdclient.Dial("unix", e.sock, "vm1/disk0")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.WriteAt(make([]byte, 4096), 0); err == nil || !strings.Contains(err.Error(), "errno 1") {
		t.Fatalf("a write to the superseded primary: %v, want EPERM", err)
	}
	if _, err := cl.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatalf("a read from the superseded primary: %v", err)
	}
}

func fileDigest(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestFailoverKilledAtEachStep: the replica is killed (fault points) once
// the failover state is saved, and at each step of a commit; restarted,
// it serves the failed-over disk again, or finishes the commit: the disk
// is the point plus the writes flushed before the kill, and a finished
// commit leaves no point.
func TestFailoverKilledAtEachStep(t *testing.T) {
	for _, fp := range faultpoint.Failover {
		t.Run(fp, func(t *testing.T) {
			armed := []string{"VREP_FAULTPOINT=" + fp + ":1"}
			rg := newFoRig(t, 4<<20, 2000, armed)
			data := []string{"--data", rg.repData}
			vr := func(args ...string) (int, string) { return vrepRun(t, append(args, data...)...) }
			pts := rg.points(t)
			P := pts[len(pts)/2]
			code, out := vr("failover", "start", "vm1", "--point", strconv.FormatUint(P.ID, 10))
			var want wocheck.Image
			if fp == faultpoint.FailoverStateSaved {
				<-rg.repDone
				rg.startReplica(t, nil)
				if st := rg.status(t); len(st.Failovers) != 1 || st.Failovers[0].State != "FailedOver" || st.Failovers[0].Error != "" {
					t.Fatalf("after a kill at %s: %+v", fp, st.Failovers)
				}
				want = rg.writeServed(t, 2, rg.served(t))
				code, out = vr("failover", "commit", "vm1")
			} else {
				if code != 0 {
					t.Fatalf("failover start: %d %s", code, out)
				}
				want = rg.writeServed(t, 2, rg.served(t))
				vr("failover", "commit", "vm1")
				<-rg.repDone // killed at the fault point
				rg.startReplica(t, nil)
			}
			// A commit the kill interrupted is finished in the background
			// once the restarted replica serves.
			var st replicad.Status
			waitfor.True(t, "the commit to be finished", func() bool {
				st = rg.status(t)
				return len(st.Failovers) == 1 && st.Failovers[0].State == "Committed"
			})
			if got := rg.served(t); !reflect.DeepEqual(got, want) {
				t.Fatalf("after a kill at %s the committed disk is not the point plus the flushed writes", fp)
			}
			if n := len(rg.points(t)); n != 0 {
				t.Fatalf("%d points left after the commit", n)
			}
			rg.killReplica()
			rg.startReplica(t, nil)
			if got := rg.served(t); !reflect.DeepEqual(got, want) {
				t.Fatalf("after a kill at %s and two restarts the committed disk changed", fp)
			}
		})
	}
}

// TestDamagedFailoverStateSetAside: a failover state that cannot be read
// at start keeps the VM fenced and says so; cancel refuses (exit 4) until
// --force, which keeps the file as failover.state.broken and lets the VM
// replicate again.
func TestDamagedFailoverStateSetAside(t *testing.T) {
	rg := newFoRig(t, 4<<20, 300, nil)
	data := []string{"--data", rg.repData}
	vr := func(args ...string) (int, string) { return vrepRun(t, append(args, data...)...) }
	if code, out := vr("failover", "start", "vm1"); code != 0 {
		t.Fatalf("failover start: %d %s", code, out)
	}
	rg.killReplica()
	state := filepath.Join(rg.repData, "primary1", "vm1", "failover.state")
	if err := os.WriteFile(state, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	rg.startReplica(t, nil)
	if st := rg.status(t); len(st.Failovers) != 1 || st.Failovers[0].Error == "" {
		t.Fatalf("a damaged state is not reported: %+v", st.Failovers)
	}
	if code, out := vr("failover", "cancel", "vm1"); code != exitConflict || !strings.Contains(out, "--force") {
		t.Fatalf("cancel of a damaged failover without --force: exit %d\n%s", code, out)
	}
	if code, out := vr("failover", "cancel", "vm1", "--force"); code != 0 {
		t.Fatalf("cancel --force: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(state + ".broken"); err != nil {
		t.Fatalf("the damaged state was not kept: %v", err)
	}
	if st := rg.status(t); len(st.Failovers) != 0 {
		t.Fatalf("still failed over: %+v", st.Failovers)
	}
	if len(rg.points(t)) == 0 {
		t.Fatal("the VM's points went with the damaged state")
	}
}
