package main

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vrep-io/vrep/internal/events"
	"github.com/vrep-io/vrep/internal/waitfor"
)

// startReplicaCmd runs `vrep replica` and returns its process, for tests
// that signal it (SIGSTOP: a replica that hangs with its connections open).
func startReplicaCmd(t *testing.T, dir, pkiDir, addr string, extra ...string) *exec.Cmd {
	t.Helper()
	out := &syncBuffer{}
	cmd := exec.Command(vrepBin, append([]string{"replica", "--data", filepath.Join(dir, "replica"), "--listen", addr,
		"--tls-dir", pkiDir, "--name", "replica1", "--allow", "primary1"}, extra...)...)
	cmd.Stderr = daemonLog(t, out)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		<-done
	})
	waitfor.True(t, "the replica to listen", func() bool {
		select {
		case <-done:
			t.Fatalf("vrep replica exited at start:\n%s", out)
		default:
		}
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return cmd
}

func readLines(path string) []string {
	b, _ := os.ReadFile(path)
	s := strings.TrimSpace(string(b))
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// TestRPOAlert: a replica that stops answering (SIGSTOP, its connection
// left open) puts the primary past a 1 s RPO threshold: its health turns
// Warning with the threshold in the reason, although the copy frequency
// alone would call a few seconds Normal; the --on-health-change hook runs
// exactly once for that change and once for the recovery, and vrep events
// lists both.
func TestRPOAlert(t *testing.T) {
	need(t, "qemu-io", "curl")
	e := newEnv(t, 16<<20)
	pkiDir, addr := replicationSetup(t, e)
	replica := startReplicaCmd(t, e.dir, pkiDir, addr)
	hookOut := filepath.Join(e.dir, "hook.out")
	e.start(t, replicaFlags(addr, pkiDir, "--points-every", "200ms", "--rpo-threshold", "1s,1h", "--health-every", "100ms",
		"--on-health-change", `echo "$VREP_EVENT|$VREP_VM|$VREP_DISK|$VREP_HEALTH|$VREP_REASON" >> `+hookOut)...)
	qemuIO(t, e.uri("vm1/disk0"), "write -P 0x11 0 1M", "flush")
	waitReplicated(t, e)

	replica.Process.Signal(syscall.SIGSTOP)
	var warn string
	waitfor.True(t, "the hook to report Warning", func() bool {
		for _, l := range readLines(hookOut) {
			if strings.Contains(l, "|Warning|") {
				warn = l
				return true
			}
		}
		return false
	})
	if !strings.HasPrefix(warn, "health|vm1|vm1/disk0|Warning|the replica is ") || !strings.Contains(warn, "past the RPO threshold of 1s") {
		t.Fatalf("hook saw: %q", warn)
	}
	replica.Process.Signal(syscall.SIGCONT)
	waitfor.True(t, "the hook to report the recovery", func() bool {
		l := readLines(hookOut)
		return len(l) > 0 && strings.Contains(l[len(l)-1], "|Normal|")
	})
	lines := readLines(hookOut)
	for i, l := range lines {
		if l == warn {
			lines = lines[i:]
			break
		}
	}
	if len(lines) != 2 {
		t.Fatalf("the hook ran %d times from the Warning on, want once for it and once for the recovery:\n%s", len(lines), strings.Join(lines, "\n"))
	}

	code, out := vrepRun(t, "events", "--state", e.state, "--since", "1h")
	if code != 0 || !strings.Contains(out, "health  vm1/disk0  Normal -> Warning: the replica is ") ||
		!strings.Contains(out, "Warning -> Normal") || !strings.Contains(out, "started") {
		t.Fatalf("vrep events: exit %d\n%s", code, out)
	}
	t.Logf("vrep events:\n%s", out)
	var evs []events.Event
	code, out = vrepRun(t, "events", "--state", e.state, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &evs) != nil || len(evs) < 3 {
		t.Fatalf("vrep events --json: exit %d\n%s", code, out)
	}
	// The replica records its own events (it started; it saw no change).
	if code, out := vrepRun(t, "events", "--data", filepath.Join(e.dir, "replica")); code != 0 || !strings.Contains(out, "replica started") {
		t.Fatalf("vrep events on the replica: exit %d\n%s", code, out)
	}
	// Bad input: one sentence, exit 2; the API answers 400.
	if code, out := vrepRun(t, "events", "--state", e.state, "--since", "yesterday"); code != 2 || !strings.Contains(out, "--since") {
		t.Fatalf("vrep events --since yesterday: exit %d\n%s", code, out)
	}
	if got := run(t, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", filepath.Join(e.state, "api.sock"),
		"http://vrep/v1/events?since=-1h"); got != "400" {
		t.Fatalf("GET /v1/events?since=-1h answered %s", got)
	}
}
