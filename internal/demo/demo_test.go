package demo

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
)

// TestDemo runs the README's first command in-process: every check of
// the pipeline and of the failover cycle must pass, narrated.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	err := Run(context.Background(), Options{Dir: t.TempDir(), DiskSize: 8 << 20, Writes: 100, Out: &out, Log: io.Discard})
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{"Initial replication complete", "Test failover of vm1 at point",
		"Planned failover of vm1 to hostb", "vrep failover cancel vm1", "vrep replication reverse vm1",
		"split-brain point", "vm1 runs on hosta again", "All 45 checks passed."} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("the narration lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "FAILED") {
		t.Fatalf("a check failed:\n%s", out.String())
	}
}
