// Package primary runs vrep's primary daemon: it opens each protected
// disk as a tracked volume and serves it over NBD and FUSE.
package primary

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/tracked"
	"github.com/vrep-io/vrep/fuse"
	"github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/events"
	"github.com/vrep-io/vrep/internal/jobs"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/nbd"
	"github.com/vrep-io/vrep/replica/ship"
)

// ErrLocked is returned when a state directory, an image or a socket is
// in use by another process.
var ErrLocked = daemon.ErrLocked

// DiskSpec names a disk and its image.
type DiskSpec struct {
	Name string // VM/DISK
	Path string
}

// ParseDisk parses "VM/DISK=PATH".
func ParseDisk(s string) (DiskSpec, error) {
	name, path, ok := strings.Cut(s, "=")
	if !ok || path == "" {
		return DiskSpec{}, fmt.Errorf("%w: --disk %q must be VM/DISK=PATH", names.ErrBadName, s)
	}
	if _, _, err := names.Disk(name); err != nil {
		return DiskSpec{}, err
	}
	return DiskSpec{Name: name, Path: path}, nil
}

// Config is what `vrep primary` is given.
type Config struct {
	State      string
	Disks      []DiskSpec
	NBD        []string // unix:PATH or tcp:HOST:PORT
	FUSE       string   // mount point, or ""
	MergeAfter int64
	// API is the path of the API socket (default STATE/api.sock).
	API string
	// Replica, when set, replicates every disk there.
	Replica *ReplicaConfig
	Points  PointsConfig
	// StopTimeout bounds how long Close waits for the disks' holders (a
	// loop device on a FUSE file, an NBD client's requests) to let go
	// before it refuses their I/O and detaches the mount (default 30 s).
	StopTimeout time.Duration
	// Events, if set, records the daemon's events; the API serves them.
	Events *events.Recorder
	// SharedNBD and SharedFUSE, when set, are a host daemon's NBD server
	// and FUSE mount, shared by its components (vrep host): the disks are
	// added to them and detached at Close, which neither stops the server
	// nor unmounts. NoAPI leaves the API to the host (Handler).
	SharedNBD  *nbd.Server
	SharedFUSE *fuse.Mount
	NoAPI      bool
	// Fenced names VMs whose disks refuse writes from the start, and why:
	// a planned failover was under way when the host stopped.
	Fenced map[string]string
	// Jobs, if set, records the daemon's long operations; the API and
	// the status page show them.
	Jobs *jobs.Log
	Log  *slog.Logger
}

// Disk is one protected disk being served.
type Disk struct {
	Name   string
	Path   string
	Volume *tracked.Volume
	base   *blockdev.File
	// shipThrough is the LSN of the disk's newest point: what an interval
	// copy frequency may ship.
	shipThrough atomic.Uint64
	// superseded is why the disk is fenced (its VM failed over), or nil.
	superseded atomic.Pointer[string]
}

// Daemon is a running primary.
type Daemon struct {
	cfg       Config
	log       *slog.Logger
	stateLock *os.File
	Disks     []*Disk
	nbd       *nbd.Server
	listeners []net.Listener
	fuse      *fuse.Mount
	points    *points
	// shipMu guards shippers, stopShip and cfg.Replica: replication can be
	// enabled on a running daemon (EnableReplication).
	shipMu    sync.RWMutex
	shippers  map[string]*ship.Shipper
	freq      atomic.Int64 // the copy frequency now, ns (0: continuous)
	freqMu    sync.Mutex   // one frequency change at a time
	stopShip  context.CancelFunc
	shipWG    sync.WaitGroup
	api       *daemon.API
	servers   daemon.Servers
	closeOnce sync.Once
	stopping  atomic.Bool // Close has begun: status says what it waits for
	batches   batchLog    // acknowledged batches, for vrep measure
	// supersedeMu serializes supersede (fence.go).
	supersedeMu sync.Mutex
}

// Start opens every disk and starts serving. On error everything opened
// is closed again.
func Start(cfg Config) (d *Daemon, err error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if len(cfg.Disks) == 0 {
		return nil, fmt.Errorf("%w: no --disk given", names.ErrBadName)
	}
	d = &Daemon{cfg: cfg, log: cfg.Log, nbd: cfg.SharedNBD}
	if d.nbd == nil {
		d.nbd = nbd.NewServer(cfg.Log)
	}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if err := os.MkdirAll(cfg.State, 0o700); err != nil {
		return d, fmt.Errorf("state directory: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(cfg.State, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return d, fmt.Errorf("state directory: %w", err)
	}
	d.stateLock = lf
	if err := daemon.Lock(lf, "state directory "+cfg.State); err != nil {
		return d, err
	}
	seen := map[string]bool{}
	for _, spec := range cfg.Disks {
		if seen[spec.Name] {
			return d, fmt.Errorf("%w: disk %s given twice", names.ErrBadName, spec.Name)
		}
		seen[spec.Name] = true
		disk, err := d.openDisk(spec)
		if err != nil {
			return d, err
		}
		d.Disks = append(d.Disks, disk)
		if err := d.fenceIfSuperseded(disk); err != nil {
			return d, fmt.Errorf("disk %s: %w", spec.Name, err)
		}
		if vm, _, _ := names.Disk(spec.Name); cfg.Fenced[vm] != "" {
			disk.Volume.Fence(fmt.Errorf("%w: %s", ErrHandingOver, cfg.Fenced[vm]))
		}
		d.nbd.Add(nbd.Export{Name: spec.Name, Device: disk.Volume})
	}
	if err := d.setupPoints(cfg.Points); err != nil {
		return d, err
	}
	if cfg.FUSE != "" || cfg.SharedFUSE != nil {
		if err := d.mountFUSE(); err != nil {
			return d, err
		}
	}
	if !cfg.NoAPI {
		api := cfg.API
		if api == "" {
			api = filepath.Join(cfg.State, "api.sock")
		}
		if d.api, err = daemon.ServeAPI(api, daemon.WithRole("primary", d.Handler())); err != nil {
			return d, err
		}
	}
	if err := d.startShipping(cfg.Replica); err != nil {
		return d, err
	}
	if err := d.restoreSeeds(); err != nil {
		return d, err
	}
	// Listeners last: a socket that answers means every door is open.
	for _, addr := range cfg.NBD {
		l, err := daemon.Listen(addr)
		if err != nil {
			return d, err
		}
		d.listeners = append(d.listeners, l)
	}
	for _, l := range d.listeners {
		d.servers.Go(func() error { return d.nbd.Serve(l) })
	}
	return d, nil
}

func (d *Daemon) openDisk(spec DiskSpec) (*Disk, error) {
	base, err := blockdev.OpenFile(spec.Path)
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", spec.Name, err)
	}
	if err := daemon.Lock(base.OSFile(), "image "+spec.Path); err != nil {
		base.Close()
		return nil, fmt.Errorf("disk %s: %w", spec.Name, err)
	}
	if base.Size() == 0 {
		base.Close()
		return nil, fmt.Errorf("disk %s: image %s is empty", spec.Name, spec.Path)
	}
	vm, name, _ := names.Disk(spec.Name)
	v, err := tracked.Open(filepath.Join(d.cfg.State, "disks", vm, name), base,
		tracked.Options{MergeAfter: d.cfg.MergeAfter, Retain: d.cfg.Replica != nil})
	if err != nil {
		base.Close()
		return nil, fmt.Errorf("disk %s: %w", spec.Name, err)
	}
	if torn := v.Log().TornTail(); torn != nil {
		// What a crash left unwritten: never acknowledged as durable.
		d.log.Warn("change log: cut a torn tail left by a crash (records never flushed)", "disk", spec.Name,
			"segment", torn.Segment, "offset", torn.Offset, "bytes", torn.Bytes, "reason", torn.Reason)
	}
	d.log.Info("disk protected", "disk", spec.Name, "image", spec.Path, "size", base.Size(), "lsn", v.Log().LastLSN())
	return &Disk{Name: spec.Name, Path: spec.Path, Volume: v, base: base}, nil
}

// Wait returns when ctx ends or a listener fails.
func (d *Daemon) Wait(ctx context.Context) error { return daemon.Wait(ctx, d.servers.Err()) }

// holders says what holds a disk: its FUSE file's holders (a loop
// device, a process) and its NBD connections; "" when nothing does.
func (d *Daemon) holders(name string) string {
	var out []string
	if d.fuse != nil {
		out = append(out, d.fuse.HoldersOf(name)...)
	}
	if c := d.nbd.Connections(name); len(c) == 1 {
		out = append(out, "1 NBD connection ("+c[0]+")")
	} else if len(c) > 1 {
		out = append(out, fmt.Sprintf("%d NBD connections (%s)", len(c), strings.Join(c, ", ")))
	}
	return strings.Join(out, ", ")
}

// stoppingHealth is a disk's health while Close waits for its holders,
// or "".
func (d *Daemon) stoppingHealth(name string) string {
	if !d.stopping.Load() {
		return ""
	}
	if h := d.holders(name); h != "" {
		return "stopping: waiting for " + h
	}
	return "stopping"
}

// Close stops the daemon, within StopTimeout and without losing an
// acknowledged write. It says at once what holds the disks; drains the
// NBD requests under way and closes the connections; unmounts the FUSE
// files once their holders let go, or at the timeout makes them answer
// EIO (nothing is acknowledged after that) and detaches the mount
// lazily; merges and syncs every disk; and closes the API last, so that
// vrep status answers until the end. It is idempotent.
func (d *Daemon) Close() error {
	var err error
	d.closeOnce.Do(func() {
		timeout := d.cfg.StopTimeout
		if timeout <= 0 {
			timeout = 30 * time.Second
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		d.stopping.Store(true)
		initial := ""
		if d.fuse != nil {
			initial = strings.Join(d.fuse.Holders(), ", ")
		}
		for _, disk := range d.Disks {
			if h := d.holders(disk.Name); h != "" {
				d.log.Warn("stopping: the disk is in use; waiting for it to be released", "disk", disk.Name,
					"held_by", h, "stop_timeout", timeout)
			}
		}
		if d.points != nil {
			d.points.close()
		}
		d.shipMu.RLock()
		stopShip := d.stopShip
		d.shipMu.RUnlock()
		if stopShip != nil {
			stopShip()
			d.shipWG.Wait()
		}
		if d.cfg.SharedNBD != nil {
			for _, disk := range d.Disks {
				d.nbd.Detach(ctx, disk.Name, true)
			}
		} else {
			d.nbd.Shutdown(ctx)
		}
		for _, l := range d.listeners {
			l.Close() // a listener Start opened but never served
		}
		d.servers.Wait()
		for _, l := range d.listeners {
			if ul, ok := l.(*net.UnixListener); ok {
				os.Remove(ul.Addr().String())
			}
		}
		if d.fuse != nil && d.cfg.SharedFUSE != nil {
			for _, disk := range d.Disks {
				if _, derr := d.fuse.Detach(ctx, disk.Name, false); derr != nil {
					d.log.Warn("stopping: the disk's file is still open; its I/O is refused from now on", "disk", disk.Name, "err", derr)
					d.fuse.Detach(ctx, disk.Name, true)
				}
			}
		} else if d.fuse != nil {
			uerr := d.fuse.Shutdown(ctx, func(h []string) {
				if s := strings.Join(h, ", "); s != initial {
					d.log.Info("stopping: still waiting for the FUSE files to be closed", "held_by", s)
				}
			})
			if uerr != nil {
				d.log.Error("unmounting", "mount", d.cfg.FUSE, "err", uerr)
			}
		}
		for _, disk := range d.Disks {
			if cerr := disk.Volume.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("disk %s: %w", disk.Name, cerr)
			}
			disk.base.Close()
		}
		if d.api != nil {
			d.api.Close()
		}
		if d.stateLock != nil {
			d.stateLock.Close()
		}
	})
	return err
}
