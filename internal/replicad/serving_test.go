package replicad

import (
	"io"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/nbdclient"
	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/replica/store"
)

// BenchmarkTimeToServing measures an unplanned failover's time to
// serving, from the call to the first NBD read answered, for the latest
// point and for the oldest of 1,000 points with over 1 GiB of history
// after it, on a 4 GiB disk. The history is built directly through
// replica/store: 1,000 points, each after 280 random 4 KiB writes.
//
//	go test -run XXX -bench TimeToServing -benchtime 3x ./internal/replicad/
func BenchmarkTimeToServing(b *testing.B) {
	const size = 4 << 30
	const points, writesPerPoint = 1000, 280
	data := b.TempDir()
	key := "p/vm1/disk0"
	cat, err := store.OpenCatalog(store.CatalogConfig{Data: data, Retention: store.Retention{Window: 24 * time.Hour}})
	if err != nil {
		b.Fatal(err)
	}
	disk, err := store.OpenDisk(vfs.OS{}, filepath.Join(data, key), size)
	if err != nil {
		b.Fatal(err)
	}
	if err := disk.WithHistory(cat, key); err != nil {
		b.Fatal(err)
	}
	if err := disk.FinishBase(0); err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	junk := make([]byte, 1<<20)
	for i := range junk {
		junk[i] = byte(r.Uint32())
	}
	built := time.Now()
	var lsn uint64
	var recs []hrl.Record
	now := time.Now().Add(-time.Hour)
	for p := range points {
		for range writesPerPoint {
			lsn++
			off := r.Int64N(size/4096) * 4096
			at := r.IntN(len(junk) - 4096)
			recs = append(recs, hrl.Record{Type: hrl.TypeWrite, LSN: lsn, Offset: uint64(off), Span: 4096, Payload: junk[at : at+4096]})
		}
		lsn++
		m, _ := hrl.Marker{ID: uint64(p + 1), Time: now.Add(time.Duration(p) * time.Second).UnixNano(), Kind: hrl.KindCrash, Group: "vm1"}.Encode()
		recs = append(recs, hrl.Record{Type: hrl.TypeMarker, LSN: lsn, Payload: m})
		if (p+1)%10 == 0 {
			if _, err := disk.Apply(recs); err != nil {
				b.Fatal(err)
			}
			recs = recs[:0]
		}
	}
	h, err := cat.History(key)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("history built in %s: %d points, %d undo entries, %d MiB of history after the oldest point",
		time.Since(built).Round(time.Second), len(h.Points), h.UndoEntries, h.AfterPoint[0]>>20)
	disk.Close()
	cat.Close()
	sock := filepath.Join(data, "nbd.sock")
	d, err := Start(Config{Data: data, Listen: "127.0.0.1:0", NBD: []string{"unix:" + sock},
		Retention: store.Retention{Window: 24 * time.Hour}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	for _, c := range []struct {
		name string
		id   string
	}{{"latest", "latest"}, {"oldest-of-1000", strconv.Itoa(1)}} {
		b.Run(c.name, func(b *testing.B) {
			var total time.Duration
			for range b.N {
				t0 := time.Now()
				if _, err := d.StartFailover("vm1", c.id); err != nil {
					b.Fatal(err)
				}
				cl, err := nbdclient.Dial("unix", sock, "vm1/disk0")
				if err != nil {
					b.Fatal(err)
				}
				if _, err := cl.ReadAt(make([]byte, 4096), 0); err != nil {
					b.Fatal(err)
				}
				took := time.Since(t0)
				total += took
				cl.Close()
				if _, err := d.CancelFailover("vm1", true); err != nil {
					b.Fatal(err)
				}
				b.Logf("%s: serving after %s", c.name, took.Round(time.Millisecond))
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "s/serving")
		})
	}
}
