package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vrep-io/vrep/internal/jobs"
	"github.com/vrep-io/vrep/internal/waitfor"
)

// jobsOf runs vrep jobs --json with where (--state DIR, --data DIR) and
// decodes the list.
func jobsOf(t *testing.T, where ...string) []jobs.Job {
	t.Helper()
	code, out := vrepRun(t, append([]string{"jobs", "--json"}, where...)...)
	var list []jobs.Job
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil {
		t.Fatalf("vrep jobs %v: exit %d\n%s", where, code, out)
	}
	return list
}

// findJob returns the newest job of kind on target.
func findJob(list []jobs.Job, kind jobs.Kind, target string) (jobs.Job, bool) {
	for i := len(list) - 1; i >= 0; i-- {
		if list[i].Kind == kind && list[i].Target == target {
			return list[i], true
		}
	}
	return jobs.Job{}, false
}

// TestJobs: the initial copy and a resync asked for by the operator are
// jobs on the primary; test failovers (one that works, one of a VM the
// replica does not hold) and their stop are jobs on the replica; each
// with its start, end, progress and result (ok, or the error's
// sentence). They are listed by vrep jobs --json and on the status page,
// read from the file while the daemon is down, and still listed after a
// restart.
func TestJobs(t *testing.T) {
	need(t, "qemu-io", "curl")
	e := newEnv(t, 16<<20)
	pkiDir, addr := replicationSetup(t, e)
	repData := filepath.Join(e.dir, "replica")
	killReplica := startReplica(t, e.dir, pkiDir, addr)
	d := e.start(t, replicaFlags(addr, pkiDir, "--points-every", "300ms")...)
	qemuIO(t, e.uri("vm1/disk0"), "write -P 0x11 0 4M", "flush")
	waitReplicated(t, e)
	pri := []string{"--state", e.state}
	rep := []string{"--data", repData}

	var ic jobs.Job
	waitfor.True(t, "the initial copy's job to end", func() bool {
		j, ok := findJob(jobsOf(t, pri...), jobs.InitialCopy, "vm1/disk0")
		ic = j
		return ok && j.State != jobs.Running
	})
	if ic.State != jobs.OK || ic.Result != "ok" || ic.Percent != 100 || ic.Total != 16<<20 || ic.Ended.Before(ic.Started) {
		t.Fatalf("initial copy job: %+v", ic)
	}
	if code, out := vrepRun(t, "resync", "vm1", "--now", "--state", e.state); code != 0 {
		t.Fatalf("vrep resync --now: exit %d\n%s", code, out)
	}
	var rs jobs.Job
	waitfor.True(t, "the resync's job to end", func() bool {
		j, ok := findJob(jobsOf(t, pri...), jobs.Resync, "vm1/disk0")
		rs = j
		return ok && j.State != jobs.Running
	})
	if rs.State != jobs.OK || rs.Percent != 100 || rs.Total != 256 || rs.Done != 256 {
		t.Fatalf("resync job: %+v", rs)
	}

	// Test failovers on the replica: one that works, and one of a VM it
	// does not hold.
	waitfor.True(t, "a point on the replica", func() bool {
		code, out := vrepRun(t, "points", "vm1", "--data", repData, "--json")
		return code == 0 && strings.Contains(out, `"id"`)
	})
	if code, out := vrepRun(t, "failover", "test", "vm1", "--data", repData); code != 0 {
		t.Fatalf("failover test: exit %d\n%s", code, out)
	}
	if code, out := vrepRun(t, "failover", "test-stop", "vm1", "--data", repData); code != 0 {
		t.Fatalf("failover test-stop: exit %d\n%s", code, out)
	}
	code, failed := vrepRun(t, "failover", "test", "nope", "--data", repData)
	if code == 0 {
		t.Fatalf("failover test nope: exit 0\n%s", failed)
	}
	check := func(when string, list []jobs.Job) {
		t.Helper()
		for _, k := range []jobs.Kind{jobs.TestStart, jobs.TestStop} {
			if j, ok := findJob(list, k, "vm1"); !ok || j.State != jobs.OK || j.Result != "ok" || j.Ended.IsZero() {
				t.Fatalf("%s: %s job of vm1: %+v\n%+v", when, k, j, list)
			}
		}
		j, ok := findJob(list, jobs.TestStart, "nope")
		if !ok || j.State != jobs.Failed || !strings.Contains(failed, j.Result) || !strings.Contains(j.Result, "nope") {
			t.Fatalf("%s: the failed test failover's job: %+v (the command said %q)", when, j, failed)
		}
	}
	check("running", jobsOf(t, rep...))
	page := run(t, "curl", "-sf", "--unix-socket", filepath.Join(repData, "api.sock"), "http://vrep/")
	if !strings.Contains(page, `<table id="jobs">`) || !strings.Contains(page, "<td>test-failover</td><td>nope</td><td>failed</td>") {
		t.Fatalf("the replica's page lacks its jobs:\n%s", page)
	}
	if page := run(t, "curl", "-sf", "--unix-socket", filepath.Join(e.state, "api.sock"), "http://vrep/"); !strings.Contains(page, "<td>resync</td><td>vm1/disk0</td><td>ok</td>") {
		t.Fatalf("the primary's page lacks its jobs:\n%s", page)
	}

	// Down: the file tells. Up again: the daemons list them still.
	killReplica()
	check("replica down", jobsOf(t, rep...))
	if _, out := vrepRun(t, "jobs", "--data", repData); !strings.Contains(out, "test-failover  nope  failed") {
		t.Fatalf("vrep jobs, as text:\n%s", out)
	}
	startReplica(t, e.dir, pkiDir, addr)
	check("replica restarted", jobsOf(t, rep...))
	if err := d.stop(); err != nil {
		t.Fatalf("%v\n%s", err, d.stderr)
	}
	e.start(t, replicaFlags(addr, pkiDir, "--points-every", "300ms")...)
	list := jobsOf(t, pri...)
	for _, want := range []jobs.Job{ic, rs} {
		if j, ok := findJob(list, want.Kind, want.Target); !ok || j.ID != want.ID || j.State != jobs.OK || !j.Ended.Equal(want.Ended) {
			t.Fatalf("after the primary's restart, %s: %+v\n%+v", want.Kind, j, list)
		}
	}
	if code, out := vrepRun(t, "jobs", "--state", e.state, "--json", "--bogus"); code != exitUsage {
		t.Fatalf("vrep jobs --bogus: exit %d\n%s", code, out)
	}
}
