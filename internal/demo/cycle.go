package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vrep-io/vrep/internal/host"
	"github.com/vrep-io/vrep/internal/nbdclient"
	"github.com/vrep-io/vrep/internal/pki"
	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/replicad"
	"github.com/vrep-io/vrep/internal/units"
	"github.com/vrep-io/vrep/replica/health"
	"github.com/vrep-io/vrep/replica/store"
	"github.com/vrep-io/vrep/replica/wire"
)

// The recovery half of the demo: two host daemons (vrep host) stand for
// two hosts, each holding a role per VM, and take VM vm1 through the
// whole cycle of issue 15: planned failover, failback, the primary lost,
// an unplanned failover to an older point, cancel, failover again,
// commit, the old primary back, reverse replication keeping its
// split-brain point, and a last failback. Every step checks the data
// the VM sees against what the workload wrote (the shadow).

const cycleVM = "vm1"

// cycleHost is one of the two hosts: its daemon, data and sockets.
type cycleHost struct {
	name string
	cfg  host.Config
	h    *host.Host
	nbd  string // NBD socket: the VMs it runs, and its test failovers
	api  *apiClient
}

// cycle is the state of the failover cycle.
type cycle struct {
	ctx    context.Context
	say    func(format string, args ...any)
	check  func(ok bool, format string, args ...any) error
	size   int64
	writes int
	r      *rand.Rand
	seq    uint64
	disks  []string          // VM/DISK
	shadow map[string][]byte // what the VM sees, by disk
	a, b   *cycleHost
}

// runCycle runs the failover cycle under dir.
func runCycle(ctx context.Context, dir string, o Options, log *slog.Logger, seq uint64,
	say func(string, ...any), check func(bool, string, ...any) error) (err error) {
	c := &cycle{ctx: ctx, say: say, check: check, size: o.DiskSize, writes: o.Writes, seq: seq,
		r: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2)), shadow: map[string][]byte{}}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tlsDir := filepath.Join(dir, "tls")
	if err := pki.InitCA(tlsDir); err != nil {
		return err
	}
	addrs := map[string]string{}
	for _, n := range []string{"hosta", "hostb"} {
		if err := pki.Issue(tlsDir, n, 24*time.Hour); err != nil {
			return err
		}
		if addrs[n], err = freeAddr(); err != nil {
			return err
		}
	}
	var specs []primary.DiskSpec
	for _, n := range []string{cycleVM + "/disk0", cycleVM + "/disk1"} {
		path := filepath.Join(dir, strings.ReplaceAll(n, "/", "-")+".img")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			return err
		}
		if err := os.Truncate(path, c.size); err != nil {
			return err
		}
		specs = append(specs, primary.DiskSpec{Name: n, Path: path})
		c.disks = append(c.disks, n)
		c.shadow[n] = make([]byte, c.size)
	}
	mk := func(name, peer string, disks []primary.DiskSpec) *cycleHost {
		ch := &cycleHost{name: name, nbd: filepath.Join(dir, name+"-nbd.sock")}
		ch.cfg = host.Config{Data: filepath.Join(dir, name), Name: name, TLSDir: tlsDir, Listen: addrs[name],
			Peer: peer, PeerAddr: addrs[peer], Disks: disks, NBD: []string{"unix:" + ch.nbd}, Log: log}
		// Points by hand only, so that the demo knows every point; a
		// reverse resync runs at once (the default window is the night).
		ch.cfg.Primary.Replica = &primary.ReplicaConfig{Codec: wire.CodecZstd, Backoff: []time.Duration{100 * time.Millisecond},
			ResyncWindow: health.ResyncWindow{Always: true}}
		ch.cfg.Primary.Points.Every = 24 * time.Hour
		ch.cfg.Replica.Retention = store.Retention{Window: 24 * time.Hour}
		ch.api = newAPIClient(filepath.Join(ch.cfg.Data, "api.sock"))
		return ch
	}
	c.a, c.b = mk("hosta", "hostb", specs), mk("hostb", "hosta", nil)
	for _, ch := range []*cycleHost{c.a, c.b} {
		if ch.h, err = host.Start(ch.cfg); err != nil {
			return fmt.Errorf("starting %s: %w", ch.name, err)
		}
	}
	defer func() {
		for _, ch := range []*cycleHost{c.a, c.b} {
			if ch.h != nil {
				ch.h.Close()
			}
		}
	}()
	say("\nRecovery: two hosts, each running vrep host (both roles, a role per VM), on this machine.")
	say("11. Started hosta (%s) and hostb (%s), each with its own data directory and certificate; they", addrs["hosta"], addrs["hostb"])
	say("    authenticate each other with mutual TLS. hosta runs VM %s (disks %s, %s each) and protects it on hostb.",
		cycleVM, strings.Join(c.disks, ", "), units.Bytes(c.size))
	say("    (The daemons' warnings on stderr from here on are the failures this part stages.)")
	if err := c.caughtUp(c.a); err != nil {
		return err
	}
	if err := c.write(c.a, c.writes, "on hosta"); err != nil {
		return err
	}
	if _, err := c.point(c.a); err != nil {
		return err
	}
	if err := c.caughtUp(c.a); err != nil {
		return err
	}
	if err := c.checkServes(c.a); err != nil {
		return err
	}

	// Planned failover and failback.
	if err := c.planned(c.a, c.b, "12. Planned failover of vm1 to hostb (vrep failover planned vm1 on hosta)"); err != nil {
		return err
	}
	if err := c.write(c.b, c.writes, "on hostb"); err != nil {
		return err
	}
	if err := c.caughtUp(c.b); err != nil {
		return err
	}
	if err := c.checkImages(c.a, "hosta's replica copy"); err != nil {
		return err
	}
	if err := c.planned(c.b, c.a, "13. Failback: planned failover of vm1 back to hosta (vrep failover planned vm1 on hostb)"); err != nil {
		return err
	}

	// The primary lost. Around the loss the VM writes a little: what a
	// few seconds of a busy VM leave unreplicated, and what it writes on
	// hostb before hosta is back.
	few := max(c.writes/4, 1)
	say("14. hosta runs vm1 again; two rounds of writes, a point after each:")
	var at [2]uint64
	var state [2]map[string][]byte
	for i := range at {
		if err := c.write(c.a, c.writes, "on hosta"); err != nil {
			return err
		}
		if at[i], err = c.point(c.a); err != nil {
			return err
		}
		state[i] = c.snapshot()
	}
	if err := c.caughtUp(c.a); err != nil {
		return err
	}
	if err := c.write(c.a, few, "on hosta after the last point"); err != nil {
		return err
	}
	lastOnA := c.snapshot()
	if err := c.a.h.Close(); err != nil {
		return err
	}
	c.a.h = nil
	say("15. hosta is lost: its daemon stopped without handing vm1 over (a clean stop of the process, not a")
	say("    power cut: hosta's last writes, after point %d, are on its disks but in no point on hostb).", at[1])
	if err := c.check(!c.dials(c.a, cycleVM+"/disk0"), "vm1 is served nowhere"); err != nil {
		return err
	}

	// Unplanned failover to the older point, cancel, again, commit.
	fo, err := c.failoverStart(at[0])
	if err != nil {
		return err
	}
	say("16. Unplanned failover of vm1 on hostb to the older point %d (vrep failover start vm1 --point %d):", at[0], at[0])
	say("    serving after %.0f ms, generation %d, nothing copied first.", fo.ServingSeconds*1000, fo.Generation)
	if err := c.checkServedAs(c.b, state[0], fmt.Sprintf("what the workload had written by point %d", at[0])); err != nil {
		return err
	}
	if err := c.write(c.b, c.writes, "on hostb, to be cancelled"); err != nil {
		return err
	}
	c.restore(state[1])
	var cancelled replicad.FailoverInfo
	if err := c.b.api.call(ctx, "POST", "/v1/failover/cancel?vm="+cycleVM, "replica", &cancelled); err != nil {
		return fmt.Errorf("vrep failover cancel: %w", err)
	}
	say("17. The operator wanted a newer point: vrep failover cancel vm1 discards what was written since the")
	say("    failover and goes back to replicating, every point kept.")
	if err := c.check(!c.dials(c.b, cycleVM+"/disk0"), "hostb no longer serves vm1 (%s)", cancelled.Summary); err != nil {
		return err
	}
	pts, err := c.points(c.b)
	if err != nil {
		return err
	}
	if err := c.check(hasPoints(pts, at[0], at[1]), "points %d and %d are still on hostb (%d points of vm1)", at[0], at[1], len(pts)); err != nil {
		return err
	}
	if fo, err = c.failoverStart(0); err != nil {
		return err
	}
	say("18. Unplanned failover again, to the latest point %d: serving after %.0f ms, generation %d.", fo.Point.ID, fo.ServingSeconds*1000, fo.Generation)
	if err := c.check(fo.Point.ID == at[1], "the latest point is the last one hosta took (%d)", at[1]); err != nil {
		return err
	}
	if err := c.checkServedAs(c.b, state[1], fmt.Sprintf("what the workload had written by point %d: the cancelled writes are gone", at[1])); err != nil {
		return err
	}
	if err := c.write(c.b, few, "on hostb"); err != nil {
		return err
	}
	var committed replicad.FailoverInfo
	if err := c.b.api.call(ctx, "POST", "/v1/failover/commit?vm="+cycleVM, "replica", &committed); err != nil {
		return fmt.Errorf("vrep failover commit: %w", err)
	}
	say("19. vrep failover commit vm1: hostb keeps point %d and what was written since as vm1's disks (%s).", at[1], committed.Summary)
	if err := c.checkServes(c.b); err != nil {
		return err
	}

	// The old primary back, reverse replication, failback.
	if c.a.h, err = host.Start(c.a.cfg); err != nil {
		return fmt.Errorf("restarting hosta: %w", err)
	}
	var summary string
	if err := c.wait("hosta to learn it is superseded", func() (bool, error) {
		summary = c.vmStatus(c.a).Summary
		return strings.HasPrefix(summary, "Superseded"), nil
	}); err != nil {
		return err
	}
	say("20. hosta is back. vrep status there: %s", summary)
	if err := c.checkRefusesWrites(c.a); err != nil {
		return err
	}
	if err := c.checkServedAs(c.a, lastOnA, "hosta's own last writes, read-only"); err != nil {
		return err
	}
	rev, err := c.b.h.Reverse(ctx, cycleVM)
	if err != nil {
		return fmt.Errorf("vrep replication reverse: %w", err)
	}
	logs := len(rev.Report) > 0
	var sentLogs, divLogs int64
	for _, r := range rev.Report {
		logs = logs && r.Method == "logs"
		sentLogs += r.SentBytes
		divLogs += r.DivergedBytes
	}
	say("21. vrep replication reverse vm1 on hostb: hosta keeps vm1's replica now (generation %d); its own", rev.Generation)
	if logs {
		say("    writes after point %d are kept there as the split-brain point; what diverged, known from both logs, was sent.", at[1])
	} else {
		say("    writes after point %d are kept there as the split-brain point, and a checksum resync sends what differs.", at[1])
	}
	var rs *resyncSummary
	if err := c.wait("the reverse transfer and replication to hosta", func() (bool, error) {
		ok, err := c.isCaughtUp(c.b)
		if err != nil || !ok {
			return false, err
		}
		if logs {
			return true, nil
		}
		rs = c.resync(c.b)
		return rs != nil && rs.done, nil
	}); err != nil {
		return err
	}
	// What diverged: the 4 KiB blocks (and chunks) where hosta's disks
	// differ from what hostb runs.
	total := int64(len(c.disks)) * c.size
	var divBytes int64
	for _, d := range c.disks {
		divBytes += int64(diffBlocks(lastOnA[d], c.shadow[d])) * block
	}
	if logs {
		say("    sent %s for %s of blocks that differ (%.2fx; the logs named %s) on %s of disks (%.1f%%).",
			units.Bytes(sentLogs), units.Bytes(divBytes), float64(sentLogs)/float64(max(divBytes, 1)), units.Bytes(divLogs),
			units.Bytes(total), 100*float64(sentLogs)/float64(total))
		if err := c.check(sentLogs >= divBytes && float64(sentLogs) <= 1.1*float64(divBytes), "the transfer sent the blocks that differ, at most 1.1 times their bytes"); err != nil {
			return err
		}
	} else {
		var differ uint64
		for _, d := range c.disks {
			differ += uint64(diffChunks(lastOnA[d], c.shadow[d], rs.chunkSize))
		}
		say("    resync: %s sent for %s of diverged blocks (%.1fx) on %s of disks (%.1f%%): %d of %d chunks of %s differed.",
			units.Bytes(rs.bytes), units.Bytes(divBytes), float64(rs.bytes)/float64(max(divBytes, 1)), units.Bytes(total),
			100*float64(rs.bytes)/float64(total), rs.sent, rs.chunks, units.Bytes(int64(rs.chunkSize)))
		if err := c.check(rs.sent == differ && rs.bytes < total, "the resync sent exactly the %d chunks that differ, not a full copy", differ); err != nil {
			return err
		}
	}
	if err := c.checkImages(c.a, "hosta's replica copy"); err != nil {
		return err
	}
	apts, err := c.points(c.a)
	if err != nil {
		return err
	}
	var sb *replicad.VMPoint
	for i := range apts {
		if apts[i].Group == rev.SplitBrainPoint {
			sb = &apts[i]
		}
	}
	if err := c.check(sb != nil, "vrep points vm1 on hosta lists the split-brain point (group %s)", rev.SplitBrainPoint); err != nil {
		return err
	}
	var ti replicad.TestInfo
	if err := c.a.api.call(ctx, "POST", fmt.Sprintf("/v1/failover/test?vm=%s&point=%d", cycleVM, sb.ID), "replica", &ti); err != nil {
		return fmt.Errorf("vrep failover test of the split-brain point: %w", err)
	}
	for _, d := range c.disks {
		got, err := c.read(c.a, d+"-test")
		if err != nil {
			return err
		}
		if err := c.check(bytes.Equal(got, lastOnA[d]), "%s-test on hosta (split-brain point %d) reads back hosta's own last writes", d, sb.ID); err != nil {
			return err
		}
	}
	var stopped replicad.TestInfo
	if err := c.a.api.call(ctx, "POST", "/v1/failover/test-stop?vm="+cycleVM, "replica", &stopped); err != nil {
		return fmt.Errorf("vrep failover test-stop: %w", err)
	}
	if err := c.write(c.b, c.writes, "on hostb"); err != nil {
		return err
	}
	if err := c.caughtUp(c.b); err != nil {
		return err
	}
	if err := c.planned(c.b, c.a, "22. Failback: planned failover of vm1 to hosta (vrep failover planned vm1 on hostb)"); err != nil {
		return err
	}
	for _, ch := range []*cycleHost{c.b, c.a} {
		if err := ch.h.Close(); err != nil {
			return err
		}
		ch.h = nil
	}
	say("23. vm1 runs on hosta again, replicating to hostb. Stopped both hosts.")
	return nil
}

// write writes a round of random 4 KiB blocks to every disk of the VM
// where it runs, and flushes, as a VM would.
func (c *cycle) write(on *cycleHost, n int, where string) error {
	buf := make([]byte, block)
	for _, d := range c.disks {
		cl, err := nbdclient.Dial("unix", on.nbd, d)
		if err != nil {
			return fmt.Errorf("%s on %s: %w", d, on.name, err)
		}
		for range n {
			c.seq++
			b := c.r.Int64N(c.size / block)
			fill(buf, c.seq)
			if _, err := cl.WriteAt(buf, b*block); err != nil {
				cl.Close()
				return fmt.Errorf("writing %s on %s: %w", d, on.name, err)
			}
			copy(c.shadow[d][b*block:], buf)
		}
		err = cl.Sync()
		cl.Close()
		if err != nil {
			return err
		}
	}
	c.say("    %d writes per disk %s", n, where)
	return nil
}

// point takes a crash-consistent point of the VM where it runs (vrep
// point create vm1) and returns its id.
func (c *cycle) point(on *cycleHost) (uint64, error) {
	var p primary.PointInfo
	if err := on.api.call(c.ctx, "POST", "/v1/points?target="+cycleVM, "primary", &p); err != nil {
		return 0, fmt.Errorf("a point of %s on %s: %w", cycleVM, on.name, err)
	}
	// The point's marker ships once durable.
	for _, d := range c.disks {
		cl, err := nbdclient.Dial("unix", on.nbd, d)
		if err != nil {
			return 0, err
		}
		err = cl.Sync()
		cl.Close()
		if err != nil {
			return 0, err
		}
	}
	c.say("    point %d", p.ID)
	return p.ID, nil
}

// planned runs a planned failover of the VM from one host to the other
// and checks it: nothing resynced, the VM served only on the new host,
// every write there.
func (c *cycle) planned(from, to *cycleHost, what string) error {
	p, err := from.h.PlannedFailover(c.ctx, cycleVM, false)
	if err != nil {
		return fmt.Errorf("planned failover on %s: %w", from.name, err)
	}
	c.say("%s: writes refused for %.0f ms, generation %d;", what, p.WritesRefused*1000, p.Generation)
	c.say("    replication reversed by itself, %s resynced.", units.Bytes(p.ResyncBytes))
	if err := c.check(p.To == to.name && p.ReverseConnected && p.ResyncBytes == 0,
		"%s runs vm1 and replicates it back to %s with 0 bytes resynced", to.name, from.name); err != nil {
		return err
	}
	if err := c.check(!c.dials(from, cycleVM+"/disk0"), "%s no longer serves vm1", from.name); err != nil {
		return err
	}
	return c.checkServes(to)
}

// checkServes checks that on serves the VM's disks with every write.
func (c *cycle) checkServes(on *cycleHost) error {
	return c.checkServedAs(on, c.shadow, "every write acknowledged so far")
}

// checkServedAs checks that on serves the VM's disks as want.
func (c *cycle) checkServedAs(on *cycleHost, want map[string][]byte, what string) error {
	for _, d := range c.disks {
		got, err := c.read(on, d)
		if err != nil {
			return err
		}
		if err := c.check(bytes.Equal(got, want[d]), "%s on %s holds %s (%d blocks differ)", d, on.name, what, diffBlocks(got, want[d])); err != nil {
			return err
		}
	}
	return nil
}

// checkImages checks that the images on a host that keeps the VM's
// replica (hard-linked into its store) equal what the VM sees.
func (c *cycle) checkImages(on *cycleHost, what string) error {
	for _, spec := range on.cfg.Disks {
		img, err := os.ReadFile(spec.Path)
		if err != nil {
			return err
		}
		if err := c.check(bytes.Equal(img, c.shadow[spec.Name]), "%s of %s equals the disk byte for byte", what, spec.Name); err != nil {
			return err
		}
	}
	return nil
}

// checkRefusesWrites checks that a superseded host takes no write.
func (c *cycle) checkRefusesWrites(on *cycleHost) error {
	cl, err := nbdclient.Dial("unix", on.nbd, c.disks[0])
	if err != nil {
		return err
	}
	defer cl.Close()
	_, werr := cl.WriteAt(make([]byte, block), 0)
	return c.check(werr != nil, "%s refuses writes to vm1 (%v)", on.name, werr)
}

func (c *cycle) read(on *cycleHost, export string) ([]byte, error) {
	cl, err := nbdclient.Dial("unix", on.nbd, export)
	if err != nil {
		return nil, fmt.Errorf("%s on %s: %w", export, on.name, err)
	}
	defer cl.Close()
	b := make([]byte, c.size)
	if _, err := cl.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("reading %s on %s: %w", export, on.name, err)
	}
	return b, nil
}

// dials says whether on serves an export.
func (c *cycle) dials(on *cycleHost, export string) bool {
	cl, err := nbdclient.Dial("unix", on.nbd, export)
	if err != nil {
		return false
	}
	cl.Close()
	return true
}

func (c *cycle) snapshot() map[string][]byte {
	out := map[string][]byte{}
	for d, b := range c.shadow {
		out[d] = bytes.Clone(b)
	}
	return out
}

func (c *cycle) restore(s map[string][]byte) {
	for d, b := range s {
		c.shadow[d] = bytes.Clone(b)
	}
}

// failoverStart runs vrep failover start vm1 on hostb (point 0: latest).
func (c *cycle) failoverStart(point uint64) (replicad.FailoverInfo, error) {
	q := "/v1/failover/start?vm=" + cycleVM + "&point=latest"
	if point != 0 {
		q = fmt.Sprintf("/v1/failover/start?vm=%s&point=%d", cycleVM, point)
	}
	var fo replicad.FailoverInfo
	if err := c.b.api.call(c.ctx, "POST", q, "replica", &fo); err != nil {
		return fo, fmt.Errorf("vrep failover start: %w", err)
	}
	return fo, nil
}

func (c *cycle) points(on *cycleHost) ([]replicad.VMPoint, error) {
	var pts []replicad.VMPoint
	if err := on.api.call(c.ctx, "GET", "/v1/points?vm="+cycleVM, "replica", &pts); err != nil {
		return nil, fmt.Errorf("vrep points on %s: %w", on.name, err)
	}
	return pts, nil
}

func hasPoints(pts []replicad.VMPoint, ids ...uint64) bool {
	for _, id := range ids {
		found := false
		for _, p := range pts {
			found = found || p.ID == id
		}
		if !found {
			return false
		}
	}
	return true
}

func (c *cycle) vmStatus(on *cycleHost) host.VMStatus {
	for _, v := range on.h.Status(c.ctx).VMs {
		if v.VM == cycleVM {
			return v
		}
	}
	return host.VMStatus{}
}

// primaryStatus is the status of the VM's primary on a host (nil if the
// VM does not run there).
func (c *cycle) primaryStatus(on *cycleHost) (*primary.Status, error) {
	raw, ok := on.h.Status(c.ctx).Primaries[cycleVM]
	if !ok {
		return nil, nil
	}
	var ps primary.Status
	if err := json.Unmarshal(raw, &ps); err != nil {
		return nil, err
	}
	return &ps, nil
}

// isCaughtUp says whether the VM's primary on a host has its initial
// copy done and every record it logged acknowledged by the peer.
func (c *cycle) isCaughtUp(on *cycleHost) (bool, error) {
	ps, err := c.primaryStatus(on)
	if err != nil || ps == nil {
		return false, err
	}
	for _, d := range ps.Disks {
		if d.Replication == nil || d.Replication.Initial < 100 || d.Replication.Acked < d.LastLSN {
			return false, nil
		}
	}
	return len(ps.Disks) > 0, nil
}

func (c *cycle) caughtUp(on *cycleHost) error {
	return c.wait("replication of vm1 from "+on.name, func() (bool, error) { return c.isCaughtUp(on) })
}

// resyncSummary sums a host's resync of the VM's disks.
type resyncSummary struct {
	done                bool
	chunkSize           int
	chunks, sent        uint64
	bytes               int64
	hashBytes, wireSent int64
}

func (c *cycle) resync(on *cycleHost) *resyncSummary {
	ps, err := c.primaryStatus(on)
	if err != nil || ps == nil {
		return nil
	}
	s := &resyncSummary{done: true}
	for _, d := range ps.Disks {
		if d.Replication == nil || d.Replication.Resync == nil {
			return nil
		}
		r := d.Replication.Resync
		s.done = s.done && r.State == "done"
		s.chunkSize = r.ChunkSize
		s.chunks += r.Chunks
		s.sent += r.Sent
		s.bytes += r.BytesSent
		s.hashBytes += r.HashBytes
		s.wireSent += r.WireBytes
	}
	return s
}

// wait polls cond until it holds: the event it waits for has no
// notification to wait on.
func (c *cycle) wait(what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("timed out waiting for " + what)
		}
		select {
		case <-c.ctx.Done():
			return c.ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func diffBlocks(a, b []byte) int {
	n := 0
	for off := 0; off+block <= len(a) && off+block <= len(b); off += block {
		if !bytes.Equal(a[off:off+block], b[off:off+block]) {
			n++
		}
	}
	return n
}

// diffChunks counts the chunks of size n where a and b differ.
func diffChunks(a, b []byte, n int) int {
	if n <= 0 {
		return -1
	}
	d := 0
	for off := 0; off < len(a) && off < len(b); off += n {
		end := min(off+n, len(a), len(b))
		if !bytes.Equal(a[off:end], b[off:end]) {
			d++
		}
	}
	return d
}

// freeAddr returns a loopback TCP address free a moment ago: each host
// must know the other's before either starts.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// apiClient talks to a daemon's API socket, as the vrep CLI does.
type apiClient struct {
	sock string
	hc   *http.Client
}

func newAPIClient(sock string) *apiClient {
	return &apiClient{sock: sock, hc: &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}}
}

// call makes one request for the component want names and decodes the
// answer into out; an error answer is returned as its one sentence.
func (a *apiClient) call(ctx context.Context, method, path, want string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://vrep"+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set(host.WantRoleHeader, want)
	resp, err := a.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	return json.Unmarshal(body, out)
}
