package vss

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/tracked"
	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/snapshot"
)

// gatedDisk is a group member whose Hold, once armed, calls a function
// while the disk is held: the barrier is in progress while it runs.
type gatedDisk struct {
	*tracked.Volume
	mu     sync.Mutex
	inHold func()
}

func (d *gatedDisk) Hold() func() {
	release := d.Volume.Hold()
	d.mu.Lock()
	f := d.inHold
	d.inHold = nil
	d.mu.Unlock()
	if f != nil {
		f()
	}
	return release
}

// markerAt decodes the marker a point left at lsn in v's change log.
func markerAt(t *testing.T, v *tracked.Volume, lsn uint64) hrl.Marker {
	t.Helper()
	var m hrl.Marker
	found := errors.New("found")
	err := v.Log().Scan(lsn, func(r hrl.Record) error {
		if r.LSN != lsn || r.Type != hrl.TypeMarker {
			t.Fatalf("record %d is type %d, not the point's marker", r.LSN, r.Type)
		}
		var err error
		if m, err = hrl.DecodeMarker(r.Payload); err != nil {
			t.Fatal(err)
		}
		return found
	})
	if !errors.Is(err, found) {
		t.Fatalf("no marker at LSN %d: %v", lsn, err)
	}
	return m
}

// TestWatchdogDuringBarrierMarksCrash: the watchdog fires while the
// barrier holds the disks. The markers written in the change logs, not
// only the returned point, must say crash-consistent; a point taken
// without the watchdog firing says app-consistent in its markers.
func TestWatchdogDuringBarrierMarksCrash(t *testing.T) {
	fs := vfs.NewMem(1)
	var disks []*gatedDisk
	members := map[string]snapshot.Disk{}
	for _, n := range []string{"vm1/disk0", "vm1/disk1"} {
		v, err := tracked.Open("/"+n, blockdev.NewMem(1<<20), tracked.Options{FS: fs})
		if err != nil {
			t.Fatal(err)
		}
		v.PauseMerge()
		t.Cleanup(func() { v.Close() })
		d := &gatedDisk{Volume: v}
		disks = append(disks, d)
		members[n] = d
	}
	g, err := snapshot.NewGroup("vm1", members)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// A healthy app point: app-consistent in the logs too.
	q := &fake{name: "fs"}
	p, err := AppPoint(ctx, g, []Quiescer{q}, time.Minute, quiet())
	if err != nil || p.Kind != hrl.KindApp {
		t.Fatalf("healthy app point: %+v %v", p, err)
	}
	for i, n := range []string{"vm1/disk0", "vm1/disk1"} {
		if m := markerAt(t, disks[i].Volume, p.LSNs[n]); m.Kind != hrl.KindApp || m.ID != p.ID {
			t.Fatalf("healthy app point: marker on %s is %+v", n, m)
		}
	}

	// The watchdog is fired by hand, from inside the barrier's hold of
	// the last disk, and the barrier goes on only once the thaw is done.
	var fire func()
	newWatchdog = func(_ time.Duration, f func()) func() bool {
		fire = f
		return func() bool { return true }
	}
	t.Cleanup(func() {
		newWatchdog = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	})
	last := disks[len(disks)-1]
	last.inHold = func() {
		done := make(chan struct{})
		go func() { fire(); close(done) }()
		<-done
	}
	q = &fake{name: "fs"}
	p, err = AppPoint(ctx, g, []Quiescer{q}, time.Minute, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if q.log() != "freeze,thaw" {
		t.Fatalf("quiescer calls %q", q.log())
	}
	if p.Kind != hrl.KindCrash || !strings.Contains(p.Reason, "timeout") {
		t.Fatalf("point thawed during the barrier: %+v", p)
	}
	for i, n := range []string{"vm1/disk0", "vm1/disk1"} {
		m := markerAt(t, disks[i].Volume, p.LSNs[n])
		if m.ID != p.ID || m.Kind != hrl.KindCrash {
			t.Fatalf("thawed during the barrier: the marker on %s says %s (%+v)", n, hrl.KindName(m.Kind), m)
		}
	}
}

// lateFreeze is a quiescer whose freeze takes hold only after the
// watchdog has thawed it, as a FIFREEZE that returns past the deadline.
type lateFreeze struct {
	mu       sync.Mutex
	frozen   bool
	thaws    int
	thawedCh chan struct{}
}

func (l *lateFreeze) Name() string { return "late" }
func (l *lateFreeze) Freeze(ctx context.Context) error {
	<-l.thawedCh // the watchdog's thaw has run
	l.mu.Lock()
	defer l.mu.Unlock()
	l.frozen = true
	return nil
}
func (l *lateFreeze) Thaw(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.thaws == 0 {
		close(l.thawedCh)
	}
	l.thaws++
	l.frozen = false
	return nil
}

// TestFreezeThatTakesHoldAfterTheWatchdog: a freeze that returns after
// the watchdog thawed is thawed again; nothing is left frozen.
func TestFreezeThatTakesHoldAfterTheWatchdog(t *testing.T) {
	g, _ := group(t)
	l := &lateFreeze{thawedCh: make(chan struct{})}
	p, err := AppPoint(context.Background(), g, []Quiescer{l}, 50*time.Millisecond, quiet())
	if err != nil || p.Kind != hrl.KindCrash || !strings.Contains(p.Reason, "timeout") {
		t.Fatalf("%+v %v", p, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.frozen {
		t.Fatalf("left frozen after %d thaws", l.thaws)
	}
}
