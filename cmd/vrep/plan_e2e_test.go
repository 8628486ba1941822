package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/plan"
	"github.com/vrep-io/vrep/internal/waitfor"
)

// planFiles writes a plan and its scripts in a directory: step.sh
// appends its argument to order.txt, fail.sh fails with a message.
func planFiles(t *testing.T, dir, name, yaml string) (planPath, order string) {
	t.Helper()
	order = filepath.Join(dir, "order.txt")
	scripts := map[string]string{
		"step.sh": "#!/bin/sh\necho \"$1\" >> " + order + "\n",
		"fail.sh": "#!/bin/sh\necho 'no DNS server answers' >&2\nexit 3\n",
	}
	for n, body := range scripts {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	planPath = filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(planPath, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return planPath, order
}

func (rg *groupRig) planStatus(t *testing.T, name string) plan.Run {
	t.Helper()
	var r plan.Run
	code, out := rg.vr(t, "plan", "status", name, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil {
		t.Fatalf("plan status %s: %d %s", name, code, out)
	}
	return r
}

// waitPlan waits until the plan is in state.
func (rg *groupRig) waitPlan(t *testing.T, name, state string) plan.Run {
	t.Helper()
	var r plan.Run
	waitfor.True(t, "plan "+name+" "+state, func() bool {
		r = rg.planStatus(t, name)
		if r.State != state && r.State != plan.Running && r.State != plan.Waiting {
			t.Fatalf("plan %s is %s, not %s: %s\n%+v", name, r.State, state, r.Reason, r.Steps)
		}
		return r.State == state
	})
	return r
}

func readOrder(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", ",")
}

const threeGroups = `name: app
groups:
  - name: database
    vms: [db]
    before:
      - script: step.sh
        args: [database]
        timeout: 30s
    after:
      - manual: Check that the database accepts connections
  - name: middle
    vms: [vm3]
    before:
      - script: ./step.sh
        args: [middle]
  - name: web
    vms: [vm4]
    after:
      - script: step.sh
        args: [web]
`

// TestPlanTestRun: a 3-group plan over 4 VMs (vm1 and vm2 through their
// consistency group db) runs as a test: the groups' scripts run in
// order, the manual step waits until vrep plan continue, every VM gets
// its test failover (reading as written) while replication goes on, and
// cleanup leaves no test failover and no overlay behind. A plan with
// problems is refused with all of them at once (exit 2, nothing
// started); --planned is not available in this build; a failing action
// stops the plan at its step with one sentence.
func TestPlanTestRun(t *testing.T) {
	rg := newGroupRig(t)
	dir := t.TempDir()
	planPath, order := planFiles(t, dir, "app", threeGroups)

	if code, out := rg.vr(t, "plan", "run", planPath, "--test"); code != 0 {
		t.Fatalf("plan run --test: %d %s", code, out)
	}
	rg.waitPlan(t, "app", plan.Waiting)
	if got := readOrder(t, order); got != "database" {
		t.Fatalf("at the manual step the scripts ran: %q", got)
	}
	if st := rg.status(t); len(st.Tests) != 2 {
		t.Fatalf("at the manual step, want vm1 and vm2 tested: %+v", st.Tests)
	}
	if code, out := rg.vr(t, "plan", "continue", "app"); code != 0 {
		t.Fatalf("plan continue: %d %s", code, out)
	}
	r := rg.waitPlan(t, "app", plan.Completed)
	if got := readOrder(t, order); got != "database,middle,web" {
		t.Fatalf("the scripts ran in this order: %q", got)
	}
	for _, s := range r.Steps {
		if s.State != plan.StepDone || s.Started.IsZero() || s.Ended.IsZero() {
			t.Fatalf("a step of the completed run: %+v", s)
		}
	}
	if code, out := rg.vr(t, "plan", "status", "app"); code != 0 || !strings.Contains(out, "test failover of db") || !strings.Contains(out, "continued by the operator") {
		t.Fatalf("plan status app: %d %s", code, out)
	}
	if st := rg.status(t); len(st.Tests) != 4 {
		t.Fatalf("want the 4 VMs tested: %+v", st.Tests)
	}
	for _, vm := range groupVMs {
		if !bytes.Equal(rg.read(t, vm+"/disk0-test"), rg.written[vm]) {
			t.Fatalf("the test failover of %s does not read as written", vm)
		}
	}
	// Replication goes on underneath.
	if code, out := vrepRun(t, "point", "create", "vm3", "--state", rg.e.state); code != 0 {
		t.Fatalf("point: %d %s", code, out)
	}
	rg.waitReplicated(t)
	before := len(rg.points(t, "vm1"))
	if code, out := vrepRun(t, "point", "create", "db", "--state", rg.e.state); code != 0 {
		t.Fatalf("point: %d %s", code, out)
	}
	waitfor.True(t, "a new point of vm1 on the replica during the test run", func() bool { return len(rg.points(t, "vm1")) > before })

	// A second run while the tests run is refused.
	if code, out := rg.vr(t, "plan", "run", planPath, "--test"); code == 0 {
		t.Fatalf("a second run before cleanup: %s", out)
	}
	if code, out := rg.vr(t, "plan", "cleanup", "app"); code != 0 {
		t.Fatalf("plan cleanup: %d %s", code, out)
	}
	if st := rg.status(t); len(st.Tests) != 0 {
		t.Fatalf("tests left after cleanup: %+v", st.Tests)
	}
	if left, _ := filepath.Glob(filepath.Join(rg.repData, "*", "*", "*", "test.overlay")); len(left) > 0 {
		t.Fatalf("overlays left after cleanup: %v", left)
	}
	if r := rg.planStatus(t, "app"); r.State != plan.CleanedUp || len(r.Tests) != 0 {
		t.Fatalf("after cleanup: %+v", r)
	}

	// Every problem at once, exit 2, nothing started.
	if code, out := rg.vr(t, "failover", "test", "vm4"); code != 0 {
		t.Fatalf("test vm4: %d %s", code, out)
	}
	bad, _ := planFiles(t, dir, "bad", `name: bad
groups:
  - name: one
    vms: [db, nosuch]
    before: [{script: missing.sh}]
  - name: two
    vms: [vm1, vm4]
`)
	code, out := rg.vr(t, "plan", "run", bad, "--unplanned")
	for _, want := range []string{"4 problems", "missing.sh", `"nosuch"`, "VM primary1/vm1 is listed twice", "test failover of VM vm4"} {
		if code != exitUsage || !strings.Contains(out, want) {
			t.Fatalf("a plan with problems: exit %d, want %q in\n%s", code, want, out)
		}
	}
	if strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Fatalf("not one sentence:\n%s", out)
	}
	if code, out := rg.vr(t, "plan", "status", "bad"); code != exitError {
		t.Fatalf("a refused plan has a status: %d %s", code, out)
	}
	if st := rg.status(t); len(st.Failovers) != 0 {
		t.Fatalf("a refused plan failed over: %+v", st.Failovers)
	}
	rg.vr(t, "failover", "test-stop", "vm4")
	code, out = rg.vr(t, "plan", "run", planPath, "--planned")
	if code != exitUsage || !strings.Contains(out, "planned failover is not available in this build") {
		t.Fatalf("a planned run: exit %d\n%s", code, out)
	}

	// A failing action stops the plan at its step.
	failing, _ := planFiles(t, dir, "dns", `name: dns
groups:
  - name: first
    vms: [vm3]
    before: [{script: fail.sh}]
`)
	if code, out := rg.vr(t, "plan", "run", failing, "--test"); code != 0 {
		t.Fatalf("plan run dns: %d %s", code, out)
	}
	r = rg.waitPlan(t, "dns", plan.Failed)
	if !strings.Contains(r.Reason, "step 1 of group first") || !strings.Contains(r.Reason, "exit status 3: no DNS server answers") ||
		strings.Contains(r.Reason, "\n") || r.Steps[1].State != plan.StepPending {
		t.Fatalf("the failed plan: %s\n%+v", r.Reason, r.Steps)
	}
	if st := rg.status(t); len(st.Tests) != 0 {
		t.Fatalf("the failed plan went on to fail over: %+v", st.Tests)
	}
	if code, out := rg.vr(t, "plan", "continue", "dns"); code != exitUsage || !strings.Contains(out, "--retry") {
		t.Fatalf("continue without --retry or --skip: %d %s", code, out)
	}
	if code, out := rg.vr(t, "plan", "cancel", "dns"); code != 0 {
		t.Fatalf("plan cancel: %d %s", code, out)
	}
	if r := rg.planStatus(t, "dns"); r.State != plan.Cancelled {
		t.Fatalf("after cancel: %+v", r)
	}
}

// TestPlanResumesAfterKill: an unplanned run whose daemon is killed
// right after a step finished resumes at the next step when the daemon
// comes back: no finished step runs again (each script's line is in the
// file once), and every VM ends failed over.
func TestPlanResumesAfterKill(t *testing.T) {
	rg := newGroupRig(t)
	rg.prim.kill() // the primary site is gone
	dir := t.TempDir()
	planPath, order := planFiles(t, dir, "dr", `name: dr
groups:
  - name: a
    vms: [db]
    before: [{script: step.sh, args: [a]}]
  - name: b
    vms: [vm3]
    before: [{script: step.sh, args: [b]}]
  - name: c
    vms: [vm4]
    before: [{script: step.sh, args: [c]}]
`)
	rg.rep.kill()
	rg.rep = startReplicaEnv(t, faultBin(t), []string{"VREP_FAULTPOINT=" + faultpoint.PlanStepDone + ":2"},
		rg.e.dir, rg.pkiDir, rg.addr, rg.repArgs...)
	if code, out := rg.vr(t, "plan", "run", planPath, "--unplanned", "--point", "latest"); code != 0 {
		t.Fatalf("plan run: %d %s", code, out)
	}
	<-rg.rep.done // killed after step 2 (the failover of db) was recorded
	if got := readOrder(t, order); got != "a" {
		t.Fatalf("before the kill the scripts ran: %q", got)
	}
	rg.rep = startReplicaEnv(t, vrepBin, nil, rg.e.dir, rg.pkiDir, rg.addr, rg.repArgs...)
	r := rg.waitPlan(t, "dr", plan.Completed)
	if got := readOrder(t, order); got != "a,b,c" {
		t.Fatalf("after the restart the scripts ran: %q (a finished step ran again?)", got)
	}
	resumed := false
	for _, e := range r.Log {
		resumed = resumed || strings.Contains(e.Msg, "resumed after a restart at step 3")
	}
	if !resumed {
		t.Fatalf("the log does not say where the run resumed: %+v", r.Log)
	}
	st := rg.status(t)
	if len(st.Failovers) != 4 {
		t.Fatalf("want the 4 VMs failed over: %+v", st.Failovers)
	}
	for _, f := range st.Failovers {
		if f.State != "FailedOver" {
			t.Fatalf("failover: %+v", f)
		}
	}
}
