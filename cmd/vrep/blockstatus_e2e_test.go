package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/primary"
)

// span is a byte range of a disk.
type span struct{ off, n int64 }

func (s span) String() string { return fmt.Sprintf("%d+%d", s.off, s.n) }

// mergeSpans sorts and joins touching spans.
func mergeSpans(in []span) []span {
	sort.Slice(in, func(i, j int) bool { return in[i].off < in[j].off })
	var out []span
	for _, s := range in {
		if k := len(out) - 1; k >= 0 && out[k].off+out[k].n == s.off {
			out[k].n += s.n
			continue
		}
		out = append(out, s)
	}
	return out
}

// nbdinfoData returns the extents nbdinfo --map reports as data.
func nbdinfoData(t *testing.T, uri string) []span {
	t.Helper()
	var data []span
	for _, line := range strings.Split(run(t, "nbdinfo", "--map", uri), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		off, _ := strconv.ParseInt(f[0], 10, 64)
		n, _ := strconv.ParseInt(f[1], 10, 64)
		if f[2] == "0" {
			data = append(data, span{off, n})
		}
	}
	return mergeSpans(data)
}

// qemuImgData returns the extents qemu-img map reports as data.
func qemuImgData(t *testing.T, uri string) []span {
	t.Helper()
	var ext []struct {
		Start, Length int64
		Data, Zero    bool
	}
	out := run(t, "qemu-img", "map", "--output=json", "-f", "raw", uri)
	if err := json.Unmarshal([]byte(out), &ext); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	var data []span
	for _, e := range ext {
		if e.Data && !e.Zero {
			data = append(data, span{e.Start, e.Length})
		}
	}
	return mergeSpans(data)
}

// TestBlockStatusMap: on a primary's export, nbdinfo --map and qemu-img
// map report exactly the written layout of a sparse image: data where
// the image held data and where writes went, holes elsewhere and where
// a trim went, before and after the log is merged into the image.
func TestBlockStatusMap(t *testing.T) {
	need(t, "nbdinfo", "qemu-img", "qemu-io")
	e := newEnv(t, 64<<20)
	f, _ := os.OpenFile(e.img, os.O_WRONLY, 0)
	f.WriteAt([]byte(strings.Repeat("x", 64<<10)), 40<<20) // data in the image before vrep starts
	f.Close()
	d := e.start(t)
	u := e.uri("vm1/disk0")
	qemuIO(t, u,
		"write -P 0xa1 1M 1M",
		"write -P 0xb2 8M 64k",
		"write -P 0xc3 20M 2M",
		"discard 20992k 512k", // [20.5M, 21M) trimmed inside the last write
	)
	want := "1048576+1048576 8388608+65536 20971520+524288 22020096+1048576 41943040+65536"
	for _, phase := range []string{"unmerged", "merged"} {
		if got := fmt.Sprint(nbdinfoData(t, u)); got != "["+want+"]" {
			t.Errorf("%s: nbdinfo --map data = %s, want [%s]", phase, got, want)
		}
		if got := fmt.Sprint(qemuImgData(t, u)); got != "["+want+"]" {
			t.Errorf("%s: qemu-img map data = %s, want [%s]", phase, got, want)
		}
		if phase == "unmerged" {
			// A clean stop merges the log into the image; serve it again.
			if err := d.stop(); err != nil {
				t.Fatalf("SIGTERM: %v\n%s", err, d.stderr)
			}
			d = e.start(t)
		}
	}
}

// countingProxy forwards unix-socket connections to target and counts
// the bytes the server sends back: what a client read, on the wire.
type countingProxy struct {
	sock string
	down atomic.Int64
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func newCountingProxy(t *testing.T, dir, target string) *countingProxy {
	p := &countingProxy{sock: filepath.Join(dir, "proxy.sock")}
	l, err := net.Listen("unix", p.sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("unix", target)
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(s, c); s.(*net.UnixConn).CloseWrite() }()
			go func() {
				defer wg.Done()
				// Counted as forwarded: a client that has exited has
				// been counted for all it read.
				io.Copy(countingWriter{c, &p.down}, s)
				c.Close()
				s.Close()
			}()
		}
	}()
	return p
}

// TestBlockStatusCopy: copying a 4 GiB disk with 5% written reads about
// the written bytes with block status (nbdcopy and qemu-img convert),
// and the copies are exact. Without -short it also measures nbdcopy
// --no-extents, which reads the whole disk, for the figure.
func TestBlockStatusCopy(t *testing.T) {
	need(t, "nbdcopy", "qemu-img", "qemu-io")
	const size = 4 << 30
	e := newEnv(t, size)
	// 5%: 51 extents of 4 MiB spread over the disk, in the image, plus
	// two writes through the export that stay in the log a while, and a
	// trim of one extent.
	f, _ := os.OpenFile(e.img, os.O_WRONLY, 0)
	buf := make([]byte, 4<<20)
	var written int64
	for i := range 51 {
		for j := range buf {
			buf[j] = byte(i + j>>12)
		}
		f.WriteAt(buf, int64(i)*(80<<20)+int64(i)*4096)
		written += int64(len(buf))
	}
	f.Close()
	e.start(t)
	qemuIO(t, e.uri("vm1/disk0"), "write -P 0x5a 3000M 1M", "write -P 0x6b 4095M 1M", "discard 80M 8M")
	written += 2<<20 - 4<<20 // extent 1 (at 80M + 4K) is trimmed
	p := newCountingProxy(t, e.dir, e.sock)
	src := fmt.Sprintf("nbd+unix:///vm1/disk0?socket=%s", p.sock)
	copyWith := func(name string, args ...string) (int64, time.Duration) {
		t.Helper()
		out := filepath.Join(e.dir, "copy.img")
		os.Remove(out)
		before := p.down.Load()
		start := time.Now()
		if args[0] == "qemu-img" {
			run(t, args[0], append(args[1:], src, out)...)
		} else {
			os.WriteFile(out, nil, 0o600)
			os.Truncate(out, size)
			run(t, args[0], append(args[1:], src, out)...)
		}
		took := time.Since(start)
		read := p.down.Load() - before
		// The copy is exact (compare skips what both sides map as zero).
		run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", out, e.uri("vm1/disk0"))
		os.Remove(out)
		t.Logf("%-26s read %7.1f MiB (%.2fx the %d MiB written) in %v", name, float64(read)/(1<<20), float64(read)/float64(written), written>>20, took.Round(time.Millisecond))
		return read, took
	}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"nbdcopy", []string{"nbdcopy"}},
		{"qemu-img convert", []string{"qemu-img", "convert", "-f", "raw", "-O", "raw"}},
	} {
		if read, _ := copyWith(c.name, c.args...); float64(read) > 1.1*float64(written) {
			t.Errorf("%s read %d bytes for %d written: block status is not used", c.name, read, written)
		}
	}
	if testing.Short() {
		return
	}
	if read, _ := copyWith("nbdcopy --no-extents", "nbdcopy", "--no-extents"); read < size {
		t.Errorf("nbdcopy --no-extents read %d bytes of a %d-byte disk", read, size)
	}
}

// changedSpans returns the extents nbdinfo reports changed (status 1)
// in a vrep:changed: context.
func changedSpans(t *testing.T, uri, context string) []span {
	t.Helper()
	var out []span
	for _, line := range strings.Split(run(t, "nbdinfo", "--map="+context, uri), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		off, _ := strconv.ParseInt(f[0], 10, 64)
		n, _ := strconv.ParseInt(f[1], 10, 64)
		if f[2] == "1" {
			out = append(out, span{off, n})
		}
	}
	return mergeSpans(out)
}

// applyIncrement is the documented recipe for an incremental copy: for
// every extent the vrep:changed:ID context marks, qemu-img copies that
// range of the export into the same range of the older copy (raw
// driver's offset and size on both sides; nothing else is touched).
func applyIncrement(t *testing.T, sock, export, img string, changed []span) {
	t.Helper()
	for _, s := range changed {
		run(t, "qemu-img", "convert", "-n",
			"--image-opts", fmt.Sprintf("driver=raw,offset=%d,size=%d,file.driver=nbd,file.server.type=unix,file.server.path=%s,file.export=%s", s.off, s.n, sock, export),
			"--target-image-opts", fmt.Sprintf("driver=raw,offset=%d,size=%d,file.driver=file,file.filename=%s", s.off, s.n, img))
	}
}

// TestIncrementalCopyBetweenPoints: a test failover export of a newer
// point reports, in vrep:changed:OLDER, exactly the blocks written
// between the two points; copying only those onto a full copy of the
// older point gives the newer point byte for byte.
func TestIncrementalCopyBetweenPoints(t *testing.T) {
	need(t, "qemu-io", "qemu-img", "nbdinfo", "nbdcopy")
	e := newEnv(t, 64<<20)
	pkiDir, addr := replicationSetup(t, e)
	repData := filepath.Join(e.dir, "replica")
	repSock := filepath.Join(e.dir, "r.sock")
	startReplica(t, e.dir, pkiDir, addr, "--nbd", "unix:"+repSock)
	e.start(t, replicaFlags(addr, pkiDir)...)
	u := e.uri("vm1/disk0")
	point := func() string {
		t.Helper()
		var p primary.PointInfo
		code, out := vrepRun(t, "point", "create", "vm1", "--state", e.state, "--json")
		if code != 0 || json.Unmarshal([]byte(out), &p) != nil {
			t.Fatalf("point create: exit %d\n%s", code, out)
		}
		return strconv.FormatUint(p.ID, 10)
	}
	qemuIO(t, u, "write -P 0x11 0 4M", "write -P 0x22 10M 1M", "write -P 0x33 40M 64k")
	p1 := point()
	qemuIO(t, u,
		"write -P 0x44 1M 64k",        // over data of p1
		"write -P 0x55 20M 1M",        // where p1 had nothing
		"write -P 0x66 41943140 5000", // unaligned: two blocks
		"discard 10M 512k",            // a trim
	)
	p2 := point()
	qemuIO(t, u, "write -P 0x77 30M 1M") // after p2: not in the increment
	waitReplicated(t, e)

	testAt := func(id string) {
		t.Helper()
		if code, out := vrepRun(t, "failover", "test", "vm1", "--point", id, "--data", repData); code != 0 {
			t.Fatalf("failover test at %s: exit %d\n%s", id, code, out)
		}
	}
	stopTest := func() {
		t.Helper()
		if code, out := vrepRun(t, "failover", "test-stop", "vm1", "--data", repData); code != 0 {
			t.Fatalf("test-stop: exit %d\n%s", code, out)
		}
	}
	export := "vm1/disk0-test"
	tu := fmt.Sprintf("nbd+unix:///%s?socket=%s", export, repSock)
	older := filepath.Join(e.dir, "p1.img")
	testAt(p1)
	run(t, "nbdcopy", tu, older)
	if out, err := exec.Command("nbdinfo", "--map="+ChangedCtx(p2), tu).CombinedOutput(); err == nil {
		t.Errorf("the export of p1 offers a context for the newer p2:\n%s", out)
	}
	stopTest()

	testAt(p2)
	changed := changedSpans(t, tu, ChangedCtx(p1))
	want := "[1048576+65536 10485760+524288 20971520+1048576 41943040+8192]"
	if fmt.Sprint(changed) != want {
		t.Fatalf("vrep:changed:%s = %v, want %s", p1, changed, want)
	}
	// qemu reads the context as it reads a dirty bitmap: with
	// x-dirty-bitmap its map shows the changed extents as "data": false
	// (qemu's documented inversion for dirty bitmaps).
	var qext []struct {
		Start, Length int64
		Data          bool
	}
	out := run(t, "qemu-img", "map", "--output=json", "--image-opts",
		fmt.Sprintf("driver=nbd,server.type=unix,server.path=%s,export=%s,x-dirty-bitmap=%s", repSock, export, ChangedCtx(p1)))
	if err := json.Unmarshal([]byte(out), &qext); err != nil {
		t.Fatalf("qemu-img map x-dirty-bitmap: %v\n%s", err, out)
	}
	var dirty []span
	for _, x := range qext {
		if !x.Data {
			dirty = append(dirty, span{x.Start, x.Length})
		}
	}
	if got := fmt.Sprint(mergeSpans(dirty)); got != want {
		t.Errorf("qemu-img map with x-dirty-bitmap=%s: dirty %s, want %s", ChangedCtx(p1), got, want)
	}
	applyIncrement(t, repSock, export, older, changed)
	newer := filepath.Join(e.dir, "p2.img")
	run(t, "nbdcopy", tu, newer)
	a, _ := os.ReadFile(older)
	b, _ := os.ReadFile(newer)
	if len(a) != 64<<20 || !bytes.Equal(a, b) {
		t.Fatalf("p1 + the increment differs from p2 (%d and %d bytes)", len(a), len(b))
	}
	if a[30<<20] != 0 || a[20<<20] != 0x55 || a[10<<20] != 0 || a[1<<20] != 0x44 {
		t.Fatal("the copies do not hold p2's writes")
	}
	// A point that is no point, and a malformed id, are no contexts.
	if out, err := exec.Command("nbdinfo", "--map=vrep:changed:12345", tu).CombinedOutput(); err == nil {
		t.Errorf("nbdinfo --map of an unknown point succeeded:\n%s", out)
	}
	stopTest()
}

// ChangedCtx is the changed-blocks context of point id.
func ChangedCtx(id string) string { return "vrep:changed:" + id }
