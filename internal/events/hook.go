package events

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"time"
)

// hook runs an operator's command (sh -c) for each health change, one at
// a time and in order, on a goroutine it owns. The event is in the
// command's environment: VREP_EVENT (the kind), VREP_VM, VREP_DISK,
// VREP_HEALTH, VREP_PREVIOUS, VREP_REASON and VREP_TIME (RFC 3339).
type hook struct {
	cmd     string
	timeout time.Duration
	log     *slog.Logger
	queue   chan Event
	wg      sync.WaitGroup
}

// hookQueue bounds how many changes may wait for a slow hook; past it a
// change is logged and not run (the events log still has it).
const hookQueue = 256

func newHook(cmd string, timeout time.Duration, log *slog.Logger) *hook {
	h := &hook{cmd: cmd, timeout: timeout, log: log, queue: make(chan Event, hookQueue)}
	h.wg.Add(1)
	go h.run()
	return h
}

func (h *hook) run() {
	defer h.wg.Done()
	for e := range h.queue {
		ctx, cancel := context.WithTimeout(context.Background(), h.timeout)
		c := exec.CommandContext(ctx, "/bin/sh", "-c", h.cmd)
		c.Env = append(os.Environ(), "VREP_EVENT="+string(e.Kind), "VREP_VM="+e.VM, "VREP_DISK="+e.Disk,
			"VREP_HEALTH="+e.Health, "VREP_PREVIOUS="+e.Previous, "VREP_REASON="+e.Reason,
			"VREP_TIME="+e.Time.Format(time.RFC3339))
		// A child the hook left running may hold the output pipe open:
		// stop waiting for it shortly after the hook itself ends or is
		// killed, so the queue (and the daemon's stop) never hangs.
		c.WaitDelay = time.Second
		out, err := c.CombinedOutput()
		cancel()
		if err != nil {
			h.log.Warn("--on-health-change hook failed", "disk", e.Disk, "health", e.Health, "err", err, "output", string(out))
		}
	}
}

func (h *hook) enqueue(e Event) {
	select {
	case h.queue <- e:
	default:
		h.log.Warn("--on-health-change hook is behind; this change is only in the events log", "disk", e.Disk, "health", e.Health)
	}
}

// close lets queued hooks finish, then returns.
func (h *hook) close() {
	close(h.queue)
	h.wg.Wait()
}
