package plan

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// runScript runs an action's script with its arguments and timeout, in a
// process group of its own so that a timeout or a cancel kills whatever
// it started too. Its output's last lines are kept for the step's result.
func runScript(ctx context.Context, a Action, env []string) (string, error) {
	timeout := time.Duration(a.Timeout)
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, a.Script, a.Args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out tail
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	last := out.lastLine()
	switch {
	case err == nil:
		if last != "" {
			return "exit 0: " + last, nil
		}
		return "exit 0", nil
	case ctx.Err() != nil:
		return "", ctx.Err()
	case errors.Is(cctx.Err(), context.DeadlineExceeded):
		return "", fmt.Errorf("timed out after %s and was killed", timeout)
	}
	if last != "" {
		return "", fmt.Errorf("%v: %s", err, last)
	}
	return "", err
}

// tail keeps the last 4 KiB written to it. Safe for concurrent use
// (stdout and stderr).
type tail struct {
	mu sync.Mutex
	b  []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

func (t *tail) lastLine() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.TrimSpace(string(t.b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
