package vss

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/tracked"
	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/internal/waitfor"
	"github.com/vrep-io/vrep/snapshot"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func group(t *testing.T) (*snapshot.Group, *tracked.Volume) {
	v, err := tracked.Open("/v", blockdev.NewMem(1<<20), tracked.Options{FS: vfs.NewMem(1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	g, err := snapshot.NewGroup("vm1", map[string]snapshot.Disk{"vm1/disk0": v})
	if err != nil {
		t.Fatal(err)
	}
	return g, v
}

// fake records calls and can fail or hang.
type fake struct {
	name    string
	mu      sync.Mutex
	calls   []string
	failErr error
	hang    bool
}

func (f *fake) Name() string { return f.name }
func (f *fake) Freeze(ctx context.Context) error {
	f.mu.Lock()
	f.calls = append(f.calls, "freeze")
	f.mu.Unlock()
	if f.hang {
		<-ctx.Done()
		return ctx.Err()
	}
	return f.failErr
}
func (f *fake) Thaw(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "thaw")
	return nil
}
func (f *fake) log() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.calls, ",")
}

func TestAppPointKinds(t *testing.T) {
	g, _ := group(t)
	ctx := context.Background()
	a, b := &fake{name: "a"}, &fake{name: "b"}
	p, err := AppPoint(ctx, g, []Quiescer{a, b}, waitfor.Patience, quiet())
	if err != nil || p.Kind != hrl.KindApp || p.Reason != "" {
		t.Fatalf("healthy freeze: %+v %v", p, err)
	}
	if a.log() != "freeze,thaw" || b.log() != "freeze,thaw" {
		t.Fatalf("calls %s / %s", a.log(), b.log())
	}
	// A failed freeze: crash-consistent, with the reason, all attempted thawed.
	a, b = &fake{name: "a"}, &fake{name: "b", failErr: errors.New("database busy")}
	c := &fake{name: "c"}
	p, err = AppPoint(ctx, g, []Quiescer{a, b, c}, waitfor.Patience, quiet())
	if err != nil || p.Kind != hrl.KindCrash || !strings.Contains(p.Reason, "database busy") {
		t.Fatalf("failed freeze: %+v %v", p, err)
	}
	if a.log() != "freeze,thaw" || b.log() != "freeze,thaw" || c.log() != "" {
		t.Fatalf("calls %q %q %q", a.log(), b.log(), c.log())
	}
	// A hanging freeze: thawed at the deadline, crash-consistent.
	a, b = &fake{name: "a"}, &fake{name: "b", hang: true}
	start := time.Now()
	p, err = AppPoint(ctx, g, []Quiescer{a, b}, 200*time.Millisecond, quiet())
	if err != nil || p.Kind != hrl.KindCrash || !strings.Contains(p.Reason, "timeout") {
		t.Fatalf("hanging freeze: %+v %v", p, err)
	}
	// b is thawed once more if the watchdog thawed it before its freeze
	// returned: the freeze may have taken hold after that thaw.
	if time.Since(start) > 30*time.Second || a.log() != "freeze,thaw" || (b.log() != "freeze,thaw" && b.log() != "freeze,thaw,thaw") {
		t.Fatalf("calls %q %q after %v", a.log(), b.log(), time.Since(start))
	}
	// Nothing to quiesce: crash-consistent, and it says so.
	p, _ = AppPoint(ctx, g, nil, waitfor.Patience, quiet())
	if p.Kind != hrl.KindCrash || !strings.Contains(p.Reason, "nothing is configured") {
		t.Fatalf("no quiescers: %+v", p)
	}
}

func TestHooks(t *testing.T) {
	dir := t.TempDir()
	mark := filepath.Join(dir, "marks")
	h := Hooks{Pre: "echo pre >> " + mark, Post: "echo post >> " + mark, Log: quiet()}
	g, _ := group(t)
	p, err := AppPoint(context.Background(), g, []Quiescer{h}, waitfor.Patience, quiet())
	if err != nil || p.Kind != hrl.KindApp {
		t.Fatalf("%+v %v", p, err)
	}
	if b, _ := os.ReadFile(mark); string(b) != "pre\npost\n" {
		t.Fatalf("hooks ran as %q", b)
	}
	// A failing pre-freeze hook downgrades the point.
	p, _ = AppPoint(context.Background(), g, []Quiescer{Hooks{Pre: "exit 3", Log: quiet()}}, waitfor.Patience, quiet())
	if p.Kind != hrl.KindCrash || !strings.Contains(p.Reason, "exit status 3") {
		t.Fatalf("failing hook: %+v", p)
	}
	// A hook that hangs is killed at its deadline, with its children.
	start := time.Now()
	p, _ = AppPoint(context.Background(), g, []Quiescer{Hooks{Pre: "sleep 60 & sleep 60", Log: quiet()}}, 300*time.Millisecond, quiet())
	if p.Kind != hrl.KindCrash || time.Since(start) > 30*time.Second {
		t.Fatalf("hanging hook: %+v after %v", p, time.Since(start))
	}
}

// agentScript serves a scripted qemu-ga on a unix socket: a stale reply
// first, then answers; the file systems are frozen or not.
type agentScript struct {
	mu     sync.Mutex
	frozen bool
	hang   bool
	seen   []string
}

func (a *agentScript) serve(t *testing.T) string {
	sock := filepath.Join(t.TempDir(), "qga.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go a.conn(c)
		}
	}()
	return sock
}

func (a *agentScript) conn(c net.Conn) {
	defer c.Close()
	c.Write([]byte(`{"return": 424242}` + "\n")) // stale, from an abandoned exchange
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var req struct {
			Execute   string         `json:"execute"`
			Arguments map[string]any `json:"arguments"`
		}
		json.Unmarshal(line, &req)
		a.mu.Lock()
		a.seen = append(a.seen, req.Execute)
		var reply any
		switch req.Execute {
		case "guest-sync":
			reply = map[string]any{"return": req.Arguments["id"]}
		case "guest-fsfreeze-freeze":
			if a.hang {
				a.mu.Unlock()
				time.Sleep(5 * time.Second)
				return
			}
			a.frozen = true
			reply = map[string]any{"return": 2}
		case "guest-fsfreeze-thaw":
			a.frozen = false
			reply = map[string]any{"return": 2}
		case "guest-fsfreeze-status":
			st := "thawed"
			if a.frozen {
				st = "frozen"
			}
			reply = map[string]any{"return": st}
		default:
			reply = map[string]any{"error": map[string]any{"class": "CommandNotFound", "desc": "unknown " + req.Execute}}
		}
		a.mu.Unlock()
		b, _ := json.Marshal(reply)
		c.Write(append(b, '\n'))
	}
}

func TestGuestAgent(t *testing.T) {
	script := &agentScript{}
	qa := GuestAgent{Socket: script.serve(t)}
	ctx := context.Background()
	if err := qa.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := qa.Status(ctx); err != nil || st != "frozen" {
		t.Fatalf("status %q %v", st, err)
	}
	if err := qa.Thaw(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := qa.call(ctx, "guest-nonsense"); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Fatalf("unknown command: %v", err)
	}
	g, _ := group(t)
	p, err := AppPoint(ctx, g, []Quiescer{qa}, waitfor.Patience, quiet())
	if err != nil || p.Kind != hrl.KindApp || script.frozen {
		t.Fatalf("app point through the agent: %+v %v frozen=%v", p, err, script.frozen)
	}
	// An agent that hangs on freeze: crash-consistent point, thawed.
	script.hang = true
	p, _ = AppPoint(ctx, g, []Quiescer{qa}, 300*time.Millisecond, quiet())
	if p.Kind != hrl.KindCrash {
		t.Fatalf("hanging agent gave %+v", p)
	}
	if _, err := (GuestAgent{Socket: "/nonexistent/qga"}).Status(ctx); err == nil {
		t.Fatal("a missing agent socket was not an error")
	}
}
