package faultpoint

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestHit runs this test binary again as a child armed with
// VREP_FAULTPOINT=log-after-sync:2, which passes two points three times
// each. Built with the faultpoints tag, the child dies by SIGKILL at its
// second pass of log-after-sync, after saying so; in any other build (a
// production one) it ignores the variable and runs to the end.
func TestHit(t *testing.T) {
	if os.Getenv("VREP_FAULTPOINT_CHILD") != "" {
		for i := range 3 {
			Hit(LogAfterWrite)
			Hit(LogAfterSync)
			fmt.Printf("pass %d\n", i+1)
		}
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHit$")
	cmd.Env = append(os.Environ(), "VREP_FAULTPOINT_CHILD=1", "VREP_FAULTPOINT="+LogAfterSync+":2")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	killed := errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
	if Enabled {
		if !killed || !strings.Contains(string(out), "pass 1\n") || strings.Contains(string(out), "pass 2") ||
			!strings.Contains(string(out), "fault point log-after-sync reached") {
			t.Fatalf("armed at the second pass of log-after-sync: %v\n%s", err, out)
		}
		return
	}
	if err != nil || !strings.Contains(string(out), "pass 3\n") {
		t.Fatalf("a build without the faultpoints tag obeyed VREP_FAULTPOINT: %v\n%s", err, out)
	}
}
