package events

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/vrep-io/vrep/internal/waitfor"
)

// TestHookChildDoesNotStallTheQueue: a hook that leaves a child running
// with its output (a notifier in the background) must not hold up the
// next event's hook, nor the daemon's stop.
func TestHookChildDoesNotStallTheQueue(t *testing.T) {
	dir := t.TempDir()
	out, pids := filepath.Join(dir, "ran"), filepath.Join(dir, "pids")
	t.Cleanup(func() { // the children the hooks left
		b, _ := os.ReadFile(pids)
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	h := newHook(`sleep 600 & echo $! >> `+pids+`; echo "$VREP_HEALTH" >> `+out, waitfor.Patience, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
	h.enqueue(Event{Kind: Health, Health: "Warning"})
	h.enqueue(Event{Kind: Health, Health: "Normal"})
	waitfor.True(t, "both hooks to run", func() bool {
		b, _ := os.ReadFile(out)
		return strings.Count(string(b), "\n") == 2
	})
	h.close()
}
