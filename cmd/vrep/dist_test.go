package main

import (
	"os"
	"strings"
	"testing"
)

// TestDistConfigExamples: the example settings `make install` puts in
// /etc/vrep parse as the daemons parse their --config, and each unit
// starts its daemon with the file it names.
func TestDistConfigExamples(t *testing.T) {
	for _, c := range []struct {
		role, file, unit string
	}{
		{"primary", "../../dist/systemd/primary.yaml", "../../dist/systemd/vrep-primary.service"},
		{"replica", "../../dist/systemd/replica.yaml", "../../dist/systemd/vrep-replica.service"},
		{"host", "../../dist/systemd/host.yaml", "../../dist/systemd/vrep-host.service"},
	} {
		f := primaryCmd().Flags()
		switch c.role {
		case "replica":
			f = replicaCmd().Flags()
		case "host":
			f = hostCmd().Flags()
		}
		if err := applyConfig(f, c.file); err != nil {
			t.Errorf("%s: %v", c.file, err)
		}
		rpo, _ := f.GetStringArray("rpo-threshold")
		if len(rpo) == 0 {
			t.Errorf("%s sets no rpo_threshold", c.file)
		}
		unit, err := os.ReadFile(c.unit)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"Type=notify", "WatchdogSec=", "ExecStart=/usr/local/bin/vrep " + c.role + " --config /etc/vrep/" + c.role + ".yaml"} {
			if !strings.Contains(string(unit), want) {
				t.Errorf("%s lacks %q", c.unit, want)
			}
		}
	}
}
