package plan

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vrep-io/vrep/internal/statefile"
	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/internal/waitfor"
)

// fakeOps records the failovers asked of it. The engine's own work (its
// state files, its scripts) is real; only the daemon is stood in for.
type fakeOps struct {
	mu         sync.Mutex
	failedOver map[string]bool
	calls      []string
}

func (f *fakeOps) Members(target string) ([]string, error) { return []string{target}, nil }
func (f *fakeOps) Check(string, Mode, string) error        { return nil }
func (f *fakeOps) StartTest(_ context.Context, target, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "test "+target)
	return nil
}
func (f *fakeOps) StopTest(context.Context, string, bool) error { return nil }
func (f *fakeOps) Failover(_ context.Context, target, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "failover "+target)
	f.failedOver[target] = true
	return nil
}
func (f *fakeOps) FailedOver(target string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failedOver[target]
}
func (f *fakeOps) PlannedFailover(context.Context, string) error { return ErrNotAvailable }

// TestRestartResolvesTheStepUnderWay: a run persisted with a step under
// way, as a kill leaves it, is resolved at Open by what the step is.
func TestRestartResolvesTheStepUnderWay(t *testing.T) {
	cases := []struct {
		name       string
		mode       Mode
		kind       string
		failedOver bool
		state      string   // the run's state once resolved
		calls      []string // what it asked of the daemon after the restart
	}{
		{"a failover that took effect is not run again", Unplanned, KindFailover, true, Completed, nil},
		{"a failover that did not take effect runs again", Unplanned, KindFailover, false, Completed, []string{"failover vm1"}},
		{"a script stops the run for the operator", Unplanned, KindScript, false, Interrupted, nil},
		{"a test failover runs again (tests end with the daemon)", Test, KindTest, false, Completed, []string{"test vm1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			step := Step{Group: "g", Kind: c.kind, Target: "vm1", State: StepRunning}
			if c.kind == KindScript {
				step.Target, step.Action = "", &Action{Script: "/bin/true"}
			}
			r := Run{Plan: Plan{Name: "p"}, Mode: c.mode, State: Running, Steps: []Step{step}}
			body, _ := json.Marshal(r)
			if err := statefile.Write(vfs.OS{}, filepath.Join(dir, "p"+runExt), runMagic, body); err != nil {
				t.Fatal(err)
			}
			ops := &fakeOps{failedOver: map[string]bool{"vm1": c.failedOver}}
			e, err := Open(dir, ops, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			var got Run
			waitfor.True(t, "the run to settle", func() bool {
				got, _ = e.Status("p")
				return got.State != Running
			})
			if got.State != c.state || strings.Join(ops.calls, ",") != strings.Join(c.calls, ",") {
				t.Fatalf("state %s, calls %v; want %s, %v\n%+v", got.State, ops.calls, c.state, c.calls, got.Log)
			}
			if c.state == Interrupted && !strings.Contains(got.Reason, "--retry") {
				t.Fatalf("the interrupted run does not say what to do: %s", got.Reason)
			}
		})
	}
}

// TestProblemsListed: every problem of a plan's own is found at once.
func TestProblemsListed(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "notexec.sh"), []byte("#!/bin/sh\n"), 0o644)
	p, err := Parse([]byte(`name: "bad name"
groups:
  - name: a
    vms: [vm1]
    before:
      - {script: missing.sh}
      - {script: notexec.sh}
      - {script: x.sh, manual: both}
      - {}
  - name: a
`), dir)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(p.problems(), "\n")
	for _, want := range []string{"needs a name", "missing.sh of group a is missing", "notexec.sh of group a is not an executable",
		"both a script and a manual step", "neither a script nor a manual step", "two groups are named a", "no VMs and no actions"} {
		if !strings.Contains(got, want) {
			t.Fatalf("want %q among:\n%s", want, got)
		}
	}
	if _, err := Parse([]byte("name: x\ngroups: []\nbogus: 1\n"), dir); err == nil {
		t.Fatal("an unknown field was accepted")
	}
}
