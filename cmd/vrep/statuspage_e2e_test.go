package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/waitfor"
)

// chromium runs headless Chromium on url with more flags (--dump-dom,
// --screenshot=FILE) and returns its standard output.
func chromium(t *testing.T, url string, flags ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitfor.Patience)
	defer cancel()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--window-size=1200,900"}, flags...)
	cmd := exec.CommandContext(ctx, "chromium", append(args, url)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %s: %v\n%s", url, err, errb.String())
	}
	return out.String()
}

// TestStatusPageInBrowser: each daemon serves its status page over
// --http on loopback; headless Chromium shows the VM's disk, its health
// and reason, and the lag chart; when the replica stops answering past
// the RPO threshold the primary's page turns Warning; the replica's page
// shows the points timeline. A malformed query gets a 400 with one
// sentence, the page answers nothing but GET, and a non-loopback --http
// is refused with nothing started.
func TestStatusPageInBrowser(t *testing.T) {
	need(t, "qemu-io", "curl", "chromium")
	e := newEnv(t, 16<<20)
	pkiDir, addr := replicationSetup(t, e)
	repHTTP, priHTTP := freePort(t), freePort(t)
	replica := startReplicaCmd(t, e.dir, pkiDir, addr, "--http", repHTTP, "--health-every", "200ms")
	e.start(t, replicaFlags(addr, pkiDir, "--points-every", "300ms", "--rpo-threshold", "2s,1h", "--health-every", "200ms",
		"--http", priHTTP)...)
	u := e.uri("vm1/disk0")
	for i, off := range []string{"0", "4M", "8M"} {
		qemuIO(t, u, "write -P 0x"+string(rune('a'+i))+"1 "+off+" 2M", "flush")
	}
	waitReplicated(t, e)
	priURL, repURL := "http://"+priHTTP+"/", "http://"+repHTTP+"/"

	// The replica stops answering: the lag grows past the threshold.
	replica.Process.Signal(syscall.SIGSTOP)
	waitStatus(t, e, "the primary to turn Warning", func(d primary.DiskStatus) bool {
		return d.Replication.Health == "Warning" && strings.Contains(d.Replication.Reason, "RPO threshold")
	})
	var dom string
	waitfor.True(t, "the page to show the Warning", func() bool {
		dom = chromium(t, priURL, "--dump-dom")
		return strings.Contains(dom, `class="health Warning">Warning</span>`)
	})
	for _, want := range []string{"vrep primary", "vm1/disk0", "past the RPO threshold of 2s", `<svg id="lag-chart"`, `<polyline class="lag" data-disk="vm1/disk0"`,
		`<meta http-equiv="refresh"`, "Recent events"} {
		if !strings.Contains(dom, want) {
			t.Fatalf("the primary's page lacks %q:\n%s", want, dom)
		}
	}
	shot := filepath.Join(e.dir, "primary.png")
	if os.Getenv("VREP_UPDATE_SCREENSHOT") != "" {
		shot, _ = filepath.Abs("../../docs/status.png")
	}
	// A short window, so that the seconds this test ran fill the chart.
	chromium(t, priURL+"?window=20s", "--screenshot="+shot, "--hide-scrollbars")
	if png, err := os.ReadFile(shot); err != nil || len(png) < 10<<10 || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("screenshot %s: %v, %d bytes", shot, err, len(png))
	}
	replica.Process.Signal(syscall.SIGCONT)

	dom = chromium(t, repURL, "--dump-dom")
	for _, want := range []string{"vrep replica", "vm1/disk0", `class="health `, `<svg id="lag-chart"`, "Recovery points", `<svg class="points"`, "<circle", "age of the newest recovery point"} {
		if !strings.Contains(dom, want) {
			t.Fatalf("the replica's page lacks %q:\n%s", want, dom)
		}
	}
	// The same page on the API socket.
	if page := run(t, "curl", "-sf", "--unix-socket", filepath.Join(e.state, "api.sock"), "http://vrep/?vm=vm1&window=10m"); !strings.Contains(page, `<svg id="lag-chart"`) {
		t.Fatalf("the page on the API socket:\n%s", page)
	}

	// Bad input: one sentence and 400; only GET; over TCP only the page
	// and the metrics.
	status := func(args ...string) (code, body string) {
		out := run(t, "curl", append([]string{"-s", "-w", "\n%{http_code}"}, args...)...)
		i := strings.LastIndexByte(out, '\n')
		return out[i+1:], out[:i]
	}
	if code, body := status(priURL + "?window=banana"); code != "400" || !strings.Contains(body, `window "banana" must be a duration`) || strings.Count(strings.TrimSpace(body), "\n") != 0 {
		t.Fatalf("?window=banana: %s %q", code, body)
	}
	if code, body := status(priURL + "?colour=red"); code != "400" || !strings.Contains(body, "unknown parameter") {
		t.Fatalf("?colour=red: %s %q", code, body)
	}
	for _, path := range []string{"", "metrics"} {
		if code, _ := status("-X", "POST", priURL+path); code != "405" {
			t.Fatalf("POST /%s: %s", path, code)
		}
	}
	if code, _ := status(priURL + "v1/status"); code != "404" {
		t.Fatalf("GET /v1/status over --http: %s, want 404 (the API is on the socket only)", code)
	}
	if code, body := status(priURL + "metrics"); code != "200" || !strings.Contains(body, "vrep_replication_lag_seconds") {
		t.Fatalf("GET /metrics over --http: %s", code)
	}
	other := filepath.Join(e.dir, "other")
	code, out := vrepRun(t, "primary", "--state", other, "--disk", "vm2/disk0="+e.img, "--nbd", "unix:"+filepath.Join(e.dir, "o.sock"), "--http", "0.0.0.0:9847")
	if code != 2 || !strings.Contains(out, "reachable from other hosts") {
		t.Fatalf("--http 0.0.0.0: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(other); err == nil {
		t.Fatalf("a refused --http created %s", other)
	}
}
