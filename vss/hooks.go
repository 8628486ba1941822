package vss

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"syscall"
)

// Hooks runs operator commands around the freeze: Pre before it (flush a
// database, stop a queue), Post after the thaw. Each runs under sh -c, its
// output logged; a non-zero exit fails the freeze; at the deadline its
// whole process group is killed.
type Hooks struct {
	Pre, Post string
	Log       *slog.Logger
}

// Name says which hooks.
func (h Hooks) Name() string { return "hooks" }

// Freeze runs the pre-freeze hook.
func (h Hooks) Freeze(ctx context.Context) error { return h.run(ctx, "pre-freeze", h.Pre) }

// Thaw runs the post-thaw hook.
func (h Hooks) Thaw(ctx context.Context) error { return h.run(ctx, "post-thaw", h.Post) }

func (h Hooks) run(ctx context.Context, which, command string) error {
	if command == "" {
		return nil
	}
	log := h.Log
	if log == nil {
		log = slog.Default()
	}
	cmd := exec.Command("sh", "-c", command)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s hook: %w", which, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // the whole group
		<-done
		err = fmt.Errorf("killed at its deadline: %w", ctx.Err())
	}
	log.Info("vss: hook ran", "hook", which, "command", command, "output", trim(out.String()), "err", err)
	if err != nil {
		return fmt.Errorf("%s hook %q: %w", which, command, err)
	}
	return nil
}

func trim(s string) string {
	if len(s) > 4096 {
		return s[:4096] + "…"
	}
	return s
}
