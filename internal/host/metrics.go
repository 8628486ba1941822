package host

import (
	"net/http"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/vrep-io/vrep/internal/daemon"
)

// metrics is the host's /metrics: the replica's and every primary VM's,
// as they come and go, with the events' and jobs' counters once.
func (h *Host) metrics() http.Handler {
	return daemon.MetricsHandler(hostCollector{h}, h.cfg.Events.ErrorsCollector("vrep_errors_total"), h.cfg.Primary.Jobs.Collector())
}

// hostCollector gathers its components' collectors at each scrape (an
// unchecked collector: the primaries change). A series two primaries
// both report without a label that tells them apart (the newest point's
// time) is reported once.
type hostCollector struct{ h *Host }

func (hostCollector) Describe(chan<- *prometheus.Desc) {}

func (c hostCollector) Collect(ch chan<- prometheus.Metric) {
	cs := []prometheus.Collector{c.h.rep.Collector()}
	c.h.mu.Lock()
	for _, p := range c.h.prims {
		cs = append(cs, p.Collector())
	}
	c.h.mu.Unlock()
	seen := map[string]bool{}
	in := make(chan prometheus.Metric)
	go func() {
		for _, col := range cs {
			col.Collect(in)
		}
		close(in)
	}()
	for m := range in {
		var pb dto.Metric
		if m.Write(&pb) != nil {
			continue
		}
		var labels []string
		for _, l := range pb.GetLabel() {
			labels = append(labels, l.GetName()+"="+l.GetValue())
		}
		sort.Strings(labels)
		key := m.Desc().String() + strings.Join(labels, ",")
		if seen[key] {
			continue
		}
		seen[key] = true
		ch <- m
	}
}
