// Package host runs vrep's host daemon (vrep host): one daemon per host
// that holds both roles, per VM. VMs this host runs are each served by a
// primary (internal/primary) of their own, replicating to the peer host;
// VMs the peer runs are kept by the replica (internal/replicad). A
// planned failover moves a VM from one role to the other on both hosts
// without restarting anything: the old primary fences the VM, ships every
// record, and asks the peer to promote it (wire.Promote); the peer moves
// the replica image out of its store and serves it as a primary that
// replicates back; the old primary's image, identical, becomes the
// replica copy. Nothing is copied over the network either way.
//
// Each VM's role is persisted in DATA/roles (statefile framing, magic
// "VREPROLE", JSON body) before it is acted on, with the step a role
// change is at; a restart finishes or rolls back what a crash
// interrupted.
//
// On disk, under DATA:
//
//	roles             every VM's role, generation and the step it is at
//	primary/VM/       each primary VM's state (change logs, checkpoints)
//	replica/          the replica's data (a root per peer, the index)
//	images/VM/DISK.img  images of VMs promoted here that this host's
//	                  configuration names no path for
//	api.sock          the API (vrep status, vrep failover planned, ...)
package host

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/vrep-io/vrep/fuse"
	"github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/events"
	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/pki"
	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/replicad"
	"github.com/vrep-io/vrep/internal/statefile"
	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/nbd"
	"github.com/vrep-io/vrep/replica/receive"
	"github.com/vrep-io/vrep/replica/store"
	"github.com/vrep-io/vrep/replica/wire"
)

// Config is what vrep host is given.
type Config struct {
	Data     string
	Name     string // this host's certificate name
	TLSDir   string // ca.crt, NAME.crt, NAME.key
	Listen   string // the replica's listener, host:port
	Peer     string // the other host's certificate name
	PeerAddr string // the other host's listener, host:port
	// Disks are the VMs this host runs at its first start; later, the
	// roles file decides (a VM failed over to the peer is not served
	// here even if named), and their paths stay the images' homes.
	Disks []primary.DiskSpec
	NBD   []string
	FUSE  string
	API   string // default DATA/api.sock
	// Primary and Replica are templates for the components: how a
	// primary VM replicates and takes points (Replica: its copy
	// frequency, compression, retries; Points), how the replica keeps
	// history. Host-level fields (state, disks, addresses, names) are
	// set by the host.
	Primary primary.Config
	Replica replicad.Config
	Events  *events.Recorder
	Log     *slog.Logger
}

// Roles. Part of the roles file's format.
const (
	RolePrimary = "primary"
	RoleReplica = "replica"
)

// Steps of a role change. Part of the format.
const (
	stepHandingOver = "handing-over" // fenced, every record acknowledged; the peer asked or about to be
	stepPromoting   = "promoting"    // the peer handed the VM over: moving images, starting the primary
	stepDemoting    = "demoting"     // the peer promoted the VM: closing the primary, adopting the images
)

const rolesMagic = "VREPROLE"

// vmRole is a VM's role on this host.
type vmRole struct {
	Role       string     `json:"role"`
	Generation uint64     `json:"generation"`
	Step       string     `json:"step,omitempty"`
	Since      time.Time  `json:"since"`
	Disks      []roleDisk `json:"disks"`
	// Prepared is the handover under way (stepHandingOver).
	Prepared *primary.Prepared `json:"prepared,omitempty"`
	// Last is the last planned failover's outcome, for status.
	Last *Planned `json:"last,omitempty"`
	// SplitBrain: the demotion keeps the images as a split-brain point
	// (reverse replication after an unplanned failover).
	SplitBrain bool `json:"split_brain,omitempty"`
}

// roleDisk is a disk of a VM: its image's home on this host, and the
// LSN the replica copy starts at (a handover's base).
type roleDisk struct {
	Disk string `json:"disk"` // VM/DISK
	Home string `json:"home"`
	Base uint64 `json:"base,omitempty"`
}

// Host is a running host daemon.
type Host struct {
	cfg  Config
	log  *slog.Logger
	lock *os.File
	ctls *tls.Config // to the peer

	nbd       *nbd.Server
	fuse      *fuse.Mount
	rep       *replicad.Daemon
	api       *daemon.API
	listeners []net.Listener
	servers   daemon.Servers
	ready     chan struct{} // closed once the host serves: handovers wait for it

	// mu guards roles and prims; busy serializes role changes per VM.
	mu    sync.Mutex
	roles map[string]*vmRole
	prims map[string]*primary.Daemon
	busy  map[string]bool

	closeOnce sync.Once
}

// Start starts the host: the replica, a primary per VM this host runs,
// then the API and the NBD listeners. On error what was started stops.
func Start(cfg Config) (h *Host, err error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if err := names.Part(cfg.Name); err != nil {
		return nil, fmt.Errorf("--name: %w", err)
	}
	if err := names.Part(cfg.Peer); err != nil {
		return nil, fmt.Errorf("--peer: %w", err)
	}
	if abs, err := filepath.Abs(cfg.Data); err == nil {
		cfg.Data = abs
	}
	if cfg.Peer == cfg.Name {
		return nil, fmt.Errorf("%w: the peer %s is this host", names.ErrBadName, cfg.Peer)
	}
	h = &Host{cfg: cfg, log: cfg.Log, roles: map[string]*vmRole{}, prims: map[string]*primary.Daemon{},
		busy: map[string]bool{}, ready: make(chan struct{})}
	defer func() {
		if err != nil {
			h.Close()
		}
	}()
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return h, err
	}
	if h.lock, err = os.OpenFile(filepath.Join(cfg.Data, "lock"), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return h, err
	}
	if err := daemon.Lock(h.lock, "host data directory "+cfg.Data); err != nil {
		return h, err
	}
	if h.ctls, err = pki.ClientConfig(cfg.TLSDir, cfg.Name, cfg.Peer); err != nil {
		return h, err
	}
	stls, err := pki.ServerConfig(cfg.TLSDir, cfg.Name)
	if err != nil {
		return h, err
	}
	if err := h.loadRoles(); err != nil {
		return h, err
	}
	h.nbd = nbd.NewServer(cfg.Log)
	if cfg.FUSE != "" {
		if h.fuse, err = fuse.New(cfg.FUSE, cfg.Log); err != nil {
			return h, err
		}
	}
	rc := cfg.Replica
	rc.Data, rc.Name, rc.Listen, rc.TLS = filepath.Join(cfg.Data, "replica"), cfg.Name, cfg.Listen, stls
	rc.Allow, rc.AllowAny = map[string]string{cfg.Peer: ""}, false
	rc.SharedNBD, rc.SharedFUSE, rc.NoAPI = h.nbd, h.fuse, true
	rc.OnPromote, rc.OnAdopted, rc.OnReverse, rc.Events, rc.Log = h.onPromote, h.onAdopted, h.onReverse, cfg.Events, cfg.Log
	rc.Planned = func(ctx context.Context, target string) error {
		_, err := h.PlannedFailover(ctx, target, false)
		return err
	}
	rc.PlannedVMs = func(target string) ([]string, bool, error) {
		r, ok := h.role(target)
		if !ok {
			return nil, false, fmt.Errorf("no VM %q on this host", target)
		}
		return []string{target}, r.Role == RoleReplica && r.Step == "", nil
	}
	rc.Generation = func(root, vm string) uint64 {
		if r, ok := h.role(vm); ok && root == cfg.Peer {
			return r.Generation
		}
		return 0
	}
	if h.rep, err = replicad.Start(rc); err != nil {
		return h, err
	}
	if err := h.startRoles(); err != nil {
		return h, err
	}
	api := cfg.API
	if api == "" {
		api = filepath.Join(cfg.Data, "api.sock")
	}
	if h.api, err = daemon.ServeAPI(api, daemon.WithRole("host", h.handler())); err != nil {
		return h, err
	}
	for _, addr := range cfg.NBD {
		l, err := daemon.Listen(addr)
		if err != nil {
			return h, err
		}
		h.listeners = append(h.listeners, l)
	}
	for _, l := range h.listeners {
		h.servers.Go(func() error { return h.nbd.Serve(l) })
	}
	close(h.ready)
	return h, nil
}

// Addr is the replica's listener.
func (h *Host) Addr() string { return h.rep.Addr() }

// Wait returns when ctx ends or a listener fails.
func (h *Host) Wait(ctx context.Context) error { return daemon.Wait(ctx, h.servers.Err()) }

// Close stops every primary (draining, merging, syncing), the replica,
// the NBD server and the FUSE mount. It is idempotent.
func (h *Host) Close() error {
	var err error
	h.closeOnce.Do(func() {
		h.mu.Lock()
		prims := h.prims
		h.prims = map[string]*primary.Daemon{}
		h.mu.Unlock()
		for vm, p := range prims {
			if cerr := p.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("VM %s: %w", vm, cerr)
			}
		}
		if h.rep != nil {
			h.rep.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		h.nbd.Shutdown(ctx)
		cancel()
		for _, l := range h.listeners {
			l.Close()
			if ul, ok := l.(*net.UnixListener); ok {
				os.Remove(ul.Addr().String())
			}
		}
		h.servers.Wait()
		if h.fuse != nil {
			if uerr := h.fuse.Unmount(); uerr != nil {
				h.log.Warn("host: unmount", "err", uerr)
			}
		}
		if h.api != nil {
			h.api.Close()
		}
		if h.lock != nil {
			h.lock.Close()
		}
	})
	return err
}

func (h *Host) rolesPath() string { return filepath.Join(h.cfg.Data, "roles") }

// loadRoles reads the roles file; VMs the configuration names that it
// does not know are primaries here, at generation 1.
func (h *Host) loadRoles() error {
	body, err := statefile.Read(vfs.OS{}, h.rolesPath(), rolesMagic, -1)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("host: the roles file: %w", err)
	default:
		if err := json.Unmarshal(body, &h.roles); err != nil {
			return fmt.Errorf("host: the roles file: %w", statefile.ErrBad)
		}
	}
	added := false
	for _, spec := range h.cfg.Disks {
		vm, _, _ := names.Disk(spec.Name)
		r := h.roles[vm]
		if r == nil {
			r = &vmRole{Role: RolePrimary, Generation: 1, Since: time.Now()}
			h.roles[vm] = r
		}
		if !slices.ContainsFunc(r.Disks, func(d roleDisk) bool { return d.Disk == spec.Name }) {
			if r.Role != RolePrimary || r.Step != "" {
				return fmt.Errorf("%w: --disk %s adds a disk to VM %s, which is a %s here now", names.ErrBadName, spec.Name, vm, r.Role)
			}
			r.Disks = append(r.Disks, roleDisk{Disk: spec.Name, Home: spec.Path})
			added = true
		}
	}
	if added {
		return h.saveRolesLocked()
	}
	return nil
}

// saveRolesLocked persists the roles (h.mu held, or before serving).
func (h *Host) saveRolesLocked() error {
	body, err := json.Marshal(h.roles)
	if err != nil {
		return err
	}
	if err := statefile.Write(vfs.OS{}, h.rolesPath(), rolesMagic, body); err != nil {
		return fmt.Errorf("host: persisting the roles: %w", err)
	}
	return nil
}

// setRole changes a VM's role record and persists it. On error nothing
// changed, in memory either: a role the file does not hold would be
// acted on until a restart. A record is never changed in place, so one
// read under h.mu may be used after it.
func (h *Host) setRole(vm string, fn func(r *vmRole)) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.roles[vm]
	r := &vmRole{}
	if old != nil {
		*r = *old
		r.Disks = slices.Clone(old.Disks)
	}
	fn(r)
	h.roles[vm] = r
	if err := h.saveRolesLocked(); err != nil {
		if old == nil {
			delete(h.roles, vm)
		} else {
			h.roles[vm] = old
		}
		return err
	}
	return nil
}

func (h *Host) role(vm string) (vmRole, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.roles[vm]
	if r == nil {
		return vmRole{}, false
	}
	return *r, true
}

// startRoles serves every VM as its role says, finishing role changes a
// restart interrupted.
func (h *Host) startRoles() error {
	var vms []string
	for vm := range h.roles {
		vms = append(vms, vm)
	}
	sort.Strings(vms)
	for _, vm := range vms {
		r, _ := h.role(vm)
		switch {
		case r.Role == RolePrimary && r.Step == stepPromoting:
			if err := h.finishPromote(vm, nil); err != nil {
				return fmt.Errorf("VM %s: finishing its promotion: %w", vm, err)
			}
		case r.Role == RolePrimary:
			// A handover under way stays fenced until it is asked again
			// (vrep failover planned VM) or abandoned.
			fenced := ""
			if r.Step == stepHandingOver {
				fenced = "the host stopped while handing the VM over; run vrep failover planned " + vm + " again to finish (or --abort)"
			}
			if err := h.startPrimary(vm, r, fenced); err != nil {
				return err
			}
			if r.Step == stepHandingOver {
				h.rep.FenceRetry(h.cfg.Peer, vm, "this host is handing VM "+vm+" over; retry")
			} else {
				h.fenceRunning(vm, r.Generation)
			}
		case r.Role == RoleReplica && r.Step == stepDemoting:
			h.rep.FenceRetry(h.cfg.Peer, vm, "this host is making its image of VM "+vm+" the replica copy; retry")
			if err := h.finishDemote(vm); err != nil {
				return fmt.Errorf("VM %s: finishing its demotion: %w", vm, err)
			}
		}
	}
	return nil
}

// primaryState is a primary VM's state directory.
func (h *Host) primaryState(vm string) string { return filepath.Join(h.cfg.Data, "primary", vm) }

// startPrimary serves vm as a primary replicating to the peer.
func (h *Host) startPrimary(vm string, r vmRole, fenced string) error {
	pc := h.cfg.Primary
	pc.State = h.primaryState(vm)
	pc.Disks = nil
	for _, d := range r.Disks {
		pc.Disks = append(pc.Disks, primary.DiskSpec{Name: d.Disk, Path: d.Home})
	}
	rc := primary.ReplicaConfig{}
	if h.cfg.Primary.Replica != nil {
		rc = *h.cfg.Primary.Replica
	}
	rc.Addr, rc.TLSDir, rc.Name, rc.ReplicaName = h.cfg.PeerAddr, h.cfg.TLSDir, h.cfg.Name, h.cfg.Peer
	pc.Replica = &rc
	pc.Points = onlyVM(h.cfg.Primary.Points, vm)
	pc.NBD, pc.FUSE, pc.API = nil, "", ""
	pc.SharedNBD, pc.SharedFUSE, pc.NoAPI = h.nbd, h.fuse, true
	pc.Events, pc.Log = h.cfg.Events, h.log.With("vm", vm)
	if fenced != "" {
		pc.Fenced = map[string]string{vm: fenced}
	}
	p, err := primary.Start(pc)
	if err != nil {
		return fmt.Errorf("VM %s: %w", vm, err)
	}
	h.mu.Lock()
	h.prims[vm] = p
	h.mu.Unlock()
	return nil
}

// onlyVM keeps what a points configuration says of vm.
func onlyVM(pc primary.PointsConfig, vm string) primary.PointsConfig {
	pick := func(m map[string]string) map[string]string {
		if v, ok := m[vm]; ok {
			return map[string]string{vm: v}
		}
		return nil
	}
	out := pc
	out.Groups = nil
	out.PreFreeze, out.PostThaw, out.GuestAgent = pick(pc.PreFreeze), pick(pc.PostThaw), pick(pc.GuestAgent)
	out.Freeze = nil
	if f, ok := pc.Freeze[vm]; ok {
		out.Freeze = map[string][]string{vm: f}
	}
	return out
}

// home is where an image of a disk promoted here lives: the path this
// host's configuration gives it, else DATA/images/VM/DISK.img.
func (h *Host) home(disk string) string {
	for _, d := range h.cfg.Disks {
		if d.Name == disk {
			return d.Path
		}
	}
	vm, name, _ := names.Disk(disk)
	return filepath.Join(h.cfg.Data, "images", vm, name+".img")
}

// claim marks a VM busy with a role change; release undoes it.
func (h *Host) claim(vm string) (release func(), err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.busy[vm] {
		return nil, &Error{Status: 409, Msg: fmt.Sprintf("a role change of VM %s is already under way", vm)}
	}
	h.busy[vm] = true
	return func() {
		h.mu.Lock()
		delete(h.busy, vm)
		h.mu.Unlock()
	}, nil
}

// Error is an error an operator sees: one sentence and its HTTP status.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

// onPromote is the peer handing a VM over to this host (a planned
// failover there): check the replica holds everything, persist the new
// role, move the images out of the store, serve the VM as a primary that
// replicates back, answer with each disk's base LSN.
func (h *Host) onPromote(ctx context.Context, peer, root string, req wire.Promote) (wire.Promoted, error) {
	<-h.ready
	if peer != h.cfg.Peer {
		return wire.Promoted{}, &receive.PromoteError{Code: wire.CodeUnauthorized, Err: fmt.Errorf("only %s may hand VMs over to %s", h.cfg.Peer, h.cfg.Name)}
	}
	release, err := h.claim(req.VM)
	if err != nil {
		// Another role change of the VM runs here: perhaps this very
		// promotion, asked before, not finished. Not a refusal.
		return wire.Promoted{}, fmt.Errorf("%w: %w", receive.ErrNoAnswer, err)
	}
	defer release()
	if r, ok := h.role(req.VM); ok && r.Role == RolePrimary {
		if r.Generation == req.Generation+1 && r.Step == "" {
			// Asked again: the answer was lost on the way.
			return promotedOf(r), nil
		}
		if r.Generation == req.Generation+1 && r.Step == stepPromoting {
			// Asked again after finishing the promotion failed: finish it.
			if err := h.finishPromote(req.VM, nil); err != nil {
				return wire.Promoted{}, fmt.Errorf("%w: promoting VM %s: %w", receive.ErrNoAnswer, req.VM, err)
			}
			r, _ = h.role(req.VM)
			return promotedOf(r), nil
		}
		return wire.Promoted{}, &receive.PromoteError{Code: wire.CodeSuperseded,
			Err: fmt.Errorf("VM %s runs on %s already (generation %d)", req.VM, h.cfg.Name, r.Generation)}
	}
	rel, err := h.rep.ReleaseVM(root, req.VM, req.Disks)
	if err != nil {
		return wire.Promoted{}, err
	}
	nr := vmRole{Role: RolePrimary, Generation: req.Generation + 1, Step: stepPromoting, Since: time.Now()}
	for _, d := range rel {
		nr.Disks = append(nr.Disks, roleDisk{Disk: d.Disk, Home: h.home(d.Disk)})
	}
	if err := h.setRole(req.VM, func(r *vmRole) { *r = nr }); err != nil {
		h.rep.Unfence(root, req.VM)
		return wire.Promoted{}, &receive.PromoteError{Code: wire.CodeRetry, Err: err}
	}
	faultpoint.Hit(faultpoint.PromoteSaved)
	if err := h.finishPromote(req.VM, nil); err != nil {
		// Persisted as promoting: the next start, or the peer asking
		// again, finishes it. No refusal, which would give the VM back to
		// the peer's clients: the peer stays fenced and asks again.
		return wire.Promoted{}, fmt.Errorf("%w: promoting VM %s: %w", receive.ErrNoAnswer, req.VM, err)
	}
	r, _ := h.role(req.VM)
	h.log.Info("planned failover: this host runs the VM now and replicates it back", "vm", req.VM, "generation", r.Generation, "from", peer)
	faultpoint.Hit(faultpoint.PromoteServing)
	return promotedOf(r), nil
}

// onAdopted is the old primary saying its image is the replica copy
// now: the VM's streams back to it start at once.
func (h *Host) onAdopted(vm string) {
	h.mu.Lock()
	p := h.prims[vm]
	h.mu.Unlock()
	if p != nil {
		p.Resume(vm)
	}
}

func promotedOf(r vmRole) wire.Promoted {
	p := wire.Promoted{Generation: r.Generation}
	for _, d := range r.Disks {
		p.Disks = append(p.Disks, wire.HandoverDisk{Disk: d.Disk, LSN: d.Base})
	}
	return p
}

// finishPromote moves a promoting VM's images home, drops what the
// replica kept of it and serves it as a primary. Idempotent: a restart
// runs it again from wherever it stopped.
func (h *Host) finishPromote(vm string, beforeServe func() error) error {
	r, _ := h.role(vm)
	root := h.cfg.Peer
	h.fenceRunning(vm, r.Generation)
	// A try that failed after starting the primary: it was fenced, so it
	// wrote nothing; it lets go of the state it is about to be wiped.
	h.mu.Lock()
	old := h.prims[vm]
	delete(h.prims, vm)
	h.mu.Unlock()
	if old != nil {
		if err := old.Close(); err != nil {
			return err
		}
	}
	// Reverse replication: the committed failover that served the VM
	// lets go of its images (nothing for a planned failover).
	if _, err := h.rep.ReleaseCommitted(root, vm); err != nil {
		return err
	}
	var disks []string
	for _, d := range r.Disks {
		_, name, _ := names.Disk(d.Disk)
		if err := store.ReleaseImage(h.rep.Catalog, root+"/"+vm+"/"+name, d.Home); err != nil {
			return err
		}
		disks = append(disks, d.Disk)
	}
	faultpoint.Hit(faultpoint.PromoteMoved)
	if err := h.rep.DropVM(root, vm, disks); err != nil {
		return err
	}
	// A fresh state: the log of an earlier time this VM ran here would
	// replay over an image that has moved on since.
	if err := os.RemoveAll(h.primaryState(vm)); err != nil {
		return err
	}
	if beforeServe != nil {
		if err := beforeServe(); err != nil {
			return err
		}
	}
	// Fenced until the role is final. NB: a write taken before would be
	// below the base LSN persisted next, so never shipped to the replica
	// copy; and a crash before the role is final wipes this state (above)
	// at the next start, acknowledged writes with it.
	if err := h.startPrimary(vm, r, "the VM is being promoted on this host"); err != nil {
		return err
	}
	h.mu.Lock()
	p := h.prims[vm]
	h.mu.Unlock()
	if err := h.setRole(vm, func(r *vmRole) {
		r.Step, r.Since = "", time.Now()
		for i := range r.Disks {
			for _, d := range p.Disks {
				if d.Name == r.Disks[i].Disk {
					r.Disks[i].Base = d.Volume.Log().LastLSN()
				}
			}
		}
	}); err != nil {
		return err
	}
	p.Unfence(vm)
	return nil
}

// finishDemote closes a demoting VM's primary (merging its log into the
// images), drops its state and adopts the images as the replica copy at
// the new primary's base LSNs. Idempotent.
func (h *Host) finishDemote(vm string) error {
	r, _ := h.role(vm)
	h.mu.Lock()
	p := h.prims[vm]
	delete(h.prims, vm)
	h.mu.Unlock()
	if p == nil {
		// A restart: the log may hold records not yet merged into the
		// images. Open the VM fenced, and close it: Close merges.
		if _, err := os.Stat(h.primaryState(vm)); err == nil {
			if err := h.startPrimary(vm, r, "the VM runs on "+h.cfg.Peer+" now"); err != nil {
				return err
			}
			h.mu.Lock()
			p = h.prims[vm]
			delete(h.prims, vm)
			h.mu.Unlock()
		}
	}
	if p != nil {
		if err := p.Close(); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(h.primaryState(vm)); err != nil {
		return err
	}
	disks := make([]wire.HandoverDisk, 0, len(r.Disks))
	images := map[string]string{}
	for _, d := range r.Disks {
		disks = append(disks, wire.HandoverDisk{Disk: d.Disk, LSN: d.Base})
		images[d.Disk] = d.Home
	}
	if _, err := h.rep.AdoptVM(h.cfg.Peer, vm, disks, images, r.SplitBrain); err != nil {
		return err
	}
	faultpoint.Hit(faultpoint.DemoteAdopted)
	return h.setRole(vm, func(r *vmRole) { r.Step, r.Since, r.Prepared, r.SplitBrain = "", time.Now(), nil, false })
}

// fenceRunning refuses the peer's streams of a VM this host runs: a
// primary there is stale (an older generation), and learns it is
// superseded.
func (h *Host) fenceRunning(vm string, gen uint64) {
	h.rep.Fence(h.cfg.Peer, vm, fmt.Sprintf("VM %s runs on %s as its primary (generation %d)", vm, h.cfg.Name, gen))
}
