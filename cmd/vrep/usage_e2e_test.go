package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestUsageErrors: a mistyped command line never looks like success. An
// unknown subcommand or flag, a missing subcommand or the wrong number of
// arguments exits 2 with one sentence naming what was not understood.
func TestUsageErrors(t *testing.T) {
	cases := []struct {
		args []string
		msg  string
	}{
		{[]string{"failover", "plannned", "vm1"}, `unknown command "plannned" for "vrep failover"`},
		{[]string{"frobnicate"}, `unknown command "frobnicate" for "vrep"`},
		{[]string{"statsu"}, "did you mean status"},
		{[]string{"failover"}, "needs a subcommand: cancel, commit, planned, start, test, test-stop"},
		{[]string{"status", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"points"}, "accepts 1 arg(s), received 0"},
		{[]string{"points", "vm1", "vm2"}, "accepts 1 arg(s), received 2"},
		{[]string{"cert", "init", "--dri", "x"}, "unknown flag: --dri"},
	}
	for _, c := range cases {
		code, out := vrepRun(t, c.args...)
		last := lastLine(out)
		if code != exitUsage || !strings.Contains(last, c.msg) {
			t.Errorf("vrep %s: exit %d (want %d), last line %q (want it to say %q)", strings.Join(c.args, " "), code, exitUsage, last, c.msg)
		}
	}
	if code, out := vrepRun(t, "--help"); code != 0 || !strings.Contains(out, "Available Commands") {
		t.Errorf("vrep --help: exit %d\n%s", code, out)
	}
}

// TestWrongDaemon: a command sent to the wrong daemon says so in the
// operator's words and exits 2, rather than "404 Not Found".
func TestWrongDaemon(t *testing.T) {
	e := newEnv(t, 8<<20)
	e.start(t)
	api := filepath.Join(e.state, "api.sock")
	cases := []struct {
		args []string
		msg  string
	}{
		// The flag names the wrong kind of directory: refused before dialling.
		{[]string{"point", "create", "vm1", "--data", e.state}, "points are taken on the primary; --data names a replica's data directory"},
		{[]string{"failover", "test", "vm1", "--state", e.state}, "a test failover runs on the replica; --state names a primary's"},
		// The socket is named directly: the daemon's answer says what it is.
		{[]string{"failover", "test", "vm1", "--api", api}, "a test failover runs on the replica, and the daemon at " + api + " is a primary"},
		{[]string{"points", "vm1", "--api", api}, "recovery points are listed on the replica, and the daemon at " + api + " is a primary"},
		{[]string{"failover", "test-stop", "vm1", "--api", api}, "is a primary"},
	}
	for _, c := range cases {
		code, out := vrepRun(t, c.args...)
		if code != exitUsage || !strings.Contains(out, c.msg) || strings.Contains(out, "Not Found") || strings.Contains(out, "Method Not Allowed") {
			t.Errorf("vrep %s: exit %d (want %d)\n%s", strings.Join(c.args, " "), code, exitUsage, out)
		}
	}
}
