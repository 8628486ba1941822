// Package statuspage renders a daemon's status page: its VMs and disks
// with their health and its reason, a chart of the RPO lag over the last
// hours (inline SVG, from the events recorder's samples), the recovery
// points timeline (replica) and the recent events. It is server-rendered
// with html/template, refreshes itself with a meta refresh, and needs no
// JavaScript. The handler only reads: GET and HEAD, nothing else.
package statuspage

import (
	"embed"
	"errors"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/events"
	"github.com/vrep-io/vrep/internal/jobs"
)

// View is what a daemon shows on its page.
type View struct {
	Role  string // "primary" or "replica"
	Disks []Disk
	// Points is the replica's recovery points timeline, by VM.
	Points []VMPoints
	// LagName says what the chart's lag is ("replica lag", "newest
	// point's age").
	LagName string
	Notes   []string // one line each: test failovers running, and such
}

// Disk is one row of the disks table.
type Disk struct {
	Name   string
	Health string
	Reason string
	Facts  []Fact // more columns, named by Columns
}

// Fact is one column's value for a disk.
type Fact struct{ Name, Value string }

// VMPoints is one VM's points, oldest first.
type VMPoints struct {
	VM     string
	Points []Point
}

// Point is a recovery point.
type Point struct {
	ID   uint64
	Time time.Time
	Kind string // crash or app
}

// Config configures a page handler.
type Config struct {
	View     func() (View, error)
	Recorder *events.Recorder // samples and events; nil: none
	Jobs     *jobs.Log        // running and recent jobs; nil: none
	// Refresh is the meta refresh interval (default 10 s).
	Refresh time.Duration
}

// ErrBadQuery is returned for a malformed query parameter.
var ErrBadQuery = errors.New("statuspage: bad query")

// DefaultWindow is how much lag history the chart shows by default.
const DefaultWindow = 3 * time.Hour

// MaxWindow bounds the window a request may ask for.
const MaxWindow = 7 * 24 * time.Hour

//go:embed page.html
var pageFS embed.FS

var page = template.Must(template.New("page.html").Funcs(template.FuncMap{
	"healthClass": func(h string) string {
		switch h {
		case "Normal", "Warning", "Critical":
			return h
		}
		return "Unknown"
	},
	"stamp": func(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") },
	"add":   func(a, b int) int { return a + b },
	"vmOf":  vmOf,
}).ParseFS(pageFS, "page.html"))

// params are the page's query parameters, checked.
type params struct {
	window time.Duration
	vm     string
}

func parse(r *http.Request) (params, error) {
	p := params{window: DefaultWindow}
	q := r.URL.Query()
	for k := range q {
		if k != "window" && k != "vm" {
			return p, fmt.Errorf("%w: unknown parameter %q (the page takes window=DURATION and vm=NAME)", ErrBadQuery, k)
		}
	}
	if s := q.Get("window"); q.Has("window") {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 || d > MaxWindow {
			return p, fmt.Errorf("%w: window %q must be a duration between 1s and %v, such as 1h or 30m", ErrBadQuery, s, MaxWindow)
		}
		p.window = d
	}
	p.vm = q.Get("vm")
	return p, nil
}

// Public is what a daemon serves over --http as well as on its API
// socket: the page and the metrics, read-only.
func Public(cfg Config, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", Handler(cfg))
	mux.Handle("GET /metrics", metrics)
	return daemon.CheckQuery(daemon.Routes{"GET /metrics": nil}, mux)
}

// Handler serves the page at any path it is mounted on.
func Handler(cfg Config) http.Handler {
	if cfg.Refresh <= 0 {
		cfg.Refresh = 10 * time.Second
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "The status page is read-only: use GET.", http.StatusMethodNotAllowed)
			return
		}
		p, err := parse(r)
		if err != nil {
			http.Error(w, err.Error()+".", http.StatusBadRequest)
			return
		}
		v, err := cfg.View()
		if err != nil {
			http.Error(w, "The daemon's status is not readable now: "+err.Error()+".", http.StatusInternalServerError)
			return
		}
		now := time.Now()
		data := pageData{View: v, Now: now, Refresh: int(math.Ceil(cfg.Refresh.Seconds())), Window: p.window.String(), VM: p.vm}
		data.Host, _ = os.Hostname()
		if p.vm != "" {
			data.Disks = slices.DeleteFunc(slices.Clone(v.Disks), func(d Disk) bool { return vmOf(d.Name) != p.vm })
			data.Points = slices.DeleteFunc(slices.Clone(v.Points), func(vp VMPoints) bool { return vp.VM != p.vm })
		}
		for _, d := range data.Disks {
			for _, f := range d.Facts {
				if !slices.Contains(data.Columns, f.Name) {
					data.Columns = append(data.Columns, f.Name)
				}
			}
		}
		if cfg.Recorder != nil {
			order, hist := cfg.Recorder.History()
			keep := func(disk string) bool { return p.vm == "" || vmOf(disk) == p.vm }
			data.Chart = chart(order, hist, now.Add(-p.window), now, keep)
			evs, _ := cfg.Recorder.Events(now.Add(-24 * time.Hour))
			if n := len(evs); n > 20 {
				evs = evs[n-20:]
			}
			slices.Reverse(evs)
			data.Events = evs
		}
		data.Jobs = pageJobs(cfg.Jobs.List(), p.vm, now)
		for _, vp := range data.Points {
			data.Timelines = append(data.Timelines, timeline(vp, now.Add(-p.window), now))
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := page.Execute(w, data); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
}

// vmOf is the VM of a disk named VM/DISK or ROOT/VM/DISK.
func vmOf(disk string) string {
	parts := strings.Split(disk, "/")
	if len(parts) < 2 {
		return disk
	}
	return parts[len(parts)-2]
}

type pageData struct {
	View
	Host      string
	Now       time.Time
	Refresh   int
	Window    string
	VM        string
	Columns   []string
	Chart     *Chart
	Timelines []Timeline
	Events    []events.Event
	Jobs      []jobs.Job
}

// pageJobs is what the page shows of the jobs: the running ones and
// those that ended in the last day (of vm, when given), newest first, at
// most 20.
func pageJobs(all []jobs.Job, vm string, now time.Time) []jobs.Job {
	var out []jobs.Job
	for i := len(all) - 1; i >= 0 && len(out) < 20; i-- {
		j := all[i]
		if vm != "" && vmOf(j.Target) != vm && path.Base(j.Target) != vm {
			continue
		}
		if j.State == jobs.Running || now.Sub(j.Ended) < 24*time.Hour {
			out = append(out, j)
		}
	}
	return out
}

// Chart is the lag chart's geometry, computed here so the template only
// places it.
type Chart struct {
	W, H, Left, Top, PlotW, PlotH int
	Lines                         []Line
	YTicks, XTicks                []Tick
	Empty                         bool
}

// Line is one disk's lag over time.
type Line struct {
	Name, Color, Points string
	Last                string // the newest value, as text
}

// Tick is an axis label.
type Tick struct {
	X, Y  int
	Label string
}

var palette = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"}

func chart(order []string, hist map[string][]events.Sample, from, to time.Time, keep func(string) bool) *Chart {
	c := &Chart{W: 900, H: 260, Left: 60, Top: 16}
	c.PlotW, c.PlotH = c.W-c.Left-40, c.H-c.Top-40
	maxLag := 1.0
	for _, disk := range order {
		for _, s := range hist[disk] {
			if s.LagKnown && !s.Time.Before(from) && keep(disk) {
				maxLag = max(maxLag, s.Lag)
			}
		}
	}
	maxLag = niceCeil(maxLag)
	span := to.Sub(from).Seconds()
	x := func(t time.Time) float64 { return float64(c.Left) + float64(c.PlotW)*t.Sub(from).Seconds()/span }
	y := func(v float64) float64 { return float64(c.Top) + float64(c.PlotH)*(1-v/maxLag) }
	for i, disk := range order {
		if !keep(disk) {
			continue
		}
		var pts []byte
		last := "unknown"
		for _, s := range hist[disk] {
			if !s.LagKnown || s.Time.Before(from) {
				continue
			}
			pts = fmt.Appendf(pts, "%.1f,%.1f ", x(s.Time), y(s.Lag))
			last = (time.Duration(s.Lag * float64(time.Second))).Round(100 * time.Millisecond).String()
		}
		c.Lines = append(c.Lines, Line{Name: disk, Color: palette[i%len(palette)], Points: string(pts), Last: last})
	}
	c.Empty = len(c.Lines) == 0
	for i := 0; i <= 4; i++ {
		v := maxLag * float64(i) / 4
		c.YTicks = append(c.YTicks, Tick{X: c.Left - 6, Y: int(y(v)), Label: secs(v)})
	}
	for i := 0; i <= 4; i++ {
		t := from.Add(time.Duration(float64(to.Sub(from)) * float64(i) / 4))
		c.XTicks = append(c.XTicks, Tick{X: int(x(t)), Y: c.Top + c.PlotH + 18, Label: t.Local().Format("15:04:05")})
	}
	return c
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func secs(v float64) string {
	if v >= 120 {
		return strconv.FormatFloat(v/60, 'f', -1, 64) + "m"
	}
	return strconv.FormatFloat(math.Round(v*100)/100, 'f', -1, 64) + "s"
}

// Timeline places a VM's points on a strip over the chart's window.
type Timeline struct {
	VM      string
	W, H    int
	Marks   []Mark
	Older   int // points before the window
	Count   int
	Newest  *Point
	XTicks  []Tick
	PlotW   int
	Left    int
	Caption string
}

// Mark is one point on a timeline.
type Mark struct {
	X     int
	App   bool
	Title string
}

func timeline(vp VMPoints, from, to time.Time) Timeline {
	tl := Timeline{VM: vp.VM, W: 900, H: 54, Left: 60, Count: len(vp.Points)}
	tl.PlotW = tl.W - tl.Left - 40
	span := to.Sub(from).Seconds()
	for i, p := range vp.Points {
		if p.Time.Before(from) {
			tl.Older++
			continue
		}
		x := tl.Left + int(float64(tl.PlotW)*p.Time.Sub(from).Seconds()/span)
		tl.Marks = append(tl.Marks, Mark{X: x, App: p.Kind == "app", Title: fmt.Sprintf("%s point %d at %s", p.Kind, p.ID, p.Time.Local().Format("15:04:05"))})
		if i == len(vp.Points)-1 {
			tl.Newest = &vp.Points[i]
		}
	}
	for i := 0; i <= 4; i++ {
		t := from.Add(time.Duration(float64(to.Sub(from)) * float64(i) / 4))
		tl.XTicks = append(tl.XTicks, Tick{X: tl.Left + tl.PlotW*i/4, Y: 48, Label: t.Local().Format("15:04:05")})
	}
	return tl
}
