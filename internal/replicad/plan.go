package replicad

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vrep-io/vrep/internal/plan"
)

// Recovery plans run inside the replica daemon (package plan), their
// state in DATA/plans, their failovers through planOps.
//
// The API:
//
//	POST /v1/plan/run?mode=test|planned|unplanned[&point=latest|latest-app][&base=DIR]
//	     body: the plan's YAML (relative script paths are taken from base)  plan.Run
//	GET  /v1/plans                                  []plan.Run
//	GET  /v1/plan?name=PLAN                         plan.Run
//	POST /v1/plan/continue?name=PLAN[&how=retry|skip] plan.Run
//	POST /v1/plan/cancel?name=PLAN                  plan.Run
//	POST /v1/plan/cleanup?name=PLAN[&force=1]       plan.Run

// planOps is the daemon's side of plan.Ops.
type planOps struct{ d *Daemon }

var _ plan.Ops = planOps{}

// errNoPlanned is what a planned run answers until a planned failover
// is wired in (Config.Planned).
var errNoPlanned = fmt.Errorf("%w: planned failover is not available in this build", plan.ErrNotAvailable)

// members returns a target's VMs (ROOT/VM) and, for a group, the group.
func (o planOps) members(target string) ([]string, *group, error) {
	d := o.d
	if root, vm, _, err := d.vmDisks(target); err == nil {
		return []string{root + "/" + vm}, nil, nil
	} else if e := (*Error)(nil); !errors.As(err, &e) || e.Status != 404 {
		return nil, nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	g, err := d.findGroupLocked(target)
	if err != nil {
		return nil, nil, err
	}
	return g.info().VMs, g, nil
}

func (o planOps) Members(target string) ([]string, error) {
	vms, _, err := o.members(target)
	if err != nil && o.d.cfg.PlannedVMs != nil {
		// A VM the host daemon runs (a planned run moves it away).
		if v, _, perr := o.d.cfg.PlannedVMs(target); perr == nil {
			return v, nil
		}
	}
	return vms, err
}

// pointID resolves latest or latest-app to the target's point id (shared
// by a group's VMs).
func (o planOps) pointID(target, point string) (uint64, error) {
	d := o.d
	_, g, err := o.members(target)
	if err != nil {
		return 0, err
	}
	if g != nil {
		d.mu.Lock()
		defer d.mu.Unlock()
		at, err := d.chooseShared(g, point)
		if err != nil {
			return 0, err
		}
		return at[g.vms[0]].ID, nil
	}
	pts, err := d.Points(target)
	if err != nil {
		return 0, err
	}
	p, err := choosePoint(pts, point, target)
	return p.ID, err
}

func (o planOps) Check(target string, mode plan.Mode, point string) error {
	d := o.d
	if mode == plan.Planned {
		if d.cfg.Planned == nil {
			return errNoPlanned
		}
		return nil
	}
	vms, _, err := o.members(target)
	if err != nil {
		return err
	}
	if _, err := o.pointID(target, point); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var why []string
	for _, key := range vms {
		root, vm, _ := strings.Cut(key, "/")
		check := d.canFailOverLocked
		if mode == plan.Test {
			check = d.canTestLocked
		}
		if err := check(root, vm, vm); err != nil {
			why = append(why, err.Error())
		}
	}
	if len(why) > 0 {
		return errors.New(strings.Join(why, "; "))
	}
	return nil
}

func (o planOps) StartTest(ctx context.Context, target, point string) error {
	id, err := o.pointID(target, point)
	if err != nil {
		return err
	}
	_, err = o.d.vmOrGroup(target, func() (any, error) { return o.d.StartTest(target, id) },
		func() (any, error) { return o.d.StartGroupTest(target, id) })
	return err
}

func (o planOps) StopTest(ctx context.Context, target string, force bool) error {
	_, err := o.d.vmOrGroup(target, func() (any, error) { return o.d.StopTest(target, force) },
		func() (any, error) { return o.d.StopGroupTest(target, force) })
	if e := (*Error)(nil); errors.As(err, &e) && e.Status == 404 {
		return nil // stopped by hand already
	}
	return err
}

func (o planOps) Failover(ctx context.Context, target, point string) error {
	_, err := o.d.vmOrGroup(target, func() (any, error) { return o.d.StartFailover(target, point) },
		func() (any, error) { return o.d.StartGroupFailover(target, point) })
	return err
}

func (o planOps) FailedOver(target string) bool {
	if o.d.cfg.PlannedVMs != nil {
		if _, moved, err := o.d.cfg.PlannedVMs(target); err == nil {
			return moved
		}
	}
	vms, _, err := o.members(target)
	if err != nil {
		return false
	}
	d := o.d
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, vm := range vms {
		if f := d.fos[vm]; f == nil || f.err != "" {
			return false
		}
	}
	return true
}

func (o planOps) PlannedFailover(ctx context.Context, target string) error {
	if o.d.cfg.Planned == nil {
		return errNoPlanned
	}
	return o.d.cfg.Planned(ctx, target)
}

// planErr turns the plan package's errors into the API's.
func planErr(err error) error {
	for _, k := range []struct {
		sentinel error
		status   int
	}{{plan.ErrInvalid, 400}, {plan.ErrNotFound, 404}, {plan.ErrConflict, 409}, {plan.ErrNotAvailable, 400}} {
		if errors.Is(err, k.sentinel) {
			return &Error{Status: k.status, Msg: strings.TrimPrefix(err.Error(), k.sentinel.Error()+": ")}
		}
	}
	return err
}

func (d *Daemon) planRoutes(mux *http.ServeMux, answer func(http.ResponseWriter, any, error)) {
	reply := func(w http.ResponseWriter, v any, err error) {
		if err != nil {
			err = planErr(err)
		}
		answer(w, v, err)
	}
	mux.HandleFunc("POST /v1/plan/run", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			reply(w, nil, err)
			return
		}
		base := q.Get("base")
		if base != "" && !filepath.IsAbs(base) {
			reply(w, nil, fmt.Errorf("%w: base must be an absolute directory", plan.ErrInvalid))
			return
		}
		p, err := plan.Parse(body, base)
		if err != nil {
			reply(w, nil, err)
			return
		}
		run, err := d.plans.Run(p, plan.Mode(q.Get("mode")), q.Get("point"))
		reply(w, run, err)
	})
	mux.HandleFunc("GET /v1/plans", func(w http.ResponseWriter, r *http.Request) {
		reply(w, d.plans.List(), nil)
	})
	mux.HandleFunc("GET /v1/plan", func(w http.ResponseWriter, r *http.Request) {
		run, err := d.plans.Status(r.URL.Query().Get("name"))
		reply(w, run, err)
	})
	mux.HandleFunc("POST /v1/plan/continue", func(w http.ResponseWriter, r *http.Request) {
		run, err := d.plans.Continue(r.URL.Query().Get("name"), r.URL.Query().Get("how"))
		reply(w, run, err)
	})
	mux.HandleFunc("POST /v1/plan/cancel", func(w http.ResponseWriter, r *http.Request) {
		run, err := d.plans.Cancel(r.URL.Query().Get("name"))
		reply(w, run, err)
	})
	mux.HandleFunc("POST /v1/plan/cleanup", func(w http.ResponseWriter, r *http.Request) {
		force, _ := strconv.ParseBool(r.URL.Query().Get("force"))
		run, err := d.plans.Cleanup(r.Context(), r.URL.Query().Get("name"), force)
		reply(w, run, err)
	})
}
