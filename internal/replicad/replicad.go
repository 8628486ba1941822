// Package replicad runs vrep's replica daemon: the replication server,
// the catalog of recovery points with its retention, test failovers
// served over NBD and FUSE, and the HTTP API on a unix socket.
package replicad

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/vrep-io/vrep/fuse"
	"github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/events"
	"github.com/vrep-io/vrep/internal/jobs"
	"github.com/vrep-io/vrep/internal/plan"
	"github.com/vrep-io/vrep/nbd"
	"github.com/vrep-io/vrep/replica/health"
	"github.com/vrep-io/vrep/replica/receive"
	"github.com/vrep-io/vrep/replica/store"
	"github.com/vrep-io/vrep/replica/wire"
)

// Config configures a replica daemon.
type Config struct {
	Data     string // storage: a root per primary, the index, the API socket
	Name     string // this replica's name, told to a superseded primary
	Listen   string // host:port for primaries
	TLS      *tls.Config
	Allow    map[string]string
	AllowAny bool
	NBD      []string // unix:PATH or tcp:ADDR, for test failovers
	FUSE     string   // mount point for test failovers
	API      string   // default Data/api.sock
	// Retention is the default policy; Overrides by "VM" or "VM/DISK".
	Retention  store.Retention
	Overrides  map[string]store.Retention
	PruneEvery time.Duration // default one minute
	// RPO is the recovery point objective of each VM: health judges the
	// newest point's age by it (zero: by the primary's point interval).
	RPO health.RPOPolicy
	// Events, if set, records the daemon's events; the API serves them.
	Events *events.Recorder
	// SharedNBD and SharedFUSE, when set, are a host daemon's NBD server
	// and FUSE mount, shared by its components (vrep host); NBD and FUSE
	// are then ignored, and Close neither stops the server nor unmounts.
	// NoAPI leaves the API to the host (Handler).
	SharedNBD  *nbd.Server
	SharedFUSE *fuse.Mount
	NoAPI      bool
	// OnPromote takes a VM over on a planned failover (see
	// receive.ServerConfig); nil: handovers are refused.
	OnPromote func(ctx context.Context, primary, root string, req wire.Promote) (wire.Promoted, error)
	OnAdopted func(vm string)
	OnReverse func(ctx context.Context, primary, root string, req wire.Reverse) (wire.Reversed, error)
	// Planned, if set, runs a planned failover of a VM or consistency
	// group (where it is primary), returning once it runs on the other
	// host: what a recovery plan's --planned run calls. Unset, such runs
	// are refused as not available in this build.
	Planned func(ctx context.Context, target string) error
	// PlannedVMs, with Planned, names the VMs a planned failover of
	// target moves (a VM the host daemon runs) and whether they moved
	// already; an error when the host runs no such VM.
	PlannedVMs func(target string) (vms []string, moved bool, err error)
	// Generation, if set, is the generation of vm's replication
	// relationship with the primary under root as the host daemon keeps
	// it (planned failovers raise it there): an unplanned failover takes
	// a generation above it, or the old primary, at that generation
	// already, would not be superseded by it. Zero: not known.
	Generation func(root, vm string) uint64
	// Jobs, if set, records the daemon's long operations; the API and
	// the status page show them.
	Jobs *jobs.Log
	Log  *slog.Logger
}

// Daemon is a running replica.
type Daemon struct {
	cfg  Config
	log  *slog.Logger
	lock *os.File
	// Catalog is the point index.
	Catalog *store.Catalog
	srv     *receive.Server
	ln      net.Listener
	nbd     *nbd.Server
	fuse    *fuse.Mount
	api     *daemon.API
	plans   *plan.Engine // recovery plans (plan.go)

	// mu is held by test and failover operations, some of which take
	// long (a commit rolls back and folds whole disks).
	mu    sync.Mutex
	tests map[string]*test     // by ROOT/VM
	fos   map[string]*failover // by ROOT/VM

	// shown is what status shows of the tests and failovers, published
	// by whoever changes them (publishLocked): status never waits for mu.
	shownMu sync.Mutex
	shown   struct {
		tests []TestInfo
		fos   []FailoverInfo
	}

	seeds seedImports // vrep seed import (seed.go)

	servers   daemon.Servers
	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// Start opens the catalog and starts serving. On error everything opened
// is closed again.
func Start(cfg Config) (d *Daemon, err error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.PruneEvery <= 0 {
		cfg.PruneEvery = time.Minute
	}
	d = &Daemon{cfg: cfg, log: cfg.Log, tests: map[string]*test{}, fos: map[string]*failover{}, stop: make(chan struct{})}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return d, err
	}
	if d.lock, err = os.OpenFile(filepath.Join(cfg.Data, "lock"), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return d, err
	}
	if err := daemon.Lock(d.lock, "replica data directory "+cfg.Data); err != nil {
		return d, err
	}
	d.clearStaleTests()
	if d.Catalog, err = store.OpenCatalog(store.CatalogConfig{Data: cfg.Data, Retention: cfg.Retention,
		Overrides: cfg.Overrides, Log: cfg.Log}); err != nil {
		return d, err
	}
	d.srv = receive.NewServer(receive.ServerConfig{Data: cfg.Data, TLS: cfg.TLS, Allow: cfg.Allow,
		AllowAny: cfg.AllowAny, Catalog: d.Catalog, OnPromote: cfg.OnPromote, OnAdopted: cfg.OnAdopted, OnReverse: cfg.OnReverse, Log: cfg.Log})
	d.nbd, d.fuse = cfg.SharedNBD, cfg.SharedFUSE
	if d.nbd == nil {
		d.nbd = nbd.NewServer(cfg.Log)
	}
	if cfg.FUSE != "" && d.fuse == nil {
		if d.fuse, err = fuse.New(cfg.FUSE, cfg.Log); err != nil {
			return d, err
		}
	}
	d.mu.Lock()
	committing := d.resumeFailovers()
	d.undoHalfGroupsLocked()
	d.mu.Unlock()
	// Before the API: a plan a restart interrupted resumes or stops
	// before anyone can ask about it.
	if d.plans, err = plan.Open(filepath.Join(cfg.Data, "plans"), planOps{d}, cfg.Log); err != nil {
		return d, err
	}
	if !cfg.NoAPI {
		api := cfg.API
		if api == "" {
			api = filepath.Join(cfg.Data, "api.sock")
		}
		if d.api, err = daemon.ServeAPI(api, daemon.WithRole("replica", d.Handler())); err != nil {
			return d, err
		}
	}
	for _, addr := range cfg.NBD {
		if cfg.SharedNBD != nil {
			break
		}
		l, err := daemon.Listen(addr)
		if err != nil {
			return d, err
		}
		d.servers.Go(func() error { return d.nbd.Serve(l) })
	}
	if d.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return d, err
	}
	d.servers.Go(func() error { return d.srv.Serve(d.ln) })
	d.finishCommits(committing)
	d.wg.Add(1)
	go d.pruneLoop()
	return d, nil
}

// Addr returns the address primaries connect to.
func (d *Daemon) Addr() string { return d.ln.Addr().String() }

func (d *Daemon) pruneLoop() {
	defer d.wg.Done()
	t := time.NewTicker(d.cfg.PruneEvery)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
			if err := d.Catalog.Prune(); err != nil {
				d.log.Error("replica: retention pruning failed; will retry", "err", err)
			}
		}
	}
}

// Wait returns when ctx ends or a listener fails.
func (d *Daemon) Wait(ctx context.Context) error { return daemon.Wait(ctx, d.servers.Err()) }

// Close stops test failovers, the servers and the catalog. Every applied
// batch is durable before its ack, so nothing acknowledged is lost. It is
// idempotent.
func (d *Daemon) Close() error {
	d.closeOnce.Do(func() {
		close(d.stop)
		if d.plans != nil {
			d.plans.Close()
		}
		d.wg.Wait()
		if d.api != nil {
			d.api.Close()
		}
		d.mu.Lock()
		for key, t := range d.tests {
			d.stopTestLocked(key, t)
		}
		d.mu.Unlock()
		if d.srv != nil {
			d.srv.Close()
		}
		if d.nbd != nil && d.cfg.SharedNBD == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			d.nbd.Shutdown(ctx)
			cancel()
		}
		d.servers.Wait()
		if d.fuse != nil && d.cfg.SharedFUSE == nil {
			if err := d.fuse.Unmount(); err != nil {
				d.log.Warn("replica: unmount", "err", err)
			}
		}
		d.mu.Lock()
		d.closeFailovers()
		d.mu.Unlock()
		if d.Catalog != nil {
			d.Catalog.Close()
		}
		if d.lock != nil {
			d.lock.Close()
		}
	})
	return nil
}

// clearStaleTests removes overlays a crashed run left: a test failover
// does not outlive its daemon.
func (d *Daemon) clearStaleTests() {
	stale, _ := filepath.Glob(filepath.Join(d.cfg.Data, "*", "*", "*", testOverlay))
	for _, f := range stale {
		if err := os.Remove(f); err == nil {
			d.log.Warn("replica: discarded a test failover left by an earlier run", "overlay", f)
		}
	}
}

// Error is an error an operator sees: one sentence, and the HTTP status
// the API answers it with.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

func notFound(format string, args ...any) error {
	return &Error{Status: 404, Msg: fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) error {
	return &Error{Status: 409, Msg: fmt.Sprintf(format, args...)}
}
