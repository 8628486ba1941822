package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// notAdmin are the commands that are no admin command: the daemons,
// which log, and the demo, which narrates.
var notAdmin = map[string]bool{"vrep primary": true, "vrep replica": true, "vrep host": true, "vrep demo": true}

// TestEveryAdminCommandHasJSON: every command an operator or a script
// runs takes --json.
func TestEveryAdminCommandHasJSON(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sc := range c.Commands() {
			if sc.Name() == "help" || sc.Name() == "completion" {
				continue
			}
			walk(sc)
		}
		if c.HasSubCommands() || !c.Runnable() || notAdmin[c.CommandPath()] {
			return
		}
		if c.Flags().Lookup("json") == nil {
			t.Errorf("%s has no --json", c.CommandPath())
		}
	}
	walk(rootCmd())
}

// TestCertJSON: vrep cert init and issue --json name the files they made.
func TestCertJSON(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	var ca, host CertFiles
	if code, out := vrepRun(t, "cert", "init", "--dir", dir, "--json"); code != 0 || json.Unmarshal([]byte(out), &ca) != nil || ca.Cert != filepath.Join(dir, "ca.crt") {
		t.Fatalf("cert init --json: exit %d\n%s", code, out)
	}
	if code, out := vrepRun(t, "cert", "issue", "--dir", dir, "--name", "h1", "--days", "2", "--json"); code != 0 || json.Unmarshal([]byte(out), &host) != nil ||
		host.Name != "h1" || host.Key != filepath.Join(dir, "h1.key") || time.Until(host.NotAfter) < 47*time.Hour {
		t.Fatalf("cert issue --json: exit %d\n%s", code, out)
	}
	for _, f := range []string{ca.Cert, ca.Key, host.Cert, host.Key} {
		if _, err := os.Stat(f); err != nil {
			t.Fatal(err)
		}
	}
}
