// Package vss quiesces applications for app-consistent points, as VSS
// does on Windows: freeze, take the barrier, thaw.
//
// Three quiescers: fsfreeze of mount points (FIFREEZE/FITHAW), pre-freeze
// and post-thaw hook commands (a database's own flush goes there), and the
// QEMU guest agent (guest-fsfreeze-freeze/thaw inside the VM). A freeze
// that fails, or outlives its deadline, gives a crash-consistent point
// with the reason, and every quiescer whose freeze was attempted is
// thawed: a failed quiesce never leaves an application frozen.
package vss

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/snapshot"
)

// Quiescer freezes something so that what it wrote is consistent on disk,
// and thaws it again.
type Quiescer interface {
	// Name says what is quiesced, for logs and reasons.
	Name() string
	// Freeze quiesces, giving up at ctx's deadline.
	Freeze(ctx context.Context) error
	// Thaw undoes Freeze. It is called even when Freeze failed or timed out,
	// and must be safe then; it is called a second time when the watchdog
	// thawed while Freeze was still running.
	Thaw(ctx context.Context) error
}

// ErrTimeout is the reason recorded when quiescing outlived its deadline.
var ErrTimeout = errors.New("vss: freeze outlived its timeout")

// newWatchdog starts the freeze watchdog: f runs once d has passed, unless
// the returned stop is called first. Tests replace it to fire the watchdog
// at the moment they choose.
var newWatchdog = func(d time.Duration, f func()) (stop func() bool) {
	return time.AfterFunc(d, f).Stop
}

// AppPoint takes an app-consistent point of g: freeze every quiescer in
// order, take the barrier, thaw in reverse order. If any freeze fails, or
// the whole freeze outlives timeout (a watchdog thaws at the deadline,
// whatever is running), the point is crash-consistent and says why. With
// no quiescers it is crash-consistent too, and says so.
//
// The kind is decided inside the barrier, while every disk of g is held:
// the markers in the change logs, not only the returned Point, say
// crash-consistent when the watchdog had begun to thaw before the hold.
// The watchdog is never made to wait for the barrier: a thaw must always
// be able to run, even when the barrier itself is stuck behind what is
// frozen.
func AppPoint(ctx context.Context, g *snapshot.Group, qs []Quiescer, timeout time.Duration, log *slog.Logger) (snapshot.Point, error) {
	if log == nil {
		log = slog.Default()
	}
	if len(qs) == 0 {
		return g.Take(hrl.KindCrash, "nothing is configured to quiesce (no --freeze, hooks or guest agent)")
	}
	fctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		mu       sync.Mutex // guards thawed and attempts; held while thawing
		thawed   bool
		attempts []Quiescer
		// thawing is set before the first Thaw starts and never cleared.
		// The barrier reads it while writes are held, so it must not wait
		// for mu: a thaw in progress may itself write to the held disks
		// (ext4 writes its superblock on thaw).
		thawing atomic.Bool
	)
	thawOne := func(q Quiescer) {
		tctx, tcancel := context.WithTimeout(context.Background(), timeout)
		defer tcancel()
		if err := q.Thaw(tctx); err != nil {
			log.Error("vss: thaw failed", "quiescer", q.Name(), "err", err)
		}
	}
	thawAll := func(why string) {
		mu.Lock()
		defer mu.Unlock()
		if thawed {
			return
		}
		thawed = true
		thawing.Store(true)
		for i := len(attempts) - 1; i >= 0; i-- {
			thawOne(attempts[i])
		}
		if why != "" {
			log.Warn("vss: thawed early", "reason", why)
		}
	}
	// The watchdog: at the deadline everything is thawed, even if a freeze
	// or the barrier is still running.
	stopWatchdog := newWatchdog(timeout, func() { thawAll(ErrTimeout.Error()) })
	defer stopWatchdog()

	var reason string
	for _, q := range qs {
		mu.Lock()
		late := thawed
		if !late {
			attempts = append(attempts, q)
		}
		mu.Unlock()
		if late {
			reason = ErrTimeout.Error()
			break
		}
		err := q.Freeze(fctx)
		mu.Lock()
		late = thawed
		mu.Unlock()
		if late {
			// The watchdog thawed while this freeze ran, perhaps before
			// it took hold (FIFREEZE cannot be interrupted): thaw it once
			// more so that nothing is left frozen.
			thawOne(q)
			reason = fmt.Sprintf("%s: %v", q.Name(), ErrTimeout)
			break
		}
		if err != nil {
			reason = fmt.Sprintf("%s: freeze failed: %v", q.Name(), err)
			if fctx.Err() != nil {
				reason = fmt.Sprintf("%s: %v", q.Name(), ErrTimeout)
			}
			break
		}
	}
	if reason != "" {
		thawAll("")
	}
	p, err := g.TakeDecided(func() (uint8, string) {
		// Every disk is held: what the point holds is fixed. If no thaw
		// had started by now, none had started when the first disk was
		// held either (thawing is never cleared), so the point holds a
		// quiesced state, whatever the watchdog does from here on.
		switch {
		case reason != "":
			return hrl.KindCrash, reason
		case thawing.Load():
			return hrl.KindCrash, ErrTimeout.Error()
		}
		return hrl.KindApp, ""
	})
	thawAll("")
	if p.Reason != "" {
		log.Warn("vss: app-consistent point taken as crash-consistent", "group", g.Name(), "reason", p.Reason)
	}
	return p, err
}
