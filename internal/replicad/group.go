package replicad

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vrep-io/vrep/internal/names"
)

// Failing a consistency group over. The replica learns a VM's group from
// its points: every marker carries the group it was taken across (the
// primary's --group NAME=VM,VM; a VM in no group is a group of its own,
// named after it), and a point of a group has the same id on every disk
// of every VM of the group. So a group here is the VMs of one primary's
// root whose newest point names it, and its shared points are the point
// ids present on all of them with that group.
//
// Naming a group where a VM is expected (vrep failover start|cancel|
// commit|test|test-stop GROUP) acts on every VM of the group at one
// shared point, all or nothing: a start that fails on one VM cancels the
// VMs it already failed over (a test start stops them). Each VM's
// failover state carries the group, its VMs and a token of the start
// (foState.Extra); a restart that finds a group failover some of whose
// VMs never reached their state (killed between two VMs) cancels the
// others, so no group is left half failed over. A VM's name wins over a
// group's of the same name (the primary refuses a group named after a VM
// outside it; a group may be named after one of its own VMs, and is then
// reached through that VM's failover alone).

// Keys of a group failover in foState.Extra. Part of the format.
const (
	extraGroup      = "group"       // the group's name
	extraGroupVMs   = "group_vms"   // its VMs, comma-separated, sorted
	extraGroupToken = "group_start" // the group start's time, Unix ns: the VMs of one start share it
)

// GroupInfo describes what a command did to a consistency group.
type GroupInfo struct {
	Group string   `json:"group"` // ROOT/GROUP
	VMs   []string `json:"vms"`   // ROOT/VM, sorted
	// Point is the shared point (a start), zero otherwise.
	Point     uint64         `json:"point,string,omitempty"`
	Failovers []FailoverInfo `json:"failovers,omitempty"`
	Tests     []TestInfo     `json:"tests,omitempty"`
	// ServingSeconds is how long a failover start took to serve all.
	ServingSeconds float64 `json:"serving_seconds,omitempty"`
}

// group is a consistency group as the replica knows it.
type group struct {
	root, name string
	vms        []string            // sorted
	keys       map[string][]string // each VM's disk keys, sorted
}

func (g *group) key() string { return g.root + "/" + g.name }

// vmOrGroup runs vm when spec names a replicated VM, else group when it
// names a consistency group; when it names neither, it says so.
func (d *Daemon) vmOrGroup(spec string, vm, group func() (any, error)) (any, error) {
	_, _, _, err := d.vmDisks(spec)
	var e *Error
	if err == nil || !errors.As(err, &e) || e.Status != 404 {
		return vm()
	}
	return group()
}

// findGroupLocked resolves GROUP or ROOT/GROUP. The caller holds d.mu
// (the failovers of a group's VMs count as members: a commit dropped
// their points).
func (d *Daemon) findGroupLocked(spec string) (*group, error) {
	wantRoot, name, hasRoot := strings.Cut(spec, "/")
	if !hasRoot {
		name, wantRoot = wantRoot, ""
	} else if err := names.Part(wantRoot); err != nil {
		return nil, err
	}
	if err := names.Part(name); err != nil {
		return nil, err
	}
	all, err := d.Catalog.Disks()
	if err != nil {
		return nil, err
	}
	byRoot := map[string]*group{}
	add := func(root, vm, disk string) {
		g := byRoot[root]
		if g == nil {
			g = &group{root: root, name: name, keys: map[string][]string{}}
			byRoot[root] = g
		}
		if !slices.Contains(g.keys[vm], disk) {
			g.keys[vm] = append(g.keys[vm], disk)
		}
	}
	for _, k := range all {
		p := strings.Split(k, "/")
		if wantRoot != "" && p[0] != wantRoot {
			continue
		}
		h, err := d.Catalog.History(k)
		if err != nil {
			return nil, err
		}
		if n := len(h.Points); n > 0 && h.Points[n-1].Group == name {
			add(p[0], p[1], k)
		}
	}
	for _, f := range d.fos {
		if f.st.Extra[extraGroup] == name && (wantRoot == "" || f.root == wantRoot) {
			for _, k := range f.st.Disks {
				add(f.root, f.vm, k)
			}
		}
	}
	switch len(byRoot) {
	case 0:
		return nil, notFound("no VM or consistency group %q is replicated here", spec)
	case 1:
	default:
		var rs []string
		for r := range byRoot {
			rs = append(rs, r)
		}
		slices.Sort(rs)
		return nil, conflict("consistency group %q is replicated from several primaries (%s): say which, as ROOT/%s", name, strings.Join(rs, ", "), name)
	}
	var g *group
	for _, g = range byRoot {
	}
	for vm, ks := range g.keys {
		slices.Sort(ks)
		g.vms = append(g.vms, vm)
	}
	slices.Sort(g.vms)
	return g, nil
}

// sharedPoints returns the group's points present on every disk of every
// VM of the group, oldest first: for each, every VM's own VMPoint.
func (d *Daemon) sharedPoints(g *group) ([]map[string]VMPoint, error) {
	per := map[string]map[uint64]VMPoint{}
	var order []VMPoint
	for i, vm := range g.vms {
		pts, err := d.points(g.keys[vm])
		if err != nil {
			return nil, err
		}
		per[vm] = map[uint64]VMPoint{}
		for _, p := range pts {
			if p.Group == g.name {
				per[vm][p.ID] = p
				if i == 0 {
					order = append(order, p)
				}
			}
		}
	}
	var out []map[string]VMPoint
	for _, p := range order {
		m := map[string]VMPoint{}
		for _, vm := range g.vms {
			if q, ok := per[vm][p.ID]; ok {
				m[vm] = q
			}
		}
		if len(m) == len(g.vms) {
			out = append(out, m)
		}
	}
	return out, nil
}

// chooseShared picks the group's shared point by "latest", "latest-app"
// or an id.
func (d *Daemon) chooseShared(g *group, spec string) (map[string]VMPoint, error) {
	shared, err := d.sharedPoints(g)
	if err != nil {
		return nil, err
	}
	first := make([]VMPoint, len(shared))
	for i, m := range shared {
		first[i] = m[g.vms[0]]
	}
	p, err := choosePoint(first, spec, "group "+g.name)
	if err != nil {
		var e *Error
		if errors.As(err, &e) && e.Status == 404 {
			e.Msg = strings.Replace(e.Msg, "VM group ", "consistency group ", 1) + " (a point counts when every VM of the group has it)"
		}
		return nil, err
	}
	return shared[slices.IndexFunc(first, func(q VMPoint) bool { return q.ID == p.ID })], nil
}

func (g *group) info() GroupInfo {
	gi := GroupInfo{Group: g.key()}
	for _, vm := range g.vms {
		gi.VMs = append(gi.VMs, g.root+"/"+vm)
	}
	return gi
}

// StartGroupFailover fails every VM of a consistency group over to their
// shared point, or none.
func (d *Daemon) StartGroupFailover(spec, point string) (GroupInfo, error) {
	t0 := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	g, err := d.findGroupLocked(spec)
	if err != nil {
		return GroupInfo{}, err
	}
	if why := everyVM(g.root, g.vms, d.canFailOverLocked); why != "" {
		return GroupInfo{}, conflict("consistency group %s cannot fail over: %s", g.name, why)
	}
	at, err := d.chooseShared(g, point)
	if err != nil {
		return GroupInfo{}, err
	}
	extra := map[string]string{extraGroup: g.name, extraGroupVMs: strings.Join(g.vms, ","),
		extraGroupToken: strconv.FormatInt(t0.UnixNano(), 10)}
	gi := g.info()
	var done []*failover
	for _, vm := range g.vms {
		f, err := d.failOverLocked(g.root, vm, g.keys[vm], at[vm], extra)
		if err != nil {
			for _, f := range done {
				if _, cerr := d.cancelLocked(f, f.vm, true); cerr != nil {
					d.log.Error("replica: a group failover could not be undone on one VM; cancel it by hand", "vm", f.key, "err", cerr)
				}
			}
			return GroupInfo{}, fmt.Errorf("replica: consistency group %s was not failed over (VM %s could not: %w); the group's other VMs are back to replicating", g.name, vm, err)
		}
		done = append(done, f)
	}
	for _, f := range done {
		gi.Failovers = append(gi.Failovers, d.foInfo(f))
	}
	gi.Point = at[g.vms[0]].ID
	gi.ServingSeconds = time.Since(t0).Seconds()
	d.log.Info("replica: consistency group failed over: its VMs' disks are served writable at their shared point; commit or cancel",
		"group", gi.Group, "vms", strings.Join(gi.VMs, ","), "point", gi.Point, "took", time.Since(t0))
	return gi, nil
}

// groupFailoversLocked returns the failovers of a group's VMs, or a
// not-found error.
func (d *Daemon) groupFailoversLocked(g *group, verb string) ([]*failover, error) {
	var fs []*failover
	for _, vm := range g.vms {
		if f := d.fos[g.root+"/"+vm]; f != nil {
			fs = append(fs, f)
		}
	}
	if len(fs) == 0 {
		return nil, notFound("no VM of consistency group %s is failed over: there is no failover to %s", g.name, verb)
	}
	for _, f := range fs {
		if f.err != "" {
			return nil, conflict("the failover of VM %s could not be resumed at start (%s); see vrep failover %s %s", f.vm, f.err, verb, f.vm)
		}
	}
	return fs, nil
}

// CancelGroupFailover cancels the failover of every VM of a group: all,
// or (while a client holds one of their disks, unless force) none.
func (d *Daemon) CancelGroupFailover(spec string, force bool) (GroupInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	g, err := d.findGroupLocked(spec)
	if err != nil {
		return GroupInfo{}, err
	}
	fs, err := d.groupFailoversLocked(g, "cancel")
	if err != nil {
		return GroupInfo{}, err
	}
	var all []served
	for _, f := range fs {
		if f.st.State != stFailedOver {
			return GroupInfo{}, conflict("VM %s of consistency group %s is %s: a commit cannot be cancelled", f.vm, g.name, strings.ToLower(f.st.State))
		}
		all = append(all, f.served()...)
	}
	if !force {
		if err := d.detachIdle(all); err != nil {
			return GroupInfo{}, err
		}
	}
	gi := g.info()
	for _, f := range fs {
		info, err := d.cancelLocked(f, f.vm, true)
		if err != nil {
			return gi, err
		}
		gi.Failovers = append(gi.Failovers, info)
	}
	return gi, nil
}

// CommitGroupFailover commits the failover of every VM of a group (a VM
// already committed is left as it is, so a commit cut short is finished
// by running it again).
func (d *Daemon) CommitGroupFailover(spec string) (GroupInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	g, err := d.findGroupLocked(spec)
	if err != nil {
		return GroupInfo{}, err
	}
	fs, err := d.groupFailoversLocked(g, "commit")
	if err != nil {
		return GroupInfo{}, err
	}
	gi := g.info()
	for _, f := range fs {
		if f.st.State != stCommitted {
			if err := d.commit(f); err != nil {
				return gi, err
			}
		}
		gi.Failovers = append(gi.Failovers, d.foInfo(f))
	}
	return gi, nil
}

// StartGroupTest starts a test failover of every VM of a group at their
// shared point id (0: the newest), or of none.
func (d *Daemon) StartGroupTest(spec string, id uint64) (GroupInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	g, err := d.findGroupLocked(spec)
	if err != nil {
		return GroupInfo{}, err
	}
	if why := everyVM(g.root, g.vms, d.canTestLocked); why != "" {
		return GroupInfo{}, conflict("consistency group %s cannot start a test failover: %s", g.name, why)
	}
	point := "latest"
	if id != 0 {
		point = strconv.FormatUint(id, 10)
	}
	at, err := d.chooseShared(g, point)
	if err != nil {
		return GroupInfo{}, err
	}
	gi := g.info()
	for _, vm := range g.vms {
		ti, err := d.startTestLocked(g.root, vm, g.keys[vm], at[vm])
		if err != nil {
			for _, t := range gi.Tests {
				d.stopTestLocked(t.VM, d.tests[t.VM])
			}
			return GroupInfo{}, fmt.Errorf("replica: no test failover of consistency group %s was started (VM %s could not: %w)", g.name, vm, err)
		}
		gi.Tests = append(gi.Tests, ti)
	}
	gi.Point = at[g.vms[0]].ID
	return gi, nil
}

// StopGroupTest stops the test failovers of a group's VMs: all, or
// (while a client holds a test disk, unless force) none.
func (d *Daemon) StopGroupTest(spec string, force bool) (GroupInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	g, err := d.findGroupLocked(spec)
	if err != nil {
		return GroupInfo{}, err
	}
	gi := g.info()
	var ts []*test
	var all []served
	for _, vm := range gi.VMs {
		if t := d.tests[vm]; t != nil {
			ts = append(ts, t)
			all = append(all, t.served()...)
		}
	}
	if len(ts) == 0 {
		return GroupInfo{}, notFound("no test failover of consistency group %s is running", g.name)
	}
	if !force {
		if err := d.detachIdle(all); err != nil {
			return GroupInfo{}, err
		}
	}
	for _, t := range ts {
		d.stopTestLocked(t.info.VM, t)
		gi.Tests = append(gi.Tests, t.info)
	}
	d.log.Info("replica: test failovers of a consistency group stopped; their writes are discarded", "group", gi.Group, "forced", force)
	return gi, nil
}

// undoHalfGroupsLocked cancels, at start, the group failovers a kill
// left half done (some of the group's VMs never got their state), so a
// group is failed over whole or not at all.
func (d *Daemon) undoHalfGroupsLocked() {
	for _, f := range d.fos {
		grp, token := f.st.Extra[extraGroup], f.st.Extra[extraGroupToken]
		if grp == "" || f.err != "" || f.st.State != stFailedOver {
			continue
		}
		whole := true
		for _, vm := range strings.Split(f.st.Extra[extraGroupVMs], ",") {
			o := d.fos[f.root+"/"+vm]
			whole = whole && o != nil && o.st.Extra[extraGroupToken] == token
		}
		if whole {
			continue
		}
		if _, err := d.cancelLocked(f, f.vm, true); err != nil {
			d.log.Error("replica: could not undo a group failover cut short by a restart; cancel it by hand", "vm", f.key, "group", grp, "err", err)
			continue
		}
		d.log.Warn("replica: a consistency group's failover was cut short by a restart before every VM was failed over; undone, the VM replicates again",
			"vm", f.key, "group", grp)
	}
}

// everyVM checks every VM of a root (a group's, a plan's) and says, in
// one line, why those that cannot, cannot ("": all can).
func everyVM(root string, vms []string, check func(root, vm, spec string) error) string {
	var why []string
	for _, vm := range vms {
		if err := check(root, vm, vm); err != nil {
			why = append(why, err.Error())
		}
	}
	return strings.Join(why, "; ")
}
