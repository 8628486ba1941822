package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"time"

	"github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/events"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/primary"
)

// WantRoleHeader names the role a CLI command is for ("primary",
// "replica", "host", or none); the host routes the request to that
// component, and a request naming a VM to the component that holds it.
const WantRoleHeader = "Vrep-Want-Role"

// VMStatus is a VM's role on this host, in the host's status.
type VMStatus struct {
	VM         string    `json:"vm"`
	Role       string    `json:"role"`
	Generation uint64    `json:"generation"`
	Step       string    `json:"step,omitempty"`
	Since      time.Time `json:"since"`
	Summary    string    `json:"summary"`
	Disks      []string  `json:"disks"`
	Last       *Planned  `json:"last_planned_failover,omitempty"`
}

// Status is the host's status: every VM's role, and each component's
// own status as it answers it.
type Status struct {
	Role      string                     `json:"role"` // "host"
	Host      string                     `json:"host"`
	Peer      string                     `json:"peer"`
	VMs       []VMStatus                 `json:"vms"`
	Primaries map[string]json.RawMessage `json:"primaries"` // by VM: the primary's status
	Replica   json.RawMessage            `json:"replica"`
}

func (h *Host) summary(vm string, r vmRole, superseded string) string {
	switch {
	case r.Role == RolePrimary && superseded != "":
		return fmt.Sprintf("Superseded: read-only here (%s); on %s, vrep replication reverse %s makes this host keep its replica", strings.TrimPrefix(superseded, "superseded: "), h.cfg.Peer, vm)
	case r.Role == RolePrimary && r.Step == stepHandingOver:
		return fmt.Sprintf("Prepared for failover: writes refused, waiting for %s to confirm it took the VM over (vrep failover planned %s asks again; --abort gives it back)", h.cfg.Peer, vm)
	case r.Role == RolePrimary && r.Step == stepPromoting:
		return "Failing over to this host: moving the images, starting to serve"
	case r.Role == RolePrimary && r.Last == nil && r.Generation > 1:
		return fmt.Sprintf("Running here (primary, generation %d), reverse replicating to %s", r.Generation, h.cfg.Peer)
	case r.Role == RolePrimary:
		return fmt.Sprintf("Running here (primary), replicating to %s", h.cfg.Peer)
	case r.Step == stepDemoting:
		return fmt.Sprintf("Failed over to %s: making this host's image the replica copy", h.cfg.Peer)
	}
	return fmt.Sprintf("Runs on %s; this host keeps its replica (generation %d)", h.cfg.Peer, r.Generation)
}

// Status returns the host's status.
func (h *Host) Status(ctx context.Context) Status {
	st := Status{Role: "host", Host: h.cfg.Name, Peer: h.cfg.Peer, Primaries: map[string]json.RawMessage{}}
	h.mu.Lock()
	for vm, r := range h.roles {
		sup := ""
		if p := h.prims[vm]; p != nil {
			sup = p.Superseded(vm)
		}
		vs := VMStatus{VM: vm, Role: r.Role, Generation: r.Generation, Step: r.Step, Since: r.Since, Summary: h.summary(vm, *r, sup), Last: r.Last}
		for _, d := range r.Disks {
			vs.Disks = append(vs.Disks, d.Disk)
		}
		st.VMs = append(st.VMs, vs)
	}
	prims := map[string]*primary.Daemon{}
	for vm, p := range h.prims {
		prims[vm] = p
	}
	h.mu.Unlock()
	sort.Slice(st.VMs, func(i, j int) bool { return st.VMs[i].VM < st.VMs[j].VM })
	get := func(hd http.Handler) json.RawMessage {
		rec := httptest.NewRecorder()
		req := httptest.NewRequestWithContext(ctx, "GET", "/v1/status", nil)
		hd.ServeHTTP(rec, req)
		return json.RawMessage(rec.Body.Bytes())
	}
	for vm, p := range prims {
		st.Primaries[vm] = get(p.Handler())
	}
	st.Replica = get(h.rep.Handler())
	return st
}

// handler routes the API: the host's own verbs, then each request to
// the component it is for.
func (h *Host) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/failover/planned", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		timeout := 10 * time.Minute
		if s := q.Get("timeout"); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil || d <= 0 {
				daemon.WriteErr(w, http.StatusBadRequest, fmt.Errorf("timeout %q is not a positive duration such as 10m", s))
				return
			}
			timeout = d
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		out, err := h.PlannedFailover(ctx, q.Get("vm"), q.Get("abort") == "1")
		writeResult(w, out, err)
	})
	mux.HandleFunc("POST /v1/replication/reverse", func(w http.ResponseWriter, r *http.Request) {
		out, err := h.Reverse(r.Context(), r.URL.Query().Get("vm"))
		writeResult(w, out, err)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		if want := r.Header.Get(WantRoleHeader); want == "primary" || want == "replica" {
			h.route(w, r)
			return
		}
		daemon.WriteJSON(w, http.StatusOK, h.Status(r.Context()))
	})
	mux.Handle("GET /metrics", h.metrics())
	mux.HandleFunc("/", h.route)
	return daemon.CheckQuery(hostRoutes, mux)
}

// hostRoutes are the parameters of the host's own routes (the
// components check theirs).
var hostRoutes = daemon.Routes{
	"POST /v1/failover/planned":    {daemon.P("vm"), daemon.Flag("abort"), daemon.P("timeout")},
	"POST /v1/replication/reverse": {daemon.P("vm")},
}

func writeResult(w http.ResponseWriter, out any, err error) {
	var he *Error
	switch {
	case errors.As(err, &he) && he.Status == http.StatusOK:
		daemon.WriteJSON(w, http.StatusOK, map[string]string{"message": he.Msg})
	case errors.As(err, &he):
		daemon.WriteErr(w, he.Status, err)
	case err != nil:
		daemon.WriteErr(w, http.StatusInternalServerError, err)
	default:
		daemon.WriteJSON(w, http.StatusOK, out)
	}
}

// route sends a request to the component it is for: a request naming a
// VM this host runs to its primary, the rest to the replica, unless the
// command asked for a role.
func (h *Host) route(w http.ResponseWriter, r *http.Request) {
	want := r.Header.Get(WantRoleHeader)
	vm := r.URL.Query().Get("vm")
	if vm == "" {
		vm = r.URL.Query().Get("target")
	}
	if v, _, ok := strings.Cut(vm, "/"); ok && want != "replica" {
		vm = v // VM/DISK
	}
	h.mu.Lock()
	p := h.prims[vm]
	var only *primary.Daemon
	var running []string
	for v, q := range h.prims {
		only = q
		running = append(running, v)
	}
	role := h.roles[vm]
	h.mu.Unlock()
	sort.Strings(running)
	switch {
	case want == "replica" || want == "" && p == nil:
		h.rep.Handler().ServeHTTP(w, r)
	case p != nil:
		p.Handler().ServeHTTP(w, r)
	case vm == "" && len(running) == 1:
		only.Handler().ServeHTTP(w, r)
	case vm == "":
		daemon.WriteErr(w, http.StatusBadRequest, fmt.Errorf("this host runs %d VMs (%s): name one", len(running), strings.Join(running, ", ")))
	case names.Part(vm) != nil:
		daemon.WriteErr(w, http.StatusBadRequest, names.Part(vm))
	case role != nil && role.Role == RoleReplica:
		daemon.WriteErr(w, http.StatusConflict, fmt.Errorf("VM %s runs on %s, not here (this host keeps its replica): run the command there", vm, h.cfg.Peer))
	default:
		daemon.WriteErr(w, http.StatusNotFound, fmt.Errorf("no VM %q runs on this host", vm))
	}
}

// PublicHandler is the status page of the replica and the host's
// metrics (--http).
func (h *Host) PublicHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h.metrics())
	mux.Handle("/", h.rep.PublicHandler())
	return mux
}

// HealthSamples samples the health of every disk on this host, for the
// events log.
func (h *Host) HealthSamples() []events.Sample {
	out := h.rep.HealthSamples()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.prims {
		out = append(out, p.HealthSamples()...)
	}
	return out
}
