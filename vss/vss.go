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
	// and must be safe then.
	Thaw(ctx context.Context) error
}

// ErrTimeout is the reason recorded when quiescing outlived its deadline.
var ErrTimeout = errors.New("vss: freeze outlived its timeout")

// AppPoint takes an app-consistent point of g: freeze every quiescer in
// order, take the barrier, thaw in reverse order. If any freeze fails, or
// the whole freeze outlives timeout (a watchdog thaws at the deadline,
// whatever is running), the point is crash-consistent and says why. With
// no quiescers it is crash-consistent too, and says so.
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
		mu       sync.Mutex
		thawed   bool
		attempts []Quiescer
	)
	thawAll := func(why string) {
		mu.Lock()
		defer mu.Unlock()
		if thawed {
			return
		}
		thawed = true
		tctx, tcancel := context.WithTimeout(context.Background(), timeout)
		defer tcancel()
		for i := len(attempts) - 1; i >= 0; i-- {
			if err := attempts[i].Thaw(tctx); err != nil {
				log.Error("vss: thaw failed", "quiescer", attempts[i].Name(), "err", err)
			}
		}
		if why != "" {
			log.Warn("vss: thawed early", "reason", why)
		}
	}
	// The watchdog: at the deadline everything is thawed, even if a freeze
	// or the barrier is still running.
	watchdog := time.AfterFunc(timeout, func() { thawAll(ErrTimeout.Error()) })
	defer watchdog.Stop()

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
		if err := q.Freeze(fctx); err != nil {
			reason = fmt.Sprintf("%s: freeze failed: %v", q.Name(), err)
			if fctx.Err() != nil {
				reason = fmt.Sprintf("%s: %v", q.Name(), ErrTimeout)
			}
			break
		}
	}
	kind := hrl.KindApp
	if reason != "" {
		thawAll("")
		kind = hrl.KindCrash
	} else {
		mu.Lock()
		if thawed { // the watchdog fired while the last freeze returned
			reason, kind = ErrTimeout.Error(), hrl.KindCrash
		}
		mu.Unlock()
	}
	// Still frozen here (unless downgraded): the barrier itself is quick.
	p, err := g.Take(kind, reason)
	mu.Lock()
	if kind == hrl.KindApp && thawed {
		// Thawed during the barrier: the point may not be app-consistent.
		// It is still a valid crash-consistent point; say so.
		p.Kind, p.Reason = hrl.KindCrash, ErrTimeout.Error()
	}
	mu.Unlock()
	thawAll("")
	if reason != "" {
		log.Warn("vss: app-consistent point taken as crash-consistent", "group", g.Name(), "reason", reason)
	}
	return p, err
}
