// Package demo is vrep demo: the whole pipeline on one machine, on
// embedded defaults, narrated in an operator's words, every step checked:
// protection (a primary and a replica: replication, points, a test
// failover), then recovery (two host daemons: the failover cycle,
// cycle.go).
package demo

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vrep-io/vrep/internal/nbdclient"
	"github.com/vrep-io/vrep/internal/pki"
	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/replicad"
	"github.com/vrep-io/vrep/internal/units"
	"github.com/vrep-io/vrep/replica/store"
	"github.com/vrep-io/vrep/replica/wire"
)

// Options tune the demo.
type Options struct {
	Dir      string // work directory (default a new temporary one, removed after)
	DiskSize int64  // per disk (default 32 MiB)
	Rounds   int    // write rounds, a point after each (default 4)
	Writes   int    // 4 KiB writes per disk per round (default 400)
	Out      io.Writer
	Log      io.Writer // daemons' warnings (default stderr)
}

const block = 4096

// shadow is what the workload wrote: the disk as the VM sees it.
type shadow struct {
	name string
	data []byte
	nbd  *nbdclient.Client
}

// Run runs the demo; it returns nil only if every check passed.
func Run(ctx context.Context, o Options) (err error) {
	if o.DiskSize == 0 {
		o.DiskSize = 32 << 20
	}
	if o.Rounds < 3 {
		o.Rounds = 4
	}
	if o.Writes == 0 {
		o.Writes = 400
	}
	if o.Log == nil {
		o.Log = os.Stderr
	}
	out := o.Out
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	checks := 0
	check := func(ok bool, format string, args ...any) error {
		if !ok {
			say("  FAILED: "+format, args...)
			return fmt.Errorf("demo check failed: "+format, args...)
		}
		checks++
		say("  ok: "+format, args...)
		return nil
	}
	dir := o.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "vrep-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	log := slog.New(slog.NewTextHandler(o.Log, &slog.HandlerOptions{Level: slog.LevelWarn}))
	say("vrep demo: a primary protecting one VM with two disks, replicating to a replica, on this machine.")
	say("Working in %s.\n", dir)

	// Points are taken by the narration (and by the primary once the
	// initial copy is done), never by a schedule: on a busy machine one
	// would come in that the narration does not count.
	pair, err := StartPair(dir, []string{"vm1/disk0", "vm1/disk1"}, o.DiskSize, log, PairConfig{PointsEvery: 24 * time.Hour})
	if err != nil {
		return err
	}
	defer pair.Close()
	rep, pri, repNBD, priNBD, specs := pair.Replica, pair.Primary, pair.ReplicaNBD, pair.PrimaryNBD, pair.Disks
	say("1. Made a certificate authority and certificates for \"replica\" and \"primary\" (ECDSA P-256);")
	say("   they authenticate each other with TLS 1.3, and the replica admits only \"primary\".")
	say("2. Started the replica on %s; it keeps 24 hours of recovery points, and serves test failovers over NBD at %s.", rep.Addr(), repNBD)
	say("3. Started the primary: VM vm1 with disks vm1/disk0 and vm1/disk1 (%s each), served over NBD at %s;", units.Bytes(o.DiskSize), priNBD)
	say("   every write goes to the disk's change log and is replicated continuously (zstd).")
	var disks []*shadow
	for _, s := range specs {
		cl, err := nbdclient.Dial("unix", priNBD, s.Name)
		if err != nil {
			return err
		}
		defer cl.Close()
		disks = append(disks, &shadow{name: s.Name, data: make([]byte, o.DiskSize), nbd: cl})
	}
	if err := waitReplicated(ctx, pri, 2*time.Minute); err != nil {
		return err
	}
	say("4. Initial replication complete: the replica holds both disks, and the primary takes a point at")
	say("   once, so that there is a point to fail over to before the first scheduled one.")
	var first []replicad.VMPoint
	for deadline := time.Now().Add(2 * time.Minute); len(first) == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if first, err = rep.Points("vm1"); err != nil {
			return err
		}
	}
	if err := check(len(first) == 1, "the replica holds one point of vm1 once the initial copy is done (%d)", len(first)); err != nil {
		return err
	}

	// 5. Workload and points.
	say("5. A workload writes 4 KiB blocks through NBD, as a VM would; after each round the primary takes a")
	say("   crash-consistent point of vm1: writes to both disks are held for an instant and the same marker")
	say("   goes into both change logs.")
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var seq uint64
	type taken struct {
		id    uint64
		state [][]byte
	}
	var points []taken
	write := func(round int) error {
		buf := make([]byte, block)
		for _, d := range disks {
			for range o.Writes {
				seq++
				b := r.Int64N(o.DiskSize / block)
				fill(buf, seq)
				if _, err := d.nbd.WriteAt(buf, b*block); err != nil {
					return fmt.Errorf("writing %s: %w", d.name, err)
				}
				copy(d.data[b*block:], buf)
			}
		}
		return nil
	}
	takePoint := func(round int) error {
		p, err := pri.TakePoint(ctx, "vm1", false)
		if err != nil {
			return err
		}
		// Flush, as a VM does now and then: the change log's records are
		// shipped once durable.
		for _, d := range disks {
			if err := d.nbd.Sync(); err != nil {
				return err
			}
		}
		t := taken{id: p.ID}
		for _, d := range disks {
			t.state = append(t.state, bytes.Clone(d.data))
		}
		points = append(points, t)
		say("   round %d: %d writes per disk, then point %d (writes held %d µs)", round, o.Writes, p.ID, p.Hold.Microseconds())
		return nil
	}
	for round := 1; round <= o.Rounds; round++ {
		if err := write(round); err != nil {
			return err
		}
		if err := takePoint(round); err != nil {
			return err
		}
	}
	if err := waitReplicated(ctx, pri, 2*time.Minute); err != nil {
		return err
	}
	say("6. Replication caught up. Checking the replica:")
	for _, d := range disks {
		img, err := os.ReadFile(filepath.Join(dir, "replica", "primary", d.name, "image"))
		if err != nil {
			return err
		}
		if err := check(bytes.Equal(img, d.data), "the replica image of %s equals the disk byte for byte", d.name); err != nil {
			return err
		}
	}
	pts, err := rep.Points("vm1")
	if err != nil {
		return err
	}
	say("7. The replica holds %d recovery points of vm1:", len(pts))
	for _, p := range pts {
		say("     %d  %s  %s  history %s", p.ID, p.Time.Format("15:04:05.000"), p.Kind, units.Bytes(p.HistoryBytes))
	}
	onReplica := map[uint64]bool{}
	for _, p := range pts {
		onReplica[p.ID] = true
	}
	reached := 0
	for _, p := range points {
		if onReplica[p.id] {
			reached++
		}
	}
	if err := check(reached == len(points) && len(pts) == len(points)+1, "every point the primary took reached the replica (%d of %d, and the first)", reached, len(points)); err != nil {
		return err
	}

	// 8. Test failover of an older point, while replication goes on.
	target := points[1]
	info, err := rep.StartTest("vm1", target.id)
	if err != nil {
		return err
	}
	say("8. Test failover of vm1 at point %d (the second one) started: NBD exports %v on the replica.", target.id, info.Exports)
	say("   Replication goes on underneath: one more round of writes and a point while the test runs.")
	if err := write(o.Rounds + 1); err != nil {
		return err
	}
	if err := takePoint(o.Rounds + 1); err != nil {
		return err
	}
	if err := waitReplicated(ctx, pri, 2*time.Minute); err != nil {
		return err
	}
	for i, d := range disks {
		cl, err := nbdclient.Dial("unix", repNBD, d.name+"-test")
		if err != nil {
			return err
		}
		got := make([]byte, o.DiskSize)
		_, err = cl.ReadAt(got, 0)
		if err != nil {
			cl.Close()
			return err
		}
		bad := 0
		for b := int64(0); b < o.DiskSize; b += block {
			if !bytes.Equal(got[b:b+block], target.state[i][b:b+block]) {
				bad++
			}
		}
		if err := check(bad == 0, "%s-test: all %d blocks equal what the workload had written by point %d", d.name, o.DiskSize/block, target.id); err != nil {
			cl.Close()
			return err
		}
		junk := bytes.Repeat([]byte("test failover "), 1<<17)[:1<<20]
		if _, err := cl.WriteAt(junk, 0); err != nil {
			cl.Close()
			return err
		}
		if _, err := cl.ReadAt(got[:1<<20], 0); err != nil {
			cl.Close()
			return err
		}
		cl.Close()
		if err := check(bytes.Equal(got[:1<<20], junk), "%s-test is writable (1 MiB written and read back)", d.name); err != nil {
			return err
		}
		img, err := os.ReadFile(filepath.Join(dir, "replica", "primary", d.name, "image"))
		if err != nil {
			return err
		}
		if err := check(bytes.Equal(img, d.data), "the replica image of %s is untouched by the test and has the newest writes", d.name); err != nil {
			return err
		}
	}
	if _, err := rep.StopTest("vm1", false); err != nil {
		return err
	}
	say("9. Test failover stopped: its writes are discarded, and point %d is no longer held.", target.id)

	// 10. Stop.
	for _, d := range disks {
		d.nbd.Close()
	}
	if err := pri.Close(); err != nil {
		return err
	}
	if err := rep.Close(); err != nil {
		return err
	}
	say("10. Stopped the primary (every write flushed and merged) and the replica.")
	if err := runCycle(ctx, filepath.Join(dir, "hosts"), o, log, seq, say, check); err != nil {
		return err
	}
	say("\nAll %d checks passed.", checks)
	return nil
}

// Pair is a replica and a primary replicating to it on loopback, with
// their certificates, under one directory.
type Pair struct {
	Replica    *replicad.Daemon
	Primary    *primary.Daemon
	ReplicaNBD string // test failovers
	PrimaryNBD string // the disks
	Disks      []primary.DiskSpec
}

// PairConfig shapes a Pair; the zero value is the demo's.
type PairConfig struct {
	// Via, if set, is given the replica's address and returns the one the
	// primary dials (a fault-injecting proxy).
	Via func(replicaAddr string) (string, error)
	// Timeout and Backoff tune the primary's shippers (tests scale them
	// down).
	Timeout time.Duration
	Backoff []time.Duration
	// Prepare, if set, runs on each disk image before the primary opens it.
	Prepare func(path string) error
	// PointsEvery, if set, is how often the primary takes scheduled
	// points (default: every 5 s, as for any continuous replication).
	PointsEvery time.Duration
}

// StartPair makes certificates, starts a replica keeping 24 hours of
// points, and a primary serving the named disks (raw images of size
// bytes, created empty) over NBD and replicating them with zstd.
func StartPair(dir string, disks []string, size int64, log *slog.Logger, cfgs ...PairConfig) (*Pair, error) {
	var cfg PairConfig
	if len(cfgs) > 0 {
		cfg = cfgs[0]
	}
	tlsDir := filepath.Join(dir, "tls")
	if err := pki.InitCA(tlsDir); err != nil {
		return nil, err
	}
	for _, n := range []string{"replica", "primary"} {
		if err := pki.Issue(tlsDir, n, 24*time.Hour); err != nil {
			return nil, err
		}
	}
	tc, err := pki.ServerConfig(tlsDir, "replica")
	if err != nil {
		return nil, err
	}
	p := &Pair{ReplicaNBD: filepath.Join(dir, "replica-nbd.sock"), PrimaryNBD: filepath.Join(dir, "primary-nbd.sock")}
	p.Replica, err = replicad.Start(replicad.Config{Data: filepath.Join(dir, "replica"), Listen: "127.0.0.1:0", TLS: tc,
		Allow: map[string]string{"primary": ""}, NBD: []string{"unix:" + p.ReplicaNBD},
		Retention: store.Retention{Window: 24 * time.Hour}, Log: log})
	if err != nil {
		return nil, err
	}
	addr := p.Replica.Addr()
	if cfg.Via != nil {
		if addr, err = cfg.Via(addr); err != nil {
			p.Close()
			return nil, err
		}
	}
	for _, n := range disks {
		path := filepath.Join(dir, strings.ReplaceAll(n, "/", "-")+".img")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			p.Close()
			return nil, err
		}
		if err := os.Truncate(path, size); err != nil {
			p.Close()
			return nil, err
		}
		if cfg.Prepare != nil {
			if err := cfg.Prepare(path); err != nil {
				p.Close()
				return nil, err
			}
		}
		p.Disks = append(p.Disks, primary.DiskSpec{Name: n, Path: path})
	}
	p.Primary, err = primary.Start(primary.Config{State: filepath.Join(dir, "primary"), Disks: p.Disks, NBD: []string{"unix:" + p.PrimaryNBD},
		Points: primary.PointsConfig{Every: cfg.PointsEvery},
		Replica: &primary.ReplicaConfig{Addr: addr, TLSDir: tlsDir, Name: "primary", ReplicaName: "replica", Codec: wire.CodecZstd,
			Timeout: cfg.Timeout, Backoff: cfg.Backoff},
		Log: log})
	if err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// WaitReplicated waits until the replica acknowledged every record the
// primary has logged.
func (p *Pair) WaitReplicated(ctx context.Context, timeout time.Duration) error {
	return waitReplicated(ctx, p.Primary, timeout)
}

// Close stops the primary, then the replica.
func (p *Pair) Close() {
	if p.Primary != nil {
		p.Primary.Close()
	}
	p.Replica.Close()
}

// fill makes a block that says which write made it.
func fill(b []byte, seq uint64) {
	r := rand.New(rand.NewPCG(seq, 42))
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	binary.LittleEndian.PutUint64(b, seq)
}

// waitReplicated waits until the replica acknowledged every record the
// primary had logged when the wait began.
func waitReplicated(ctx context.Context, pri *primary.Daemon, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	targets := map[string]uint64{}
	for _, d := range pri.Status().Disks {
		targets[d.Name] = d.LastLSN
	}
	for {
		done := true
		var why string
		for _, d := range pri.Status().Disks {
			rs := d.Replication
			if rs == nil || rs.Acked < targets[d.Name] || rs.Initial < 100 {
				done = false
				if rs != nil {
					why = fmt.Sprintf("%s: acked %d of %d, health %s %s", d.Name, rs.Acked, d.LastLSN, rs.Health, rs.Reason)
				}
			}
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("replication did not catch up in time: " + why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
