package statuspage

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/events"
)

func TestPage(t *testing.T) {
	rec, err := events.New(events.Config{Path: filepath.Join(t.TempDir(), events.FileName)})
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	now := time.Now()
	for i := range 10 {
		rec.Observe([]events.Sample{
			{Time: now.Add(time.Duration(i-10) * time.Minute), VM: "vm1", Disk: "vm1/disk0", Health: "Normal", Lag: float64(i), LagKnown: true},
			{Time: now.Add(time.Duration(i-10) * time.Minute), VM: "vm2", Disk: "vm2/disk0", Health: "Warning", Lag: 30, LagKnown: true},
		})
	}
	view := func() (View, error) {
		return View{Role: "replica", LagName: "age", Disks: []Disk{
			{Name: "vm1/disk0", Health: "Normal", Facts: []Fact{{"Points", "3"}}},
			{Name: "vm2/disk0", Health: "Warning", Reason: "<script>alert(1)</script>", Facts: []Fact{{"Points", "1"}}},
		}, Points: []VMPoints{{VM: "vm1", Points: []Point{{ID: 1, Time: now.Add(-time.Hour), Kind: "crash"}, {ID: 2, Time: now.Add(-time.Minute), Kind: "app"}}}}}, nil
	}
	h := Handler(Config{View: view, Recorder: rec})
	get := func(method, target string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(method, target, nil))
		return w
	}
	w := get("GET", "/")
	body := w.Body.String()
	for _, want := range []string{`<meta http-equiv="refresh" content="10">`, `<svg id="lag-chart"`, `data-disk="vm1/disk0"`, `data-disk="vm2/disk0"`,
		`class="health Warning">Warning</span>`, "&lt;script&gt;", `<svg class="points"`, "app point 2", "crash point 1"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(body, "<script>") {
		t.Errorf("a reason's markup reached the page unescaped")
	}
	if w := get("GET", "/?vm=vm1&window=30m"); w.Code != 200 || strings.Contains(w.Body.String(), "vm2/disk0") ||
		!strings.Contains(w.Body.String(), "(1 older than the window)") {
		t.Errorf("?vm=vm1&window=30m: %d\n%s", w.Code, w.Body.String())
	}
	for _, bad := range []string{"/?window=", "/?window=-1h", "/?window=9999h", "/?window=x", "/?foo=1"} {
		w := get("GET", bad)
		if msg := strings.TrimSpace(w.Body.String()); w.Code != 400 || strings.Contains(msg, "\n") || !strings.HasSuffix(msg, ".") {
			t.Errorf("%s: %d %q, want 400 and one sentence", bad, w.Code, msg)
		}
	}
	for _, m := range []string{"POST", "PUT", "DELETE"} {
		if w := get(m, "/"); w.Code != http.StatusMethodNotAllowed {
			t.Errorf("%s /: %d", m, w.Code)
		}
	}
}

func TestNiceCeil(t *testing.T) {
	for in, want := range map[float64]float64{0.3: 0.5, 1: 1, 1.2: 2, 3: 5, 7.2: 10, 11: 20, 450: 500} {
		if got := niceCeil(in); got != want {
			t.Errorf("niceCeil(%v) = %v, want %v", in, got, want)
		}
	}
}
