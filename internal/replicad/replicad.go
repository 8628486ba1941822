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
	"github.com/vrep-io/vrep/nbd"
	"github.com/vrep-io/vrep/replica/health"
	"github.com/vrep-io/vrep/replica/receive"
	"github.com/vrep-io/vrep/replica/store"
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
	Log    *slog.Logger
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
		AllowAny: cfg.AllowAny, Catalog: d.Catalog, Log: cfg.Log})
	d.nbd = nbd.NewServer(cfg.Log)
	if cfg.FUSE != "" {
		if d.fuse, err = fuse.New(cfg.FUSE, cfg.Log); err != nil {
			return d, err
		}
	}
	d.mu.Lock()
	committing := d.resumeFailovers()
	d.mu.Unlock()
	api := cfg.API
	if api == "" {
		api = filepath.Join(cfg.Data, "api.sock")
	}
	if d.api, err = daemon.ServeAPI(api, daemon.WithRole("replica", d.handler())); err != nil {
		return d, err
	}
	for _, addr := range cfg.NBD {
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
		d.wg.Wait()
		d.api.Close()
		d.mu.Lock()
		for key, t := range d.tests {
			d.stopTestLocked(key, t)
		}
		d.mu.Unlock()
		if d.srv != nil {
			d.srv.Close()
		}
		if d.nbd != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			d.nbd.Shutdown(ctx)
			cancel()
		}
		d.servers.Wait()
		if d.fuse != nil {
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
